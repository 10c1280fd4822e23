//! Sandboxing workers: a process that can receive, read and answer, and nothing else.
//!
//! Seals make shared buffers safe *from* a worker; a [`Sandbox`] makes the machine safe
//! from the worker. It stacks four kernel mechanisms, each applied by the kernel to the
//! process and everything it later creates, and none of which can be undone:
//!
//! - **`no_new_privs`**: `execve` can never gain privileges (setuid, file capabilities).
//! - **Landlock** (the `landlock` crate): every filesystem right the running kernel's ABI
//!   knows is *handled*, and none is granted unless you list a path
//!   ([`Sandbox::read_only`], [`Sandbox::read_write`]): the worker cannot open, create,
//!   delete, execute or truncate any file (memfds, sockets and pipes live on internal
//!   mounts Landlock does not govern: see below). Where the ABI has
//!   them (4+), binding and connecting TCP sockets are denied; (6+) connecting to abstract
//!   unix sockets and signalling processes outside the sandbox are denied. Best effort
//!   across kernels, reported in [`Enforcement`]; [`Sandbox::require_landlock_abi`] turns
//!   a weaker kernel into [`Error::SandboxUnavailable`].
//! - **seccomp** (a BPF filter compiled by the `seccompiler` crate): an allow-list of the
//!   system calls a sealpipe worker makes (see [`Sandbox`] for the list and the reason for
//!   each); any other call fails with `EPERM`, or kills the process
//!   ([`Violation::Kill`]). Arguments are filtered where it matters: `mmap`/`mprotect`
//!   never with `PROT_EXEC`, `fcntl` only the commands sealpipe uses, `clone` only for
//!   threads (and only with [`Sandbox::allow_threads`]); `socket`, `execve`, `open`,
//!   `ptrace`, `kill` are absent.
//! - **resource limits**: `RLIMIT_CORE` 0, `RLIMIT_NOFILE` ([`Sandbox::max_open_files`]),
//!   optionally `RLIMIT_AS` ([`Sandbox::max_address_space`]); and optionally new user and
//!   network namespaces ([`Sandbox::namespaces`]).
//!
//! # Two ways in
//!
//! - **The worker enters it itself** ([`Sandbox::enter`]), after its own setup (claiming
//!   its channel, connecting its ring) and before it touches untrusted data, like OpenBSD's
//!   `pledge`. This applies the full profile.
//! - **The parent applies it at spawn** ([`crate::spawn::spawn_sandboxed`]): everything is
//!   built before `fork`, and the child applies it between `fork` and `exec` with raw
//!   system calls only, so the program starts sandboxed. A program cannot be *loaded*
//!   under the full profile (the loader opens and maps libraries executable), so the
//!   spawn-time filter also allows what loading and the Rust runtime's start need
//!   ([`Enforcement::startup_allowance`]): `execve`, `openat`, `stat`, executable mappings
//!   (never writable at the same time)... Landlock confines the paths: it grants only
//!   executing the program and its ELF interpreter, and reading shared-library
//!   directories. That layer is not W^X (a memfd could be mapped once writable and once
//!   executable); the worker calls [`Sandbox::enter`] with its profile to drop the
//!   allowance, and only then is it.
//!
//! ```no_run
//! # fn main() -> sealpipe::Result<()> {
//! use sealpipe::sandbox::Sandbox;
//! use sealpipe::Policy;
//!
//! // In the worker, after setup and before reading anything untrusted:
//! let channel = sealpipe::spawn::worker_channel()?;
//! let enforced = Sandbox::worker().require_landlock_abi(1).enter()?;
//! eprintln!("sandboxed: {enforced}");
//! let msg = channel.recv(&Policy::immutable())?; // still works
//! assert!(std::fs::File::open("/etc/passwd").is_err()); // refused
//! # drop(msg); Ok(()) }
//! ```
//!
//! # What it cannot stop
//!
//! Timing and cache side channels; use of CPU, and of memory up to the limits you set
//! (use cgroups for quotas); writing garbage into what the worker legitimately sends back
//! (validate it); anything done through descriptors the worker holds before it enters (a
//! descriptor to a directory or a socket keeps working: spawn hands over exactly one, the
//! channel). `stat` by path is refused by the default filter, but Landlock does not hide
//! file metadata, so the spawn-time layer (which must allow `stat` for the loader) does
//! not either. Landlock does not govern memfds: with paths granted (so `openat` is
//! allowed), a region reopened through `/proc/self/fd/N` opens, and its seals refuse the
//! write. Seccomp filters raw system calls: a kernel bug reachable through an allowed call
//! is not stopped.
//!
//! # With seals
//!
//! Seals already stop writes to a region by any path; the sandbox removes the remaining
//! ways around the worker's read-only view: it cannot reopen a region through
//! `/proc/self/fd` (the default filter has no `openat`; with paths granted the reopen
//! succeeds and the seals refuse every write), map it executable, `ptrace` or
//! `process_vm_writev` the producer, or signal it. Seals are still what protects the
//! region: the sandbox does not replace verifying them.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::sys::landlock_abi;

