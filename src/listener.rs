//! Named endpoints, the accepting side: a [`Listener`] bound to a filesystem path (the
//! connecting side is [`Channel::connect`], in `connect.rs`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{epoll, Timespec};
use rustix::fs::{self, inotify, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::net::{
    accept_with, bind, connect, listen, socket_with, sockopt, AddressFamily, SocketAddrUnix,
    SocketFlags, SocketType,
};

use crate::closer::{self, PeerSocket};
use crate::credentials::PeerCredentials;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::handshake::{check_identity, HandshakeConfig, ServerHandshake};
use crate::stats::{ListenerCounters, ListenerStats};
use crate::transport::Channel;

const TOKEN_LISTENER: u64 = u64::MAX;
const TOKEN_INOTIFY: u64 = u64::MAX - 1;
const BACKLOG: i32 = 128;

/// The path of endpoint `name` in this user's runtime directory, creating the directory if
/// needed: `$XDG_RUNTIME_DIR/sealpipe/NAME` when `XDG_RUNTIME_DIR` is set to an absolute
/// path, else `TMPDIR/sealpipe-UID/NAME`.
///
/// The directory is created with mode 0700 and then opened without following symbolic
/// links; it must belong to this user and be closed to everyone else.
///
/// # Errors
/// [`Error::UnsafePath`] if `name` is not a plain file name (1..=64 bytes, no `/`, not `.`
/// or `..`), or the directory is a symbolic link, not a directory, another user's, or open
/// to other users (someone may have created it first in a shared temp dir: remove it);
/// [`Error::Io`].
pub fn default_path(name: &str) -> Result<PathBuf> {
    if name.is_empty()
        || name.len() > 64
        || name.contains('/')
        || name.contains('\0')
        || name == "."
        || name == ".."
    {
        return Err(Error::UnsafePath {
            path: PathBuf::from(name),
            reason: "an endpoint name must be a plain file name of 1 to 64 bytes",
        });
    }
    Ok(runtime_dir()?.join(name))
}

fn runtime_dir() -> Result<PathBuf> {
    let euid = rustix::process::geteuid().as_raw();
    let (base, name) = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() => (PathBuf::from(d), "sealpipe".to_owned()),
        _ => (std::env::temp_dir(), format!("sealpipe-{euid}")),
    };
    let dir = base.join(&name);
    let unsafe_dir = |reason| Error::UnsafePath {
        path: dir.clone(),
        reason,
    };
    let base_fd = fs::openat(
        CWD,
        &base,
        OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open runtime directory", e))?;
    match fs::mkdirat(&base_fd, name.as_str(), Mode::RWXU) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(Error::io("mkdir runtime directory", e)),
    }
    let dir_fd = fs::openat(
        &base_fd,
        name.as_str(),
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => unsafe_dir("not a directory (or a symbolic link)"),
        e => Error::io("open runtime directory", e),
    })?;
    let st = fs::fstat(&dir_fd).map_err(|e| Error::io("fstat", e))?;
    if st.st_uid != euid {
        return Err(unsafe_dir("the directory belongs to another user"));
    }
    if st.st_mode & 0o077 != 0 {
        return Err(unsafe_dir(
            "the directory is open to other users (not mode 0700)",
        ));
    }
    Ok(dir)
}

/// A connection still in its handshake.
struct Pending {
    sock: PeerSocket,
    peer: PeerCredentials,
    deadline: Deadline,
    handshake: ServerHandshake,
}

