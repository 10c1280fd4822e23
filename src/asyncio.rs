//! tokio integration (feature `tokio`): await messages and ring records without a helper
//! thread and without polling.
//!
//! - [`AsyncChannel`], [`AsyncListener`]: channels, connections and handshakes;
//! - [`AsyncPool`](crate::pool::AsyncPool), [`AsyncPoolReceiver`](crate::pool::AsyncPoolReceiver)
//!   (in [`crate::pool`]): a region pool, awaiting free buffers and received ones;
//! - [`AsyncProducer`](crate::ring::AsyncProducer), [`AsyncConsumer`](crate::ring::AsyncConsumer),
//!   [`AsyncPodProducer`](crate::ring::AsyncPodProducer),
//!   [`AsyncPodConsumer`](crate::ring::AsyncPodConsumer) (in [`crate::ring`]): the ring, each
//!   side awaiting records or room. An async side parks in
//!   the reactor on the ring's channel and asks the peer, through its wait word, to wake it
//!   with one byte on that channel instead of a futex wake; so either side may be blocking,
//!   a busy stream makes no system calls, and a peer that dies wakes the waiter at once.
//!
//! [`AsyncChannel`] registers the channel's socket with the runtime's reactor
//! (`tokio::io::unix::AsyncFd`) and drives the very same non-blocking send and receive code
//! as the blocking API ([`Channel::try_send`], [`Channel::try_recv`]): one implementation of
//! the protocol and its checks, woken by the kernel's readiness events.
//!
//! Timeouts: wrap any call in `tokio::time::timeout`; every call is cancel safe (see each
//! method's `# Cancel safety`).
//!
//! Runtime: the I/O and time drivers must be enabled (`Builder::enable_all`, as
//! `#[tokio::main]` does): connections, handshakes and ring setup keep their deadlines
//! with tokio's timers. Outside a runtime, constructors return [`Error::Io`] rather than
//! panicking; a runtime built without those drivers makes tokio itself panic.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sealpipe::Result<()> {
//! use sealpipe::{asyncio::AsyncChannel, Channel, Policy, Region};
//! let (a, b) = Channel::pair()?;
//! let (a, b) = (AsyncChannel::new(a)?, AsyncChannel::new(b)?);
//! let region = Region::new(4096)?.seal()?;
//! a.send(b"hi", &[&region]).await?;
//! let msg = b.recv(&Policy::immutable()).await?;
//! assert_eq!(msg.payload(), b"hi");
//! # Ok(()) }
//! ```
#![allow(unsafe_code)] // one call: registering the channel's descriptor with the reactor

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::task::Poll;
use std::time::Duration;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;

use crate::connect::Connecting;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::handshake::HandshakeConfig;
use crate::listener::Listener;
use crate::policy::Policy;
use crate::region::SealedRegion;
use crate::stats::{ChannelStats, ListenerStats};
use crate::transport::{Channel, Message, Sent, READER_POLL};

/// A [`Channel`] driven by a tokio runtime.
///
/// For a spawned worker's channel (which knows the peer's pidfd, see
/// [`Channel::peer_pidfd`]), the pidfd is registered too: waits end with
/// [`Error::PeerClosed`] when the peer process exits, even if another process still holds
/// its end of the socket.
#[derive(Debug)]
pub struct AsyncChannel {
    fd: AsyncFd<Channel>,
    peer_exit: Option<AsyncFd<OwnedFd>>,
}

impl AsyncChannel {
    /// Registers `channel` (and its peer's pidfd, if it has one) with the current tokio
    /// runtime.
    ///
    /// # Errors
    /// [`Error::Io`] if called outside a runtime with I/O enabled, or registration fails.
    pub fn new(channel: Channel) -> Result<AsyncChannel> {
        Ok(AsyncChannel {
            peer_exit: watch_exit(&channel)?,
            fd: register(channel)?,
        })
    }

