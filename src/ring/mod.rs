//! A single-producer single-consumer ring in sealed shared memory: millions of small
//! records, or bulk data at memory speed, with no system call per record.
//!
//! ```no_run
//! # fn main() -> sealpipe::Result<()> {
//! use std::time::Duration;
//! use sealpipe::ring::{Consumer, Producer, RingOptions};
//!
//! let (a, b) = sealpipe::Channel::pair()?; // or sealpipe::spawn for another process
//! let consumer = std::thread::spawn(move || -> sealpipe::Result<Vec<u8>> {
//!     let mut rx = Consumer::setup(b, &RingOptions::default())?;
//!     let mut record = Vec::new();
//!     rx.recv_timeout(&mut record, Duration::from_secs(5))?;
//!     Ok(record)
//! });
//! let mut tx = Producer::setup(a, &RingOptions::new(1 << 20))?;
//! tx.send_timeout(b"hello", Duration::from_secs(5))?;
//! assert_eq!(consumer.join().unwrap()?, b"hello");
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! Two memfds, each written by one side only:
//!
//! - the **producer's** memfd holds a header page (ring header, the write index and the
//!   producer's wait word, each on its own cache line) followed by the data area. It is
//!   sealed `FUTURE_WRITE | SHRINK | GROW | SEAL`: the producer keeps the writable mapping it
//!   made before sealing; the consumer can only map it read-only;
//! - the **consumer's** memfd is one page: its header, the read index and its wait word,
//!   sealed the same way, mapped read-only by the producer.
//!
//! [`Producer::setup`] and [`Consumer::setup`] exchange the two memfds over a
//! [`Channel`](crate::Channel); each side verifies the other's memfd like any region (seals, size) and
//! validates its header (magic, version, kind, element size, capacity, layout offsets). The
//! channel then stays open: its end-of-file is how a waiting side learns that the peer died.
//!
//! Records: [`Producer`]/[`Consumer`] carry variable-length byte records (an 8-byte header,
//! payload padded to 8 bytes, never split across the end of the ring, so they can be written
//! in place); [`PodProducer`]/[`PodConsumer`] carry `T: bytemuck::Pod` items in fixed slots
//! with no per-item header. Each side caches the peer's index and reloads it only when the
//! ring looks full (producer) or empty (consumer); the consumer publishes its read index
//! lazily (every quarter of the ring, and whenever it finds the ring empty).
//! [`RingStats`] counts those reloads and how often they found the ring full or empty.
//!
//! Batches: [`Producer::batch`] publishes many records with one index store,
//! [`Consumer::batch`] releases many with one; [`PodProducer::try_reserve_slice`] lends
//! free slots of a typed ring to be written in place and published together, and
//! [`PodConsumer::try_recv_slice`] takes many items at once.
//!
//! Waiting follows [`SpinPolicy`] (by default [`SpinPolicy::Calibrated`]: spin for a time
//! budget set by the measured cost of a futex wake on the running machine), then park
//! with a non-private `FUTEX_WAIT` on the peer's index word, through this side's *read-only* mapping of the peer's memfd (a futex
//! wait only reads the word, and the futex key of a shared mapping is the page, not the
//! address; the peer wakes it with `FUTEX_WAKE` through its own writable mapping — verified
//! on Linux 6.18 by the park/wake tests in `tests/ring.rs`). A side records in its wait word that it is parked *and the index
//! value it saw*; the peer issues a `FUTEX_WAKE` only when that word says someone waits on a
//! value other than the one just published (and only once per such announcement), so a
//! busy stream makes no system calls. Non-waiting calls (`try_*`) that keep finding the
//! ring blocked also notice a dead peer, with one `poll` per 20 ms at most. Every
//! wait has a deadline and checks every 20 ms whether the peer's end of the channel is still
//! open (and, for a spawned worker's channel, whether the peer process is still alive).
//!
//! With the `tokio` feature, `AsyncProducer` and its siblings wait in the
//! runtime's reactor instead: the wait word then also says "signal me", and the peer wakes
//! it by sending one byte on the setup channel (`MSG_DONTWAIT`: never blocks) rather than
//! with `FUTEX_WAKE`. Blocking and async sides work together on the same ring.
//!
//! # Threat model
//!
//! The peer is hostile. What it **can** do:
//!
//! - write any value into its own memory at any time: its index, its wait word, and (a
//!   producer) any byte of the data area, including records already published and the very
//!   bytes being copied out;
//! - stop moving, or die: the other side then waits until its deadline, or sees
//!   [`Error::PeerClosed`](crate::Error::PeerClosed) within about 20 ms of the peer's channel end closing;
//! - set its wait word so that every publication makes a `FUTEX_WAKE` system call or sends
//!   a signal byte (slowing the other side down), or never ask to be woken (its own waits
//!   then end by time slice); send bytes, empty messages or descriptors on the channel,
//!   which an async side reads and discards (descriptors are closed by the kernel, never
//!   installed) and which only make it look at the ring again;
//! - send records whose *contents* are wrong: validate what you read;
//! - make a consumer allocate a receive buffer as long as the longest record the ring
//!   allows (half its capacity): bound it with [`RingOptions::max_data_len`];
//! - hand its end of the setup channel to another process that stays alive: liveness means
//!   "the peer's end of the channel is still open" — except for a worker started with
//!   [`crate::spawn::spawn`] (and its parent), whose channel knows the peer's pidfd: there
//!   the peer process exiting also ends every wait.
//!
//! What it **cannot** do:
//!
//! - write the other side's memory: each memfd is sealed against new writers before it is
//!   sent, and the seals are verified on receipt;
//! - make the other side read or write out of bounds, panic, or loop forever: every value
//!   read from peer memory is loaded once into a local and validated (index within the
//!   capacity of the other index and never moving backwards, record length within the
//!   ring's limit and within what was published, record kind known) before it is used; a
//!   violation is [`Error::PeerCorrupt`](crate::Error::PeerCorrupt) and the ring stays failed (every later call returns
//!   the same error);
//! - truncate the memory under the other side (`SIGBUS`): the size seals are verified;
//! - make the producer overwrite unread data: a consumer that stops reading only makes the
//!   producer wait (or see [`Error::WouldBlock`](crate::Error::WouldBlock));
//! - hand out a reference to memory it can change: the safe read API copies each record
//!   out (each byte read once, by volatile loads) and only then gives it to you. Reading in
//!   place is [`Consumer::try_recv_in_place`], which is `unsafe` for that reason.
//!
//! # Memory and allocation
//!
//! Ring memory is the capacity plus one page for each side's control block. After
//! [`setup`](Producer::setup), sending and receiving allocate nothing (a receive
//! buffer grows only when a record is longer than any before it).
#![allow(unsafe_code)]

#[cfg(all(feature = "tokio", not(loom)))]
pub(crate) mod async_ring;
#[cfg_attr(loom, allow(dead_code))]
pub(crate) mod core; // pub(crate) for `crate::fuzz::ring_ops`
#[cfg(any(test, fuzzing))]
pub(crate) mod model;
mod sync;
#[cfg(not(loom))]
mod wait;

#[cfg(loom)]
#[doc(hidden)]
pub mod loom_api {
    //! The protocol functions, exposed for `tests/loom_ring.rs` only: exists only under
    //! `--cfg loom` (never in a normal build), hidden, not public API.
    use super::sync::{AtomicU32, AtomicU64};

    /// See `core::publish`: whether a wake is needed, and whether it is a channel signal.
    /// `woken`: the wait word last woken (0 at first), kept by the caller across calls.
    pub fn publish(
        own_index: &AtomicU32,
        new: u32,
        peer_wait: &AtomicU64,
        peer_parks: bool,
        woken: &mut u64,
    ) -> Option<bool> {
        match super::core::publish(own_index, new, peer_wait, peer_parks, woken) {
            super::core::Wake::None => None,
            super::core::Wake::Futex => Some(false),
            super::core::Wake::Signal => Some(true),
        }
    }
    /// See `core::prepare_park`.
    pub fn prepare_park(
        own_wait: &AtomicU64,
        peer_index: &AtomicU32,
        seen: u32,
        signal: bool,
    ) -> bool {
        super::core::prepare_park(own_wait, peer_index, seen, signal)
    }
    /// See `core::end_park`.
    pub fn end_park(own_wait: &AtomicU64) {
        super::core::end_park(own_wait)
    }
    /// See `core::load_peer`: a `Relaxed` load of the peer's index, then `fence(Acquire)`.
    pub fn load_peer(peer_index: &AtomicU32) -> u32 {
        super::core::load_peer(peer_index)
    }
}