/// A named endpoint that many clients connect to, each connection becoming a [`Channel`]
/// of its own once its handshake succeeds.
///
/// # Model
///
/// A listener is a small event loop of its own: an epoll instance holding the listening
/// socket, an inotify watch on the socket's directory, and every connection that is still
/// in its handshake. Each call to [`Listener::accept`] waits on that epoll, accepts whatever
/// connections are queued (checking each peer's `SO_PEERCRED` against the policy at once),
/// advances every handshake that has a message by one non-blocking step, and returns the
/// first connection whose handshake completes. Every handshake has its own deadline
/// ([`HandshakeConfig::timeout`]), so a client that connects and then says nothing
/// (slowloris) costs one slot until its deadline, never anyone else's time. At most
/// [`Listener::MAX_PENDING`] handshakes run at once; beyond that, new connections wait in
/// the kernel's backlog.
///
/// A named connection's channel detects a dead peer by socket EOF (`recv`) and `EPIPE`
/// (`send`). It does not watch a pidfd: `SO_PEERCRED` names the process that called
/// `connect` or `listen`, which need not be the one holding the socket now (a server that
/// listens and then daemonizes, a client that connects and then forks), so its exit would
/// end waits on a live connection. [`Channel::peer_credentials`] gives the pid for callers
/// who know their peer's process structure.
///
/// Errors from `accept` that concern one connection ([`Error::Handshake`],
/// [`Error::Timeout`], [`Error::PeerClosed`]) leave the listener serving; call `accept`
/// again. The listener's descriptor ([`AsFd`]) is the epoll
/// instance: it is readable whenever `accept` has work, so it fits the caller's own event
/// loop (call [`Listener::try_accept`] when it is readable, and at
/// [`Listener::next_deadline`] at the latest).
///
/// # Paths
///
/// [`Listener::bind`] refuses a path that holds a symbolic link, something other than a
/// socket, or a socket of another user; removes a stale socket of ours (nobody listening);
/// and refuses one where a listener is live. The socket is created with mode 0600 and
/// removed again on drop (if it is still ours). [`default_path`] puts endpoints in a
/// per-user directory (mode 0700, owner checked, opened without following symbolic links).
///
/// ```no_run
/// # fn main() -> sealpipe::Result<()> {
/// use sealpipe::{default_path, Channel, HandshakeConfig, Listener};
/// let config = HandshakeConfig::new();
/// let mut listener = Listener::bind(default_path("frames")?, &config)?;
/// // another process:
/// let client = Channel::connect(default_path("frames")?, &config)?;
/// let server_end = listener.accept()?;
/// # Ok(()) }
/// ```
pub struct Listener {
    /// The listening socket, with `SO_PASSRIGHTS` off (inherited by accepted sockets).
    sock: PeerSocket,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file we created.
    id: (u64, u64),
    /// This process as it was when it called `listen`: what clients' `SO_PEERCRED` reports.
    own: PeerCredentials,
    config: HandshakeConfig,
    epoll: OwnedFd,
    inotify: Option<OwnedFd>,
    pending: Vec<Pending>,
    /// Whether the listening socket is registered for readiness (not while `pending` is full).
    accepting: bool,
    /// Whether the loss of the path has been reported.
    lost: bool,
    /// Handshakes accepted and refused (see [`Listener::stats`]).
    counters: ListenerCounters,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("path", &self.path)
            .field("config", &self.config)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Most handshakes in progress at once.
    pub const MAX_PENDING: usize = 128;

