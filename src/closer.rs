//! Closing what a peer sent without ever blocking the caller on it.
//!
//! `close` runs the file's release in the calling thread when it drops the last reference,
//! and some files block there: a TCP socket with `SO_LINGER {on, N}` and unsent data sleeps
//! up to N seconds (forever with `INT_MAX`), a file on a FUSE mount waits for its daemon to
//! answer `FLUSH` (possibly never, uninterruptibly), a file on a network filesystem writes
//! back, a terminal drains its output. The kernel also drops descriptors on our behalf, in
//! our thread: the ones that did not fit a receive's control buffer (`MSG_CTRUNC`), the ones
//! of a datagram read without a control buffer, and those still queued on a unix socket
//! whose last reference we close. A peer chooses all of these.
//!
//! The defences, in the order a descriptor meets them:
//!
//! 1. **Refuse descriptors where none are expected** ([`refuse_descriptors`]): sockets in
//!    their handshake (the listening socket, so accepted ones inherit it; a client's socket
//!    before `connect`; the parent's end of a spawned worker's pair) and ring channels after setup
//!    set `SO_PASSRIGHTS` to 0 (Linux 6.16+), so a peer's `sendmsg` with `SCM_RIGHTS` fails
//!    with `EPERM` in the peer and nothing reaches us. On older kernels the option does not
//!    exist (`ENOPROTOOPT`) and the defences below carry the load.
//! 2. **Never let the kernel drop them for us**: every receive has a control buffer for the
//!    kernel's maximum of 253 descriptors, whatever the policy allows (so `MSG_CTRUNC` can
//!    only come from a full descriptor table), and the async ring's signal drain reads with
//!    one too.
//! 3. **Close by kind** ([`dispose`]): a descriptor is classified without asking its
//!    filesystem anything (no `fstat`, which a FUSE daemon answers, and no path lookup,
//!    which a sandbox refuses): `fcntl` flags, seals and `F_GETPIPE_SZ`, and `SO_DOMAIN`.
//!    Shared memory, `O_PATH` descriptors and pipes are closed at once: their release never
//!    waits. A socket first has its lingering disarmed (`SO_LINGER` off, so
//!    the kernel sends what is queued in the background). Everything else, sockets included,
//!    goes to the **closer**: one background thread that closes descriptors in order
//!    (draining a unix socket's queue before closing it, so what is queued there is closed
//!    the same way).
//! 4. **Sockets we own** ([`PeerSocket`]): on drop, `SO_PASSRIGHTS` is turned off, the queue
//!    is drained without waiting and every descriptor in it disposed of as above, then the
//!    socket is closed with nothing left to release. Where `SO_PASSRIGHTS` is unavailable
//!    a peer could queue another datagram between the drain and the close, so the socket
//!    goes to the closer instead.
//!
//! In a sandbox that refuses threads ([`crate::sandbox::Sandbox::enter`] without
//! `allow_threads`) no closer can start: sockets are then closed at once after being
//! disarmed (and drained, for unix sockets), and other descriptors whose close may wait stay
//! open in the queue, counted against the backlog below. Allow threads in a worker that may
//! receive descriptors from a peer it does not trust.
//!
//! **Bounds under a flood.** One closer thread per process, started on first use (again in
//! a forked child). Its queue holds descriptors; a receiving channel takes a message only
//! while fewer than [`MAX_BACKLOG`] descriptors wait there, and fails with
//! [`crate::Error::DisposalBacklog`] (at its deadline, or at once for `try_recv`) otherwise,
//! leaving the message in the socket, charged to its sender. A message brings at most 253
//! descriptors, so the queue holds at most `MAX_BACKLOG + 253 × R` descriptors, where R is
//! the number of threads receiving at that moment; memory is a few bytes per descriptor.
//! Nothing is leaked: a descriptor waits in the queue until its close completes. What stays
//! unbounded in time is a close that never completes (a FUSE daemon that never answers): it
//! holds the closer, the backlog fills, and receives on every channel of the process report
//! `DisposalBacklog` rather than block. Only a peer that runs a FUSE daemon (or a
//! filesystem server) can do that; a process that sees `DisposalBacklog` should stop
//! talking to the peers whose messages were rejected.

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use rustix::fs::{self, OFlags};