#[cfg(all(any(fuzzing, test), not(loom)))]
pub(crate) use api::check_headers;
#[cfg(not(loom))]
pub use api::*;
#[cfg(all(feature = "tokio", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use async_ring::{AsyncConsumer, AsyncPodConsumer, AsyncPodProducer, AsyncProducer};

#[cfg(not(loom))]
mod api {
    use std::marker::PhantomData;
    use std::ptr::NonNull;
    use std::sync::atomic::{AtomicU32, AtomicU64};
    use std::time::{Duration, Instant};

    use super::core::{self, Blocked, Corrupt, Placement, Words};
    use super::layout::*;
    use super::wait;
    pub use super::wait::{calibrated_spin_budget, RingStats, SpinPolicy};
    use crate::error::{Error, Result};
    use crate::shm::SharedBytes;
    use crate::{Channel, Message, Policy, ProducerWritableRegion, Region, RegionView};

    /// How to build one side of a ring.
    ///
    /// ```
    /// use sealpipe::ring::{RingOptions, SpinPolicy};
    /// let options = RingOptions::new(1 << 20).spin(SpinPolicy::Spin).timeout(std::time::Duration::from_secs(1));
    /// assert_eq!(options.capacity(), 1 << 20);
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RingOptions {
        pub(super) capacity: usize,
        pub(super) spin: SpinPolicy,
        pub(super) timeout: Duration,
        max_data_len: usize,
    }

    impl Default for RingOptions {
        fn default() -> Self {
            RingOptions::new(1 << 16)
        }
    }

    impl RingOptions {
        /// Options for a ring of `capacity` units: bytes for [`Producer`], items for
        /// [`PodProducer`]. It must be a power of two from 16 to 2^31 (checked at
        /// `setup`). Consumers ignore it: the producer decides.
        pub const fn new(capacity: usize) -> RingOptions {
            RingOptions {
                capacity,
                spin: SpinPolicy::Calibrated,
                timeout: Duration::from_secs(10),
                max_data_len: 1 << 30,
            }
        }

        /// How this side waits (default [`SpinPolicy::Calibrated`]).
        pub const fn spin(mut self, spin: SpinPolicy) -> RingOptions {
            self.spin = spin;
            self
        }

        /// How long `setup` waits for the peer (default 10 s).
        pub const fn timeout(mut self, timeout: Duration) -> RingOptions {
            self.timeout = timeout;
            self
        }

        /// Consumer side: the largest data area (in bytes) accepted from a producer
        /// (default 1 GiB).
        pub const fn max_data_len(mut self, len: usize) -> RingOptions {
            self.max_data_len = len;
            self
        }

        /// The capacity asked for.
        pub const fn capacity(&self) -> usize {
            self.capacity
        }
    }

    /// This side's memory, the peer's memory, the channel, and how this side waits.
    #[derive(Debug)]
    pub(super) struct Link {
        own: ProducerWritableRegion,
        peer: RegionView,
        pub(super) channel: Channel,
        pub(super) spin: SpinPolicy,
        pub(super) stats: RingStats,
        failed: Option<&'static str>,
        /// Consecutive non-waiting calls that found the ring blocked, and when the clock was
        /// first read during this run of them (see `blocked_try`).
        blocked_tries: u32,
        blocked_since: Option<Instant>,
    }

    impl Link {
        pub(super) fn new(
            own: ProducerWritableRegion,
            peer: RegionView,
            channel: Channel,
            spin: SpinPolicy,
        ) -> Link {
            // After setup the channel carries only one-byte wake signals: no descriptor
            // may arrive on it (one queued before this is drained with the signals, or on
            // drop, and disposed of without blocking).
            crate::closer::refuse_descriptors(&channel);
            // Measure the spin budget now, during setup, rather than in the first wait.
            let _ = spin.budget();
            Link {
                own,
                peer,
                channel,
                spin,
                stats: RingStats::default(),
                failed: None,
                blocked_tries: 0,
                blocked_since: None,
            }
        }

        /// Whether the ring has failed (a cheap test for the fast paths).
        #[inline]
        fn ok(&self) -> bool {
            self.failed.is_none()
        }

        /// The wait counters with an engine's counters.
        fn stats(&self, c: core::Counters, units: u64) -> RingStats {
            RingStats {
                units,
                index_loads: c.index_loads,
                found_blocked: c.blocked,
                ..self.stats
            }
        }

        /// A non-waiting call found the ring blocked: [`Error::WouldBlock`], or
        /// [`Error::PeerClosed`] once the ring has stayed blocked for [`wait::PEER_CHECK`]
        /// and the peer is gone. The clock is read only from the 8th blocked call in a row,
        /// at powers of two and then every 1024 calls, and the peer is polled (a system call)
        /// at most once per `PEER_CHECK`: a busy ring, which only now and then finds itself
        /// blocked, never pays either.
        #[cold]
        fn blocked_try(&mut self) -> Error {
            self.blocked_tries = self.blocked_tries.saturating_add(1);
            let n = self.blocked_tries;
            if n < 8 || !(n.is_power_of_two() || n % 1024 == 0) {
                return Error::WouldBlock;
            }
            let now = Instant::now();
            match self.blocked_since {
                None => self.blocked_since = Some(now),
                Some(since) if now.saturating_duration_since(since) >= wait::PEER_CHECK => {
                    self.blocked_since = Some(now);
                    if wait::peer_gone(&self.channel) || self.channel.peer_exited() {
                        return Error::PeerClosed;
                    }
                }
                Some(_) => {}
            }
            Error::WouldBlock
        }

        /// The ring moved again: restart the count of blocked calls.
        #[inline]
        fn unblocked(&mut self) {
            self.blocked_tries = 0;
            self.blocked_since = None;
        }

        fn corrupt(&mut self, c: Corrupt) -> Error {
            if self.failed.is_none() {
                self.stats.peer_corrupt += 1;
                #[cfg(feature = "tracing")]
                tracing::warn!(
                    reason = crate::RejectReason::PeerCorrupt.as_str(),
                    what = c.0,
                    "sealpipe ring peer wrote an impossible value; the ring has failed"
                );
            }
            self.failed = Some(c.0);
            Error::PeerCorrupt { what: c.0 }
        }

        fn check_failed(&self) -> Result<()> {
            match self.failed {
                Some(what) => Err(Error::PeerCorrupt { what }),
                None => Ok(()),
            }
        }

        #[inline]
        fn wake(&mut self, how: core::Wake, own_index: &AtomicU32) {
            if how != core::Wake::None {
                self.wake_slow(how, own_index);
            }
        }

        #[cold]
        fn wake_slow(&mut self, how: core::Wake, own_index: &AtomicU32) {
            self.stats.wakes += 1;
            wait::wake(how, own_index, &self.channel);
        }

        fn wait(&mut self, words: &Words, seen: u32, deadline: Option<Instant>) -> Result<()> {
            wait::wait_change(
                self.spin,
                &mut self.stats,
                words.peer_index(),
                words.own_wait(),
                seen,
                deadline,
                &self.channel,
            )
        }
    }

    /// The control words of a side, as pointers into the two mappings.
    fn words(own: &mut ProducerWritableRegion, peer: &RegionView) -> Words {
        let own_ptr = own.as_mut_slice().as_mut_ptr();
        let peer_ptr = peer.bytes().as_ptr();
        // SAFETY: both mappings are at least CONTROL_LEN bytes (checked at setup) and
        // page-aligned, so the words at INDEX_AT/WAIT_AT are in bounds and aligned; the
        // mappings live in the same Link as the engine that holds these pointers and are
        // never unmapped before it. Peer words are only loaded (atomic loads of <= 8 bytes
        // are allowed on read-only memory).
        let words = unsafe {
            Words::new(
                own_ptr.add(INDEX_AT).cast::<AtomicU32>(),
                own_ptr.add(WAIT_AT).cast::<AtomicU64>(),
                peer_ptr.add(INDEX_AT).cast::<AtomicU32>(),
                peer_ptr.add(WAIT_AT).cast::<AtomicU64>(),
            )
        };
        words.unwrap_or_else(|| unreachable!("mappings are never null"))
    }

    /// What a non-waiting step produced: a value, or the peer index value to wait on.
    pub(super) type Attempt<T> = std::result::Result<T, Blocked>;

    /// How long a call may wait. The deadline is computed only once the call has to wait,
    /// so the fast path never reads the clock.
    #[derive(Debug, Clone, Copy)]
    enum Patience {
        Never,
        For(Duration),
        Until(Option<Instant>),
    }

    impl Patience {
        /// The deadline to wait for (`None`: forever), or the error of a call that does not
        /// wait ([`Link::blocked_try`]).
        fn deadline(&mut self, link: &mut Link) -> Result<Option<Instant>> {
            match *self {
                Patience::Never => Err(link.blocked_try()),
                Patience::For(d) => {
                    let at = crate::deadline::Deadline::after(d).instant();
                    *self = Patience::Until(at);
                    Ok(at)
                }
                Patience::Until(at) => Ok(at),
            }
        }
    }