    /// Binds a listener at `path` (see [Paths](Listener#paths) for the checks made).
    ///
    /// # Errors
    /// [`Error::UnsafePath`] (symlink, not a socket, another user's socket, path too long);
    /// [`Error::AddressInUse`] if a listener is live there; [`Error::Io`].
    pub fn bind(path: impl AsRef<Path>, config: &HandshakeConfig) -> Result<Listener> {
        let path = path.as_ref().to_path_buf();
        let epoll =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| Error::io("epoll_create", e))?;
        let inotify = watch_dir(&path, &epoll);
        let own = PeerCredentials::own();
        let (sock, id) = bind_socket(&path)?;
        // From here on, Drop removes the socket file.
        let mut listener = Listener {
            sock: PeerSocket::new(sock),
            path,
            id,
            own,
            config: config.clone(),
            epoll,
            inotify,
            pending: Vec::new(),
            accepting: true,
            lost: false,
            counters: ListenerCounters::default(),
        };
        epoll::add(
            &listener.epoll,
            &listener.sock,
            epoll::EventData::new_u64(TOKEN_LISTENER),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Error::io("epoll_ctl", e))?;
        listener.accepting = true;
        Ok(listener)
    }

    /// The path this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A snapshot of this listener's counters: handshakes accepted, refused by reason
    /// ([`crate::RejectReason`]), and abandoned by the client.
    pub fn stats(&self) -> ListenerStats {
        self.counters.stats
    }

    /// Waits for the next connection whose handshake succeeds.
    ///
    /// # Errors
    /// Errors about one connection leave the listener serving (call `accept` again):
    /// [`Error::Handshake`] when it fails its handshake (refused by the policy, wrong
    /// secret), [`Error::Timeout`] when its handshake did not complete within the
    /// configured timeout, [`Error::PeerClosed`] when the client closed during it. [`Error::PathLost`]
    /// (once) when the socket file at the path was deleted, renamed or replaced:
    /// connections in progress are still served, and so are clients that connect to the
    /// file's new name if it was renamed; clients using the path reach nobody (deleted) or
    /// whoever bound a socket there since (see [`rebind`](Listener::rebind)).
    /// [`Error::Io`] (e.g. `EMFILE`).
    pub fn accept(&mut self) -> Result<Channel> {
        self.accept_until(Some(Deadline::NEVER))
    }

    /// [`accept`](Listener::accept), giving up with [`Error::Timeout`] after `timeout`.
    ///
    /// # Errors
    /// As [`accept`](Listener::accept), plus [`Error::Timeout`].
    pub fn accept_timeout(&mut self, timeout: Duration) -> Result<Channel> {
        self.accept_until(Some(Deadline::after(timeout)))
    }

    /// Does whatever work is ready without waiting: [`Error::WouldBlock`] if no handshake
    /// completed.
    ///
    /// # Errors
    /// As [`accept`](Listener::accept), plus [`Error::WouldBlock`].
    pub fn try_accept(&mut self) -> Result<Channel> {
        self.accept_until(None)
    }

    /// When the earliest handshake in progress times out (an event loop must call
    /// [`try_accept`](Listener::try_accept) by then); `None` if none is in progress.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_handshake_deadline().instant()
    }

    fn next_handshake_deadline(&self) -> Deadline {
        self.pending
            .iter()
            .fold(Deadline::NEVER, |d, p| d.min(p.deadline))
    }

    /// Binds a new socket at the path after it was lost ([`Error::PathLost`]); the same
    /// checks as [`bind`](Listener::bind) apply. Connections in progress and channels
    /// already accepted are unaffected; the old socket (perhaps still reachable under a
    /// new name) stops accepting.
    ///
    /// If someone else holds the path, `rebind` never takes it from them: a live socket
    /// there (any process's, including a relay that renamed ours away and bound its own)
    /// gives [`Error::AddressInUse`]; a socket of another user, a symbolic link or another
    /// kind of file gives [`Error::UnsafePath`]. A socket of this user that nobody listens
    /// on any more is removed and replaced. What holds the path can only reach clients that
    /// connect to it: with a [`crate::Secret`], a relay's handshakes fail on both sides
    /// (PROTOCOL.md, *Binding*), so it can deny service but not read or forge messages;
    /// without a secret it is an ordinary peer of the same user. To recover, remove what
    /// holds the path (the directory is this user's, see [`default_path`]) and call
    /// `rebind` again, or bind another path.
    ///
    /// # Errors
    /// As [`bind`](Listener::bind).
    pub fn rebind(&mut self) -> Result<()> {
        let own = PeerCredentials::own();
        let (sock, id) = bind_socket(&self.path)?;
        let _ = epoll::delete(&self.epoll, &self.sock);
        let flags = if self.accepting {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        // Swap first, so that Drop removes the new socket file even if registering fails.
        self.sock = PeerSocket::new(sock);
        self.id = id;
        self.own = own;
        self.lost = false;
        if let Some(old) = self.inotify.take() {
            let _ = epoll::delete(&self.epoll, &old);
        }
        self.inotify = watch_dir(&self.path, &self.epoll);
        epoll::add(
            &self.epoll,
            &self.sock,
            epoll::EventData::new_u64(TOKEN_LISTENER),
            flags,
        )
        .map_err(|e| Error::io("epoll_ctl", e))
    }

    /// `wait`: `None` = do not wait; `Some(deadline)` = until then.
    fn accept_until(&mut self, wait: Option<Deadline>) -> Result<Channel> {
        self.check_path()?;
        let mut events: Vec<epoll::Event> = Vec::with_capacity(32);
        loop {
            if let Some(i) = self.pending.iter().position(|p| p.deadline.passed()) {
                let p = self.remove_pending(i);
                let e = Error::Timeout;
                self.counters.failed(&e, Some(p.peer));
                return Err(e);
            }
            // Sleep until the caller's deadline or the first handshake deadline.
            let timeout = match wait {
                None => Some(Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }),
                Some(d) => d.min(self.next_handshake_deadline()).poll_timeout(),
            };
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(Error::io("epoll_wait", e)),
            }
            for ev in &events {
                if let Some(result) = self.handle(ev.data.u64())? {
                    return Ok(result);
                }
            }
            if events.is_empty() {
                match wait {
                    None => return Err(Error::WouldBlock),
                    Some(d) if d.passed() => return Err(Error::Timeout),
                    _ => {}
                }
            }
        }
    }

    /// Handles one readiness event; `Some` when a handshake completed.
    fn handle(&mut self, token: u64) -> Result<Option<Channel>> {
        match token {
            TOKEN_LISTENER => {
                self.accept_queued()?;
                Ok(None)
            }
            TOKEN_INOTIFY => {
                if let Some(ino) = &self.inotify {
                    let mut buf = [0u8; 4096];
                    while matches!(rustix::io::read(ino, &mut buf), Ok(n) if n > 0) {}
                }
                self.check_path()?;
                Ok(None)
            }
            token => {
                let Some(i) = self
                    .pending
                    .iter()
                    .position(|p| p.sock.as_raw_fd() as u64 == token)
                else {
                    return Ok(None);
                };
                let p = &mut self.pending[i];
                match p.handshake.step(&p.sock) {
                    Ok(false) => Ok(None),
                    Ok(true) => {
                        let p = self.remove_pending(i);
                        self.counters.accepted();
                        #[cfg(feature = "tracing")]
                        tracing::info!(
                            pid = p.peer.pid,
                            uid = p.peer.uid,
                            gid = p.peer.gid,
                            "sealpipe accepted a handshake"
                        );
                        Ok(Some(Channel::new(p.sock, Some(p.peer), None)))
                    }
                    Err(e) => {
                        let p = self.remove_pending(i);
                        self.counters.failed(&e, Some(p.peer));
                        Err(e)
                    }
                }
            }
        }
    }

    /// Accepts every queued connection (up to [`Listener::MAX_PENDING`] in progress).
    fn accept_queued(&mut self) -> Result<()> {
        while self.pending.len() < Self::MAX_PENDING {
            let sock = match accept_with(&self.sock, SocketFlags::CLOEXEC) {
                Ok(s) => PeerSocket::new(s),
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                Err(e) => return Err(Error::io("accept", e)),
            };
            let Ok(cred) = sockopt::socket_peercred(&sock) else {
                continue;
            };
            let peer = PeerCredentials::from_ucred(cred);
            if let Err(e) = check_identity(&sock, &self.config.policy, peer) {
                self.counters.failed(&e, Some(peer));
                return Err(e);
            }
            epoll::add(
                &self.epoll,
                &sock,
                epoll::EventData::new_u64(sock.as_raw_fd() as u64),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            )
            .map_err(|e| Error::io("epoll_ctl", e))?;
            self.pending.push(Pending {
                sock,
                peer,
                deadline: Deadline::after(self.config.timeout),
                handshake: ServerHandshake::new(
                    self.config.secret.clone(),
                    None,
                    self.own,
                    Some(peer),
                ),
            });
        }
        if self.pending.len() >= Self::MAX_PENDING && self.accepting {
            self.set_accepting(false);
        }
        Ok(())
    }

    fn remove_pending(&mut self, i: usize) -> Pending {
        let p = self.pending.swap_remove(i);
        let _ = epoll::delete(&self.epoll, &p.sock);
        if !self.accepting && self.pending.len() < Self::MAX_PENDING {
            self.set_accepting(true);
        }
        p
    }

    fn set_accepting(&mut self, on: bool) {
        let flags = if on {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        if epoll::modify(
            &self.epoll,
            &self.sock,
            epoll::EventData::new_u64(TOKEN_LISTENER),
            flags,
        )
        .is_ok()
        {
            self.accepting = on;
        }
    }

    /// Reports (once) that the path no longer names our socket.
    fn check_path(&mut self) -> Result<()> {
        if self.lost || is_ours(&self.path, self.id) {
            return Ok(());
        }
        self.lost = true;
        Err(Error::PathLost {
            path: self.path.clone(),
        })
    }
}

