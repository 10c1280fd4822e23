//! The ring on a tokio runtime (feature `tokio`): await the next record or free space
//! without a helper thread and without polling.
//!
//! An async side waits like a blocking one — it checks the peer's index, spins briefly
//! (yielding to the runtime instead of the OS), then parks — but it parks in the runtime's
//! reactor on its end of the setup channel, and its wait word carries a `SIGNAL` bit that
//! asks the peer to wake it with one byte sent on the channel instead of a `FUTEX_WAKE`.
//! Either side may be async or blocking: a publisher reads the waiter's wait word and wakes
//! it the way it asked. A busy stream makes no system calls (no one is parked); an idle one
//! costs no CPU (the task sleeps in epoll). The same readiness reports a peer that closed
//! its end, so a dead peer ends every wait with [`Error::PeerClosed`].
//!
//! Why a byte on the channel rather than an eventfd passed with the memfds: a write to an
//! eventfd blocks when its counter is full, and whether it blocks is the `O_NONBLOCK` flag
//! of the open file description, which the peer shares and can clear, so a hostile peer
//! could hang the publisher. `send(MSG_DONTWAIT)` on a socket never blocks whatever the peer
//! does, needs no extra descriptor, and bytes the waiter has not yet read only keep it
//! readable (a full queue means a wake is already pending). The channel refuses descriptors
//! after setup (`SO_PASSRIGHTS`, Linux 6.16+); where that is unavailable, signal bytes are
//! read with a control buffer anyway, so that descriptors a hostile peer attaches to them
//! are disposed of without blocking rather than dropped by the kernel in this thread (where
//! a lingering socket's close would block the runtime).
//!
//! Timeouts: wrap a call in `tokio::time::timeout`; every call is cancel safe.
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use rustix::io::Errno;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::bytes::*;
use super::core;
use super::setup::*;
use super::typed::*;
use super::wait::peer_gone;
use super::wait::{RingStats, SpinPolicy};
use crate::asyncio::{ready_or_exit, register, watch_exit, AsyncChannel};
use crate::closer::{recv_taking_fds, PeerSocket, Received};
use crate::error::{Error, Result};
use crate::Channel;

/// Spins between checks of the peer's liveness in [`SpinPolicy::Spin`].
const SPINS_PER_CHECK: u32 = 4096;
/// How long a [`SpinPolicy::Calibrated`] spin runs between yields to the runtime.
const YIELD_EVERY: std::time::Duration = std::time::Duration::from_micros(10);
/// Most signal bytes read per wakeup: a peer flooding the channel cannot keep a task in
/// one poll forever.
const MAX_DRAIN: usize = 64;

/// The reactor registration of a ring side: a duplicate of its setup channel's socket,
/// and of the peer's pidfd when the channel has one (a spawned worker's).
#[derive(Debug)]
struct Reactor {
    fd: AsyncFd<PeerSocket>,
    peer_exit: Option<AsyncFd<OwnedFd>>,
}

impl Reactor {
    /// The async twin of [`Side::drive`]: runs `attempt` until it gives a value, awaiting
    /// between tries (with [`wait`](Self::wait)) the peer index it saw to move. Cancel
    /// safe as far as `attempt` is: nothing is kept across an await.
    async fn drive<S: Side, T>(
        &self,
        side: &mut S,
        mut attempt: impl FnMut(&mut S) -> Result<Attempt<T>>,
    ) -> Result<T> {
        loop {
            match attempt(side)? {
                Ok(v) => return Ok(v),
                Err(blocked) => {
                    let (link, words) = side.link_and_words();
                    let (peer, own) = (words.peer_index(), words.own_wait());
                    self.wait(link, peer, own, blocked.seen).await?;
                }
            }
        }
    }

    fn new(channel: &Channel) -> Result<Reactor> {
        let fd = rustix::io::fcntl_dupfd_cloexec(channel, 0)
            .map_err(|e| Error::io("duplicate the ring channel", e))?;
        Ok(Reactor {
            fd: register(PeerSocket::new(fd))?,
            peer_exit: watch_exit(channel)?,
        })
    }