use crate::stats::Disposed;
use rustix::io::Errno;
use rustix::net::{
    recvmsg, sockopt, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, RecvMsg,
};

/// Set when this process entered a sandbox that refuses new threads
/// ([`crate::sandbox::Sandbox::enter`] without `allow_threads`): the closer is not started,
/// see [`Closer::push`].
static NO_THREADS: AtomicBool = AtomicBool::new(false);

/// Records that no thread may be started from now on (a sandbox refuses them).
pub(crate) fn forbid_threads() {
    NO_THREADS.store(true, Ordering::Release);
}

/// Descriptors waiting for the closer beyond which channels stop taking messages.
pub(crate) const MAX_BACKLOG: usize = 256;

/// Most datagrams read from a socket before it is closed (the closer's drain, and the
/// fallback drain of [`close_socket`]); more than a unix socket's default send buffer holds.
const MAX_DRAIN: usize = 1024;

/// What a descriptor is, learned without asking its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A sealable file (memfd, tmpfs, hugetlbfs): `F_GET_SEALS` works.
    SharedMemory,
    /// An `O_PATH` descriptor.
    Path,
    /// A pipe or FIFO (`F_GETPIPE_SZ` works).
    Pipe,
    /// A socket of the given family.
    Socket(AddressFamily),
    /// Anything else: a regular file or directory (possibly on FUSE or a network
    /// filesystem), a device, an anonymous inode (eventfd, epoll, pidfd, io_uring, ...).
    Other,
}

impl Kind {
    /// For error messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::SharedMemory => "shared-memory file",
            Kind::Path => "O_PATH descriptor (no access to contents)",
            Kind::Pipe => "pipe",
            Kind::Socket(_) => "socket",
            Kind::Other => {
                "not shared memory: a regular file, directory, device or anonymous inode \
                 (eventfd, epoll, pidfd, ...)"
            }
        }
    }

    /// Whether closing the last reference can wait on something outside this process.
    fn close_may_block(self) -> bool {
        !matches!(self, Kind::SharedMemory | Kind::Path | Kind::Pipe)
    }
}

/// Classifies `fd` with `fcntl` and `getsockopt` only: none of them reaches the file's
/// filesystem (`fstat` would ask a FUSE daemon), and all are allowed in sealpipe's
/// sandbox.
pub(crate) fn kind(fd: BorrowedFd<'_>) -> Kind {
    if matches!(fs::fcntl_getfl(fd), Ok(f) if f.contains(OFlags::PATH)) {
        return Kind::Path;
    }
    if fs::fcntl_get_seals(fd).is_ok() {
        return Kind::SharedMemory;
    }
    if let Ok(family) = sockopt::socket_domain(fd) {
        return Kind::Socket(family);
    }
    if rustix::pipe::fcntl_getpipe_size(fd).is_ok() {
        return Kind::Pipe;
    }
    Kind::Other
}

/// Closes a descriptor a peer sent, without blocking: at once if its release cannot wait,
/// else (lingering disarmed if it is a socket) on the closer.
/// Returns whether it went to the closer.
pub(crate) fn dispose(fd: OwnedFd) -> bool {
    let kind = kind(fd.as_fd());
    if !kind.close_may_block() {
        drop(fd);
        return false;
    }
    if let Kind::Socket(_) = kind {
        // Off: close returns at once and the kernel sends what is queued in the background.
        let _ = sockopt::set_socket_linger(&fd, None);
    }
    closer().push(fd);
    true
}

/// [`dispose`] of each; says how many were closed at once and how many went to the closer.
pub(crate) fn dispose_all(fds: impl IntoIterator<Item = OwnedFd>) -> Disposed {
    let mut d = Disposed::default();
    for fd in fds {
        if dispose(fd) {
            d.background += 1;
        } else {
            d.inline += 1;
        }
    }
    d
}