    /// Waits until the socket is ready for `interest` (`Some`), or the peer process has
    /// exited (`None`; the caller then makes one last non-blocking attempt, which delivers
    /// what is still queued or reports [`Error::PeerClosed`]).
    async fn ready(&self, interest: Interest) -> Result<Option<AsyncFdReadyGuard<'_, Channel>>> {
        ready_or_exit(&self.fd, self.peer_exit.as_ref(), interest).await
    }

    /// Connects to a [`Listener`] at `path` and runs the handshake, awaiting each step
    /// (see [`Channel::connect`]). The whole call honours the config's timeout.
    ///
    /// # Errors
    /// As [`Channel::connect`].
    ///
    /// # Cancel safety
    /// A dropped future abandons the connection attempt: the socket is closed and the
    /// listener sees a failed handshake. Nothing else is lost.
    pub async fn connect(path: impl AsRef<Path>, config: &HandshakeConfig) -> Result<AsyncChannel> {
        let path = path.as_ref();
        let connect = AsyncChannel::connect_untraced(path, config);
        #[cfg(feature = "tracing")]
        let connect = tracing::Instrument::instrument(
            connect,
            tracing::info_span!("sealpipe_handshake", side = "client", path = %path.display()),
        );
        crate::stats::traced("handshake", connect.await)
    }

    async fn connect_untraced(path: &Path, config: &HandshakeConfig) -> Result<AsyncChannel> {
        let deadline = Deadline::after(config.timeout);
        let connecting = Connecting::new(path)?;
        while !connecting.try_connect()? {
            if deadline.passed() {
                return Err(Error::Timeout);
            }
            // The listener's backlog is full: unix sockets give no readiness for that.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (sock, peer, mut client) = connecting.start_handshake(config)?;
        let fd = register(sock)?;
        loop {
            let ready = match deadline.instant() {
                Some(at) => tokio::time::timeout_at(at.into(), fd.readable())
                    .await
                    .map_err(|_elapsed| Error::Timeout)?,
                None => fd.readable().await,
            };
            let mut ready = ready.map_err(reactor_error)?;
            let step = ready.try_io(|s| match client.step(s.get_ref()) {
                Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                Ok(true) => Ok(Ok(())),
                Err(e) => Ok(Err(e)),
            });
            match step {
                Ok(result) => {
                    result.map_err(reactor_error)??;
                    break;
                }
                Err(_would_block) => continue,
            }
        }
        AsyncChannel::new(Channel::new(fd.into_inner(), Some(peer), None))
    }

    /// This channel's counters ([`Channel::stats`]).
    pub fn stats(&self) -> ChannelStats {
        self.get_ref().stats()
    }

    /// The blocking channel underneath (for example to [`Channel::try_send`] from
    /// synchronous code).
    pub fn get_ref(&self) -> &Channel {
        self.fd.get_ref()
    }

    /// Deregisters from the runtime and returns the channel.
    pub fn into_inner(self) -> Channel {
        self.fd.into_inner()
    }

    /// Sends one message, waiting for room in the socket. See [`Channel::send`].
    ///
    /// # Errors
    /// As [`Channel::send`].
    ///
    /// # Cancel safety
    /// Cancel safe. A message is handed to the kernel whole, by one non-blocking `sendmsg`
    /// inside a single poll: if the future is dropped, the message was either sent entirely
    /// or not at all. The regions stay yours either way.
    pub async fn send(&self, payload: &[u8], regions: &[&SealedRegion]) -> Result<()> {
        loop {
            let Some(mut ready) = self.ready(Interest::WRITABLE).await? else {
                return self.get_ref().try_send(payload, regions);
            };
            let attempt = ready.try_io(|ch| match ch.get_ref().send_once(payload, regions) {
                Ok(Sent::SocketFull) => Err(io::ErrorKind::WouldBlock.into()),
                other => Ok(other),
            });
            match attempt {
                Ok(Ok(Ok(Sent::Yes))) => return Ok(()),
                // The in-flight budget is spent (see `Channel::with_in_flight_limit`): the
                // socket stays writable, so wait for the peer to read by the clock.
                Ok(Ok(Ok(_))) => tokio::time::sleep(READER_POLL).await,
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(e)) => return Err(reactor_error(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message and verifies its regions. See [`Channel::recv`].
    ///
    /// # Errors
    /// As [`Channel::recv`].
    ///
    /// # Cancel safety
    /// Cancel safe. A message is taken from the socket, verified and returned within a
    /// single poll; if the future is dropped while waiting, no message has been taken and
    /// no descriptor received, so the next `recv` gets it.
    pub async fn recv(&self, policy: &Policy) -> Result<Message> {
        loop {
            let Some(mut ready) = self.ready(Interest::READABLE).await? else {
                return self.get_ref().try_recv(policy);
            };
            match ready.try_io(|ch| would_block(ch.get_ref().try_recv(policy))) {
                Ok(result) => return result.map_err(reactor_error)?,
                Err(_would_block) => continue,
            }
        }
    }
}

/// A [`Listener`] driven by a tokio runtime: handshakes of many clients progress
/// concurrently in the listener's own non-blocking state machine, woken by the kernel.
#[derive(Debug)]
pub struct AsyncListener {
    fd: AsyncFd<Listener>,
}

impl AsyncListener {
    /// Binds a listener at `path` ([`Listener::bind`]) and registers it with the current
    /// tokio runtime.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sealpipe::Result<()> {
    /// use sealpipe::{asyncio::AsyncListener, HandshakeConfig, Policy};
    /// let mut listener =
    ///     AsyncListener::bind(sealpipe::default_path("frames")?, &HandshakeConfig::new())?;
    /// let client = listener.accept().await?;
    /// let msg = client.recv(&Policy::immutable()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Listener::bind`]; [`Error::Io`] outside a runtime with I/O enabled.
    pub fn bind(path: impl AsRef<Path>, config: &HandshakeConfig) -> Result<AsyncListener> {
        AsyncListener::new(Listener::bind(path, config)?)
    }

    /// Registers `listener` with the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Io`] if called outside a runtime with I/O enabled, or registration fails.
    pub fn new(listener: Listener) -> Result<AsyncListener> {
        Ok(AsyncListener {
            fd: register(listener)?,
        })
    }

    /// This listener's counters ([`Listener::stats`]).
    pub fn stats(&self) -> ListenerStats {
        self.fd.get_ref().stats()
    }

    /// The listener underneath (e.g. for [`Listener::rebind`]).
    pub fn get_mut(&mut self) -> &mut Listener {
        self.fd.get_mut()
    }

    /// Deregisters the listener from the runtime and returns it.
    pub fn into_inner(self) -> Listener {
        self.fd.into_inner()
    }

    /// Awaits the next connection whose handshake succeeds. See [`Listener::accept`].
    ///
    /// # Errors
    /// As [`Listener::accept`]: a failed handshake is reported (the listener goes on).
    ///
    /// # Cancel safety
    /// Cancel safe: handshakes in progress live in the listener, not in the future, so a
    /// dropped `accept` loses no connection; the next call picks up where it left off.
    pub async fn accept(&mut self) -> Result<AsyncChannel> {
        loop {
            // Wake for readiness, or when the earliest handshake in progress times out.
            let deadline = self.fd.get_ref().next_deadline();
            let ready = match deadline {
                Some(d) => tokio::time::timeout_at(d.into(), self.fd.readable_mut())
                    .await
                    .ok(),
                None => Some(self.fd.readable_mut().await),
            };
            match ready {
                Some(ready) => {
                    let mut ready = ready.map_err(reactor_error)?;
                    match ready.try_io(|l| would_block(l.get_mut().try_accept())) {
                        Ok(result) => return AsyncChannel::new(result.map_err(reactor_error)??),
                        Err(_would_block) => continue,
                    }
                }
                None => match self.fd.get_mut().try_accept() {
                    Err(Error::WouldBlock) => continue,
                    result => return AsyncChannel::new(result?),
                },
            }
        }
    }
}

/// Registers `inner` with the current runtime's reactor, without panicking outside one.
pub(crate) fn register<T: AsRawFd + OwnsItsFd>(inner: T) -> Result<AsyncFd<T>> {
    // tokio panics without a runtime; a library must not, so check first.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::Io {
            op: "register with the tokio reactor",
            source: io::Error::other("not called from within a tokio runtime"),
        });
    }
    // SAFETY: `T: OwnsItsFd` owns the descriptor `as_raw_fd` returns and gives it up only
    // by value (into_inner/Drop), so it stays open, refers to the same file and is what
    // `as_raw_fd` returns for as long as the `AsyncFd` owns `inner`.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|e| Error::Io {
            op: "register with the tokio reactor",
            source: e.into_parts().1,
        })
}

