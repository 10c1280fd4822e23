//! Building a sandbox for this process or a spawn, to apply with raw system calls only
//! (`sys::RawSandbox::apply`: async-signal-safe, so that a spawn can apply it between
//! `fork` and `exec`).

use std::os::fd::AsRawFd;

use rustix::process::Resource;
use rustix::thread::UnshareFlags;

use super::startup::StartupPaths;
use super::{landlock_abi, Enforcement, Sandbox};
use crate::error::{Error, Result};
use crate::sys::{IdMaps, RawSandbox};

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
            raw: RawSandbox {
                landlock,
                filters,
                rlimits,
                ns_flags,
                id_maps,
            },
            report,
        })
    }
}

/// A sandbox built and ready to apply, and what it enforces.
pub(crate) struct Prepared {
    /// What `sys` applies with raw system calls only.
    pub(crate) raw: RawSandbox,
    pub(crate) report: Enforcement,
}

impl Prepared {
    /// Moves the descriptors this sandbox holds above `fd`, so that a child's `dup2` onto
    /// a low number cannot replace them.
    pub(crate) fn move_fds_above(&mut self, fd: std::os::fd::RawFd) -> Result<()> {
        if let Some(ruleset) = &mut self.raw.landlock {
            if ruleset.as_raw_fd() <= fd {
                *ruleset = rustix::io::fcntl_dupfd_cloexec(&*ruleset, fd + 1)
                    .map_err(|e| Error::io("fcntl(F_DUPFD_CLOEXEC)", e))?;
            }
        }
        Ok(())
    }
}
