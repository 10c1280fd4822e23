//! Building a sandbox for this process or a spawn, and applying it with raw system calls
//! only (async-signal-safe, so that a spawn can apply it between `fork` and `exec`).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};

use seccompiler::BpfProgram;

use super::startup::StartupPaths;
use super::{landlock_abi, Enforcement, Sandbox};
use crate::error::{Error, Result};

impl Sandbox {
    /// Builds everything (Landlock ruleset descriptor, BPF programs, rlimit values) for
    /// the calling process, or for the program a spawn is about to start.
    pub(crate) fn prepare(&self, startup: Option<&StartupPaths>) -> Result<Prepared> {
        // SAFETY: PR_GET_SECCOMP only reads this thread's seccomp mode; EINVAL means the
        // kernel has no seccomp (under a filter that refuses prctl it is EPERM).
        if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
        {
            return Err(Error::SandboxUnavailable {
                layer: "seccomp",
                required: 1,
                available: 0,
            });
        }
        let kernel_abi = landlock_abi();
        if kernel_abi < self.min_landlock_abi {
            return Err(Error::SandboxUnavailable {
                layer: "Landlock",
                required: self.min_landlock_abi,
                available: kernel_abi,
            });
        }
        let paths_listed = !self.read_only.is_empty() || !self.read_write.is_empty();
        if paths_listed && kernel_abi == 0 {
            // Allowing openat without Landlock would open the whole filesystem.
            return Err(Error::SandboxUnavailable {
                layer: "Landlock (needed to grant paths)",
                required: 1,
                available: 0,
            });
        }
        let mut report = Enforcement {
            no_new_privs: true,
            landlock_abi: 0,
            landlock_fs_rights: 0,
            landlock_paths: 0,
            landlock_tcp: false,
            scoped_abstract_unix: false,
            scoped_signals: false,
            seccomp_syscalls: 0,
            on_violation: self.on_violation,
            startup_allowance: startup.is_some(),
            namespaces: self.namespaces,
            max_open_files: 0,
            max_address_space: self.max_address_space,
        };
        let landlock = if kernel_abi > 0 {
            Some(self.landlock_ruleset(kernel_abi, startup, &mut report)?)
        } else {
            None
        };
        let (filters, count) = self.filters(startup.is_some(), paths_listed)?;
        report.seccomp_syscalls = count;

        let hard_nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .maximum
            .unwrap_or(u64::MAX);
        report.max_open_files = self.max_open_files.min(hard_nofile);
        let mut rlimits = vec![
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_NOFILE, report.max_open_files),
        ];
        if let Some(bytes) = self.max_address_space {
            rlimits.push((libc::RLIMIT_AS, bytes));
        }

        let user = self.namespaces.user || self.namespaces.net;
        let mut ns_flags = 0;
        if user {
            ns_flags |= libc::CLONE_NEWUSER;
        }
        if self.namespaces.net {
            ns_flags |= libc::CLONE_NEWNET;
        }
        report.namespaces.user = user;
        let id_maps = if user {
            let uid = rustix::process::getuid().as_raw();
            let gid = rustix::process::getgid().as_raw();
            Some(IdMaps {
                setgroups: c"/proc/self/setgroups",
                uid_map: c"/proc/self/uid_map",
                gid_map: c"/proc/self/gid_map",
                uid_line: format!("{uid} {uid} 1\n").into_bytes(),
                gid_line: format!("{gid} {gid} 1\n").into_bytes(),
            })
        } else {
            None
        };
        Ok(Prepared {
            landlock,
            filters,
            rlimits,
            ns_flags,
            id_maps,
            report,
        })
    }
}

struct IdMaps {
    setgroups: &'static CStr,
    uid_map: &'static CStr,
    gid_map: &'static CStr,
    uid_line: Vec<u8>,
    gid_line: Vec<u8>,
}

/// A sandbox built and ready to apply with raw system calls only.
pub(crate) struct Prepared {
    landlock: Option<OwnedFd>,
    filters: Vec<BpfProgram>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    ns_flags: libc::c_int,
    id_maps: Option<IdMaps>,
    pub(crate) report: Enforcement,
}

impl Prepared {
    /// Moves the descriptors this sandbox holds above `fd`, so that a child's `dup2` onto
    /// a low number cannot replace them.
    pub(crate) fn move_fds_above(&mut self, fd: std::os::fd::RawFd) -> Result<()> {
        if let Some(ruleset) = &mut self.landlock {
            if ruleset.as_raw_fd() <= fd {
                *ruleset = rustix::io::fcntl_dupfd_cloexec(&*ruleset, fd + 1)
                    .map_err(|e| Error::io("fcntl(F_DUPFD_CLOEXEC)", e))?;
            }
        }
        Ok(())
    }

    /// Applies the sandbox to the calling thread (and, with TSYNC, the seccomp filter to
    /// every thread). On failure, says which step failed.
    ///
    /// Written to run in a child between `fork` and `exec`: it allocates nothing, takes no
    /// lock and makes only async-signal-safe calls (`setrlimit`, `unshare`,
    /// `open`/`write`/`close`, `prctl` and raw `syscall`s), reading only memory prepared
    /// before `fork`; its error is an `io::Error` built from `errno` (no allocation).
    pub(crate) fn apply(
        &self,
        seccomp_flags: libc::c_ulong,
    ) -> std::result::Result<(), (&'static str, std::io::Error)> {
        let os_err = |op: &'static str| (op, std::io::Error::last_os_error());
        // Namespaces first: if the kernel refuses them, nothing has been applied yet.
        if self.ns_flags != 0 {
            // SAFETY: unshare takes flags only.
            if unsafe { libc::unshare(self.ns_flags) } != 0 {
                return Err(os_err("unshare"));
            }
            if let Some(maps) = &self.id_maps {
                write_file(maps.setgroups, b"deny")?;
                write_file(maps.uid_map, &maps.uid_line)?;
                write_file(maps.gid_map, &maps.gid_line)?;
            }
        }
        for &(resource, value) in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: `lim` is a valid rlimit on this stack.
            if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                return Err(os_err("setrlimit"));
            }
        }
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes integers only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(os_err("prctl(PR_SET_NO_NEW_PRIVS)"));
        }
        if let Some(fd) = &self.landlock {
            // SAFETY: `fd` is an open Landlock ruleset descriptor owned by `self`.
            if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) } != 0
            {
                return Err(os_err("landlock_restrict_self"));
            }
        }
        for program in &self.filters {
            let prog = libc::sock_fprog {
                len: program.len() as libc::c_ushort,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: seccompiler's `sock_filter` has the kernel's layout (repr(C): u16,
            // u8, u8, u32), `prog` points at `program`, which lives in `self` for the
            // call, and the kernel copies it before returning.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    seccomp_flags,
                    &prog as *const libc::sock_fprog,
                )
            };
            if r != 0 {
                return Err(os_err("seccomp(SECCOMP_SET_MODE_FILTER)"));
            }
        }
        Ok(())
    }
}

/// Writes `data` to the file at `path` with raw calls (async-signal-safe).
fn write_file(path: &CStr, data: &[u8]) -> std::result::Result<(), (&'static str, std::io::Error)> {
    // SAFETY: `path` is NUL-terminated; `data` is a valid buffer of its length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(("open(/proc/self/*_map)", std::io::Error::last_os_error()));
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(("write(/proc/self/*_map)", err));
        }
    }
    Ok(())
}