    /// Waits until `peer_index` differs from `seen`, as this side's `spin` says, parking in
    /// the reactor. `link` is the side's link (for its channel, spin policy and stats).
    async fn wait(
        &self,
        link: &mut Link,
        peer_index: &AtomicU32,
        own_wait: &AtomicU64,
        seen: u32,
    ) -> Result<()> {
        // Relaxed: the word is in the peer's read-only mapping, and the engine loads it
        // again with acquire semantics once this returns.
        let moved = || peer_index.load(Ordering::Relaxed) != seen;
        match link.spin {
            SpinPolicy::Spin => loop {
                for _ in 0..SPINS_PER_CHECK {
                    if moved() {
                        return Ok(());
                    }
                    std::hint::spin_loop();
                }
                if peer_gone(&link.channel) || link.channel.peer_exited() {
                    return if moved() {
                        Ok(())
                    } else {
                        Err(Error::PeerClosed)
                    };
                }
                tokio::task::yield_now().await;
            },
            // As crossbeam's Backoff::snooze: spin 2^step times for steps 0..=6, then yield
            // (to the runtime: other tasks run meanwhile).
            SpinPolicy::SpinThenPark(steps) => {
                for step in 0..steps {
                    if moved() {
                        return Ok(());
                    }
                    if step <= 6 {
                        for _ in 0..1u32 << step {
                            std::hint::spin_loop();
                        }
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }
            // As the blocking side: spin for the calibrated budget, reading the clock once
            // per 64 looks; yield to the runtime every 10 µs or so, so that other tasks on
            // this thread are not held up for the whole budget.
            SpinPolicy::Calibrated => {
                let start = Instant::now();
                let end = start + link.spin.budget().unwrap_or_default();
                let mut yielded = start;
                loop {
                    for _ in 0..64 {
                        if moved() {
                            return Ok(());
                        }
                        std::hint::spin_loop();
                    }
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    if now.duration_since(yielded) >= YIELD_EVERY {
                        tokio::task::yield_now().await;
                        yielded = Instant::now();
                    }
                }
            }
            SpinPolicy::Park => {}
        }
        loop {
            if moved() {
                return Ok(());
            }
            if !core::prepare_park(own_wait, peer_index, seen, true) {
                return Ok(());
            }
            // Withdrawn on every exit, including the future being dropped in the await.
            let parked = Parked(own_wait);
            link.stats.parks += 1;
            let readable = ready_or_exit(&self.fd, self.peer_exit.as_ref(), Interest::READABLE);
            let Some(mut ready) = readable.await? else {
                drop(parked);
                return if moved() {
                    Ok(())
                } else {
                    Err(Error::PeerClosed)
                };
            };
            let drained = ready.try_io(|fd| drain(fd.get_ref()));
            drop(parked);
            match drained {
                // Everything read: the readiness is cleared, a later signal sets it again.
                Err(_would_block) => {}
                Ok(Ok(Drained::More)) => {}
                Ok(Ok(Drained::Closed)) if moved() => return Ok(()),
                Ok(Ok(Drained::Closed)) => return Err(Error::PeerClosed),
                Ok(Err(e)) => {
                    return Err(Error::Io {
                        op: "read ring signals",
                        source: e,
                    })
                }
            }
        }
    }
}

/// Withdraws a park announcement when dropped.
struct Parked<'a>(&'a AtomicU64);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        core::end_park(self.0);
    }
}

enum Drained {
    /// The peer's end is closed.
    Closed,
    /// [`MAX_DRAIN`] bytes read and there may be more.
    More,
}

/// Reads and discards signal bytes until the socket is empty (`WouldBlock`, which clears
/// the runtime's readiness), the peer's end is closed, or [`MAX_DRAIN`] were read.
/// Descriptors that come with them are disposed of (see `crate::closer`).
fn drain(sock: &OwnedFd) -> io::Result<Drained> {
    let mut buf = [0u8; 16];
    for _ in 0..MAX_DRAIN {
        let mut fds = Received::default();
        let res = recv_taking_fds(sock, &mut buf, &mut fds.0);
        drop(fds);
        match res.map(|r| r.bytes) {
            // End of stream, or an empty datagram from a hostile peer.
            Ok(0) if peer_gone(sock) => return Ok(Drained::Closed),
            Ok(_) | Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(Errno::CONNRESET) => return Ok(Drained::Closed),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Drained::More)
}

/// Runs `step` until `deadline` (`None`: no deadline).
async fn within<T>(deadline: Option<Instant>, step: impl Future<Output = Result<T>>) -> Result<T> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), step)
            .await
            .map_err(|_elapsed| Error::Timeout)?,
        None => step.await,
    }
}