    // ------------------------------------------------------------------ setup

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct Kind {
        kind: u32,
        unit: u32,
        align: u32,
    }

    pub(super) const BYTES: Kind = Kind {
        kind: KIND_BYTES,
        unit: 1,
        align: 8,
    };

    pub(super) fn pod_kind<T: bytemuck::Pod>() -> Result<Kind> {
        let unit = std::mem::size_of::<T>();
        let align = std::mem::align_of::<T>();
        if unit == 0 || align > CONTROL_LEN {
            return Err(Error::RingMismatch {
                what: "item type has size 0 or alignment over 4096",
            });
        }
        let unit = u32::try_from(unit).map_err(|_| Error::RingMismatch {
            what: "item type over 4 GiB",
        })?;
        Ok(Kind {
            kind: KIND_POD,
            unit,
            align: align as u32,
        })
    }

    /// Producer half of the handshake: create and send the data memfd, receive and check
    /// the consumer's control memfd. Returns the link, the capacity and the consumer's flags.
    fn producer_setup(
        channel: Channel,
        options: &RingOptions,
        kind: Kind,
    ) -> Result<(Link, u32, u32)> {
        #[cfg(feature = "tracing")]
        let _span = tracing::info_span!(
            "sealpipe_ring_setup",
            side = "producer",
            capacity = options.capacity
        )
        .entered();
        crate::stats::traced(
            "ring setup",
            producer_setup_untraced(channel, options, kind),
        )
    }

    fn producer_setup_untraced(
        channel: Channel,
        options: &RingOptions,
        kind: Kind,
    ) -> Result<(Link, u32, u32)> {
        let own = producer_offer(options, kind)?;
        let end = crate::deadline::Deadline::after(options.timeout).instant();
        channel.send_timeout(SETUP_PAYLOAD, &[own.region()], options.timeout)?;
        let answer = channel.recv_timeout(&producer_policy(), time_left(end, options.timeout))?;
        let (peer, peer_flags) = producer_accept(answer)?;
        let cap = options.capacity as u32; // validated by producer_offer
        Ok((Link::new(own, peer, channel, options.spin), cap, peer_flags))
    }

    /// Consumer half of the handshake: receive and check the data memfd, create and send
    /// the control memfd. Returns the link, the capacity and the producer's flags.
    fn consumer_setup(
        channel: Channel,
        options: &RingOptions,
        kind: Kind,
    ) -> Result<(Link, u32, u32)> {
        #[cfg(feature = "tracing")]
        let _span = tracing::info_span!("sealpipe_ring_setup", side = "consumer").entered();
        crate::stats::traced(
            "ring setup",
            consumer_setup_untraced(channel, options, kind),
        )
    }

    fn consumer_setup_untraced(
        channel: Channel,
        options: &RingOptions,
        kind: Kind,
    ) -> Result<(Link, u32, u32)> {
        let end = crate::deadline::Deadline::after(options.timeout).instant();
        let offer = channel.recv_timeout(&consumer_policy(options), options.timeout)?;
        // Nothing more may bring descriptors: refuse them before the producer learns we
        // are ready (see `Link::new`).
        crate::closer::refuse_descriptors(&channel);
        let (peer, cap, peer_flags) = consumer_accept(offer, kind)?;
        let own = consumer_offer(options)?;
        let left = time_left(end, options.timeout);
        channel.send_timeout(SETUP_PAYLOAD, &[own.region()], left)?;
        Ok((Link::new(own, peer, channel, options.spin), cap, peer_flags))
    }

    fn time_left(end: Option<Instant>, timeout: Duration) -> Duration {
        end.map_or(timeout, |e| e.saturating_duration_since(Instant::now()))
    }

    /// The producer's memfd with its header, sealed, ready to send.
    pub(super) fn producer_offer(
        options: &RingOptions,
        kind: Kind,
    ) -> Result<ProducerWritableRegion> {
        let cap = options.capacity;
        let data_len = (cap as u64).checked_mul(u64::from(kind.unit));
        let (cap, data_len) = match data_len {
            Some(len)
                if core::valid_capacity(cap as u64)
                    && len <= isize::MAX as u64 - CONTROL_LEN as u64 =>
            {
                (cap as u32, len as usize)
            }
            _ => {
                return Err(Error::InvalidCapacity {
                    capacity: cap as u64,
                })
            }
        };
        let mut region = Region::new(CONTROL_LEN + data_len)?;
        let mut header = [0u8; HEADER_LEN];
        put(&mut header, MAGIC_AT, &PRODUCER_MAGIC);
        put(&mut header, VERSION_AT, &VERSION.to_le_bytes());
        put(&mut header, KIND_AT, &kind.kind.to_le_bytes());
        put(&mut header, CAPACITY_AT, &cap.to_le_bytes());
        put(&mut header, UNIT_AT, &kind.unit.to_le_bytes());
        put(&mut header, DATA_AT_AT, &(CONTROL_LEN as u32).to_le_bytes());
        put(&mut header, FLAGS_AT, &flags(options.spin).to_le_bytes());
        put(&mut header, INDEX_AT_AT, &(INDEX_AT as u32).to_le_bytes());
        put(&mut header, WAIT_AT_AT, &(WAIT_AT as u32).to_le_bytes());
        region.write_at(0, &header)?;
        region.seal_producer_writable()
    }

    /// What the producer accepts as the consumer's answer.
    pub(super) fn producer_policy() -> Policy {
        Policy::producer_writable()
            .max_regions(1)
            .max_payload(SETUP_PAYLOAD.len())
            .max_region_len(CONTROL_LEN as u64)
    }

    /// Checks the consumer's answer; returns its control memfd and its flags.
    pub(super) fn producer_accept(answer: Message) -> Result<(RegionView, u32)> {
        let (_, mut regions) = answer.into_parts();
        let peer = match (regions.pop(), regions.is_empty()) {
            (Some(peer), true) if peer.len() == CONTROL_LEN => peer,
            _ => {
                return Err(Error::RingMismatch {
                    what: "consumer did not send one control memfd of 4096 bytes",
                })
            }
        };
        let mut header = [0u8; HEADER_LEN];
        peer.read_at(0, &mut header)?;
        let peer_flags = check_consumer_header(&header)?;
        Ok((peer, peer_flags))
    }

    /// What the consumer accepts as the producer's offer.
    pub(super) fn consumer_policy(options: &RingOptions) -> Policy {
        Policy::producer_writable()
            .max_regions(1)
            .max_payload(SETUP_PAYLOAD.len())
            .max_region_len((CONTROL_LEN as u64).saturating_add(options.max_data_len as u64))
    }

    /// Checks the producer's offer; returns its memfd, the capacity and its flags.
    pub(super) fn consumer_accept(offer: Message, kind: Kind) -> Result<(RegionView, u32, u32)> {
        let (_, mut regions) = offer.into_parts();
        let peer = match (regions.pop(), regions.is_empty()) {
            (Some(peer), true) if peer.len() > CONTROL_LEN => peer,
            _ => {
                return Err(Error::RingMismatch {
                    what: "producer did not send one data memfd",
                })
            }
        };
        let mut header = [0u8; HEADER_LEN];
        peer.read_at(0, &mut header)?;
        let (cap, peer_flags) = check_producer_header(&header, kind, peer.len() as u64)?;
        Ok((peer, cap, peer_flags))
    }

    /// The consumer's control memfd with its header, sealed, ready to send.
    pub(super) fn consumer_offer(options: &RingOptions) -> Result<ProducerWritableRegion> {
        let mut region = Region::new(CONTROL_LEN)?;
        let mut header = [0u8; HEADER_LEN];
        put(&mut header, MAGIC_AT, &CONSUMER_MAGIC);
        put(&mut header, VERSION_AT, &VERSION.to_le_bytes());
        put(&mut header, FLAGS_AT, &flags(options.spin).to_le_bytes());
        put(&mut header, INDEX_AT_AT, &(INDEX_AT as u32).to_le_bytes());
        put(&mut header, WAIT_AT_AT, &(WAIT_AT as u32).to_le_bytes());
        region.write_at(0, &header)?;
        region.seal_producer_writable()
    }