/// Descriptors a peer sent, disposed of (see [`dispose`]) when dropped.
#[derive(Debug, Default)]
pub(crate) struct Received(pub(crate) Vec<OwnedFd>);

impl Received {
    /// Takes the descriptors out (the caller disposes of them).
    pub(crate) fn take(mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.0)
    }

    /// Disposes of the descriptors now.
    pub(crate) fn dispose(mut self) -> Disposed {
        dispose_all(self.0.drain(..))
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        let _ = dispose_all(self.0.drain(..));
    }
}

/// One `recvmsg` of `sock` into `buf` without waiting (`MSG_DONTWAIT`), moving every
/// descriptor that arrived with it into `fds` (close-on-exec), whatever the result. The
/// control buffer has room for the kernel's maximum whatever the caller expects, so the
/// kernel never drops descriptors in this thread, where their close may block.
pub(crate) fn recv_taking_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> rustix::io::Result<RecvMsg> {
    let mut space =
        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(crate::wire::MAX_REGIONS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let res = recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    );
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(iter) = msg {
            fds.extend(iter);
        }
    }
    res
}

/// Whether a receive may take a message now (fewer than [`MAX_BACKLOG`] descriptors wait
/// for the closer); the current backlog otherwise.
pub(crate) fn admit() -> Result<(), usize> {
    match CLOSER.get() {
        Some(c) => {
            let n = c.backlog.load(Ordering::Acquire);
            if n < MAX_BACKLOG {
                Ok(())
            } else {
                Err(n)
            }
        }
        None => Ok(()),
    }
}

/// Stops `sock` from accepting descriptors (`SO_PASSRIGHTS` off); `false` where the kernel
/// lacks the option (before 6.16) or the socket refuses it.
pub(crate) fn refuse_descriptors(sock: impl AsFd) -> bool {
    crate::sys::set_pass_rights(sock, false).is_ok()
}

/// Lets `sock` accept descriptors again (after a handshake). Errors are ignored: where the
/// option does not exist, it was never turned off.
pub(crate) fn accept_descriptors(sock: impl AsFd) {
    let _ = crate::sys::set_pass_rights(sock, true);
}

/// Closes a unix socket of ours without letting a peer's queued descriptors block us: see
/// the module docs, point 4.
pub(crate) fn close_socket(sock: OwnedFd) {
    let refused = refuse_descriptors(&sock);
    close_socket_with(sock, refused)
}

/// [`close_socket`], given whether `SO_PASSRIGHTS` could be turned off.
fn close_socket_with(sock: OwnedFd, refused: bool) {
    if !refused {
        return closer().push(sock);
    }
    // No descriptor can be queued from here on: what is queued now is all there is.
    match drain(sock.as_fd()) {
        Drained::Empty => drop(sock),
        Drained::Stopped => closer().push(sock),
    }
}

enum Drained {
    /// The queue is empty (or the socket cannot be read: not connected, listening).
    Empty,
    /// [`MAX_DRAIN`] datagrams were read and more may follow.
    Stopped,
}

/// Reads and discards what is queued on a unix socket, without waiting, disposing of every
/// descriptor that comes with it.
///
/// While the peer is connected, `EAGAIN` says the queue is empty. Once it has hung up, a
/// read at the end of stream and a read of a queued zero-length datagram look alike (0
/// bytes), and no socket option tells them apart; the queue can no longer grow then, so
/// reading stops once [`EOF_READS`] reads in a row returned 0 bytes and no descriptors while
/// `SIOCINQ` reported no bytes queued. (A peer that queues more zero-length datagrams than
/// that ahead of a zero-length datagram with descriptors, then hangs up, gets those
/// descriptors released by the close that follows.)
fn drain(sock: BorrowedFd<'_>) -> Drained {
    let mut buf = [0u8; 1];
    let mut empty_reads = 0;
    for _ in 0..MAX_DRAIN {
        let mut fds = Received::default();
        let res = recv_taking_fds(sock, &mut buf, &mut fds.0);
        match res {
            Ok(r) if r.bytes == 0 && fds.0.is_empty() && queued_bytes(sock) == 0 => {
                empty_reads += 1;
                if empty_reads >= EOF_READS {
                    return Drained::Empty;
                }
            }
            Ok(_) => empty_reads = 0,
            Err(Errno::INTR) | Err(Errno::CONNRESET) => {}
            // EAGAIN (empty), or the socket cannot be read at all.
            Err(_) => return Drained::Empty,
        }
    }
    Drained::Stopped
}