/// The producer half of the setup (see `producer_setup` in mod.rs), awaited.
async fn producer_setup_async(
    channel: Channel,
    options: &RingOptions,
    kind: Kind,
) -> Result<(Link, u32, u32)> {
    let setup = async move {
        let deadline = crate::deadline::Deadline::after(options.timeout).instant();
        let own = producer_offer(options, kind)?;
        let channel = AsyncChannel::new(channel)?;
        within(deadline, channel.send(SETUP_PAYLOAD, &[own.region()])).await?;
        let answer = within(deadline, channel.recv(&producer_policy())).await?;
        let (peer, peer_flags) = producer_accept(answer)?;
        let cap = options.capacity as u32; // validated by producer_offer
        let link = Link::new(own, peer, channel.into_inner(), options.spin);
        crate::stats::traced("ring setup", Ok((link, cap, peer_flags)))
    };
    #[cfg(feature = "tracing")]
    let setup = tracing::Instrument::instrument(
        async move {
            setup
                .await
                .or_else(|e| crate::stats::traced("ring setup", Err(e)))
        },
        tracing::info_span!(
            "sealpipe_ring_setup",
            side = "producer",
            capacity = options.capacity
        ),
    );
    setup.await
}

/// The consumer half of the setup (see `consumer_setup` in mod.rs), awaited.
async fn consumer_setup_async(
    channel: Channel,
    options: &RingOptions,
    kind: Kind,
) -> Result<(Link, u32, u32)> {
    let setup = async move {
        let deadline = crate::deadline::Deadline::after(options.timeout).instant();
        let channel = AsyncChannel::new(channel)?;
        let offer = within(deadline, channel.recv(&consumer_policy(options))).await?;
        crate::closer::refuse_descriptors(channel.get_ref()); // as in consumer_setup
        let (peer, cap, peer_flags) = consumer_accept(offer, kind)?;
        let own = consumer_offer(options)?;
        within(deadline, channel.send(SETUP_PAYLOAD, &[own.region()])).await?;
        let link = Link::new(own, peer, channel.into_inner(), options.spin);
        crate::stats::traced("ring setup", Ok((link, cap, peer_flags)))
    };
    #[cfg(feature = "tracing")]
    let setup = tracing::Instrument::instrument(
        async move {
            setup
                .await
                .or_else(|e| crate::stats::traced("ring setup", Err(e)))
        },
        tracing::info_span!("sealpipe_ring_setup", side = "consumer"),
    );
    setup.await
}

/// A [`Producer`] on a tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sealpipe::Result<()> {
/// use sealpipe::ring::{AsyncConsumer, AsyncProducer};
/// use sealpipe::ring::RingOptions;
///
/// let (a, b) = sealpipe::Channel::pair()?;
/// let options = RingOptions::new(1 << 16);
/// let (tx, rx) = tokio::join!(
///     AsyncProducer::setup(a, &options),
///     AsyncConsumer::setup(b, &options),
/// );
/// let (mut tx, mut rx) = (tx?, rx?);
/// tx.send(b"hello").await?;
/// let mut record = Vec::new();
/// rx.recv(&mut record).await?;
/// assert_eq!(record, b"hello");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncProducer {
    inner: Producer,
    reactor: Reactor,
}

impl AsyncProducer {
    /// As [`Producer::setup`], awaiting the consumer (async or blocking) within
    /// `options`' timeout.
    ///
    /// # Errors
    /// As [`Producer::setup`]; [`Error::Io`] outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the channel is closed and the consumer's
    /// `setup` fails.
    pub async fn setup(channel: Channel, options: &RingOptions) -> Result<AsyncProducer> {
        let (link, cap, flags) = producer_setup_async(channel, options, BYTES).await?;
        AsyncProducer::new(Producer::from_link(link, cap, flags)?)
    }

    /// Drives a set-up [`Producer`] on the current runtime.
    ///
    /// # Errors
    /// [`Error::Io`] outside a tokio runtime, or if the registration fails.
    pub fn new(producer: Producer) -> Result<AsyncProducer> {
        let reactor = Reactor::new(&producer.link.channel)?;
        Ok(AsyncProducer {
            inner: producer,
            reactor,
        })
    }

    /// This side's counters ([`RingStats`]).
    pub fn stats(&self) -> RingStats {
        self.inner.stats()
    }

    /// The producer underneath, for the calls that never wait (`try_send`, `batch`,
    /// `try_reserve`, `stats`, `capacity`).
    pub fn get_mut(&mut self) -> &mut Producer {
        &mut self.inner
    }