mod prepare;
mod ruleset;
mod seccomp;
mod startup;

pub(crate) use prepare::Prepared;
pub(crate) use startup::StartupPaths;

/// What happens when a sandboxed process makes a system call the filter does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The call fails with `EPERM` and the process goes on (the default): library code
    /// sees an ordinary error and can report it.
    Errno,
    /// The kernel kills the whole process (`SECCOMP_RET_KILL_PROCESS`, as by `SIGSYS`):
    /// nothing more runs after a compromised worker's first forbidden call.
    Kill,
}

/// Namespaces a sandboxed process is moved into. Requested namespaces are required: if
/// the kernel refuses them (unprivileged user namespaces disabled), entering fails with
/// [`Error::SandboxUnavailable`]. Probe first with [`Support::detect`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// A new user namespace, mapping only this process's own uid and gid (so the peer's
    /// `SCM_CREDENTIALS` checks still hold); it owns the other namespaces.
    pub user: bool,
    /// A new, empty network namespace (implies `user`, which owns it): no interfaces, and
    /// its own abstract unix socket space.
    pub net: bool,
}

/// What the running kernel offers, probed without changing this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Support {
    /// The Landlock ABI version (0: Landlock is not available).
    pub landlock_abi: u32,
    /// Whether seccomp filters are available.
    pub seccomp: bool,
    /// Whether this process may create user (and then network) namespaces.
    pub user_namespaces: bool,
}

impl Support {
    /// Probes the kernel: Landlock with `landlock_create_ruleset(NULL, 0, VERSION)`,
    /// seccomp with `prctl(PR_GET_SECCOMP)`, user namespaces by a short-lived child
    /// process that tries `unshare(CLONE_NEWUSER | CLONE_NEWNET)`.
    pub fn detect() -> Support {
        Support {
            landlock_abi: landlock_abi(),
            // prctl(PR_GET_SECCOMP): a mode (the kernel has only 0, 1 and 2), or EINVAL
            // without seccomp (EPERM under a filter that refuses prctl).
            seccomp: rustix::thread::secure_computing_mode().is_ok(),
            user_namespaces: crate::sys::child_can_unshare(
                rustix::thread::UnshareFlags::NEWUSER | rustix::thread::UnshareFlags::NEWNET,
            ),
        }
    }
}

