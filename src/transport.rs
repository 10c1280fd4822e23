//! Transport: sealpipe messages over a unix `SOCK_SEQPACKET` socket.

use std::cell::RefCell;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    sendmsg, socketpair, sockopt, AddressFamily, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use crate::closer::{self, PeerSocket, Received};
use crate::credentials::PeerCredentials;
use crate::error::{Error, Result};
use crate::in_flight::Ledger;
use crate::policy::Policy;
use crate::region::SealedRegion;
use crate::stats::{ChannelCounters, ChannelStats};
use crate::verify::{verify_or_return, RegionView};
use crate::wire;

/// One end of a sealpipe connection: a unix `SOCK_SEQPACKET` socket that carries messages
/// of sealed regions plus a small payload, in both directions.
///
/// Every call works whether or not the socket is in non-blocking mode (the channel never
/// changes the socket's file status flags, which it may share with other processes), and
/// every blocking call has a `_timeout` and a `try_` variant. A channel is `Send + Sync`;
/// messages sent concurrently from several threads are never interleaved.
///
/// ```
/// # fn main() -> sealpipe::Result<()> {
/// use sealpipe::{Channel, Policy, Region};
/// let (a, b) = Channel::pair()?;
/// let mut region = Region::new(1 << 20)?;
/// region.write_at(0, b"frame 1")?;
/// let region = region.seal()?;
/// a.send(b"meta", &[&region])?;
/// let msg = b.recv(&Policy::immutable())?;
/// assert_eq!(msg.payload(), b"meta");
/// assert_eq!(&msg.regions()[0].as_bytes()?[..7], b"frame 1");
/// # Ok(()) }
/// ```
///
/// # Descriptors whose close blocks
///
/// Closing a descriptor can block: a peer may send a TCP socket that lingers in `close`
/// with unsent data, or a file on a FUSE mount whose daemon never answers. A channel never
/// closes such a descriptor in your thread: anything that is not shared memory (or another
/// kind whose close cannot wait) is handed to a background closer thread, every receive has
/// room for the kernel's maximum of 253 descriptors (so the kernel never drops surplus ones
/// in your thread), and dropping a channel first refuses new descriptors (`SO_PASSRIGHTS`,
/// Linux 6.16+) and takes out what is queued. So every receive keeps its deadline, `try_`
/// calls return at once, and `Drop` does not block, whatever a peer sends. Dropping a
/// channel discards the messages still queued on its socket, as closing the socket would,
/// also for any duplicate of the socket you made. If descriptors pile up at the closer (a
/// peer sends files whose close never completes), receives report
/// [`Error::DisposalBacklog`] instead of taking more.
#[derive(Debug)]
pub struct Channel {
    sock: PeerSocket,
    /// Descriptors sent that the peer may not have read (see `in_flight`).
    in_flight: Mutex<Ledger>,
    /// Who the handshake established the peer to be (`None` for [`Channel::pair`] and
    /// [`Channel::from_fd`]).
    peer: Option<PeerCredentials>,
    /// The peer process's pidfd, where known: waits also end when it exits.
    peer_pidfd: Option<OwnedFd>,
    /// What was received and rejected (see [`Channel::stats`]).
    counters: ChannelCounters,
}

/// A received message: the application payload and the verified, mapped regions.
#[derive(Debug)]
pub struct Message {
    payload: Vec<u8>,
    regions: Vec<RegionView>,
}

impl Message {
    /// The application payload (at most [`Channel::MAX_PAYLOAD`] bytes).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The regions, in the order they were sent.
    pub fn regions(&self) -> &[RegionView] {
        &self.regions
    }

    /// Takes the message apart.
    pub fn into_parts(self) -> (Vec<u8>, Vec<RegionView>) {
        (self.payload, self.regions)
    }
}

/// How long a call may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    Forever,
    Never,
    Until(Instant),
}

impl Wait {
    pub(crate) fn timeout(d: Duration) -> Wait {
        crate::deadline::Deadline::after(d)
            .instant()
            .map_or(Wait::Forever, Wait::Until)
    }
}

impl Channel {
    pub(crate) fn new(
        sock: PeerSocket,
        peer: Option<PeerCredentials>,
        peer_pidfd: Option<OwnedFd>,
    ) -> Channel {
        Channel {
            sock,
            in_flight: Mutex::new(Ledger::new(Channel::DEFAULT_IN_FLIGHT_LIMIT)),
            peer,
            peer_pidfd,
            counters: ChannelCounters::default(),
        }
    }