/// Registers a duplicate of `channel`'s peer pidfd, if it has one (a spawned worker's).
pub(crate) fn watch_exit(channel: &Channel) -> Result<Option<AsyncFd<OwnedFd>>> {
    let Some(pidfd) = channel.peer_pidfd() else {
        return Ok(None);
    };
    let pidfd = rustix::io::fcntl_dupfd_cloexec(pidfd, 0)
        .map_err(|e| Error::io("duplicate the peer's pidfd", e))?;
    Ok(Some(register(pidfd)?))
}

/// Waits until `fd` is ready for `interest` (`Some`), or `peer_exit` (a pidfd) says the
/// peer process has exited (`None`).
pub(crate) async fn ready_or_exit<'a, T: AsRawFd>(
    fd: &'a AsyncFd<T>,
    peer_exit: Option<&AsyncFd<OwnedFd>>,
    interest: Interest,
) -> Result<Option<AsyncFdReadyGuard<'a, T>>> {
    std::future::poll_fn(|cx| {
        let socket = if interest.is_readable() {
            fd.poll_read_ready(cx)
        } else {
            fd.poll_write_ready(cx)
        };
        if let Poll::Ready(r) = socket {
            return Poll::Ready(r.map(Some).map_err(reactor_error));
        }
        match peer_exit.map(|p| p.poll_read_ready(cx)) {
            Some(Poll::Ready(r)) => Poll::Ready(r.map(|_| None).map_err(reactor_error)),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Types whose `as_raw_fd` is a descriptor they own for their whole life.
pub(crate) trait OwnsItsFd {}
impl OwnsItsFd for Channel {}
impl OwnsItsFd for Listener {}
impl OwnsItsFd for OwnedFd {}
impl OwnsItsFd for crate::closer::PeerSocket {}

/// Turns sealpipe's `WouldBlock` into the `io::ErrorKind::WouldBlock` that makes tokio clear
/// the readiness flag; every other outcome is passed through.
fn would_block<T>(r: Result<T>) -> io::Result<Result<T>> {
    match r {
        Err(Error::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
        other => Ok(other),
    }
}

fn reactor_error(source: io::Error) -> Error {
    Error::Io {
        op: "wait for readiness",
        source,
    }
}