/// What a sandbox enforced (or, for [`crate::spawn::spawn_sandboxed`], what the child
/// enforces before its program starts): log it, or refuse to run weaker.
///
/// `Display` gives one line, e.g. `no_new_privs; Landlock ABI 7: 16 filesystem rights
/// handled, 0 paths granted, TCP bind/connect denied, abstract unix sockets and signals
/// scoped; seccomp: 62 system calls allowed, others EPERM; namespaces: none; rlimits: NOFILE
/// 256, CORE 0, AS unchanged`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enforcement {
    /// `PR_SET_NO_NEW_PRIVS` is set (always, once applied).
    pub no_new_privs: bool,
    /// The Landlock ABI the ruleset was built for (0: Landlock not enforced).
    pub landlock_abi: u32,
    /// The `LANDLOCK_ACCESS_FS_*` rights handled: denied everywhere except beneath the
    /// granted paths.
    pub landlock_fs_rights: u64,
    /// Paths granted some filesystem right (read-only, read-write, and at spawn the
    /// program, its interpreter and the library directories).
    pub landlock_paths: usize,
    /// TCP `bind` and `connect` are denied by Landlock (ABI 4+).
    pub landlock_tcp: bool,
    /// Connecting to abstract unix sockets created outside the sandbox is denied (ABI 6+).
    pub scoped_abstract_unix: bool,
    /// Signalling processes outside the sandbox is denied (ABI 6+).
    pub scoped_signals: bool,
    /// How many system calls the seccomp filter allows (some only with certain arguments).
    pub seccomp_syscalls: usize,
    /// What a forbidden system call does.
    pub on_violation: Violation,
    /// The spawn-time filter's allowance for loading the program is in force (`execve`,
    /// `openat`, executable file mappings...; see [`crate::spawn::spawn_sandboxed`]).
    /// [`Sandbox::enter`] in the worker removes it.
    pub startup_allowance: bool,
    /// The namespaces the process was moved into.
    pub namespaces: Namespaces,
    /// `RLIMIT_NOFILE` (soft and hard).
    pub max_open_files: u64,
    /// `RLIMIT_AS` (soft and hard), if limited.
    pub max_address_space: Option<u64>,
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.no_new_privs {
            f.write_str("no_new_privs; ")?;
        }
        if self.landlock_abi == 0 {
            f.write_str("Landlock not enforced")?;
        } else {
            write!(
                f,
                "Landlock ABI {}: {} filesystem rights handled, {} paths granted",
                self.landlock_abi,
                self.landlock_fs_rights.count_ones(),
                self.landlock_paths
            )?;
            if self.landlock_tcp {
                f.write_str(", TCP bind/connect denied")?;
            }
            match (self.scoped_abstract_unix, self.scoped_signals) {
                (true, true) => f.write_str(", abstract unix sockets and signals scoped")?,
                (true, false) => f.write_str(", abstract unix sockets scoped")?,
                (false, true) => f.write_str(", signals scoped")?,
                (false, false) => {}
            }
        }
        write!(
            f,
            "; seccomp: {} system calls allowed{}, others {}",
            self.seccomp_syscalls,
            if self.startup_allowance {
                " (with the program-startup allowance)"
            } else {
                ""
            },
            match self.on_violation {
                Violation::Errno => "EPERM",
                Violation::Kill => "kill the process",
            }
        )?;
        f.write_str("; namespaces: ")?;
        match (self.namespaces.user, self.namespaces.net) {
            (false, false) => f.write_str("none")?,
            (true, false) => f.write_str("user")?,
            (false, true) => f.write_str("net")?,
            (true, true) => f.write_str("user, net")?,
        }
        write!(f, "; rlimits: NOFILE {}, CORE 0, AS ", self.max_open_files)?;
        match self.max_address_space {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("unchanged"),
        }
    }
}

