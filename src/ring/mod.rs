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
//! Two memfds, each written by one side only: the **producer's** holds a control page (its
//! write index and wait word) and the data area; the **consumer's** is one control page
//! (its read index and wait word). Each is sealed `FUTURE_WRITE | SHRINK | GROW | SEAL`
//! before it is sent: its owner keeps the writable mapping it made before sealing, the
//! other side can only map it read-only. [`Producer::setup`] and [`Consumer::setup`]
//! exchange them over a [`Channel`](crate::Channel) and verify them like any region. The
//! channel then stays open: its end-of-file is how a waiting side learns that the peer died.
//! The layout, the record framing and the wait protocol are specified in `PROTOCOL.md`
//! (section "Ring"), so a peer in another language can take either side.
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
//! budget set by the measured cost of a futex wake on the running machine), then parks on
//! a futex on the peer's index word. A side that parks says so in its wait word, and the
//! peer wakes it only then, once: a busy stream makes no system call. Every wait has a
//! deadline and notices a dead peer within about 20 ms; non-waiting calls (`try_*`) that
//! keep finding the ring blocked notice it too.
//!
//! With the `tokio` feature, `AsyncProducer` and its siblings wait in the runtime's
//! reactor instead (the peer wakes them with a byte on the setup channel). Blocking and
//! async sides work together on the same ring.
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
#[cfg(not(loom))]
mod bytes;
#[cfg_attr(loom, allow(dead_code))]
pub(crate) mod core; // pub(crate) for `crate::fuzz::ring_ops`
#[cfg(any(test, fuzzing))]
pub(crate) mod model;
#[cfg(not(loom))]
mod setup;
mod sync;
#[cfg(not(loom))]
mod typed;
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

#[cfg(all(feature = "tokio", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use async_ring::{AsyncConsumer, AsyncPodConsumer, AsyncPodProducer, AsyncProducer};
#[cfg(not(loom))]
pub use bytes::{Consumer, Producer, RecvBatch, Reservation, SendBatch};
#[cfg(all(any(fuzzing, test), not(loom)))]
pub(crate) use setup::check_headers;
#[cfg(not(loom))]
pub use setup::RingOptions;
#[cfg(not(loom))]
pub use typed::{PodConsumer, PodProducer, PodReservation};
#[cfg(not(loom))]
pub use wait::{calibrated_spin_budget, RingStats, SpinPolicy};

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