    /// A connected pair of channels (close-on-exec), for threads of one process.
    ///
    /// A pair makes no handshake: this process created both ends, so there is no one to
    /// authenticate. To hand one end to another process use [`crate::spawn::spawn`], which
    /// authenticates the child; between unrelated processes use [`crate::Listener`] and
    /// [`Channel::connect`].
    ///
    /// # Errors
    /// [`Error::Io`] if `socketpair` fails.
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::io("socketpair", e))?;
        Ok((
            Channel::new(PeerSocket::new(a), None, None),
            Channel::new(PeerSocket::new(b), None, None),
        ))
    }

    /// Wraps a connected unix `SOCK_SEQPACKET` socket.
    ///
    /// # Errors
    /// [`Error::NotSeqpacket`] if `fd` is anything else. The descriptor comes back with the
    /// error, untouched and still open, so the caller can use it otherwise or report it:
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (a, _b) = std::os::unix::net::UnixStream::pair()?; // a stream, not SEQPACKET
    /// let (err, fd) = sealpipe::Channel::from_fd(a.into()).unwrap_err();
    /// assert!(matches!(err, sealpipe::Error::NotSeqpacket));
    /// let a = std::os::unix::net::UnixStream::from(fd); // still ours
    /// # drop(a); Ok(()) }
    /// ```
    ///
    /// Where the input does not matter, `Channel::from_fd(fd).map_err(|(e, _)| e)?`.
    pub fn from_fd(fd: OwnedFd) -> Result<Channel, (Error, OwnedFd)> {
        match (sockopt::socket_domain(&fd), sockopt::socket_type(&fd)) {
            (Ok(AddressFamily::UNIX), Ok(SocketType::SEQPACKET)) => {
                Ok(Channel::new(PeerSocket::new(fd), None, None))
            }
            _ => Err((Error::NotSeqpacket, fd)),
        }
    }

    /// Gives up the socket (and closes the peer's pidfd, if any).
    pub fn into_fd(self) -> OwnedFd {
        self.sock.into_inner()
    }

    /// Gives up the socket, still closed safely when dropped.
    pub(crate) fn into_socket(self) -> PeerSocket {
        self.sock
    }

    /// The peer's kernel-verified identity, as established by the handshake; `None` for
    /// channels made by [`Channel::pair`] or [`Channel::from_fd`].
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.peer
    }

    /// A snapshot of this channel's counters: messages and regions received, bytes mapped,
    /// messages rejected by reason, descriptors of rejected messages closed. Counting costs
    /// a few relaxed atomic increments per message; it is always on.
    ///
    /// ```
    /// # fn main() -> sealpipe::Result<()> {
    /// use sealpipe::{Channel, Policy, Region};
    /// let (a, b) = Channel::pair()?;
    /// a.send(b"hi", &[&Region::new(4096)?.seal()?])?;
    /// b.recv(&Policy::immutable())?;
    /// let stats = b.stats();
    /// assert_eq!((stats.messages_received, stats.bytes_mapped), (1, 4096));
    /// assert_eq!(stats.rejected.total(), 0);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> ChannelStats {
        self.counters.snapshot()
    }

    /// The live counters, for the pool's messages (which bypass `recv`).
    pub(crate) fn counters(&self) -> &ChannelCounters {
        &self.counters
    }

    /// The peer process's pidfd (readable once the peer has exited): set on both ends of a
    /// channel made by [`crate::spawn::spawn`] (the child's, and in the child the parent's),
    /// `None` otherwise. Blocking calls watch it too, so they return [`Error::PeerClosed`]
    /// when the peer exits even if another process still holds its end of the socket.
    pub fn peer_pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.peer_pidfd.as_ref().map(|fd| fd.as_fd())
    }

    /// Sends `payload` and `regions` as one message, waiting for room if the socket buffer
    /// is full or the channel's descriptors in flight are at its limit (see
    /// [`with_in_flight_limit`](Channel::with_in_flight_limit)). The regions stay yours:
    /// send them again, to anyone.
    ///
    /// # Errors
    /// [`Error::PeerClosed`] if the peer is gone (never `SIGPIPE`);
    /// [`Error::TooManyInFlight`] when the kernel's per-user descriptor budget is spent;
    /// [`Error::LimitExceeded`] for more than 253 regions or 64 KiB of payload;
    /// [`Error::MessageTooLarge`], [`Error::Io`].
    pub fn send(&self, payload: &[u8], regions: &[&SealedRegion]) -> Result<()> {
        self.send_with(payload, regions, Wait::Forever)
    }

    /// [`send`](Channel::send), giving up with [`Error::Timeout`] after `timeout`.
    ///
    /// # Errors
    /// As [`send`](Channel::send), plus [`Error::Timeout`].
    pub fn send_timeout(
        &self,
        payload: &[u8],
        regions: &[&SealedRegion],
        timeout: Duration,
    ) -> Result<()> {
        self.send_with(payload, regions, Wait::timeout(timeout))
    }

    /// [`send`](Channel::send) without waiting: [`Error::WouldBlock`] if the socket is full
    /// or the channel's in-flight limit is reached.
    ///
    /// # Errors
    /// As [`send`](Channel::send), plus [`Error::WouldBlock`].
    pub fn try_send(&self, payload: &[u8], regions: &[&SealedRegion]) -> Result<()> {
        self.send_with(payload, regions, Wait::Never)
    }

    /// Receives one message, verifies every region against `policy` and maps it read-only.
    /// Waits until a message arrives or the peer closes.
    ///
    /// A message that fails any check is rejected whole: every descriptor it carried is
    /// closed and a specific error returned; the channel stays usable for the next message.
    ///
    /// # Errors
    /// [`Error::PeerClosed`]; any peer-fault variant (see [`Error::is_peer_fault`]);
    /// [`Error::Map`], [`Error::Io`].
    pub fn recv(&self, policy: &Policy) -> Result<Message> {
        self.recv_with(policy, Wait::Forever)
    }

    /// [`recv`](Channel::recv), giving up with [`Error::Timeout`] after `timeout`.
    ///
    /// # Errors
    /// As [`recv`](Channel::recv), plus [`Error::Timeout`].
    pub fn recv_timeout(&self, policy: &Policy, timeout: Duration) -> Result<Message> {
        self.recv_with(policy, Wait::timeout(timeout))
    }

    /// [`recv`](Channel::recv) without waiting: [`Error::WouldBlock`] if no message is
    /// queued.
    ///
    /// # Errors
    /// As [`recv`](Channel::recv), plus [`Error::WouldBlock`].
    pub fn try_recv(&self, policy: &Policy) -> Result<Message> {
        self.recv_with(policy, Wait::Never)
    }

    /// Most descriptors a channel has in flight by default: sent, not yet read by the
    /// peer. See [`with_in_flight_limit`](Channel::with_in_flight_limit).
    pub const DEFAULT_IN_FLIGHT_LIMIT: usize = 256;

    /// Largest application payload of one message, in bytes (64 KiB; a [`Policy`] may
    /// accept less).
    pub const MAX_PAYLOAD: usize = wire::MAX_PAYLOAD;

    /// Most regions in one message (the kernel's `SCM_MAX_FD`; a [`Policy`] may accept
    /// fewer).
    pub const MAX_REGIONS: usize = wire::MAX_REGIONS;

    /// Sets the most descriptors this channel may have in flight (sent in messages its
    /// peer has not read yet); a send that would exceed it waits (`send`, `send_timeout`:
    /// [`Error::Timeout`]) or fails with [`Error::WouldBlock`] (`try_send`) until the peer
    /// reads. A message always goes out when nothing is in flight, however many regions it
    /// has.
    ///
    /// Why: the kernel limits descriptors in flight per sending **user**
    /// (`RLIMIT_NOFILE` of the sender; root with `CAP_SYS_RESOURCE` is exempt), so without
    /// a bound of its own one peer that stops reading would exhaust it and every channel of
    /// that user would fail with [`Error::TooManyInFlight`]. With per-channel limits whose
    /// sum stays below `RLIMIT_NOFILE`, a stalled peer stalls only its own channel. The
    /// default is [`DEFAULT_IN_FLIGHT_LIMIT`](Channel::DEFAULT_IN_FLIGHT_LIMIT) (256);
    /// `usize::MAX` turns the bound, and its bookkeeping, off.
    ///
    /// The count is kept from `SIOCOUTQ` (bytes of our messages the peer has not read);
    /// see `PROTOCOL.md`, "Descriptors in flight". It costs one `ioctl` per message while
    /// descriptors are in flight (and one more now and then to learn what the peer has
    /// read); messages without regions sent while none are in flight cost nothing.
    pub fn with_in_flight_limit(self, descriptors: usize) -> Channel {
        self.ledger().limit = descriptors;
        self
    }

    /// The limit set by [`with_in_flight_limit`](Channel::with_in_flight_limit).
    pub fn in_flight_limit(&self) -> usize {
        self.ledger().limit
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send_with(&self, payload: &[u8], regions: &[&SealedRegion], wait: Wait) -> Result<()> {
        loop {
            match self.send_once(payload, regions)? {
                Sent::Yes => return Ok(()),
                Sent::SocketFull => self.wait(PollFlags::OUT, wait)?,
                Sent::BudgetSpent => self.wait_for_reader(wait)?,
            }
        }
    }

    /// Sends one message if it can without waiting.
    pub(crate) fn send_once(&self, payload: &[u8], regions: &[&SealedRegion]) -> Result<Sent> {
        let mut header = [0u8; wire::HEADER_LEN + wire::REGION_DESC_LEN * wire::MAX_REGIONS];
        let n = wire::encode(
            &mut header,
            regions.iter().map(|r| r.len() as u64),
            payload.len(),
        )?;
        let fds: Vec<BorrowedFd<'_>> = regions.iter().map(|r| r.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(wire::MAX_REGIONS))];
        let iov = [IoSlice::new(&header[..n]), IoSlice::new(payload)];
        // Held across the sendmsg, so that the growth of SIOCOUTQ is this message's.
        let mut ledger = self.ledger();
        let tracking = ledger.tracking(fds.len());
        let unsent = || crate::sys::unsent_bytes(&*self.sock).unwrap_or(0);
        let before = if tracking {
            match ledger.prepare(fds.len(), unsent) {
                Some(before) => before,
                None => return Ok(Sent::BudgetSpent),
            }
        } else {
            0
        };
        loop {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() {
                control.push(SendAncillaryMessage::ScmRights(&fds));
            }
            match sendmsg(
                &*self.sock,
                &iov,
                &mut control,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            ) {
                Ok(_) => break,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => return Ok(Sent::SocketFull),
                Err(e) => return Err(send_error(e, n + payload.len())),
            }
        }
        if tracking {
            ledger.sent(before, unsent(), fds.len());
        } else {
            ledger.sent_untracked();
        }
        Ok(Sent::Yes)
    }

    /// Waits a little, as `wait` allows, for the peer to read (it gives no readiness event
    /// for that): [`Error::WouldBlock`], [`Error::Timeout`] or [`Error::PeerClosed`] when
    /// the waiting is over.
    fn wait_for_reader(&self, wait: Wait) -> Result<()> {
        let pause = self
            .time_left(wait)?
            .map_or(READER_POLL, |left| left.min(READER_POLL));
        // A peer that closes its end (readable: POLLHUP/POLLRDHUP) ends the pause early;
        // the next send then reports it.
        let mut fds = [PollFd::new(&*self.sock, PollFlags::RDHUP)];
        let _ = poll(&mut fds, Timespec::try_from(pause).ok().as_ref());
        Ok(())
    }

    fn recv_with(&self, policy: &Policy, wait: Wait) -> Result<Message> {
        let mut fds = Received::default();
        let (payload, lens) = match RECV_BUF
            .with(|buf| self.recv_raw(&mut buf.borrow_mut(), policy, wait, &mut fds))
        {
            Ok(r) => r,
            Err(e) => {
                self.counters.disposed(fds.dispose());
                self.counters.failed(&e, self.peer);
                return Err(e);
            }
        };
        // Verify in order; on the first failure the remaining descriptors are disposed of
        // and the views mapped so far are unmapped.
        let mut regions = Vec::with_capacity(lens.len());
        let bytes = lens.iter().fold(0u64, |sum, &len| sum.saturating_add(len));
        let mut fds = fds.take().into_iter();
        for (i, (fd, len)) in fds.by_ref().zip(lens).enumerate() {
            match verify_or_return(fd, len, policy, i) {
                Ok(view) => regions.push(view),
                Err((e, fd)) => {
                    let mut disposed = closer::dispose_all(fds);
                    if closer::dispose(fd) {
                        disposed.background += 1;
                    } else {
                        disposed.inline += 1;
                    }
                    self.counters.disposed(disposed);
                    self.counters.failed(&e, self.peer);
                    return Err(e);
                }
            }
        }
        self.counters.received(regions.len(), bytes);
        Ok(Message { payload, regions })
    }

    /// Receives one datagram and checks its framing; returns payload, descriptors and
    /// declared lengths.
    fn recv_raw(
        &self,
        buf: &mut [u8],
        policy: &Policy,
        wait: Wait,
        fds: &mut Received,
    ) -> Result<(Vec<u8>, Vec<u64>)> {
        let received = self.recv_datagram(buf, &mut fds.0, wait)?;
        let msg = received.msg;
        let header = wire::check_received(received, policy.wire_limits(), || self.hung_up())?;
        let lens: Vec<u64> = (0..header.region_count)
            .map(|i| wire::region_len(msg, i))
            .collect();
        // Before anything is mapped. A region over the per-region limit is left to
        // verification, which names it (`RegionTooLarge`).
        let total = lens.iter().fold(0u64, |sum, &len| sum.saturating_add(len));
        if total > policy.message_len_limit()
            && lens.iter().all(|&len| len <= policy.region_len_limit())
        {
            return Err(Error::PolicyLimit {
                what: "total region bytes",
                got: total,
                max: policy.message_len_limit(),
            });
        }
        Ok((msg[wire::payload_range(&header)].to_vec(), lens))
    }

    /// Waits, as `wait` allows, until the background closer has room for the descriptors a
    /// message may bring (see [`Error::DisposalBacklog`]).
    fn admit(&self, wait: Wait) -> Result<()> {
        loop {
            let pending = match closer::admit() {
                Ok(()) => return Ok(()),
                Err(pending) => pending,
            };
            let pause = match wait {
                Wait::Never => return Err(Error::DisposalBacklog { pending }),
                Wait::Forever => ADMIT_POLL,
                Wait::Until(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::DisposalBacklog { pending });
                    }
                    left.min(ADMIT_POLL)
                }
            };
            std::thread::sleep(pause);
        }
    }

    /// Sends one encoded message (a region pool's, see `crate::pool`) with `fds`, waiting
    /// for room as `wait` allows. The same `sendmsg` rules as [`Channel::send`].
    pub(crate) fn send_encoded(
        &self,
        msg: &[u8],
        fds: &[BorrowedFd<'_>],
        wait: Wait,
    ) -> Result<()> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let iov = [IoSlice::new(msg)];
        loop {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(Error::LimitExceeded {
                    what: "regions",
                    got: fds.len(),
                    max: 1,
                });
            }
            match sendmsg(
                &self.sock,
                &iov,
                &mut control,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => self.wait(PollFlags::OUT, wait)?,
                Err(e) => return Err(send_error(e, msg.len())),
            }
        }
    }

    /// Receives one region pool message into `buf` (at least one byte longer than
    /// [`wire::POOL_MAX_MESSAGE_LEN`]), moving every descriptor that arrived into `fds`
    /// (the caller disposes of them with `closer`), and checks its framing
    /// ([`wire::check_pool_received`]) for the kinds in `accept`.
    pub(crate) fn recv_pool<'b>(
        &self,
        buf: &'b mut [u8],
        fds: &mut Vec<OwnedFd>,
        accept: &[u16],
        wait: Wait,
    ) -> Result<wire::PoolMessage<'b>> {
        let received = self.recv_datagram(buf, fds, wait)?;
        wire::check_pool_received(received, accept, || self.hung_up())
    }

    /// Receives one datagram into `buf` (after [`admit`](Channel::admit)), waiting as `wait`
    /// says, and moves every descriptor that arrived with it into `fds`, whatever happens
    /// next (the caller disposes of them with `closer` if the message is refused). The
    /// framing is the caller's to check ([`wire::check_received`],
    /// [`wire::check_pool_received`]).
    fn recv_datagram<'b>(
        &self,
        buf: &'b mut [u8],
        fds: &mut Vec<OwnedFd>,
        wait: Wait,
    ) -> Result<wire::Received<'b>> {
        self.admit(wait)?;
        // Surplus descriptors (more than the policy allows) fail the framing or policy check
        // and are disposed of.
        let mut reset = false;
        let res = loop {
            match closer::recv_taking_fds(&*self.sock, buf, fds) {
                Ok(r) => break r,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => self.wait(PollFlags::IN, wait)?,
                // A peer that exits with our messages unread in its queue resets the
                // connection. The kernel reports that once, before the queue: read on, so
                // that every message the peer sent before it went is still delivered.
                Err(Errno::CONNRESET) if !reset => reset = true,
                Err(Errno::CONNRESET) => return Err(Error::PeerClosed),
                Err(e) => return Err(Error::io("recvmsg", e)),
            }
        };
        // The kernel reports the datagram's bytes copied, never more than the buffer.
        Ok(wire::Received {
            msg: &buf[..res.bytes.min(buf.len())],
            fds: fds.len(),
            ctrunc: res.flags.contains(ReturnFlags::CTRUNC),
            trunc: res.flags.contains(ReturnFlags::TRUNC),
        })
    }

    /// How long `wait` still allows: `None` for ever, else a non-zero time.
    ///
    /// # Errors
    /// For [`Wait::Never`], [`Error::PeerClosed`] if the peer's pidfd says it exited, else
    /// [`Error::WouldBlock`]; [`Error::Timeout`] once the deadline has passed.
    fn time_left(&self, wait: Wait) -> Result<Option<Duration>> {
        match wait {
            Wait::Never => Err(if self.peer_exited() {
                Error::PeerClosed
            } else {
                Error::WouldBlock
            }),
            Wait::Forever => Ok(None),
            Wait::Until(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(Error::Timeout)
                } else {
                    Ok(Some(left))
                }
            }
        }
    }

    /// Waits until the socket is ready for `events`, honouring `wait`. Fails with
    /// [`Error::PeerClosed`] if the peer's pidfd says it exited and the socket is not ready.
    pub(crate) fn wait(&self, events: PollFlags, wait: Wait) -> Result<()> {
        loop {
            let timeout = self.time_left(wait)?.map(|left| {
                Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                })
            });
            let mut fds = [
                PollFd::new(&*self.sock, events),
                PollFd::new(&*self.sock, events),
            ];
            let n = match &self.peer_pidfd {
                Some(pidfd) => {
                    fds[1] = PollFd::new(pidfd, PollFlags::IN);
                    2
                }
                None => 1,
            };
            match poll(&mut fds[..n], timeout.as_ref()) {
                Ok(0) | Err(Errno::INTR) => {}
                // Readable, writable, hung up or in error: the next syscall says which.
                Ok(_) if !fds[0].revents().is_empty() => return Ok(()),
                // Only the pidfd: the peer process has exited.
                Ok(_) => return Err(Error::PeerClosed),
                Err(e) => return Err(Error::io("poll", e)),
            }
        }
    }

    /// Whether the peer's pidfd (if known) says the peer has exited.
    pub(crate) fn peer_exited(&self) -> bool {
        self.peer_pidfd
            .as_ref()
            .is_some_and(|pidfd| !crate::sys::poll_now(pidfd, PollFlags::IN).is_empty())
    }

    /// Whether the peer has shut down its end (distinguishes EOF from an empty datagram).
    fn hung_up(&self) -> bool {
        crate::sys::peer_hung_up(&*self.sock)
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl std::os::fd::AsRawFd for Channel {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

thread_local! {
    /// Receive buffer, one per thread: one byte longer than the longest valid message so
    /// that an over-long one is detected. Reused to keep `recv` from zeroing 70 KiB per call.
    static RECV_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; wire::MAX_MESSAGE_LEN + 1].into_boxed_slice());
}

/// What one non-waiting send attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The message went out.
    Yes,
    /// The socket's buffer is full: wait for it to be writable.
    SocketFull,
    /// The channel's in-flight budget is spent: wait for the peer to read.
    BudgetSpent,
}

/// How often a send waiting for the peer to read its descriptors looks again.
pub(crate) const READER_POLL: Duration = Duration::from_millis(1);

/// How often a receive that waits for the closer's backlog looks again.
const ADMIT_POLL: Duration = Duration::from_millis(5);

fn send_error(e: Errno, len: usize) -> Error {
    match e {
        Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN => Error::PeerClosed,
        Errno::TOOMANYREFS => Error::TooManyInFlight,
        Errno::MSGSIZE => Error::MessageTooLarge { len },
        e => Error::io("sendmsg", e),
    }
}