/// A sandbox profile for a sealpipe worker. Build it with [`Sandbox::worker`] and the
/// adjusting methods; apply it with [`Sandbox::enter`] or
/// [`crate::spawn::spawn_sandboxed`].
///
/// # The seccomp allow-list, and why
///
/// | system calls | why a worker needs them |
/// |---|---|
/// | `recvmsg`, `sendmsg`, `recvfrom`, `sendto`, `getsockopt` | the channel: messages with descriptors, the ring's wake byte, `SO_PEERCRED`/`SO_TYPE` checks |
/// | `read`, `readv`, `pread64`, `preadv`, `preadv2`, `write`, `writev`, `pwrite64`, `pwritev`, `pwritev2`, `lseek` | I/O on descriptors the worker already holds (positional region I/O, stderr) |
/// | `close` | dropping received regions and descriptors |
/// | `fcntl` (`F_GETFD`, `F_SETFD`, `F_GETFL`, `F_SETFL`, `F_DUPFD_CLOEXEC`, `F_GET_SEALS`, `F_ADD_SEALS`, `F_GETPIPE_SZ` only) | verifying seals, close-on-exec, non-blocking mode for async, telling a rejected descriptor's kind |
/// | `setsockopt` (`SOL_SOCKET` `SO_PASSRIGHTS`, `SO_LINGER` only), `ioctl` (`SIOCOUTQ`, `FIONREAD` only) | closing what a peer sent without blocking and bounding descriptors in flight (see [`crate::Channel`]) |
/// | `fstat`, `fstatfs`, `cachestat` | verifying a region's kind, size, backing (shmem or hugetlbfs) and committed pages (`stat` by path, `newfstatat` and `statx`, is refused: Landlock does not govern metadata) |
/// | `mmap`, `mprotect` (never `PROT_EXEC`), `munmap`, `mremap`, `madvise`, `brk` | mapping regions read-only, the allocator |
/// | `memfd_create`, `ftruncate`, `fallocate` | the worker's own regions and its half of a ring |
/// | `futex` | the ring's parking, std's locks |
/// | `clock_gettime`, `clock_getres`, `gettimeofday`, `clock_nanosleep`, `nanosleep`, `sched_yield` | deadlines, backoff (`clock_gettime` is usually answered by the vDSO) |
/// | `poll`, `ppoll`, `epoll_create1`, `epoll_ctl`, `epoll_wait`, `epoll_pwait`, `epoll_pwait2`, `eventfd2` | channel timeouts and the peer's pidfd; the tokio reactor |
/// | `getrandom` | hash-map seeds, handshake nonces |
/// | `getpid`, `getppid`, `gettid`, `getuid`, `geteuid`, `getgid`, `getegid`, `sched_getaffinity`, `sysinfo` | credentials, process and thread identity, `available_parallelism`, the memory check of `Region::new` |
/// | `rt_sigaction`, `rt_sigprocmask`, `rt_sigreturn`, `sigaltstack` | the SIGBUS guard's handler and the stack-overflow handler |
/// | `exit`, `exit_group`, `restart_syscall` | leaving, and restarting interrupted calls |
/// | with [`Sandbox::allow_threads`]: `clone` (with `CLONE_THREAD` only), `clone3` (answered `ENOSYS`, so the C library falls back to `clone`, whose flags can be checked), `set_robust_list`, `rseq`, `prctl` (`PR_SET_NAME`, `PR_GET_NAME` only) | threads, never processes |
///
/// Everything else (among them `socket`, `socketpair`, `openat`, `execve`, `ptrace`,
/// `process_vm_readv`/`writev`, `kill`, `tgkill`, `pidfd_send_signal`, `personality`,
/// `pkey_mprotect`, `io_uring_*`, `bpf`, `unshare`, `mount`) is refused.
/// Without `tgkill`, `abort()` cannot raise `SIGABRT`; glibc then ends the process with a
/// crash instruction, so an aborting worker still dies, by a signal (`SIGSEGV` on x86_64).
/// [`Sandbox::allow_syscalls`] adds more; listing paths adds `openat` and `getdents64`
/// (Landlock then decides what opens), which is why paths need Landlock.
#[derive(Clone, Debug)]
pub struct Sandbox {
    read_only: Vec<PathBuf>,
    read_write: Vec<PathBuf>,
    threads: bool,
    extra_syscalls: Vec<i64>,
    on_violation: Violation,
    min_landlock_abi: u32,
    max_open_files: u64,
    max_address_space: Option<u64>,
    namespaces: Namespaces,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::worker()
    }
}