    /// Deregisters from the runtime and returns the producer.
    pub fn into_inner(self) -> Producer {
        self.inner
    }

    /// Copies `record` into the ring and publishes it, awaiting room.
    ///
    /// # Errors
    /// As [`Producer::send_timeout`], without [`Error::Timeout`] (wrap the call in
    /// `tokio::time::timeout` for one).
    ///
    /// # Cancel safety
    /// Cancel safe: the record is copied and published within one poll, so a dropped
    /// future sent it whole or not at all.
    pub async fn send(&mut self, record: &[u8]) -> Result<()> {
        if self.inner.send_cached(record, true) {
            return Ok(());
        }
        self.reserve(record.len()).await?.write(record).commit();
        Ok(())
    }

    /// As [`Producer::reserve_timeout`], awaiting room.
    ///
    /// # Errors
    /// As [`send`](AsyncProducer::send).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is reserved until the future completes.
    pub async fn reserve(&mut self, len: usize) -> Result<Reservation<'_>> {
        let place = (self.reactor)
            .drive(&mut self.inner, |p| p.attempt_reserve(len))
            .await?;
        Ok(Reservation::new(&mut self.inner, place, len))
    }
}

/// A [`Consumer`] on a tokio runtime.
#[derive(Debug)]
pub struct AsyncConsumer {
    inner: Consumer,
    reactor: Reactor,
}

impl AsyncConsumer {
    /// As [`Consumer::setup`], awaiting the producer (async or blocking) within
    /// `options`' timeout.
    ///
    /// # Errors
    /// As [`Consumer::setup`]; [`Error::Io`] outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the channel is closed and the producer's
    /// `setup` fails.
    pub async fn setup(channel: Channel, options: &RingOptions) -> Result<AsyncConsumer> {
        let (link, cap, flags) = consumer_setup_async(channel, options, BYTES).await?;
        AsyncConsumer::new(Consumer::from_link(link, cap, flags)?)
    }

    /// Drives a set-up [`Consumer`] on the current runtime.
    ///
    /// # Errors
    /// [`Error::Io`] outside a tokio runtime, or if the registration fails.
    pub fn new(consumer: Consumer) -> Result<AsyncConsumer> {
        let reactor = Reactor::new(&consumer.link.channel)?;
        Ok(AsyncConsumer {
            inner: consumer,
            reactor,
        })
    }

    /// This side's counters ([`RingStats`]).
    pub fn stats(&self) -> RingStats {
        self.inner.stats()
    }

    /// The consumer underneath, for the calls that never wait (`try_recv`, `stats`,
    /// `capacity`).
    pub fn get_mut(&mut self) -> &mut Consumer {
        &mut self.inner
    }

    /// Deregisters from the runtime and returns the consumer.
    pub fn into_inner(self) -> Consumer {
        self.inner
    }

    /// Copies the next record into `out` (replacing its contents), awaiting one.
    ///
    /// # Errors
    /// As [`Consumer::recv_timeout`], without [`Error::Timeout`]: [`Error::PeerClosed`]
    /// once the producer is gone and every record it published has been received;
    /// [`Error::PeerCorrupt`].
    ///
    /// # Cancel safety
    /// Cancel safe: a record is taken from the ring only in the poll that returns it, so a
    /// dropped future took none; the next call gets it.
    pub async fn recv(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.inner.recv_cached(out, true) {
            return Ok(());
        }
        // Taken in the poll that finds it (no await between the attempt and `take`).
        let rec = (self.reactor)
            .drive(&mut self.inner, |c| c.attempt_next())
            .await?;
        self.inner.take(rec, out);
        Ok(())
    }
}

/// A [`PodProducer`] on a tokio runtime.
#[derive(Debug)]
pub struct AsyncPodProducer<T: bytemuck::Pod> {
    inner: PodProducer<T>,
    reactor: Reactor,
}

impl<T: bytemuck::Pod> AsyncPodProducer<T> {
    /// As [`PodProducer::setup`], awaiting the consumer within `options`' timeout.
    ///
    /// # Errors
    /// As [`PodProducer::setup`]; [`Error::Io`] outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup.
    pub async fn setup(channel: Channel, options: &RingOptions) -> Result<AsyncPodProducer<T>> {
        let kind = pod_kind::<T>()?;
        let (link, cap, flags) = producer_setup_async(channel, options, kind).await?;
        AsyncPodProducer::new(PodProducer::from_link(link, cap, flags)?)
    }