    /// Validates the header of a producer's memfd of `memfd_len` bytes for a ring of
    /// `kind`; returns the capacity and the producer's flags.
    pub(super) fn check_producer_header(
        header: &[u8; HEADER_LEN],
        kind: Kind,
        memfd_len: u64,
    ) -> Result<(u32, u32)> {
        check_common(header, &PRODUCER_MAGIC)?;
        if get(header, KIND_AT) != kind.kind {
            return Err(Error::RingMismatch {
                what: "ring kind (bytes or typed) differs",
            });
        }
        if get(header, UNIT_AT) != kind.unit {
            return Err(Error::RingMismatch {
                what: "item size differs",
            });
        }
        if get(header, DATA_AT_AT) != CONTROL_LEN as u32 {
            return Err(Error::RingMismatch {
                what: "data offset differs",
            });
        }
        let cap = get(header, CAPACITY_AT);
        if !core::valid_capacity(u64::from(cap)) {
            return Err(Error::PeerCorrupt {
                what: "capacity is not a power of two in 16..=2^31",
            });
        }
        if memfd_len != u64::from(cap) * u64::from(kind.unit) + CONTROL_LEN as u64 {
            return Err(Error::PeerCorrupt {
                what: "data memfd size does not match capacity",
            });
        }
        Ok((cap, get(header, FLAGS_AT)))
    }

    /// Both header checks, for `crate::fuzz::ring_header`: the producer's header of a
    /// memfd of `memfd_len` bytes for a byte ring (`pod_unit` `None`) or a typed ring of
    /// items of `pod_unit` bytes, and the same bytes as a consumer's header.
    #[cfg(any(fuzzing, test))]
    pub(crate) fn check_headers(
        header: &[u8; HEADER_LEN],
        pod_unit: Option<u32>,
        memfd_len: u64,
    ) -> (Result<(u32, u32)>, Result<u32>) {
        let kind = match pod_unit {
            None => BYTES,
            Some(unit) => Kind {
                kind: KIND_POD,
                unit,
                align: 8,
            },
        };
        (
            check_producer_header(header, kind, memfd_len),
            check_consumer_header(header),
        )
    }

    /// Validates the header of a consumer's control memfd; returns the consumer's flags.
    pub(super) fn check_consumer_header(header: &[u8; HEADER_LEN]) -> Result<u32> {
        check_common(header, &CONSUMER_MAGIC)?;
        Ok(get(header, FLAGS_AT))
    }

    pub(super) const SETUP_PAYLOAD: &[u8] = b"sealpipe ring v1";

    fn flags(spin: SpinPolicy) -> u32 {
        if spin.parks() {
            FLAG_PARKS
        } else {
            0
        }
    }

    fn check_common(header: &[u8; HEADER_LEN], magic: &[u8; 8]) -> Result<()> {
        if header[MAGIC_AT..MAGIC_AT + 8] != magic[..] {
            return Err(Error::RingMismatch {
                what: "bad magic (not a sealpipe ring memfd)",
            });
        }
        if get(header, VERSION_AT) != VERSION {
            return Err(Error::RingMismatch {
                what: "unsupported ring version",
            });
        }
        if get(header, INDEX_AT_AT) != INDEX_AT as u32 || get(header, WAIT_AT_AT) != WAIT_AT as u32
        {
            return Err(Error::RingMismatch {
                what: "control word layout differs",
            });
        }
        Ok(())
    }

    fn put(header: &mut [u8; HEADER_LEN], at: usize, bytes: &[u8]) {
        header[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn get(header: &[u8; HEADER_LEN], at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&header[at..at + 4]);
        u32::from_le_bytes(b)
    }

    fn data_ptr<T>(link: &mut Link) -> NonNull<T> {
        let p = link.own.as_mut_slice().as_mut_ptr();
        // SAFETY: the memfd is CONTROL_LEN + capacity bytes (we created it).
        NonNull::new(unsafe { p.add(CONTROL_LEN) }.cast()).unwrap_or_else(|| unreachable!())
    }

    /// The peer's data area: `len` bytes after its control page.
    fn peer_data(link: &Link, len: usize) -> Result<SharedBytes<'_>> {
        link.peer.bytes().subslice(CONTROL_LEN, len)
    }

    // ------------------------------------------------------------------ byte ring

    /// The producer of a ring of variable-length byte records.
    ///
    /// Each record costs its length rounded up to 8, plus 8 bytes of header; a record may
    /// take at most half the ring ([`max_record_len`](Producer::max_record_len)).
    #[derive(Debug)]
    pub struct Producer {
        pub(super) engine: core::ByteProducer,
        pub(super) link: Link,
    }

    impl Producer {
        /// Creates a ring of `options.capacity()` bytes and hands it to the consumer at the
        /// other end of `channel` (which must call [`Consumer::setup`]).
        ///
        /// # Errors
        /// [`Error::InvalidCapacity`]; [`Error::Timeout`] if the consumer does not answer
        /// within `options`' timeout; [`Error::RingMismatch`] or any verification error if
        /// its control memfd is not what the protocol requires; errors creating the memfd.
        pub fn setup(channel: Channel, options: &RingOptions) -> Result<Producer> {
            let (link, cap, peer_flags) = producer_setup(channel, options, BYTES)?;
            Ok(Producer::from_link(link, cap, peer_flags))
        }

        /// The producer over a ring set up by `producer_setup` (or its async twin).
        pub(super) fn from_link(mut link: Link, cap: u32, peer_flags: u32) -> Producer {
            let words = words(&mut link.own, &link.peer);
            // SAFETY: the data area follows the control page in our own mapping: `cap`
            // bytes, page-aligned, written only by us; it lives as long as `link`, which is
            // stored next to the engine.
            let engine = unsafe {
                core::ByteProducer::new(
                    data_ptr(&mut link),
                    cap,
                    words,
                    peer_flags & FLAG_PARKS != 0,
                )
            };
            Producer { engine, link }
        }

        /// Capacity in bytes.
        pub fn capacity(&self) -> usize {
            self.engine.capacity() as usize
        }

        /// The longest record this ring carries: `capacity / 2 - 8`.
        pub fn max_record_len(&self) -> usize {
            core::max_record_len(self.engine.capacity())
        }

        /// This side's counters: units moved, waits, parks, wakes, index loads, peer
        /// corruption ([`RingStats`]).
        pub fn stats(&self) -> RingStats {
            self.link.stats(self.engine.counters, self.engine.units())
        }

        /// Copies `record` into the ring and publishes it, if there is room now.
        ///
        /// # Errors
        /// [`Error::WouldBlock`] if the ring is full; [`Error::PeerClosed`] if it has stayed
        /// full and the consumer is gone; [`Error::RecordTooLarge`];
        /// [`Error::PeerCorrupt`] if the consumer's read index is impossible.
        #[inline]
        pub fn try_send(&mut self, record: &[u8]) -> Result<()> {
            self.send(record, Patience::Never, true)
        }

        /// Copies `record` into the ring and publishes it, waiting up to `timeout` for room.
        ///
        /// # Errors
        /// As [`try_send`](Producer::try_send), with [`Error::Timeout`] instead of
        /// [`Error::WouldBlock`], and [`Error::PeerClosed`] if the consumer is gone.
        #[inline]
        pub fn send_timeout(&mut self, record: &[u8], timeout: Duration) -> Result<()> {
            self.send(record, Patience::For(timeout), true)
        }

        /// Copies `record` into the ring and commits it; publishes it if `publish`.
        #[inline]
        fn send(&mut self, record: &[u8], wait: Patience, publish: bool) -> Result<()> {
            if self.send_cached(record, publish) {
                return Ok(());
            }
            self.send_slow(record, wait, publish)
        }

        /// The fast path of a send: only if the cached read index shows room (no shared
        /// load, no error). Returns whether the record was sent.
        #[inline]
        pub(super) fn send_cached(&mut self, record: &[u8], publish: bool) -> bool {
            if !self.link.ok() || record.len() > self.max_record_len() {
                return false;
            }
            match self.engine.reserve_cached(record.len()) {
                Some(place) => {
                    self.put(place, record, publish);
                    true
                }
                None => false,
            }
        }

        #[cold]
        fn send_slow(&mut self, record: &[u8], wait: Patience, publish: bool) -> Result<()> {
            let place = self.reserve_slow(record.len(), wait)?;
            self.put(place, record, publish);
            Ok(())
        }

