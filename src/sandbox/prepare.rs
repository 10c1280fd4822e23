//! Building a sandbox for this process or a spawn, and applying it with raw system calls
//! only (async-signal-safe, so that a spawn can apply it between `fork` and `exec`).

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::process::{Resource, Rlimit};
use rustix::thread::UnshareFlags;
use seccompiler::BpfProgram;

use super::startup::StartupPaths;
use super::{landlock_abi, Enforcement, Sandbox};
use crate::error::{Error, Result};

impl Sandbox {
    /// Builds everything (Landlock ruleset descriptor, BPF programs, rlimit values) for
    /// the calling process, or for the program a spawn is about to start.
    pub(crate) fn prepare(&self, startup: Option<&StartupPaths>) -> Result<Prepared> {
        // PR_GET_SECCOMP only reads this thread's seccomp mode; EINVAL means the kernel
        // has no seccomp (under a filter that refuses prctl it is EPERM).
        if rustix::thread::secure_computing_mode() == Err(rustix::io::Errno::INVAL) {
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
            (Resource::Core, 0),
            (Resource::Nofile, report.max_open_files),
        ];
        if let Some(bytes) = self.max_address_space {
            rlimits.push((Resource::As, bytes));
        }

        let user = self.namespaces.user || self.namespaces.net;
        let mut ns_flags = UnshareFlags::empty();
        if user {
            ns_flags |= UnshareFlags::NEWUSER;
        }
        if self.namespaces.net {
            ns_flags |= UnshareFlags::NEWNET;
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
    rlimits: Vec<(Resource, u64)>,
    ns_flags: UnshareFlags,
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
    /// Written to run in a child between `fork` and `exec` (`sys::pre_exec_sandbox` relies
    /// on it): it allocates nothing, takes no lock and makes only async-signal-safe calls
    /// (rustix's raw system calls `prlimit64`, `unshare`, `openat`/`write` and `prctl`, the
    /// raw `syscall`s of `sys::landlock_restrict_self` and `sys::seccomp_set_mode_filter`,
    /// and `close`), reading only memory prepared before `fork`; its error is an
    /// `io::Error` built from `errno` (no allocation).
    pub(crate) fn apply(
        &self,
        seccomp_flags: libc::c_ulong,
    ) -> std::result::Result<(), (&'static str, std::io::Error)> {
        // Namespaces first: if the kernel refuses them, nothing has been applied yet.
        if !self.ns_flags.is_empty() {
            crate::sys::unshare_namespaces(self.ns_flags).map_err(|e| ("unshare", e))?;
            if let Some(maps) = &self.id_maps {
                write_file(maps.setgroups, b"deny")?;
                write_file(maps.uid_map, &maps.uid_line)?;
                write_file(maps.gid_map, &maps.gid_line)?;
            }
        }
        for &(resource, value) in &self.rlimits {
            let lim = Rlimit {
                current: Some(value),
                maximum: Some(value),
            };
            rustix::process::setrlimit(resource, lim).map_err(|e| ("setrlimit", e.into()))?;
        }
        rustix::thread::set_no_new_privs(true)
            .map_err(|e| ("prctl(PR_SET_NO_NEW_PRIVS)", e.into()))?;
        if let Some(fd) = &self.landlock {
            crate::sys::landlock_restrict_self(fd.as_fd())
                .map_err(|e| ("landlock_restrict_self", e))?;
        }
        for program in &self.filters {
            crate::sys::seccomp_set_mode_filter(program, seccomp_flags)
                .map_err(|e| ("seccomp(SECCOMP_SET_MODE_FILTER)", e))?;
        }
        Ok(())
    }
}

/// Writes `data` to the file at `path` with raw calls (async-signal-safe: rustix's
/// `openat` with a `&CStr` and `write` allocate nothing; dropping the descriptor is
/// `close`).
fn write_file(path: &CStr, data: &[u8]) -> std::result::Result<(), (&'static str, std::io::Error)> {
    let fd = rustix::fs::openat(
        rustix::fs::CWD,
        path,
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ("open(/proc/self/*_map)", e.into()))?;
    match rustix::io::write(&fd, data) {
        Ok(n) if n == data.len() => Ok(()),
        // A short write: the kernel takes an id map whole or not at all, so not expected.
        Ok(_) => Err(("write(/proc/self/*_map)", rustix::io::Errno::IO.into())),
        Err(e) => Err(("write(/proc/self/*_map)", e.into())),
    }
}