/// Default `RLIMIT_NOFILE`: the channel, a pidfd, a ring's two memfds, an epoll and an
/// eventfd, and room for the regions of several messages (up to 64 descriptors each).
const DEFAULT_MAX_OPEN_FILES: u64 = 256;

impl Sandbox {
    /// The default worker profile: no filesystem, no network, no new processes, the
    /// allow-list above without threads, `EPERM` on anything else, `RLIMIT_NOFILE` 256,
    /// no core dumps, Landlock best effort, no namespaces.
    pub fn worker() -> Sandbox {
        Sandbox {
            read_only: Vec::new(),
            read_write: Vec::new(),
            threads: false,
            extra_syscalls: Vec::new(),
            on_violation: Violation::Errno,
            min_landlock_abi: 0,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            max_address_space: None,
            namespaces: Namespaces::default(),
        }
    }

    /// Grants reading files and listing directories beneath `path` (Landlock; requires
    /// it). Also allows `openat` in the filter.
    pub fn read_only(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.read_only.push(path.into());
        self
    }

    /// Grants every filesystem right beneath `path` (Landlock; requires it). Also allows
    /// `openat` in the filter.
    pub fn read_write(mut self, path: impl Into<PathBuf>) -> Sandbox {
        self.read_write.push(path.into());
        self
    }

    /// Allows creating threads (`clone` with `CLONE_THREAD`; never a new process). Off by
    /// default; a multi-threaded tokio runtime needs it, a current-thread one does not.
    pub fn allow_threads(mut self, yes: bool) -> Sandbox {
        self.threads = yes;
        self
    }

    /// Adds system calls (numbers, e.g. `libc::SYS_uname`) to the allow-list, without
    /// argument checks: adding one the profile already allows with checks (`mmap`,
    /// `fcntl`...) removes its checks. Landlock still applies (e.g. to `socket` +
    /// `connect` over TCP).
    pub fn allow_syscalls(mut self, syscalls: &[i64]) -> Sandbox {
        self.extra_syscalls.extend_from_slice(syscalls);
        self
    }

    /// What a forbidden system call does (default [`Violation::Errno`]).
    pub fn on_violation(mut self, action: Violation) -> Sandbox {
        self.on_violation = action;
        self
    }

    /// Requires at least this Landlock ABI: 1 for filesystem rules, 4 for TCP, 6 for
    /// scoping of abstract unix sockets and signals. On a weaker kernel, applying fails
    /// with [`Error::SandboxUnavailable`] and nothing is applied. Default 0 (best effort).
    pub fn require_landlock_abi(mut self, abi: u32) -> Sandbox {
        self.min_landlock_abi = abi;
        self
    }

    /// `RLIMIT_NOFILE`, soft and hard (default 256; never raised above the current hard
    /// limit). Descriptors above it cannot be received: a message carrying them is
    /// rejected.
    pub fn max_open_files(mut self, n: u64) -> Sandbox {
        self.max_open_files = n;
        self
    }

    /// `RLIMIT_AS`, soft and hard: the most address space the process may map (regions
    /// included). Default: unchanged.
    pub fn max_address_space(mut self, bytes: u64) -> Sandbox {
        self.max_address_space = Some(bytes);
        self
    }

    /// Moves the process into new namespaces (default none). Required when requested.
    pub fn namespaces(mut self, namespaces: Namespaces) -> Sandbox {
        self.namespaces = namespaces;
        self
    }