        /// Copies `record` into its placement and commits it; publishes it if `publish`.
        #[inline]
        fn put(&mut self, place: Placement, record: &[u8], publish: bool) {
            // SAFETY: the placement holds `record.len()` bytes in our own mapping, which
            // nobody else writes and the consumer does not read before publication.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    record.as_ptr(),
                    self.engine.payload_ptr(place),
                    record.len(),
                )
            };
            self.engine.commit(place, record.len());
            if publish {
                self.publish();
            }
        }

        /// Reserves room for a record of `len` bytes, to be written in place and then
        /// [committed](Reservation::commit), if there is room now.
        ///
        /// # Errors
        /// As [`try_send`](Producer::try_send).
        pub fn try_reserve(&mut self, len: usize) -> Result<Reservation<'_>> {
            let place = self.reserve(len, Patience::Never)?;
            Ok(Reservation::new(self, place, len))
        }

        /// [`try_reserve`](Producer::try_reserve), waiting up to `timeout` for room.
        ///
        /// # Errors
        /// As [`send_timeout`](Producer::send_timeout).
        pub fn reserve_timeout(
            &mut self,
            len: usize,
            timeout: Duration,
        ) -> Result<Reservation<'_>> {
            let place = self.reserve(len, Patience::For(timeout))?;
            Ok(Reservation::new(self, place, len))
        }

        /// Starts a batch: records committed through it become visible together, with one
        /// index publication, when the batch is [published](SendBatch::publish) or dropped.
        pub fn batch(&mut self) -> SendBatch<'_> {
            SendBatch { producer: self }
        }

        /// Room for `len` bytes: from the cached read index if it shows room (the fast
        /// path: no shared load), or by [`reserve_slow`](Self::reserve_slow).
        #[inline]
        fn reserve(&mut self, len: usize, wait: Patience) -> Result<Placement> {
            if self.link.ok() && len <= self.max_record_len() {
                if let Some(place) = self.engine.reserve_cached(len) {
                    return Ok(place);
                }
            }
            self.reserve_slow(len, wait)
        }

        #[cold]
        fn reserve_slow(&mut self, len: usize, mut wait: Patience) -> Result<Placement> {
            loop {
                match self.attempt_reserve(len)? {
                    Ok(place) => return Ok(place),
                    Err(blocked) => {
                        let deadline = wait.deadline(&mut self.link)?;
                        self.link.wait(&self.engine.words, blocked.seen, deadline)?;
                    }
                }
            }
        }

        /// Reserves room now, or says what to wait for.
        pub(super) fn attempt_reserve(&mut self, len: usize) -> Result<Attempt<Placement>> {
            self.link.check_failed()?;
            let max = self.max_record_len();
            if len > max {
                return Err(Error::RecordTooLarge { len, max });
            }
            match self.engine.reserve(len) {
                Ok(Ok(place)) => {
                    self.link.unblocked();
                    Ok(Ok(place))
                }
                Ok(Err(blocked)) => {
                    // Never wait on a consumer that cannot see what we committed.
                    self.publish();
                    Ok(Err(blocked))
                }
                Err(c) => Err(self.link.corrupt(c)),
            }
        }

        #[inline]
        fn publish(&mut self) {
            let wake = self.engine.publish();
            self.link.wake(wake, self.engine.words.own_index());
        }
    }

    /// Room for one record in the ring, written in place.
    ///
    /// Dropping it without [`commit`](Reservation::commit) abandons the record.
    #[derive(Debug)]
    pub struct Reservation<'a> {
        producer: &'a mut Producer,
        place: Placement,
        len: usize,
        publish: bool,
    }

    impl Reservation<'_> {
        /// The record's bytes, in the ring (initially whatever the ring held there).
        pub fn as_mut_slice(&mut self) -> &mut [u8] {
            let ptr = self.producer.engine.payload_ptr(self.place);
            // SAFETY: the reservation covers `len` bytes at `ptr` in the producer's own
            // mapping; no other process can write it (FUTURE_WRITE seal), the consumer does
            // not read it before it is published, and the `&mut self` borrow keeps the
            // producer from reserving it again while the slice lives.
            unsafe { std::slice::from_raw_parts_mut(ptr, self.len) }
        }

        /// A reservation published on commit.
        pub(super) fn new(
            producer: &mut Producer,
            place: Placement,
            len: usize,
        ) -> Reservation<'_> {
            Reservation {
                producer,
                place,
                len,
                publish: true,
            }
        }

        /// Copies `data` (of exactly the reserved length) into the record.
        #[cfg(feature = "tokio")]
        pub(super) fn write(mut self, data: &[u8]) -> Self {
            self.as_mut_slice().copy_from_slice(data);
            self
        }

        /// Finishes the record: visible to the consumer at once, or (in a [`SendBatch`]) when
        /// the batch is published.
        pub fn commit(self) {
            let p = self.producer;
            p.engine.commit(self.place, self.len);
            if self.publish {
                p.publish();
            }
        }
    }

    /// Records committed together and published with one index store; see
    /// [`Producer::batch`]. Publishes on drop.
    #[derive(Debug)]
    pub struct SendBatch<'a> {
        producer: &'a mut Producer,
    }

    impl SendBatch<'_> {
        /// As [`Producer::try_send`], without publishing.
        ///
        /// # Errors
        /// As [`Producer::try_send`]. Before reporting a full ring, the records committed so
        /// far are published (the consumer could not free room otherwise).
        #[inline]
        pub fn try_send(&mut self, record: &[u8]) -> Result<()> {
            self.producer.send(record, Patience::Never, false)
        }

        /// As [`Producer::send_timeout`], without publishing (unless it has to wait).
        ///
        /// # Errors
        /// As [`Producer::send_timeout`].
        #[inline]
        pub fn send_timeout(&mut self, record: &[u8], timeout: Duration) -> Result<()> {
            self.producer.send(record, Patience::For(timeout), false)
        }

        /// As [`Producer::try_reserve`]; the committed record is published with the batch.
        ///
        /// # Errors
        /// As [`Producer::try_reserve`].
        pub fn try_reserve(&mut self, len: usize) -> Result<Reservation<'_>> {
            let place = self.producer.reserve(len, Patience::Never)?;
            Ok(Reservation {
                producer: self.producer,
                place,
                len,
                publish: false,
            })
        }

        /// As [`Producer::reserve_timeout`]; the committed record is published with the
        /// batch.
        ///
        /// # Errors
        /// As [`Producer::reserve_timeout`].
        pub fn reserve_timeout(
            &mut self,
            len: usize,
            timeout: Duration,
        ) -> Result<Reservation<'_>> {
            let place = self.producer.reserve(len, Patience::For(timeout))?;
            Ok(Reservation {
                producer: self.producer,
                place,
                len,
                publish: false,
            })
        }

        /// Publishes every record committed in the batch (also done on drop).
        pub fn publish(self) {}
    }

    impl Drop for SendBatch<'_> {
        fn drop(&mut self) {
            self.producer.publish();
        }
    }

    /// The consumer of a ring of variable-length byte records.
    #[derive(Debug)]
    pub struct Consumer {
        pub(super) engine: core::ByteConsumer,
        pub(super) link: Link,
        cap: u32,
    }

    impl Consumer {
        /// Receives a ring from the producer at the other end of `channel` (which calls
        /// [`Producer::setup`]), checks it, and answers with this side's control memfd.
        ///
        /// # Errors
        /// [`Error::Timeout`]; any verification error for the producer's memfd;
        /// [`Error::RingMismatch`] / [`Error::PeerCorrupt`] for a header this side cannot
        /// use (bad magic, version, kind, capacity, size or layout).
        pub fn setup(channel: Channel, options: &RingOptions) -> Result<Consumer> {
            let (link, cap, peer_flags) = consumer_setup(channel, options, BYTES)?;
            Consumer::from_link(link, cap, peer_flags)
        }

        /// The consumer over a ring set up by `consumer_setup` (or its async twin).
        pub(super) fn from_link(mut link: Link, cap: u32, peer_flags: u32) -> Result<Consumer> {
            let words = words(&mut link.own, &link.peer);
            let data = peer_data(&link, cap as usize)?;
            // SAFETY: the data area (`cap` bytes after the producer's page-aligned control
            // page, size checked in setup) lives in `link.peer`, which lives as long as the
            // engine: both sit in the Consumer, and `link` is never replaced.
            let engine =
                unsafe { core::ByteConsumer::new(data, words, peer_flags & FLAG_PARKS != 0) };
            let engine = engine.ok_or(Error::PeerCorrupt {
                what: "ring data area",
            })?;
            Ok(Consumer { engine, link, cap })
        }

        /// Capacity in bytes.
        pub fn capacity(&self) -> usize {
            self.cap as usize
        }

        /// This side's counters: units moved, waits, parks, wakes, index loads, peer
        /// corruption ([`RingStats`]).
        pub fn stats(&self) -> RingStats {
            self.link.stats(self.engine.counters, self.engine.units())
        }

        /// Copies the next record into `out` (replacing its contents), if one is published.
        /// `out` keeps its allocation, so a reused buffer makes receiving allocation-free.
        /// Makes no system call while records flow; once the ring has been found empty
        /// by many calls in a row for 20 ms, it checks (one `poll`) whether the producer
        /// is still there.
        ///
        /// # Errors
        /// [`Error::WouldBlock`] if the ring is empty; [`Error::PeerClosed`] if it has
        /// stayed empty and the producer is gone; [`Error::PeerCorrupt`] if the producer
        /// wrote an impossible index or record header.
        #[inline]
        pub fn try_recv(&mut self, out: &mut Vec<u8>) -> Result<()> {
            self.recv(out, Patience::Never, true)
        }

        /// [`try_recv`](Consumer::try_recv), waiting up to `timeout` for a record.
        ///
        /// # Errors
        /// As [`try_recv`](Consumer::try_recv), with [`Error::Timeout`] instead of
        /// [`Error::WouldBlock`], and [`Error::PeerClosed`] once the producer is gone and
        /// every record it published has been received.
        #[inline]
        pub fn recv_timeout(&mut self, out: &mut Vec<u8>, timeout: Duration) -> Result<()> {
            self.recv(out, Patience::For(timeout), true)
        }

        /// Starts a batch read: records taken through it are released to the producer
        /// (its read index published) together, once, when the batch is
        /// [finished](RecvBatch::finish) or dropped — or earlier if the ring runs empty,
        /// since the producer could not refill it otherwise.
        ///
        /// Outside a batch the read index is already published lazily (every quarter of
        /// the ring, and whenever the ring is found empty); a batch makes that one
        /// publication per batch.
        ///
        /// ```no_run
        /// # fn main() -> sealpipe::Result<()> {
        /// # let (a, b) = sealpipe::Channel::pair()?;
        /// use sealpipe::ring::{Consumer, RingOptions};
        /// let mut rx = Consumer::setup(b, &RingOptions::default())?;
        /// let mut record = Vec::new();
        /// let mut batch = rx.batch();
        /// while batch.try_recv(&mut record).is_ok() {
        ///     // use `record`
        /// }
        /// batch.finish(); // one publication of the read index
        /// # Ok(()) }
        /// ```
        pub fn batch(&mut self) -> RecvBatch<'_> {
            RecvBatch { consumer: self }
        }

        #[inline]
        fn recv(&mut self, out: &mut Vec<u8>, wait: Patience, publish: bool) -> Result<()> {
            if self.recv_cached(out, publish) {
                return Ok(());
            }
            self.recv_slow(out, wait, publish)
        }

        /// The fast path of a receive: only if the cached write index shows a record (no
        /// shared index load, no error). Returns whether a record was received.
        #[inline]
        pub(super) fn recv_cached(&mut self, out: &mut Vec<u8>, publish: bool) -> bool {
            if !self.link.ok() {
                return false;
            }
            match self.engine.next_cached() {
                Some(rec) => {
                    self.engine.copy_into(rec, out);
                    self.engine.consume(rec);
                    if publish && self.engine.unpublished() >= self.cap / 4 {
                        self.publish();
                    }
                    true
                }
                None => false,
            }
        }

        #[cold]
        fn recv_slow(&mut self, out: &mut Vec<u8>, wait: Patience, publish: bool) -> Result<()> {
            let rec = self.next(wait)?;
            self.engine.copy_into(rec, out);
            self.engine.consume(rec);
            if publish {
                self.consumed();
            }
            Ok(())
        }

        /// Copies `rec` into `out` and consumes it.
        #[cfg(feature = "tokio")]
        pub(super) fn take(&mut self, rec: core::Record, out: &mut Vec<u8>) {
            self.engine.copy_into(rec, out);
            self.consume(rec);
        }

        /// Hands the next record to `f` in place, without copying, if one is published.
        ///
        /// # Errors
        /// As [`try_recv`](Consumer::try_recv).
        ///
        /// # Safety
        /// The producer must not write the record while `f` runs: only a trusted producer
        /// following this protocol guarantees that. (The record's position and length are
        /// validated as always, so a hostile producer cannot make this read out of bounds;
        /// but it can change the bytes under the slice, which is a data race: undefined
        /// behaviour.)
        pub unsafe fn try_recv_in_place<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
            let rec = self.next(Patience::Never)?;
            let payload = self.engine.payload(rec).ok_or(Error::PeerCorrupt {
                what: "ring record out of bounds",
            })?;
            // SAFETY: the caller guarantees that nobody writes the record while the slice
            // lives (`next` validated that it lies inside the mapping).
            let r = f(unsafe { payload.as_slice() });
            self.consume(rec);
            Ok(r)
        }

        fn next(&mut self, mut wait: Patience) -> Result<core::Record> {
            loop {
                match self.attempt_next()? {
                    Ok(rec) => return Ok(rec),
                    Err(blocked) => {
                        let deadline = wait.deadline(&mut self.link)?;
                        self.link.wait(&self.engine.words, blocked.seen, deadline)?;
                    }
                }
            }
        }

        /// The next record if one is published, or what to wait for.
        pub(super) fn attempt_next(&mut self) -> Result<Attempt<core::Record>> {
            self.link.check_failed()?;
            match self.engine.next() {
                Ok(Ok(rec)) => {
                    self.link.unblocked();
                    Ok(Ok(rec))
                }
                Ok(Err(blocked)) => {
                    self.publish();
                    Ok(Err(blocked))
                }
                Err(c) => Err(self.link.corrupt(c)),
            }
        }

        fn consume(&mut self, rec: core::Record) {
            self.engine.consume(rec);
            self.consumed();
        }

        /// Publishes the read index once a quarter of the ring has been consumed.
        #[inline]
        fn consumed(&mut self) {
            if self.engine.unpublished() >= self.cap / 4 {
                self.publish();
            }
        }

        fn publish(&mut self) {
            let wake = self.engine.publish();
            self.link.wake(wake, self.engine.words.own_index());
        }
    }

    /// Records taken together and released to the producer with one publication of the
    /// read index; see [`Consumer::batch`]. Publishes on drop.
    #[derive(Debug)]
    pub struct RecvBatch<'a> {
        consumer: &'a mut Consumer,
    }

    impl RecvBatch<'_> {
        /// As [`Consumer::try_recv`], without publishing the read index (unless the ring
        /// is found empty).
        ///
        /// # Errors
        /// As [`Consumer::try_recv`].
        #[inline]
        pub fn try_recv(&mut self, out: &mut Vec<u8>) -> Result<()> {
            self.consumer.recv(out, Patience::Never, false)
        }

        /// As [`Consumer::recv_timeout`], without publishing the read index (unless it has
        /// to wait).
        ///
        /// # Errors
        /// As [`Consumer::recv_timeout`].
        #[inline]
        pub fn recv_timeout(&mut self, out: &mut Vec<u8>, timeout: Duration) -> Result<()> {
            self.consumer.recv(out, Patience::For(timeout), false)
        }

        /// Releases every record taken in the batch to the producer (also done on drop).
        pub fn finish(self) {}
    }

    impl Drop for RecvBatch<'_> {
        fn drop(&mut self) {
            self.consumer.publish();
        }
    }

    // ------------------------------------------------------------------ typed ring

    /// The producer of a ring of `T` items in fixed slots (no per-item header).
    #[derive(Debug)]
    pub struct PodProducer<T: bytemuck::Pod> {
        pub(super) engine: core::PodProducer<T>,
        pub(super) link: Link,
    }

    impl<T: bytemuck::Pod> PodProducer<T> {
        /// Creates a ring of `options.capacity()` items of `T` and hands it to the consumer
        /// at the other end of `channel` (which calls [`PodConsumer::setup`] with the same
        /// `T`).
        ///
        /// # Errors
        /// As [`Producer::setup`].
        pub fn setup(channel: Channel, options: &RingOptions) -> Result<PodProducer<T>> {
            let (link, cap, peer_flags) = producer_setup(channel, options, pod_kind::<T>()?)?;
            Ok(PodProducer::from_link(link, cap, peer_flags))
        }

        /// The producer over a ring set up by `producer_setup` (or its async twin).
        pub(super) fn from_link(mut link: Link, cap: u32, peer_flags: u32) -> PodProducer<T> {
            let words = words(&mut link.own, &link.peer);
            // SAFETY: `cap` slots of T follow the page-aligned control page of our own
            // mapping (align_of::<T>() <= 4096 checked in pod_kind); written only by us.
            let engine = unsafe {
                core::PodProducer::new(
                    data_ptr(&mut link),
                    cap,
                    words,
                    peer_flags & FLAG_PARKS != 0,
                )
            };
            PodProducer { engine, link }
        }

        /// This side's counters: units moved, waits, parks, wakes, index loads, peer
        /// corruption ([`RingStats`]).
        pub fn stats(&self) -> RingStats {
            self.link.stats(self.engine.counters, self.engine.units())
        }

        /// Sends `item` (publishes it), if there is room now.
        ///
        /// # Errors
        /// [`Error::WouldBlock`] if the ring is full; [`Error::PeerClosed`] if it has stayed
        /// full and the consumer is gone; [`Error::PeerCorrupt`].
        #[inline]
        pub fn try_send(&mut self, item: T) -> Result<()> {
            self.push_one(item, Patience::Never)
        }

        /// Sends `item` (publishes it), waiting up to `timeout` for room.
        ///
        /// # Errors
        /// [`Error::Timeout`], [`Error::PeerClosed`], [`Error::PeerCorrupt`].
        #[inline]
        pub fn send_timeout(&mut self, item: T, timeout: Duration) -> Result<()> {
            self.push_one(item, Patience::For(timeout))
        }

        /// Pushes into a free slot the cached read index shows (the fast path: no shared
        /// load), or goes the slow way.
        #[inline]
        fn push_one(&mut self, item: T, wait: Patience) -> Result<()> {
            if self.link.ok() && self.engine.push_cached(item) {
                self.publish();
                return Ok(());
            }
            self.push_slow(item, wait)
        }

        #[cold]
        fn push_slow(&mut self, item: T, mut wait: Patience) -> Result<()> {
            loop {
                match self.attempt_push(item)? {
                    Ok(()) => return Ok(()),
                    Err(blocked) => {
                        let deadline = wait.deadline(&mut self.link)?;
                        self.link.wait(&self.engine.words, blocked.seen, deadline)?;
                    }
                }
            }
        }

        /// Pushes and publishes `item` if there is room, or says what to wait for.
        #[inline]
        pub(super) fn attempt_push(&mut self, item: T) -> Result<Attempt<()>> {
            self.link.check_failed()?;
            loop {
                if self.engine.push_cached(item) {
                    self.publish();
                    return Ok(Ok(()));
                }
                match self.engine.free(1) {
                    Ok(Ok(_)) => self.link.unblocked(),
                    Ok(Err(blocked)) => return Ok(Err(blocked)),
                    Err(c) => return Err(self.link.corrupt(c)),
                }
            }
        }

        /// Sends as many of `items` as fit now, with one publication; returns how many.
        ///
        /// # Errors
        /// [`Error::WouldBlock`] if none fit (and `items` is not empty); [`Error::PeerCorrupt`].
        pub fn try_send_slice(&mut self, items: &[T]) -> Result<usize> {
            self.send_slice(items, Patience::Never)
        }

        fn send_slice(&mut self, items: &[T], mut wait: Patience) -> Result<usize> {
            loop {
                match self.attempt_push_slice(items)? {
                    Ok(n) => return Ok(n),
                    Err(blocked) => {
                        let deadline = wait.deadline(&mut self.link)?;
                        self.link.wait(&self.engine.words, blocked.seen, deadline)?;
                    }
                }
            }
        }

        /// Pushes and publishes as many of `items` as fit (at least one), or says what to
        /// wait for.
        pub(super) fn attempt_push_slice(&mut self, items: &[T]) -> Result<Attempt<usize>> {
            self.link.check_failed()?;
            if items.is_empty() {
                return Ok(Ok(0));
            }
            match self.engine.free(items.len().min(u32::MAX as usize) as u32) {
                Ok(Ok(free)) => {
                    self.link.unblocked();
                    let n = items.len().min(free as usize);
                    self.engine.write(&items[..n]);
                    self.publish();
                    Ok(Ok(n))
                }
                Ok(Err(blocked)) => Ok(Err(blocked)),
                Err(c) => Err(self.link.corrupt(c)),
            }
        }

        /// Reserves up to `max` consecutive free slots, to be written in place and then
        /// [committed](PodReservation::commit) with one publication, if any slot is free
        /// now. The reservation may be shorter than `max`: it holds the free slots up to the
        /// end of the ring (the next reservation continues at the start).
        ///
        /// ```no_run
        /// # fn main() -> sealpipe::Result<()> {
        /// # let (a, _b) = sealpipe::Channel::pair()?;
        /// use sealpipe::ring::{PodProducer, RingOptions};
        /// let mut tx = PodProducer::<u64>::setup(a, &RingOptions::new(1024))?;
        /// let mut slots = tx.try_reserve_slice(32)?;
        /// let n = slots.len();
        /// for (i, slot) in slots.as_mut_slice().iter_mut().enumerate() {
        ///     *slot = i as u64; // written straight into the ring
        /// }
        /// slots.commit(n); // one index publication for all of them
        /// # Ok(()) }
        /// ```
        ///
        /// # Errors
        /// [`Error::WouldBlock`] if the ring is full (and `max` is not 0);
        /// [`Error::PeerClosed`] if it stays full and the consumer is gone;
        /// [`Error::PeerCorrupt`].
        pub fn try_reserve_slice(&mut self, max: usize) -> Result<PodReservation<'_, T>> {
            self.reserve_slice(max, Patience::Never)
        }

        /// [`try_reserve_slice`](Self::try_reserve_slice), waiting up to `timeout` for a
        /// free slot.
        ///
        /// # Errors
        /// [`Error::Timeout`], [`Error::PeerClosed`], [`Error::PeerCorrupt`].
        pub fn reserve_slice_timeout(
            &mut self,
            max: usize,
            timeout: Duration,
        ) -> Result<PodReservation<'_, T>> {
            self.reserve_slice(max, Patience::For(timeout))
        }

        fn reserve_slice(
            &mut self,
            max: usize,
            mut wait: Patience,
        ) -> Result<PodReservation<'_, T>> {
            // At most the capacity: asking for more would reload the consumer's index on
            // every call.
            let want = max.min(self.engine.capacity() as usize) as u32;
            loop {
                self.link.check_failed()?;
                if want == 0 {
                    break;
                }
                match self.engine.free(want) {
                    Ok(Ok(_)) => {
                        self.link.unblocked();
                        break;
                    }
                    Ok(Err(blocked)) => {
                        let deadline = wait.deadline(&mut self.link)?;
                        self.link.wait(&self.engine.words, blocked.seen, deadline)?;
                    }
                    Err(c) => return Err(self.link.corrupt(c)),
                }
            }
            let (slots, len) = self.engine.contiguous(want);
            Ok(PodReservation {
                producer: self,
                slots,
                len: len as usize,
            })
        }

        #[inline]
        fn publish(&mut self) {
            let wake = self.engine.publish();
            self.link.wake(wake, self.engine.words.own_index());
        }
    }

    /// Consecutive free slots of a typed ring, written in place; see
    /// [`PodProducer::try_reserve_slice`].
    ///
    /// Dropping it without [`commit`](PodReservation::commit) abandons it.
    #[derive(Debug)]
    pub struct PodReservation<'a, T: bytemuck::Pod> {
        producer: &'a mut PodProducer<T>,
        slots: *mut T,
        len: usize,
    }

    impl<T: bytemuck::Pod> PodReservation<'_, T> {
        /// How many slots are reserved.
        pub fn len(&self) -> usize {
            self.len
        }

        /// Whether no slot is reserved (only when asked for 0).
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// The reserved slots, in the ring (initially whatever the ring held there).
        pub fn as_mut_slice(&mut self) -> &mut [T] {
            // SAFETY: the reservation covers `len` free slots from `slots`, inside the data
            // area of the producer's own mapping, aligned for T; no other process writes it
            // (FUTURE_WRITE seal), the consumer does not read free slots before they are
            // published, and the `&mut self` borrow keeps the producer from handing them
            // out again while the slice lives. Any bit pattern is a valid T (Pod).
            unsafe { std::slice::from_raw_parts_mut(self.slots, self.len) }
        }

        /// Publishes the first `n` reserved slots (at most [`len`](Self::len); the rest are
        /// abandoned), with one index publication.
        pub fn commit(self, n: usize) {
            let p = self.producer;
            p.engine.advance(n.min(self.len) as u32);
            p.publish();
        }
    }

    /// The consumer of a ring of `T` items.
    #[derive(Debug)]
    pub struct PodConsumer<T: bytemuck::Pod> {
        pub(super) engine: core::PodConsumer<T>,
        pub(super) link: Link,
        cap: u32,
        _t: PhantomData<T>,
    }

    impl<T: bytemuck::Pod> PodConsumer<T> {
        /// Receives a typed ring of `T` from the producer at the other end of `channel`.
        ///
        /// # Errors
        /// As [`Consumer::setup`]; [`Error::RingMismatch`] if the producer's item size
        /// differs from `size_of::<T>()`.
        pub fn setup(channel: Channel, options: &RingOptions) -> Result<PodConsumer<T>> {
            let (link, cap, peer_flags) = consumer_setup(channel, options, pod_kind::<T>()?)?;
            PodConsumer::from_link(link, cap, peer_flags)
        }

        /// The consumer over a ring set up by `consumer_setup` (or its async twin).
        pub(super) fn from_link(
            mut link: Link,
            cap: u32,
            peer_flags: u32,
        ) -> Result<PodConsumer<T>> {
            let words = words(&mut link.own, &link.peer);
            let data = peer_data(&link, cap as usize * std::mem::size_of::<T>())?;
            // SAFETY: `cap` slots of T (size checked in setup) follow the page-aligned
            // control page of the producer's mapping, in `link.peer`, which lives as long as
            // the engine: both sit in the PodConsumer, and `link` is never replaced.
            let engine =
                unsafe { core::PodConsumer::new(data, cap, words, peer_flags & FLAG_PARKS != 0) };
            let engine = engine.ok_or(Error::PeerCorrupt {
                what: "ring data area",
            })?;
            Ok(PodConsumer {
                engine,
                link,
                cap,
                _t: PhantomData,
            })
        }

        /// This side's counters: units moved, waits, parks, wakes, index loads, peer
        /// corruption ([`RingStats`]).
        pub fn stats(&self) -> RingStats {
            self.link.stats(self.engine.counters, self.engine.units())
        }

        /// Capacity in items.
        pub fn capacity(&self) -> usize {
            self.cap as usize
        }

        /// Takes the next item, if one is published.
        ///
        /// # Errors
        /// [`Error::WouldBlock`] if the ring is empty; [`Error::PeerClosed`] if it has stayed
        /// empty and the producer is gone; [`Error::PeerCorrupt`].
        #[inline]
        pub fn try_recv(&mut self) -> Result<T> {
            self.pop_one(Patience::Never)
        }

        /// Takes the next item, waiting up to `timeout`.
        ///
        /// # Errors
        /// [`Error::Timeout`], [`Error::PeerClosed`] (once the producer is gone and the ring
        /// is empty), [`Error::PeerCorrupt`].
        #[inline]
        pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
            self.pop_one(Patience::For(timeout))
        }

        /// Fills the start of `out` with as many items as are published; returns how many.
        ///
        /// # Errors
        /// [`Error::WouldBlock`] if the ring is empty (and `out` is not); [`Error::PeerCorrupt`].
        pub fn try_recv_slice(&mut self, out: &mut [T]) -> Result<usize> {
            self.recv_slice(out, Patience::Never)
        }

        /// Takes an item the cached write index shows (the fast path: no shared load), or
        /// goes the slow way.
        #[inline]
        fn pop_one(&mut self, wait: Patience) -> Result<T> {
            if self.link.ok() {
                if let Some(item) = self.engine.pop_cached() {
                    self.consumed();
                    return Ok(item);
                }
            }
            self.pop_slow(wait)
        }

        #[cold]
        fn pop_slow(&mut self, mut wait: Patience) -> Result<T> {
            loop {
                match self.attempt_pop()? {
                    Ok(item) => return Ok(item),
                    Err(blocked) => {
                        let deadline = wait.deadline(&mut self.link)?;
                        self.link.wait(&self.engine.words, blocked.seen, deadline)?;
                    }
                }
            }
        }

        /// Takes the next item if one is published, or says what to wait for.
        #[inline]
        pub(super) fn attempt_pop(&mut self) -> Result<Attempt<T>> {
            self.link.check_failed()?;
            loop {
                if let Some(item) = self.engine.pop_cached() {
                    self.consumed();
                    return Ok(Ok(item));
                }
                match self.engine.available() {
                    Ok(Ok(_)) => self.link.unblocked(),
                    Ok(Err(blocked)) => {
                        self.publish();
                        return Ok(Err(blocked));
                    }
                    Err(c) => return Err(self.link.corrupt(c)),
                }
            }
        }

        fn recv_slice(&mut self, out: &mut [T], mut wait: Patience) -> Result<usize> {
            loop {
                match self.attempt_pop_slice(out)? {
                    Ok(n) => return Ok(n),
                    Err(blocked) => {
                        let deadline = wait.deadline(&mut self.link)?;
                        self.link.wait(&self.engine.words, blocked.seen, deadline)?;
                    }
                }
            }
        }

        /// Fills the start of `out` with the published items (at least one), or says what
        /// to wait for.
        pub(super) fn attempt_pop_slice(&mut self, out: &mut [T]) -> Result<Attempt<usize>> {
            self.link.check_failed()?;
            if out.is_empty() {
                return Ok(Ok(0));
            }
            match self.engine.available() {
                Ok(Ok(avail)) => {
                    self.link.unblocked();
                    let n = out.len().min(avail as usize);
                    self.engine.read(&mut out[..n]);
                    self.consumed();
                    Ok(Ok(n))
                }
                Ok(Err(blocked)) => {
                    self.publish();
                    Ok(Err(blocked))
                }
                Err(c) => Err(self.link.corrupt(c)),
            }
        }

        /// Publishes the read index once a quarter of the ring has been consumed.
        #[inline]
        fn consumed(&mut self) {
            if self.engine.unpublished() >= self.cap / 4 {
                self.publish();
            }
        }

        fn publish(&mut self) {
            let wake = self.engine.publish();
            self.link.wake(wake, self.engine.words.own_index());
        }
    }
}