/// Consecutive empty reads after which a hung-up socket's queue counts as drained.
const EOF_READS: usize = 16;

/// Bytes queued for reading (`SIOCINQ`; 0 on error).
fn queued_bytes(sock: BorrowedFd<'_>) -> usize {
    rustix::io::ioctl_fionread(sock).map_or(0, |n| n as usize)
}

/// A unix socket we own whose peer may queue descriptors on it: closed by [`close_socket`]
/// when dropped.
#[derive(Debug)]
pub(crate) struct PeerSocket(Option<OwnedFd>);

impl PeerSocket {
    pub(crate) fn new(fd: OwnedFd) -> PeerSocket {
        PeerSocket(Some(fd))
    }

    /// Gives up the socket without closing it.
    pub(crate) fn into_inner(mut self) -> OwnedFd {
        match self.0.take() {
            Some(fd) => fd,
            None => unreachable!("a PeerSocket holds its socket until dropped"),
        }
    }
}

impl Deref for PeerSocket {
    type Target = OwnedFd;
    fn deref(&self) -> &OwnedFd {
        match &self.0 {
            Some(fd) => fd,
            None => unreachable!("a PeerSocket holds its socket until dropped"),
        }
    }
}

impl AsFd for PeerSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        (**self).as_fd()
    }
}

impl AsRawFd for PeerSocket {
    fn as_raw_fd(&self) -> RawFd {
        (**self).as_raw_fd()
    }
}

impl Drop for PeerSocket {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            close_socket(fd);
        }
    }
}

// ----- the closer thread -----

struct Closer {
    state: Mutex<State>,
    work: Condvar,
    /// Descriptors queued or being closed.
    backlog: AtomicUsize,
}

struct State {
    queue: VecDeque<OwnedFd>,
    /// The process whose closer thread is running (0: none yet). A forked child has none.
    running_in: u32,
}

static CLOSER: std::sync::OnceLock<Closer> = std::sync::OnceLock::new();

fn closer() -> &'static Closer {
    CLOSER.get_or_init(|| Closer {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            running_in: 0,
        }),
        work: Condvar::new(),
        backlog: AtomicUsize::new(0),
    })
}

impl Closer {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `fd` and makes sure the thread runs. Never blocks beyond the queue's mutex,
    /// which is only held to push or pop.
    fn push(&'static self, fd: OwnedFd) {
        if NO_THREADS.load(Ordering::Acquire) && self.lock().running_in == 0 {
            // No closer can run here. A socket (its lingering already disarmed; a unix
            // socket drained first) is closed at once; anything else stays open in the
            // queue, counted against the backlog, so that receives report
            // `DisposalBacklog` once it is full rather than block.
            if let Ok(family) = sockopt::socket_domain(&fd) {
                if family == AddressFamily::UNIX {
                    let _ = drain(fd.as_fd());
                }
                return drop(fd);
            }
            self.backlog.fetch_add(1, Ordering::AcqRel);
            self.lock().queue.push_back(fd);
            return;
        }
        self.backlog.fetch_add(1, Ordering::AcqRel);
        let mut state = self.lock();
        state.queue.push_back(fd);
        let me = rustix::process::getpid().as_raw_nonzero().get() as u32;
        if state.running_in != me {
            // If the thread cannot be started (no memory, thread limit), the descriptor
            // waits in the queue and the next push tries again; receives stop at the
            // backlog limit meanwhile.
            let started = std::thread::Builder::new()
                .name("sealpipe-closer".into())
                .stack_size(64 * 1024)
                .spawn(move || self.run());
            if started.is_ok() {
                state.running_in = me;
            }
        }
        drop(state);
        self.work.notify_one();
    }