impl AsFd for Listener {
    /// The listener's epoll instance: readable whenever [`Listener::try_accept`] has work.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl std::os::fd::AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one we created.
        if is_ours(&self.path, self.id) {
            let _ = fs::unlink(&self.path);
        }
    }
}

fn is_ours(path: &Path, id: (u64, u64)) -> bool {
    matches!(fs::lstat(path), Ok(st) if (st.st_dev, st.st_ino) == id
        && FileType::from_raw_mode(st.st_mode) == FileType::Socket)
}

pub(crate) fn unix_addr(path: &Path) -> Result<SocketAddrUnix> {
    SocketAddrUnix::new(path).map_err(|_| Error::UnsafePath {
        path: path.to_path_buf(),
        reason: "too long for a unix socket address (108 bytes)",
    })
}

pub(crate) fn new_socket() -> Result<OwnedFd> {
    socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| Error::io("socket", e))
}

/// Watches the directory of `path` for entries being removed, renamed or created; `None`
/// if inotify is unavailable (the path is then checked at each `accept` call only).
fn watch_dir(path: &Path, epoll: &OwnedFd) -> Option<OwnedFd> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).ok()?;
    inotify::add_watch(
        &ino,
        dir,
        inotify::WatchFlags::DELETE
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::CREATE
            | inotify::WatchFlags::DELETE_SELF
            | inotify::WatchFlags::MOVE_SELF
            | inotify::WatchFlags::ONLYDIR,
    )
    .ok()?;
    epoll::add(
        epoll,
        &ino,
        epoll::EventData::new_u64(TOKEN_INOTIFY),
        epoll::EventFlags::IN,
    )
    .ok()?;
    Some(ino)
}