    /// Drives a set-up [`PodProducer`] on the current runtime.
    ///
    /// # Errors
    /// [`Error::Io`] outside a tokio runtime, or if the registration fails.
    pub fn new(producer: PodProducer<T>) -> Result<AsyncPodProducer<T>> {
        let reactor = Reactor::new(&producer.link.channel)?;
        Ok(AsyncPodProducer {
            inner: producer,
            reactor,
        })
    }

    /// This side's counters ([`RingStats`]).
    pub fn stats(&self) -> RingStats {
        self.inner.stats()
    }

    /// The producer underneath, for the calls that never wait.
    pub fn get_mut(&mut self) -> &mut PodProducer<T> {
        &mut self.inner
    }

    /// Deregisters from the runtime and returns the producer.
    pub fn into_inner(self) -> PodProducer<T> {
        self.inner
    }

    /// Sends `item` (publishes it), awaiting room.
    ///
    /// # Errors
    /// [`Error::PeerClosed`], [`Error::PeerCorrupt`].
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped future sent nothing.
    pub async fn send(&mut self, item: T) -> Result<()> {
        self.reactor
            .drive(&mut self.inner, |p| p.attempt_push(item))
            .await
    }

    /// Sends as many of `items` as fit, awaiting room for at least one, with one
    /// publication; returns how many.
    ///
    /// # Errors
    /// As [`send`](AsyncPodProducer::send).
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped future sent nothing.
    pub async fn send_slice(&mut self, items: &[T]) -> Result<usize> {
        self.reactor
            .drive(&mut self.inner, |p| p.attempt_push_slice(items))
            .await
    }
}

/// A [`PodConsumer`] on a tokio runtime.
#[derive(Debug)]
pub struct AsyncPodConsumer<T: bytemuck::Pod> {
    inner: PodConsumer<T>,
    reactor: Reactor,
}

impl<T: bytemuck::Pod> AsyncPodConsumer<T> {
    /// As [`PodConsumer::setup`], awaiting the producer within `options`' timeout.
    ///
    /// # Errors
    /// As [`PodConsumer::setup`]; [`Error::Io`] outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup.
    pub async fn setup(channel: Channel, options: &RingOptions) -> Result<AsyncPodConsumer<T>> {
        let kind = pod_kind::<T>()?;
        let (link, cap, flags) = consumer_setup_async(channel, options, kind).await?;
        AsyncPodConsumer::new(PodConsumer::from_link(link, cap, flags)?)
    }

    /// Drives a set-up [`PodConsumer`] on the current runtime.
    ///
    /// # Errors
    /// [`Error::Io`] outside a tokio runtime, or if the registration fails.
    pub fn new(consumer: PodConsumer<T>) -> Result<AsyncPodConsumer<T>> {
        let reactor = Reactor::new(&consumer.link.channel)?;
        Ok(AsyncPodConsumer {
            inner: consumer,
            reactor,
        })
    }

    /// This side's counters ([`RingStats`]).
    pub fn stats(&self) -> RingStats {
        self.inner.stats()
    }

    /// The consumer underneath, for the calls that never wait.
    pub fn get_mut(&mut self) -> &mut PodConsumer<T> {
        &mut self.inner
    }

    /// Deregisters from the runtime and returns the consumer.
    pub fn into_inner(self) -> PodConsumer<T> {
        self.inner
    }

    /// Takes the next item, awaiting one.
    ///
    /// # Errors
    /// [`Error::PeerClosed`] once the producer is gone and the ring is empty;
    /// [`Error::PeerCorrupt`].
    ///
    /// # Cancel safety
    /// Cancel safe: an item is taken only in the poll that returns it.
    pub async fn recv(&mut self) -> Result<T> {
        self.reactor
            .drive(&mut self.inner, |c| c.attempt_pop())
            .await
    }

    /// Fills the start of `out` with the published items, awaiting at least one; returns
    /// how many.
    ///
    /// # Errors
    /// As [`recv`](AsyncPodConsumer::recv).
    ///
    /// # Cancel safety
    /// Cancel safe: items are taken only in the poll that returns them.
    pub async fn recv_slice(&mut self, out: &mut [T]) -> Result<usize> {
        self.reactor
            .drive(&mut self.inner, |c| c.attempt_pop_slice(out))
            .await
    }
}
