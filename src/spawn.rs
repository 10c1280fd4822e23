//! Handing a channel to a child process on an inherited descriptor.
//!
//! The parent calls [`spawn`] with a [`Command`]; the child calls [`worker_channel`]. Every
//! descriptor sealpipe creates is close-on-exec, and the child's end of the pair is made
//! inheritable only inside the child, between `fork` and `exec`, so no other thread's
//! `spawn` can leak it and the child inherits exactly this one descriptor from sealpipe.
//!
//! Both calls make the handshake (see [`crate::handshake`]) before they return. On a
//! socketpair `SO_PEERCRED` names the pair's creator, so the parent instead requires the
//! child's `HELLO` to carry `SCM_CREDENTIALS` (checked by the kernel) with the pid it
//! spawned; that pid cannot be reused meanwhile, because the parent has not reaped the
//! child. The parent's channel watches the child's pidfd; the child's watches the parent's.
//! The child trusts its inherited descriptor (it comes from its parent) and checks only
//! the protocol.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::{fcntl_setfd, FdFlags};
use rustix::net::sockopt;
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::handshake::{self, PeerCredentials, ServerHandshake};
use crate::sandbox::{Enforcement, Prepared, Sandbox, StartupPaths};
use crate::sys::{self, Unclaimable};
use crate::transport::Channel;

/// The environment variable that tells the child which descriptor holds its channel.
/// For workers written in other languages: the child reads it, then makes the handshake
/// described in `PROTOCOL.md`; Rust workers call [`worker_channel`].
pub const ENV_VAR: &str = "SEALPIPE_FD";

/// The descriptor number the child's channel is placed on (what [`ENV_VAR`] names); for
/// workers written in other languages, as [`ENV_VAR`].
pub const CHILD_FD: RawFd = 3;

/// How long [`spawn`]'s failure path waits for a killed child before it leaves the reaping
/// to a background thread.
pub const REAP_WAIT: Duration = Duration::from_millis(500);

/// Spawns `cmd` with one end of a new channel on descriptor [`CHILD_FD`] (named in
/// [`ENV_VAR`]), makes the handshake with it (the child must call [`worker_channel`]
/// within [`handshake::DEFAULT_TIMEOUT`]) and returns the child and the parent's end.
///
/// The channel's [`Channel::peer_pidfd`] is the child's pidfd (where the kernel has
/// `pidfd_open`), and its [`Channel::peer_credentials`] are the child's.
///
/// # Errors
/// [`Error::Io`] if the pair cannot be created or the process cannot be spawned;
/// [`Error::PeerClosed`] if the child exits before completing the handshake,
/// [`Error::Timeout`] if it does not complete it in time, [`Error::Handshake`] if the
/// handshake fails (e.g. it came from another process). On a handshake failure the child is
/// killed with `SIGKILL` and reaped: here if it exits within [`REAP_WAIT`] (it normally
/// does within milliseconds), otherwise by a background thread, so that a child stuck in
/// an uninterruptible sleep (say, on a hung FUSE mount) cannot hold `spawn` past its
/// deadline. Each such child costs one parked thread until it finally exits.
pub fn spawn(cmd: &mut Command) -> Result<(Child, Channel)> {
    spawn_with(cmd, None)
}

/// [`spawn`], with the child sandboxed before its program starts: everything is built here,
/// before `fork` (the Landlock ruleset, the seccomp programs, the limits), and the child
/// applies it between `fork` and `exec` with raw system calls only. This process is never
/// sandboxed. Returns what the child enforces.
///
/// The spawn-time filter also allows what loading the program needs
/// ([`Enforcement::startup_allowance`]): the worker should call [`Sandbox::enter`] after
/// [`worker_channel`] to drop it. See [`crate::sandbox`].
///
/// # Errors
/// As [`spawn`]; [`Error::SandboxUnavailable`] or [`Error::SandboxSetup`] if the sandbox
/// cannot be built (nothing is spawned); [`Error::Io`] with op `"spawn"` if the child
/// could not apply it (e.g. namespaces refused).
pub fn spawn_sandboxed(
    cmd: &mut Command,
    sandbox: &Sandbox,
) -> Result<(Child, Channel, Enforcement)> {
    let path_var = cmd
        .get_envs()
        .find(|(k, _)| *k == "PATH")
        .and_then(|(_, v)| v);
    let startup = StartupPaths::for_program(cmd.get_program(), path_var)?;
    let mut prepared = sandbox.prepare(Some(&startup))?;
    // The child's channel is dup2'ed onto CHILD_FD before the sandbox is applied.
    prepared.move_fds_above(CHILD_FD)?;
    let report = prepared.report.clone();
    let (child, channel) = spawn_with(cmd, Some(prepared))?;
    Ok((child, channel, report))
}

fn spawn_with(cmd: &mut Command, sandbox: Option<Prepared>) -> Result<(Child, Channel)> {
    let (parent, child_end) = Channel::pair()?;
    let parent = parent.into_socket();
    // No descriptors from the child until its handshake has succeeded (which turns them
    // back on, see `handshake`). The child's end stays open to them: only we send there.
    crate::closer::refuse_descriptors(&parent);
    // Receive the child's SCM_CREDENTIALS with its HELLO; set before the child can send.
    sockopt::set_socket_passcred(&parent, true)
        .map_err(|e| Error::io("setsockopt(SO_PASSCRED)", e))?;
    let child_end: OwnedFd = child_end.into_fd();
    cmd.env(ENV_VAR, CHILD_FD.to_string());
    // `child_end` is open in the child because it lives here until `spawn` has returned,
    // and fork copied it.
    sys::pre_exec_dup_to(cmd, child_end.as_fd(), CHILD_FD);
    if let Some(prepared) = sandbox {
        // Applied in the child after the dup2 above, between fork and exec.
        sys::pre_exec_sandbox(cmd, prepared.raw);
    }
    let mut child = cmd.spawn().map_err(|source| Error::Io {
        op: "spawn",
        source,
    })?;
    drop(child_end);
    // The child is not reaped before we return, so its pid names it (no reuse race).
    let pidfd = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
    match authenticate_child(&parent, &child) {
        Ok(creds) => Ok((child, Channel::new(parent, Some(creds), pidfd))),
        Err(e) => {
            let _ = child.kill();
            reap(child, pidfd);
            Err(e)
        }
    }
}