/// Makes `path` free for a new socket, or refuses.
fn clear_path(path: &Path) -> Result<()> {
    let refuse = |reason| Error::UnsafePath {
        path: path.to_path_buf(),
        reason,
    };
    let st = match fs::lstat(path) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::io("lstat", e)),
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Socket => {}
        FileType::Symlink => return Err(refuse("a symbolic link is at the path")),
        _ => return Err(refuse("a file that is not a socket is at the path")),
    }
    if st.st_uid != rustix::process::geteuid().as_raw() {
        return Err(refuse("the socket at the path belongs to another user"));
    }
    // Our own socket: live (someone accepts) or stale (nobody listens)?
    let probe = new_socket()?;
    match connect(&probe, &unix_addr(path)?) {
        Err(Errno::CONNREFUSED) => {}
        Err(Errno::NOENT) => return Ok(()),
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::PROTOTYPE) => {
            return Err(Error::AddressInUse {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io("connect", e)),
    }
    // Stale. Remove it only if it is still the file we examined.
    if is_ours(path, (st.st_dev, st.st_ino)) {
        match fs::unlink(path) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(Error::io("unlink", e)),
        }
    }
    Ok(())
}

/// Creates, binds (mode 0600) and listens on a socket at `path`.
fn bind_socket(path: &Path) -> Result<(OwnedFd, (u64, u64))> {
    clear_path(path)?;
    let addr = unix_addr(path)?;
    let sock = new_socket()?;
    // Connections inherit this from the listening socket: no client can queue descriptors
    // before its handshake has succeeded (which turns it back on, see `handshake`).
    closer::refuse_descriptors(&sock);
    // The socket file takes its mode from the socket inode (less the umask): set it first,
    // so the file is never open to others, not even for an instant.
    let _ = fs::fchmod(&sock, Mode::RUSR | Mode::WUSR);
    match bind(&sock, &addr) {
        Ok(()) => {}
        Err(Errno::ADDRINUSE) => {
            return Err(Error::AddressInUse {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io("bind", e)),
    }
    let st = fs::lstat(path).map_err(|e| Error::io("lstat", e))?;
    let id = (st.st_dev, st.st_ino);
    let remove = |e| {
        if is_ours(path, id) {
            let _ = fs::unlink(path);
        }
        e
    };
    if st.st_mode & 0o777 != 0o600 {
        fs::chmod(path, Mode::RUSR | Mode::WUSR).map_err(|e| remove(Error::io("chmod", e)))?;
    }
    listen(&sock, BACKLOG).map_err(|e| remove(Error::io("listen", e)))?;
    Ok((sock, id))
}
