//! The seccomp layer: the allow-list of system calls and the BPF programs made from it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::{Sandbox, Violation};
use crate::error::{Error, Result};

impl Sandbox {
    /// The seccomp programs, in installation order, and the number of allowed calls.
    pub(super) fn filters(
        &self,
        startup: bool,
        open_files: bool,
    ) -> Result<(Vec<BpfProgram>, usize)> {
        fn setup<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
            Error::SandboxSetup {
                layer: "seccomp",
                source: Box::new(e),
            }
        }
        let arch = std::env::consts::ARCH
            .try_into()
            .map_err(setup::<seccompiler::BackendError>)?;
        let rules = self.allow_list(startup, open_files).map_err(setup)?;
        let count = rules.len();
        let mismatch = match self.on_violation {
            Violation::Errno => SeccompAction::Errno(libc::EPERM as u32),
            Violation::Kill => SeccompAction::KillProcess,
        };
        let mut programs: Vec<BpfProgram> = Vec::new();
        if self.threads || startup {
            // clone3's flags live in memory a filter cannot read, so it is answered ENOSYS
            // and the C library falls back to clone, whose flags are checked. Installed
            // first, because the allow-list (which has no `seccomp`) then blocks further
            // filters; the kernel returns the strictest answer of all filters (ERRNO over
            // ALLOW) whatever their order.
            let clone3 = SeccompFilter::new(
                [(libc::SYS_clone3, vec![])].into_iter().collect(),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                arch,
            )
            .map_err(setup)?;
            programs.push(clone3.try_into().map_err(setup)?);
        }
        let allow =
            SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(setup)?;
        programs.push(allow.try_into().map_err(setup)?);
        Ok((programs, count))
    }

    pub(super) fn allow_list(
        &self,
        startup: bool,
        open_files: bool,
    ) -> std::result::Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
        use libc::*;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let any = |rules: &mut BTreeMap<i64, Vec<SeccompRule>>, nrs: &[i64]| {
            for &nr in nrs {
                rules.insert(nr, vec![]);
            }
        };
        any(
            &mut rules,
            &[
                SYS_recvmsg,
                SYS_sendmsg,
                SYS_recvfrom,
                SYS_sendto,
                SYS_getsockopt,
                SYS_read,
                SYS_readv,
                SYS_pread64,
                SYS_preadv,
                SYS_preadv2,
                SYS_write,
                SYS_writev,
                SYS_pwrite64,
                SYS_pwritev,
                SYS_pwritev2,
                SYS_lseek,
                SYS_close,
                SYS_fstat,
                SYS_fstatfs,
                crate::sys::SYS_CACHESTAT,
                SYS_munmap,
                SYS_mremap,
                SYS_madvise,
                SYS_brk,
                SYS_memfd_create,
                SYS_ftruncate,
                SYS_fallocate,
                SYS_futex,
                SYS_clock_gettime,
                SYS_clock_getres,
                SYS_gettimeofday,
                SYS_clock_nanosleep,
                SYS_nanosleep,
                SYS_sched_yield,
                SYS_ppoll,
                SYS_epoll_create1,
                SYS_epoll_ctl,
                SYS_epoll_pwait,
                SYS_epoll_pwait2,
                SYS_eventfd2,
                SYS_getrandom,
                SYS_getpid,
                SYS_getppid,
                SYS_gettid,
                SYS_sysinfo,
                SYS_getuid,
                SYS_geteuid,
                SYS_getgid,
                SYS_getegid,
                SYS_sched_getaffinity,
                SYS_rt_sigaction,
                SYS_rt_sigprocmask,
                SYS_rt_sigreturn,
                SYS_sigaltstack,
                SYS_exit,
                SYS_exit_group,
                SYS_restart_syscall,
            ],
        );
        #[cfg(target_arch = "x86_64")]
        any(&mut rules, &[SYS_poll, SYS_epoll_wait]);

        let no_exec = || -> std::result::Result<Vec<SeccompRule>, seccompiler::BackendError> {
            Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(PROT_EXEC as u64),
                0,
            )?])?])
        };
        rules.insert(SYS_mmap, no_exec()?);
        rules.insert(SYS_mprotect, no_exec()?);

        let mut fcntl = Vec::new();
        for cmd in [
            F_GETFD,
            F_SETFD,
            F_GETFL,
            F_SETFL,
            F_DUPFD_CLOEXEC,
            F_GET_SEALS,
            F_ADD_SEALS,
            F_GETPIPE_SZ,
        ] {
            fcntl.push(SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                cmd as u64,
            )?])?);
        }
        rules.insert(SYS_fcntl, fcntl);

        // The channel's descriptor hygiene (`crate::closer`): `SO_PASSRIGHTS` refuses
        // descriptors on a socket about to be closed or in a ring after setup, `SO_LINGER`
        // disarms a received socket before it is closed; `SIOCOUTQ` counts the channel's
        // descriptors in flight, `FIONREAD` tells a drained socket's queue empty.
        let mut setsockopt = Vec::new();
        for opt in [SO_LINGER, crate::sys::SO_PASSRIGHTS] {
            setsockopt.push(SeccompRule::new(vec![
                SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    SOL_SOCKET as u64,
                )?,
                SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, opt as u64)?,
            ])?);
        }
        rules.insert(SYS_setsockopt, setsockopt);
        let mut ioctl = Vec::new();
        for request in [TIOCOUTQ, FIONREAD] {
            ioctl.push(SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                request,
            )?])?);
        }
        rules.insert(SYS_ioctl, ioctl);

        if self.threads || startup {
            rules.insert(
                SYS_clone,
                vec![SeccompRule::new(vec![SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(CLONE_THREAD as u64),
                    CLONE_THREAD as u64,
                )?])?],
            );
            any(&mut rules, &[SYS_clone3, SYS_set_robust_list, SYS_rseq]);
            let mut prctl = Vec::new();
            for op in [PR_SET_NAME, PR_GET_NAME] {
                prctl.push(SeccompRule::new(vec![SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    op as u64,
                )?])?);
            }
            rules.insert(SYS_prctl, prctl);
        }
        if open_files {
            any(&mut rules, &[SYS_openat, SYS_getdents64]);
        }
        if startup {
            // Loading the program and starting the Rust runtime (and, in the worker,
            // claiming the channel and entering the full profile). Landlock confines
            // every path these calls can reach.
            any(
                &mut rules,
                &[
                    SYS_execve,
                    SYS_openat,
                    SYS_getdents64,
                    SYS_newfstatat,
                    SYS_statx,
                    SYS_faccessat,
                    SYS_faccessat2,
                    SYS_readlinkat,
                    SYS_getcwd,
                    SYS_set_tid_address,
                    SYS_prlimit64,
                    SYS_uname,
                    SYS_pidfd_open,
                    SYS_setsockopt,
                    SYS_landlock_create_ruleset,
                    SYS_landlock_add_rule,
                    SYS_landlock_restrict_self,
                    SYS_seccomp,
                ],
            );
            #[cfg(target_arch = "x86_64")]
            any(
                &mut rules,
                &[SYS_arch_prctl, SYS_access, SYS_readlink, SYS_open, SYS_stat],
            );
            // The loader maps libraries executable; never writable and executable at once.
            rules.insert(
                SYS_mmap,
                vec![SeccompRule::new(vec![SeccompCondition::new(
                    2,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq((PROT_EXEC | PROT_WRITE) as u64),
                    PROT_EXEC as u64,
                )?])?]
                .into_iter()
                .chain(no_exec()?)
                .collect(),
            );
            // Thread names (PR_SET_NAME), and `enter` setting no_new_privs again.
            let mut prctl = rules.remove(&SYS_prctl).unwrap_or_default();
            prctl.push(SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                PR_SET_NO_NEW_PRIVS as u64,
            )?])?);
            rules.insert(SYS_prctl, prctl);
            // TCGETS: isatty() on the standard streams.
            rules
                .entry(SYS_ioctl)
                .or_default()
                .push(SeccompRule::new(vec![SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    TCGETS,
                )?])?);
        }
        for &nr in &self.extra_syscalls {
            rules.insert(nr, vec![]);
        }
        Ok(rules)
    }
}