/// The ring's shared-memory layout: byte offsets in each side's control page.
///
/// **Not part of sealpipe's public API**: hidden from the documentation and exempt from
/// semver. It is public only so that this crate's integration tests can forge ring
/// headers; implementers in other languages: `PROTOCOL.md` is the reference.
///
/// Both memfds start with a header of little-endian fields; the producer's data area
/// follows its control page. Offsets of the index and wait words come from `repr(C)`
/// structs of [`crossbeam_utils::CachePadded`] fields, so each word has a cache line (pair)
/// of its own; the header records them and the peer checks they match its own.
#[doc(hidden)]
pub mod layout {
    use crossbeam_utils::CachePadded;

    use std::sync::atomic::{AtomicU32, AtomicU64};

    #[repr(C)]
    struct ControlPage {
        header: CachePadded<[u8; HEADER_LEN]>,
        index: CachePadded<AtomicU32>,
        wait: CachePadded<AtomicU64>,
    }

    /// Length of a control page: the consumer's memfd, and the producer's header before its
    /// data area.
    pub const CONTROL_LEN: usize = 4096;
    /// Length of the header fields at the start of a control page.
    pub const HEADER_LEN: usize = 64;
    /// Offset of the side's index word (`u32`, the write index for the producer, the read
    /// index for the consumer).
    pub const INDEX_AT: usize = std::mem::offset_of!(ControlPage, index);
    /// Offset of the side's wait word (`u64`: bit 32 set while parked, bit 33 set if the
    /// parked side asks to be woken by one byte sent on the setup channel rather than by
    /// `FUTEX_WAKE` on the index word, low 32 bits the peer index value it waits to change).
    pub const WAIT_AT: usize = std::mem::offset_of!(ControlPage, wait);
    const _: () = assert!(std::mem::size_of::<ControlPage>() <= CONTROL_LEN);
    const _: () = assert!(INDEX_AT % 64 == 0 && WAIT_AT % 64 == 0 && WAIT_AT - INDEX_AT >= 64);