    /// Applies the profile to the calling process, for good, and reports what was
    /// enforced. Call it after setup (claiming the channel, connecting rings, starting
    /// the runtime) and before reading untrusted data, and before spawning threads:
    /// Landlock and namespaces apply to the calling thread only (the seccomp filter is
    /// synchronised to every thread).
    ///
    /// In a process started by [`crate::spawn::spawn_sandboxed`] this stacks the full
    /// profile on the spawn-time one, which removes the startup allowance.
    ///
    /// # Errors
    /// [`Error::SandboxUnavailable`] if the kernel cannot enforce what is required
    /// (including namespaces it refuses);
    /// [`Error::SandboxThreads`] if other threads run; [`Error::SandboxSetup`] if a path
    /// cannot be opened or a filter cannot be built (nothing applied in these cases);
    /// [`Error::Io`] if the kernel refuses a step while applying (the steps before it
    /// stay in force).
    pub fn enter(&self) -> Result<Enforcement> {
        let threads = thread_count();
        // Landlock is always applied where the kernel has it.
        if threads > 1 && (landlock_abi() > 0 || self.namespaces != Namespaces::default()) {
            return Err(Error::SandboxThreads { threads });
        }
        let prepared = self.prepare(None)?;
        prepared
            .raw
            .apply(SECCOMP_FILTER_FLAG_TSYNC)
            .map_err(|(op, source)| match (op, source.raw_os_error()) {
                // Unprivileged user namespaces disabled, or too many: nothing applied.
                ("unshare", Some(libc::EPERM | libc::EINVAL | libc::ENOSPC | libc::EUSERS)) => {
                    Error::SandboxUnavailable {
                        layer: "user namespaces",
                        required: 1,
                        available: 0,
                    }
                }
                _ => Error::Io { op, source },
            })?;
        if !self.threads {
            // The background closer of rejected descriptors must not be started now.
            crate::closer::forbid_threads();
        }
        Ok(prepared.report)
    }
}

const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;

/// Threads in this process (1 if `/proc` cannot be read, e.g. already under Landlock: the
/// caller's own earlier sandbox then covers every thread it created since).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_for_every_variant() {
        for threads in [false, true] {
            for startup in [false, true] {
                for paths in [false, true] {
                    let s = Sandbox::worker().allow_threads(threads);
                    let (programs, count) = s.filters(startup, paths).unwrap();
                    assert!(count > 40, "{count}");
                    assert_eq!(programs.len(), if threads || startup { 2 } else { 1 });
                    assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
                }
            }
        }
        // socket, openat and execve are not in the worker's list.
        let rules = Sandbox::worker().allow_list(false, false).unwrap();
        for nr in [
            libc::SYS_socket,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_ptrace,
        ] {
            assert!(!rules.contains_key(&nr), "{nr}");
        }
        let rules = Sandbox::worker()
            .allow_syscalls(&[libc::SYS_uname])
            .allow_list(false, false)
            .unwrap();
        assert!(rules.contains_key(&libc::SYS_uname));
    }

    #[test]
    fn report_reads_as_one_line() {
        let e = Enforcement {
            no_new_privs: true,
            landlock_abi: 6,
            landlock_fs_rights: 0xffff,
            landlock_paths: 0,
            landlock_tcp: true,
            scoped_abstract_unix: true,
            scoped_signals: true,
            seccomp_syscalls: 62,
            on_violation: Violation::Kill,
            startup_allowance: false,
            namespaces: Namespaces::default(),
            max_open_files: 256,
            max_address_space: Some(1 << 30),
        };
        assert_eq!(
            e.to_string(),
            "no_new_privs; Landlock ABI 6: 16 filesystem rights handled, 0 paths granted, \
             TCP bind/connect denied, abstract unix sockets and signals scoped; seccomp: 62 \
             system calls allowed, others kill the process; namespaces: none; rlimits: \
             NOFILE 256, CORE 0, AS 1073741824"
        );
    }

    #[test]
    fn required_abi_above_the_kernel_fails_before_anything_is_applied() {
        let kernel = landlock_abi();
        match Sandbox::worker()
            .require_landlock_abi(kernel + 1)
            .prepare(None)
        {
            Err(Error::SandboxUnavailable {
                layer: "Landlock",
                required,
                available,
            }) => {
                assert_eq!((required, available), (kernel + 1, kernel));
            }
            other => panic!("{:?}", other.map(|p| p.report)),
        }
    }
}
