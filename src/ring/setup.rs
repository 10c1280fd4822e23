//! Building one side of a ring: [`RingOptions`], the [`Link`] between the two mappings,
//! the setup handshake and the checks of each side's header.

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use super::core::{self, Blocked, Corrupt, Engine, Words};
use super::layout::*;
use super::wait;
use super::wait::{RingStats, SpinPolicy};
use crate::error::{Error, Result};
use crate::shm::{SharedBytes, SharedBytesMut};
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
    /// Options for a ring of `capacity` units: bytes for [`Producer`](super::Producer), items for
    /// [`PodProducer`](super::PodProducer). It must be a power of two from 16 to 2^31 (checked at
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
    pub(super) own: ProducerWritableRegion,
    pub(super) peer: RegionView,
    pub(super) channel: Channel,
    pub(super) spin: SpinPolicy,
    pub(super) stats: RingStats,
    pub(super) failed: Option<&'static str>,
    /// Consecutive non-waiting calls that found the ring blocked, and when the clock was
    /// first read during this run of them (see `blocked_try`).
    pub(super) blocked_tries: u32,
    pub(super) blocked_since: Option<Instant>,
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
    pub(super) fn ok(&self) -> bool {
        self.failed.is_none()
    }

    /// The wait counters with an engine's counters.
    pub(super) fn stats(&self, c: core::Counters, units: u64) -> RingStats {
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
    pub(super) fn blocked_try(&mut self) -> Error {
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
    pub(super) fn unblocked(&mut self) {
        self.blocked_tries = 0;
        self.blocked_since = None;
    }

    pub(super) fn corrupt(&mut self, c: Corrupt) -> Error {
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

    pub(super) fn check_failed(&self) -> Result<()> {
        match self.failed {
            Some(what) => Err(Error::PeerCorrupt { what }),
            None => Ok(()),
        }
    }

    #[inline]
    pub(super) fn wake(&mut self, how: core::Wake, own_index: &AtomicU32) {
        if how != core::Wake::None {
            self.wake_slow(how, own_index);
        }
    }

    #[cold]
    pub(super) fn wake_slow(&mut self, how: core::Wake, own_index: &AtomicU32) {
        self.stats.wakes += 1;
        wait::wake(how, own_index, &self.channel);
    }

    pub(super) fn wait(
        &mut self,
        words: &Words<'_>,
        seen: u32,
        deadline: Option<Instant>,
    ) -> Result<()> {
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

/// What an engine needs from the two mappings of a [`Link`], taken once.
///
/// `'static` stands for "as long as the link": the engine is stored next to its link in
/// one struct that never replaces the link, and moving the link does not move the mappings.
pub(super) struct Mapped {
    /// This side's control words.
    pub(super) words: Words<'static>,
    /// Our own mapping after the control page: a producer's data area (empty for a
    /// consumer).
    pub(super) own_data: SharedBytesMut<'static>,
    /// The peer's whole mapping, which the peer may write at any time.
    pub(super) peer: SharedBytes<'static>,
}

/// Takes what the engine needs from `link`'s mappings. Every pointer into our own
/// mapping comes from one mutable borrow of it (a second borrow would invalidate the
/// pointers taken from the first).
pub(super) fn mapped(link: &mut Link) -> Mapped {
    let own = link.own.as_mut_slice();
    let own_len = own.len();
    let own = own.as_mut_ptr();
    let peer = link.peer.bytes();
    // SAFETY: both mappings are at least CONTROL_LEN bytes (checked at setup) and
    // page-aligned, so the words at INDEX_AT and WAIT_AT are in bounds and aligned for
    // their atomics, and our data area is the rest of our mapping; the mappings live as
    // long as the link (see `Mapped`). Our own memory is written only by us (the memfd is
    // sealed against other writers), its data area only through `own_data`; the peer's
    // words are only loaded (relaxed atomic loads of at most 8 bytes are allowed on its
    // read-only mapping), and nothing takes a `&mut` to either control page.
    unsafe {
        Mapped {
            words: Words::new(
                &*own.add(INDEX_AT).cast::<AtomicU32>(),
                &*own.add(WAIT_AT).cast::<AtomicU64>(),
                &*peer.as_ptr().add(INDEX_AT).cast::<AtomicU32>(),
                &*peer.as_ptr().add(WAIT_AT).cast::<AtomicU64>(),
            ),
            own_data: SharedBytesMut::new(own.add(CONTROL_LEN), own_len - CONTROL_LEN),
            peer: SharedBytes::new(peer.as_ptr(), peer.len()),
        }
    }
}

/// What a non-waiting step produced: a value, or the peer index value to wait on.
pub(super) type Attempt<T> = std::result::Result<T, Blocked>;

/// How long a call may wait. The deadline is computed only once the call has to wait,
/// so the fast path never reads the clock.
#[derive(Debug, Clone, Copy)]
pub(super) enum Patience {
    Never,
    For(Duration),
    Until(Option<Instant>),
}

impl Patience {
    /// The deadline to wait for (`None`: forever), or the error of a call that does not
    /// wait ([`Link::blocked_try`]).
    pub(super) fn deadline(&mut self, link: &mut Link) -> Result<Option<Instant>> {
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

/// One side of a ring as the wait driver sees it: its link and its control words.
pub(super) trait Side {
    /// The engine of this side.
    type Engine: Engine<'static>;

    /// The link and the engine, borrowed together.
    fn parts(&mut self) -> (&mut Link, &mut Self::Engine);

    /// The link and the control words, borrowed together.
    fn link_and_words(&mut self) -> (&mut Link, &Words<'static>) {
        let (link, engine) = self.parts();
        (link, engine.words())
    }

    /// Publishes this side's index, waking the peer if it asked to be.
    #[inline]
    fn publish(&mut self) {
        let (link, engine) = self.parts();
        let wake = engine.publish();
        link.wake(wake, engine.words().own_index());
    }

    /// What an engine's answer means for an attempt: a value (the ring moves again),
    /// `Blocked` after publishing this side's index (never wait on a peer that cannot see
    /// what this side did), or the ring failed for good by a corrupt peer.
    #[inline]
    fn settle<T>(&mut self, answer: Result<Attempt<T>, Corrupt>) -> Result<Attempt<T>> {
        match answer {
            Ok(Ok(v)) => {
                self.link_and_words().0.unblocked();
                Ok(Ok(v))
            }
            Ok(Err(blocked)) => {
                self.publish();
                Ok(Err(blocked))
            }
            Err(c) => Err(self.link_and_words().0.corrupt(c)),
        }
    }

    /// The one wait loop of the blocking sides: runs `attempt` until it gives a value,
    /// waiting between tries for what it says (the peer's index to move from the value it
    /// saw) as long as `wait` allows.
    fn drive<T>(
        &mut self,
        mut wait: Patience,
        mut attempt: impl FnMut(&mut Self) -> Result<Attempt<T>>,
    ) -> Result<T>
    where
        Self: Sized,
    {
        loop {
            match attempt(self)? {
                Ok(v) => return Ok(v),
                Err(blocked) => {
                    let (link, words) = self.link_and_words();
                    let deadline = wait.deadline(link)?;
                    link.wait(words, blocked.seen, deadline)?;
                }
            }
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
pub(super) fn producer_setup(
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

pub(super) fn producer_setup_untraced(
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
pub(super) fn consumer_setup(
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

pub(super) fn consumer_setup_untraced(
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

pub(super) fn time_left(end: Option<Instant>, timeout: Duration) -> Duration {
    end.map_or(timeout, |e| e.saturating_duration_since(Instant::now()))
}

/// The producer's memfd with its header, sealed, ready to send.
pub(super) fn producer_offer(options: &RingOptions, kind: Kind) -> Result<ProducerWritableRegion> {
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

pub(super) fn flags(spin: SpinPolicy) -> u32 {
    if spin.parks() {
        FLAG_PARKS
    } else {
        0
    }
}

pub(super) fn check_common(header: &[u8; HEADER_LEN], magic: &[u8; 8]) -> Result<()> {
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
    if get(header, INDEX_AT_AT) != INDEX_AT as u32 || get(header, WAIT_AT_AT) != WAIT_AT as u32 {
        return Err(Error::RingMismatch {
            what: "control word layout differs",
        });
    }
    Ok(())
}

pub(super) fn put(header: &mut [u8; HEADER_LEN], at: usize, bytes: &[u8]) {
    header[at..at + bytes.len()].copy_from_slice(bytes);
}

pub(super) fn get(header: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&header[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The peer's data area: `len` bytes after its control page.
pub(super) fn peer_data(peer: &SharedBytes<'static>, len: usize) -> Result<SharedBytes<'static>> {
    peer.subslice(CONTROL_LEN, len)
}