/// Reaps a killed child: here if it exits within [`REAP_WAIT`], else on a background thread.
fn reap(mut child: Child, pidfd: Option<OwnedFd>) {
    let deadline = Deadline::after(REAP_WAIT);
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return; // reaped (or not ours to reap any more)
        }
        if deadline.passed() {
            break;
        }
        match &pidfd {
            // Readable once the child has exited.
            Some(fd) => {
                let mut fds = [PollFd::new(fd, PollFlags::IN)];
                let _ = poll(&mut fds, deadline.poll_timeout().as_ref());
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    // Still alive after SIGKILL: in an uninterruptible sleep. Wait for it elsewhere.
    let reaper = std::thread::Builder::new()
        .name("sealpipe-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    // If no thread can be started, the child stays a zombie until this process exits.
    drop(reaper);
}

/// The parent's side of a spawned worker's handshake.
fn authenticate_child(parent: &OwnedFd, child: &Child) -> Result<PeerCredentials> {
    #[cfg(feature = "tracing")]
    let _span =
        tracing::info_span!("sealpipe_handshake", side = "parent", child = child.id()).entered();
    crate::stats::traced("handshake", authenticate_child_untraced(parent, child))
}

fn authenticate_child_untraced(parent: &OwnedFd, child: &Child) -> Result<PeerCredentials> {
    let pid = child.id();
    // The child's SO_PEERCRED names this process, which created the pair.
    let mut server = ServerHandshake::new(None, Some(pid), PeerCredentials::own(), None);
    let deadline = Deadline::after(handshake::DEFAULT_TIMEOUT);
    // This also clears SO_PASSCRED once HELLO is in, before ACCEPT is sent.
    server.run(parent, deadline)?;
    let creds = server.hello_credentials().ok_or(Error::Handshake {
        failure: handshake::HandshakeFailure::NotTheSpawnedChild {
            expected: pid,
            got: None,
        },
    })?;
    Ok(creds)
}

/// In a child started by [`spawn`], takes ownership of the inherited channel and makes the
/// handshake with the parent (sending this process's credentials).
///
/// Checks that [`ENV_VAR`] names a descriptor that was inherited (it lacks close-on-exec,
/// unlike every descriptor Rust opens itself) and is a unix `SOCK_SEQPACKET` socket, then
/// marks it close-on-exec so it does not leak further. Succeeds at most once per process.
/// The channel watches the parent's pidfd.
///
/// # Errors
/// [`Error::NoInheritedChannel`] if the variable is missing or invalid, the descriptor is
/// not open or not inherited, or the channel was already claimed; [`Error::NotSeqpacket`];
/// [`Error::Timeout`] if the parent does not complete the handshake within
/// [`handshake::DEFAULT_TIMEOUT`], [`Error::PeerClosed`] if it closes the channel during
/// it, [`Error::Handshake`] if the handshake fails.
pub fn worker_channel() -> Result<Channel> {
    let owned = sys::claim_inherited_fd().map_err(|e| Error::NoInheritedChannel {
        reason: match e {
            Unclaimable::NotSet => "SEALPIPE_FD is not set",
            Unclaimable::NotADescriptor => "SEALPIPE_FD is not a descriptor number of 3 or more",
            Unclaimable::AlreadyClaimed => "the inherited channel was already claimed",
            Unclaimable::NotOpen => "SEALPIPE_FD names a descriptor that is not open",
            Unclaimable::NotInherited => {
                "SEALPIPE_FD names a descriptor this process opened itself"
            }
        },
    })?;
    fcntl_setfd(&owned, FdFlags::CLOEXEC).map_err(|e| Error::io("fcntl(F_SETFD)", e))?;
    let sock = Channel::from_fd(owned).map_err(|(e, _)| e)?.into_fd();
    // On a socketpair SO_PEERCRED names its creator: the parent that spawned us.
    let parent = sockopt::socket_peercred(&sock)
        .map(PeerCredentials::from_ucred)
        .ok();
    let ends = handshake::Ends {
        server: parent.unwrap_or(PeerCredentials {
            pid: 0,
            uid: 0,
            gid: 0,
        }),
        client: PeerCredentials::own(),
    };
    {
        #[cfg(feature = "tracing")]
        let _span = tracing::info_span!("sealpipe_handshake", side = "worker").entered();
        crate::stats::traced(
            "handshake",
            handshake::run_client(
                &sock,
                None,
                true,
                ends,
                Deadline::after(handshake::DEFAULT_TIMEOUT),
            ),
        )?;
    }
    let pidfd = parent
        .and_then(|p| Pid::from_raw(i32::try_from(p.pid).ok()?))
        .and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
    Ok(Channel::new(
        crate::closer::PeerSocket::new(sock),
        parent,
        pidfd,
    ))
}
