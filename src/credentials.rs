//! Who is at the other end of a connection, as the kernel reports it.

use rustix::net::UCred;

/// The kernel-verified identity of the process at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCredentials {
    /// Process id (in this process's pid namespace; 0 if the peer is in none of ours).
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

impl PeerCredentials {
    pub(crate) fn from_ucred(c: UCred) -> Self {
        PeerCredentials {
            pid: u32::try_from(c.pid.as_raw_pid()).unwrap_or(0),
            uid: c.uid.as_raw(),
            gid: c.gid.as_raw(),
        }
    }

    /// This process's pid, effective uid and effective gid: what the kernel records for it
    /// at `connect`, `listen` or `socketpair`.
    pub(crate) fn own() -> Self {
        PeerCredentials {
            pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }
}