    fn run(&self) {
        loop {
            let fd = {
                let mut state = self.lock();
                loop {
                    match state.queue.pop_front() {
                        Some(fd) => break fd,
                        None => state = self.work.wait(state).unwrap_or_else(|e| e.into_inner()),
                    }
                }
            };
            if matches!(sockopt::socket_domain(&fd), Ok(AddressFamily::UNIX)) {
                // Whatever is queued on it would be released by its close, in this thread:
                // take it out first, so each descriptor is disposed of on its own merits.
                let _ = drain(fd.as_fd());
            }
            drop(fd);
            self.backlog.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_told_apart_without_fstat() {
        let memfd = fs::memfd_create("k", fs::MemfdFlags::CLOEXEC).unwrap();
        assert_eq!(kind(memfd.as_fd()), Kind::SharedMemory);
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(kind(r.as_fd()), Kind::Pipe);
        let ev = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        assert_eq!(kind(ev.as_fd()), Kind::Other);
        let (a, _b) = crate::Channel::pair().unwrap();
        assert_eq!(kind(a.as_fd()), Kind::Socket(AddressFamily::UNIX));
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(kind(f.as_fd()), Kind::Other);
        let p = fs::open(
            "/proc/self/exe",
            OFlags::PATH | OFlags::CLOEXEC,
            fs::Mode::empty(),
        )
        .unwrap();
        assert_eq!(kind(p.as_fd()), Kind::Path);
    }

    /// A TCP socket whose close would linger 5 s, and the accepting end (keep it open).
    fn lingering_socket() -> (OwnedFd, std::net::TcpStream) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        sockopt::set_socket_recv_buffer_size(&listener, 4096).unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        sockopt::set_socket_send_buffer_size(&client, 4096).unwrap();
        sockopt::set_socket_linger(&client, Some(std::time::Duration::from_secs(5))).unwrap();
        client.set_nonblocking(true).unwrap();
        while client.write(&[0u8; 4096]).is_ok() {}
        (OwnedFd::from(client), server)
    }

    /// Queues `fd` on `to` in a 0-byte datagram (the hardest kind to drain).
    fn queue(from: &crate::Channel, fd: OwnedFd) {
        let fds = [fd.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(from, &[], &mut control, rustix::net::SendFlags::NOSIGNAL).unwrap();
    }

    #[test]
    fn closing_a_socket_with_lingering_sockets_queued_does_not_block() {
        // Both paths: with SO_PASSRIGHTS (drain here, then close) and without (the
        // closer drains and closes), and with the peer gone or still there.
        for (refused, peer_gone) in [(true, false), (true, true), (false, false), (false, true)] {
            let (a, b) = crate::Channel::pair().unwrap();
            let (sock, _server) = lingering_socket();
            queue(&a, sock);
            if peer_gone {
                drop(a);
            }
            let b = b.into_fd();
            if refused {
                assert!(refuse_descriptors(&b), "this kernel has SO_PASSRIGHTS");
            }
            let start = std::time::Instant::now();
            close_socket_with(b, refused);
            let took = start.elapsed();
            assert!(
                took < std::time::Duration::from_millis(500),
                "refused {refused}, peer gone {peer_gone}: {took:?}"
            );
        }
    }

    #[test]
    fn disposed_files_are_closed_by_the_closer() {
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let link = format!("/proc/self/fd/{}", f.as_raw_fd());
        let target = std::fs::read_link(&link).unwrap();
        dispose(OwnedFd::from(f));
        // Another test may reuse the number meanwhile: wait until it names something else.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_link(&link).ok().as_ref() == Some(&target)
            && std::time::Instant::now() < end
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_ne!(std::fs::read_link(&link).ok(), Some(target));
        assert!(admit().is_ok());
    }
}