    /// Magic at the start of the producer's memfd.
    pub const PRODUCER_MAGIC: [u8; 8] = *b"SPRINGP\x01";
    /// Magic at the start of the consumer's memfd.
    pub const CONSUMER_MAGIC: [u8; 8] = *b"SPRINGC\x01";
    /// Ring protocol version.
    pub const VERSION: u32 = 1;
    /// `KIND_AT` value of a byte-record ring.
    pub const KIND_BYTES: u32 = 1;
    /// `KIND_AT` value of a typed (`Pod`) ring.
    pub const KIND_POD: u32 = 2;
    /// `FLAGS_AT` bit: this side may park, so the peer must check its wait word.
    pub const FLAG_PARKS: u32 = 1;

    /// Offset of the 8-byte magic.
    pub const MAGIC_AT: usize = 0;
    /// Offset of the `u32` version.
    pub const VERSION_AT: usize = 8;
    /// Offset of the `u32` ring kind (producer only).
    pub const KIND_AT: usize = 12;
    /// Offset of the `u32` capacity in units (producer only).
    pub const CAPACITY_AT: usize = 16;
    /// Offset of the `u32` unit size: 1 for bytes, `size_of::<T>()` (producer only).
    pub const UNIT_AT: usize = 20;
    /// Offset of the `u32` offset of the data area (producer only; = `CONTROL_LEN`).
    pub const DATA_AT_AT: usize = 24;
    /// Offset of the `u32` flags.
    pub const FLAGS_AT: usize = 28;
    /// Offset of the `u32` copy of `INDEX_AT`.
    pub const INDEX_AT_AT: usize = 32;
    /// Offset of the `u32` copy of `WAIT_AT`.
    pub const WAIT_AT_AT: usize = 36;
}
