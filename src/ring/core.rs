//! The ring's pure logic: index arithmetic, validation of the peer's indices, record
//! framing, and the publish/park protocol.
//!
//! Nothing here makes a system call or knows about memfds: the engines run over a raw
//! pointer and a length (a mapping in production, a `Vec` under Miri) and over control
//! words given as pointers to atomics. That is what lets the unit tests below run under
//! Miri, and the protocol functions under loom (`tests/loom_ring.rs`).
//!
//! Invariants (all indices are `u32` counters that wrap; positions are `index & (cap - 1)`):
//! - `cap` is a power of two in `MIN_CAPACITY ..= MAX_CAPACITY` units (bytes for the byte
//!   ring, slots for the typed ring), so `write - read` (wrapping) in `0 ..= cap` tells full
//!   from empty without ambiguity;
//! - each side stores only its own index; the other side's index is loaded once into a
//!   local (`cached_*`), validated (`check_write`/`check_read`) and only then used;
//! - in the byte ring every record starts 8-aligned and is contiguous: a record that would
//!   cross the end is preceded by a pad header that skips to position 0.
#![allow(unsafe_code)]

use super::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// The smallest capacity accepted, in units.
pub(crate) const MIN_CAPACITY: u32 = 16;
/// The largest capacity accepted, in units: indices are `u32` and must tell full from empty.
pub(crate) const MAX_CAPACITY: u32 = 1 << 31;

/// Bytes of the header in front of each byte-ring record.
pub(crate) const RECORD_HEADER: u32 = 8;
/// Header kind of a record.
const KIND_RECORD: u32 = 0;
/// Header kind of padding that skips to the start of the ring.
const KIND_PAD: u32 = 1;

/// Bit of a wait word saying "this side is parked (or about to park)"; the low 32 bits hold
/// the peer index value it saw and waits to change.
pub(crate) const WAITING: u64 = 1 << 32;
/// Bit of a wait word saying "wake me with a byte on the setup channel, not a futex wake"
/// (an async waiter, parked in its runtime's reactor on the channel's socket).
pub(crate) const SIGNAL: u64 = 1 << 33;

/// How a publication must wake the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The peer is not waiting for this value.
    None,
    /// The peer sleeps in `FUTEX_WAIT` on our index word.
    Futex,
    /// The peer awaits readiness of its end of the setup channel.
    Signal,
}

/// A value read from the peer's memory was impossible. The string says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) &'static str);

/// Whether `cap` units is a valid capacity.
pub(crate) fn valid_capacity(cap: u64) -> bool {
    cap.is_power_of_two() && (u64::from(MIN_CAPACITY)..=u64::from(MAX_CAPACITY)).contains(&cap)
}

/// Validates the producer's write index `new_write` as seen by a consumer at `read` that
/// last saw `old_write`: it may not move backwards, nor past `read + cap`.
pub(crate) fn check_write(
    cap: u32,
    read: u32,
    old_write: u32,
    new_write: u32,
) -> Result<(), Corrupt> {
    let old_used = old_write.wrapping_sub(read);
    let new_used = new_write.wrapping_sub(read);
    if new_used > cap {
        return Err(Corrupt(
            "write index more than the capacity ahead of the read index",
        ));
    }
    if new_used < old_used {
        return Err(Corrupt("write index moved backwards"));
    }
    Ok(())
}

/// Validates the consumer's read index `new_read` as seen by a producer at `write` that last
/// saw `old_read`: it may not move backwards, nor past `write`.
pub(crate) fn check_read(write: u32, old_read: u32, new_read: u32) -> Result<(), Corrupt> {
    let advanced = new_read.wrapping_sub(old_read);
    let outstanding = write.wrapping_sub(old_read);
    if advanced > outstanding {
        return Err(Corrupt(
            "read index moved backwards or past the write index",
        ));
    }
    Ok(())
}

/// Units a byte-ring record of `len` payload bytes occupies (header + payload, 8-aligned).
/// `None` if it cannot fit any ring.
pub(crate) fn record_span(len: usize) -> Option<u32> {
    let padded = len.checked_add(7)? & !7;
    u32::try_from(padded.checked_add(RECORD_HEADER as usize)?).ok()
}

/// The longest payload a byte ring of `cap` bytes accepts: a record may take at most half
/// the ring, which guarantees that it always fits once the ring is empty, wherever the
/// write position is (either before the middle, or after it with padding to the end).
pub(crate) fn max_record_len(cap: u32) -> usize {
    (cap / 2 - RECORD_HEADER) as usize
}

/// Where a record goes: `pad` bytes of padding at the write position (0 or up to the end of
/// the ring), then the record's header at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) pad: u32,
    pub(crate) offset: u32,
    pub(crate) span: u32,
}

/// Places a record of `span` units at `write` with `free` units free, or `None` if it does
/// not fit now.
pub(crate) fn place(cap: u32, write: u32, free: u32, span: u32) -> Option<Placement> {
    let pos = write & (cap - 1);
    let to_end = cap - pos;
    if span <= to_end {
        (span <= free).then_some(Placement {
            pad: 0,
            offset: pos,
            span,
        })
    } else {
        (to_end.checked_add(span)? <= free).then_some(Placement {
            pad: to_end,
            offset: 0,
            span,
        })
    }
}

/// A record header, parsed and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Skip this many bytes (to the end of the ring).
    Pad(u32),
    /// A record: payload at `offset + RECORD_HEADER`, `len` bytes, `span` units in all.
    Record { offset: u32, len: u32, span: u32 },
}

/// Parses the header word `header` found at `read`, with `avail` units published after it.
pub(crate) fn parse(cap: u32, read: u32, avail: u32, header: u64) -> Result<Parsed, Corrupt> {
    let pos = read & (cap - 1);
    let len = header as u32;
    match (header >> 32) as u32 {
        KIND_PAD => {
            let skip = cap - pos;
            if skip > avail {
                return Err(Corrupt("padding beyond the published data"));
            }
            if pos == 0 {
                return Err(Corrupt("padding at the start of the ring"));
            }
            Ok(Parsed::Pad(skip))
        }
        KIND_RECORD => {
            if len as usize > max_record_len(cap) {
                return Err(Corrupt("record length over the ring's limit"));
            }
            // Cannot overflow: len <= cap / 2 - 8 <= 2^30.
            let span = len.div_ceil(8) * 8 + RECORD_HEADER;
            if span > avail {
                return Err(Corrupt("record longer than the published data"));
            }
            if span > cap - pos {
                return Err(Corrupt("record crosses the end of the ring"));
            }
            Ok(Parsed::Record {
                offset: pos,
                len,
                span,
            })
        }
        _ => Err(Corrupt("unknown record kind")),
    }
}

/// The header word of a record of `len` bytes.
pub(crate) fn record_header(len: u32) -> u64 {
    u64::from(KIND_RECORD) << 32 | u64::from(len)
}

/// The header word of padding.
pub(crate) fn pad_header() -> u64 {
    u64::from(KIND_PAD) << 32
}

/// Publishes `new` as this side's index. Returns whether the peer may be parked waiting for
/// it, so that the caller must wake it.
///
/// `woken` is the wait word this side last sent a wake for (0: none); a wait word equal to
/// it gets no second wake. Without that, every publication between a wake and the moment
/// the woken peer actually runs and withdraws its announcement (microseconds, or a whole
/// time slice on a busy machine) would make another `FUTEX_WAKE` system call: measured,
/// about 200 wakes per park on a loaded 2-vCPU machine. One wake per announcement is
/// enough: after it the waiter is runnable (or its `FUTEX_WAIT` returns at once, the word
/// having changed) and looks at the index again before it can park again, and it parks
/// again only with another `seen` value (the index cannot come back to the same value while
/// it waits: the peer can move it at most the capacity, < 2^32, ahead). Any other word seen
/// in between resets `woken`.
///
/// With `peer_parks`, a `SeqCst` fence separates the store from the load of the peer's wait
/// word; it pairs with the fence in [`prepare_park`] (Dekker): either the parking peer sees
/// `new`, or we see its wait word. (Fences rather than `SeqCst` accesses, because those are
/// what loom models exactly.) The wait word names the index value the peer saw; a wake is
/// needed only if that differs from `new` (otherwise the record is stale: the peer already
/// saw `new`); its [`SIGNAL`] bit says which kind of wake.
pub(crate) fn publish(
    own_index: &AtomicU32,
    new: u32,
    peer_wait: &AtomicU64,
    peer_parks: bool,
    woken: &mut u64,
) -> Wake {
    // Pairs with the fence in the peer's `load_peer`.
    own_index.store(new, Ordering::Release);
    if !peer_parks {
        return Wake::None;
    }
    fence(Ordering::SeqCst);
    let wait = peer_wait.load(Ordering::Relaxed);
    if wait == *woken {
        return Wake::None;
    }
    *woken = 0;
    if wait & WAITING == 0 || wait as u32 == new {
        Wake::None
    } else {
        *woken = wait;
        wake_kind(wait)
    }
}

/// The wake a parked waiter's wait word asks for.
fn wake_kind(wait: u64) -> Wake {
    if wait & SIGNAL != 0 {
        Wake::Signal
    } else {
        Wake::Futex
    }
}

/// Announces that this side will park until the peer's index differs from `seen` (asking
/// for a channel signal rather than a futex wake if `signal`), then re-checks it. Returns
/// `true` if it may sleep (the index still equals `seen`); on `false` the announcement has
/// been withdrawn.
pub(crate) fn prepare_park(
    own_wait: &AtomicU64,
    peer_index: &AtomicU32,
    seen: u32,
    signal: bool,
) -> bool {
    let how = if signal { WAITING | SIGNAL } else { WAITING };
    own_wait.store(how | u64::from(seen), Ordering::Relaxed);
    // Pairs with the fence in `publish`.
    fence(Ordering::SeqCst);
    // Relaxed (the peer's page is read-only here): a `false` only sends the caller back to
    // its engine, which loads the index again with `load_peer`.
    if peer_index.load(Ordering::Relaxed) == seen {
        return true;
    }
    own_wait.store(0, Ordering::Relaxed);
    false
}

/// Withdraws the announcement of [`prepare_park`] after waking.
pub(crate) fn end_park(own_wait: &AtomicU64) {
    own_wait.store(0, Ordering::Relaxed);
}

/// Loads the peer's index word, which lives in the peer's memory, mapped `PROT_READ` here,
/// with acquire semantics: a `Relaxed` load followed by `fence(Acquire)`. `std` guarantees
/// only `Relaxed` atomic loads (of at most 8 bytes) on read-only memory ("Atomic accesses
/// to read-only memory" in `core::sync::atomic`); the fence gives the same synchronisation
/// as an `Acquire` load with the peer's `Release` store (on x86 both compile to a plain
/// `mov`).
#[inline]
pub(crate) fn load_peer(peer_index: &AtomicU32) -> u32 {
    let v = peer_index.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    v
}

#[cfg(not(loom))]
pub(crate) use engines::*;

#[cfg(not(loom))]
mod engines {
    use std::marker::PhantomData;
    use std::ptr::NonNull;
    use std::sync::atomic::{AtomicU32, AtomicU64};

    use super::*;
    use crate::shm::SharedBytes;

    /// The four control words of a ring, seen from one side.
    ///
    /// Invariant: every pointer is valid and aligned for the whole life of the value (the
    /// owner keeps the mappings or boxes alive); `own_*` point to memory only this side
    /// writes, `peer_*` to memory only the peer writes (we only load it).
    #[derive(Debug)]
    pub(crate) struct Words {
        own_index: NonNull<AtomicU32>,
        own_wait: NonNull<AtomicU64>,
        peer_index: NonNull<AtomicU32>,
        peer_wait: NonNull<AtomicU64>,
        /// The peer's wait word this side last woke (see [`publish`]).
        pub(crate) woken: u64,
    }

    impl Words {
        /// # Safety
        /// The four pointers must be non-null, aligned, and valid for atomic access (loads
        /// only for `peer_*`, which may be read-only memory) for the life of the value.
        pub(crate) unsafe fn new(
            own_index: *const AtomicU32,
            own_wait: *const AtomicU64,
            peer_index: *const AtomicU32,
            peer_wait: *const AtomicU64,
        ) -> Option<Words> {
            Some(Words {
                own_index: NonNull::new(own_index.cast_mut())?,
                own_wait: NonNull::new(own_wait.cast_mut())?,
                peer_index: NonNull::new(peer_index.cast_mut())?,
                peer_wait: NonNull::new(peer_wait.cast_mut())?,
                woken: 0,
            })
        }

        pub(crate) fn own_index(&self) -> &AtomicU32 {
            // SAFETY: valid for the life of self (type invariant).
            unsafe { self.own_index.as_ref() }
        }
        pub(crate) fn own_wait(&self) -> &AtomicU64 {
            // SAFETY: valid for the life of self (type invariant).
            unsafe { self.own_wait.as_ref() }
        }
        pub(crate) fn peer_index(&self) -> &AtomicU32 {
            // SAFETY: valid for the life of self (type invariant); only loaded.
            unsafe { self.peer_index.as_ref() }
        }
        pub(crate) fn peer_wait(&self) -> &AtomicU64 {
            // SAFETY: valid for the life of self (type invariant); only loaded.
            unsafe { self.peer_wait.as_ref() }
        }
    }

    /// What a side must wait for when it cannot proceed: the peer's index to move from
    /// `seen`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Blocked {
        pub(crate) seen: u32,
    }

    /// Producer state of a byte ring.
    ///
    /// Invariants: `data` is valid for reads and writes of `cap` bytes, 8-aligned, and no
    /// other process writes it; `read <= published <= write <= read + cap` (wrapping), all
    /// multiples of 8.
    #[derive(Debug)]
    pub(crate) struct ByteProducer {
        data: NonNull<u8>,
        cap: u32,
        /// Position after the last committed record (published or not).
        write: u32,
        /// Index last stored to the shared write index.
        published: u32,
        /// The consumer's read index as last loaded and validated.
        cached_read: u32,
        pub(crate) words: Words,
        pub(crate) peer_parks: bool,
        pub(crate) counters: Counters,
    }

    /// Per-engine counters of the shared-memory traffic outside waits (plain increments on
    /// the engine's slow paths only).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub(crate) struct Counters {
        /// Loads of the peer's index word by the engine (each one is a cache-line transfer
        /// if the peer stored to it since).
        pub(crate) index_loads: u64,
        /// Times the engine found the ring full (producer) or empty (consumer) after
        /// loading the peer's index.
        pub(crate) blocked: u64,
        /// Units (bytes or items) this side moved up to `folded_at`, counted at each load of
        /// the peer's index: at least one happens every `cap` units, so the `u32` indices
        /// never wrap unseen between two and the fast paths count nothing.
        moved: u64,
        /// Own local index when `moved` was last brought up to date.
        folded_at: u32,
    }

    impl Counters {
        /// Brings `moved` up to the own local index `pos`.
        #[inline]
        fn fold(&mut self, pos: u32) {
            self.moved += u64::from(pos.wrapping_sub(self.folded_at));
            self.folded_at = pos;
        }

        /// Units moved up to the own local index `pos`.
        fn moved(&self, pos: u32) -> u64 {
            self.moved + u64::from(pos.wrapping_sub(self.folded_at))
        }
    }

    // SAFETY: the engine owns its side of the ring; the pointers are valid for its life
    // wherever it moves (the owner moves the mappings with it).
    unsafe impl Send for ByteProducer {}

    impl ByteProducer {
        /// # Safety
        /// `data` must be 8-aligned and valid for reads and writes of `cap` bytes that no
        /// one else writes, for the life of the value; `cap` must be a valid capacity.
        pub(crate) unsafe fn new(
            data: NonNull<u8>,
            cap: u32,
            words: Words,
            peer_parks: bool,
        ) -> Self {
            debug_assert!(valid_capacity(u64::from(cap)) && data.as_ptr() as usize % 8 == 0);
            ByteProducer {
                data,
                cap,
                write: 0,
                published: 0,
                cached_read: 0,
                words,
                peer_parks,
                counters: Counters::default(),
            }
        }

        pub(crate) fn capacity(&self) -> u32 {
            self.cap
        }

        /// Loads, validates and caches the consumer's read index.
        fn refresh_read(&mut self) -> Result<u32, Corrupt> {
            self.counters.index_loads += 1;
            self.counters.fold(self.write);
            // Pairs with the Release store in the consumer's `publish`.
            let r = load_peer(self.words.peer_index());
            check_read(self.published, self.cached_read, r)?;
            if r % 8 != 0 {
                return Err(Corrupt("read index not 8-aligned"));
            }
            self.cached_read = r;
            Ok(r)
        }

        /// Finds room for `len` bytes using only the cached read index (no shared load):
        /// the fast path of [`reserve`](Self::reserve). `len` must be at most
        /// `max_record_len(cap)`.
        #[inline]
        pub(crate) fn reserve_cached(&self, len: usize) -> Option<Placement> {
            debug_assert!(len <= max_record_len(self.cap));
            // len <= 2^30: cannot overflow.
            let span = ((len as u32 + 7) & !7) + RECORD_HEADER;
            let pos = self.write & (self.cap - 1);
            let used = self.write.wrapping_sub(self.cached_read);
            if span <= self.cap - pos && used + span <= self.cap {
                return Some(Placement {
                    pad: 0,
                    offset: pos,
                    span,
                });
            }
            None
        }

        /// Finds room for `len` bytes. `Ok(Err(blocked))` if the ring is too full now.
        /// `len` must be at most `max_record_len(cap)`.
        pub(crate) fn reserve(
            &mut self,
            len: usize,
        ) -> Result<Result<Placement, Blocked>, Corrupt> {
            debug_assert!(len <= max_record_len(self.cap));
            let span = record_span(len).unwrap_or(u32::MAX);
            let free = self.cap - self.write.wrapping_sub(self.cached_read);
            if let Some(p) = place(self.cap, self.write, free, span) {
                return Ok(Ok(p));
            }
            let r = self.refresh_read()?;
            let free = self.cap - self.write.wrapping_sub(r);
            let placed = place(self.cap, self.write, free, span).ok_or(Blocked { seen: r });
            if placed.is_err() {
                self.counters.blocked += 1;
            }
            Ok(placed)
        }

        /// Pointer to the payload of a reserved record.
        pub(crate) fn payload_ptr(&self, p: Placement) -> *mut u8 {
            // SAFETY: offset + 8 + len <= cap (place() guarantees offset + span <= cap).
            unsafe { self.data.as_ptr().add((p.offset + RECORD_HEADER) as usize) }
        }

        /// Writes the headers of a reserved record of `len` bytes and advances the local
        /// write position; the record becomes visible at the next [`publish`](Self::publish).
        #[inline]
        pub(crate) fn commit(&mut self, p: Placement, len: usize) {
            if p.pad != 0 {
                let at = self.write & (self.cap - 1);
                // SAFETY: `at` is 8-aligned and at + 8 <= cap (pad >= 8 bytes reach the end).
                unsafe {
                    self.data
                        .as_ptr()
                        .add(at as usize)
                        .cast::<u64>()
                        .write(pad_header().to_le())
                };
            }
            // SAFETY: p.offset is 8-aligned and p.offset + span <= cap.
            unsafe {
                self.data
                    .as_ptr()
                    .add(p.offset as usize)
                    .cast::<u64>()
                    .write(record_header(len as u32).to_le())
            };
            self.write = self.write.wrapping_add(p.pad + p.span);
        }

        /// Bytes committed so far (records with their headers, and padding).
        pub(crate) fn units(&self) -> u64 {
            self.counters.moved(self.write)
        }

        /// Publishes every committed record. Returns how to wake the consumer.
        #[inline]
        pub(crate) fn publish(&mut self) -> Wake {
            if self.write == self.published {
                return Wake::None;
            }
            self.published = self.write;
            let mut woken = self.words.woken;
            let wake = publish(
                self.words.own_index(),
                self.write,
                self.words.peer_wait(),
                self.peer_parks,
                &mut woken,
            );
            self.words.woken = woken;
            wake
        }
    }

    /// Consumer state of a byte ring.
    ///
    /// Invariants: `data` is `cap` bytes, 8-aligned, valid for the life of the value (its
    /// `'static` stands for that; the producer may write any of it at any time: it is only
    /// read by copy); `read <= cached_write <= read + cap` (wrapping).
    #[derive(Debug)]
    pub(crate) struct ByteConsumer {
        data: SharedBytes<'static>,
        cap: u32,
        read: u32,
        published: u32,
        cached_write: u32,
        pub(crate) words: Words,
        pub(crate) peer_parks: bool,
        pub(crate) counters: Counters,
    }

    // SAFETY: see ByteProducer.
    unsafe impl Send for ByteConsumer {}

    /// A validated record in the ring: payload at `offset`, `len` bytes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Record {
        pub(crate) offset: u32,
        pub(crate) len: u32,
        span: u32,
    }

    impl ByteConsumer {
        /// The consumer over `data`, whose length is its capacity (`None` if that is not a
        /// valid capacity or `data` is not 8-aligned).
        ///
        /// # Safety
        /// `data` must stay mapped for the life of the value (not only for `'a`).
        pub(crate) unsafe fn new(
            data: SharedBytes<'_>,
            words: Words,
            peer_parks: bool,
        ) -> Option<Self> {
            let cap = u32::try_from(data.len()).ok()?;
            if !valid_capacity(u64::from(cap)) || data.as_ptr() as usize % 8 != 0 {
                return None;
            }
            Some(ByteConsumer {
                // SAFETY: the same bytes, valid for the life of the value (the caller's
                // contract), which is what the `'static` of the field stands for.
                data: unsafe { SharedBytes::new(data.as_ptr(), data.len()) },
                cap,
                read: 0,
                published: 0,
                cached_write: 0,
                words,
                peer_parks,
                counters: Counters::default(),
            })
        }

        fn refresh_write(&mut self) -> Result<u32, Corrupt> {
            self.counters.index_loads += 1;
            self.counters.fold(self.read);
            // Pairs with the Release store in the producer's `publish`.
            let w = load_peer(self.words.peer_index());
            check_write(self.cap, self.read, self.cached_write, w)?;
            if w % 8 != 0 {
                return Err(Corrupt("write index not 8-aligned"));
            }
            self.cached_write = w;
            Ok(w)
        }

        /// The header word at `pos` (8-aligned, `pos + 8 <= cap`), loaded once (one aligned
        /// 8-byte load); `None` only if `pos` broke that contract.
        #[inline]
        fn header_at(&self, pos: u32) -> Option<u64> {
            debug_assert!(pos % 8 == 0 && pos + 8 <= self.cap);
            self.data.read::<u64>(pos as usize).ok().map(u64::from_le)
        }

        /// Starts loading the cache line after the one that holds the header at `pos`, if
        /// the published data reaches into it. A record that straddles two lines (a 64-byte
        /// payload with its 8-byte header always does) then costs one cache miss rather
        /// than two in a row: without the hint the payload's loads are issued only once the
        /// header has arrived and been validated. Measured on the 64 B spin round trip
        /// (two rings, 2-vCPU AMD EPYC): about half the time.
        #[inline]
        fn prefetch_tail(&self, pos: u32, avail: u32) {
            let next_line = (pos | 63) + 1;
            if next_line - pos < avail && next_line < self.cap {
                #[cfg(all(target_arch = "x86_64", not(miri)))]
                // SAFETY: a prefetch is a hint: it never faults and is not a memory access
                // of the program; the address is inside the mapping (next_line < cap).
                unsafe {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    _mm_prefetch::<_MM_HINT_T0>(self.data.as_ptr().add(next_line as usize).cast());
                }
            }
        }

        /// The next record if the cached write index shows one and its header is an
        /// ordinary record (no shared index load): the fast path of [`next`](Self::next).
        /// `None` sends the caller to `next`, which loads the header again and handles
        /// padding, an empty ring and corruption (this load's value is not used).
        #[inline]
        pub(crate) fn next_cached(&self) -> Option<Record> {
            let avail = self.cached_write.wrapping_sub(self.read);
            if avail == 0 {
                return None;
            }
            let pos = self.read & (self.cap - 1);
            let header = self.header_at(pos)?;
            // Kind KIND_RECORD (0) and a length within the ring's limit, in one compare.
            if header > max_record_len(self.cap) as u64 {
                return None;
            }
            let len = header as u32;
            // Cannot overflow: len <= cap / 2 - 8.
            let span = ((len + 7) & !7) + RECORD_HEADER;
            if span > avail || span > self.cap - pos {
                return None;
            }
            Some(Record {
                offset: pos + RECORD_HEADER,
                len,
                span,
            })
        }

        /// The next record, validated; `Ok(Err(blocked))` if none is published.
        pub(crate) fn next(&mut self) -> Result<Result<Record, Blocked>, Corrupt> {
            loop {
                let mut avail = self.cached_write.wrapping_sub(self.read);
                if avail == 0 {
                    let w = self.refresh_write()?;
                    avail = w.wrapping_sub(self.read);
                    if avail == 0 {
                        self.counters.blocked += 1;
                        return Ok(Err(Blocked { seen: w }));
                    }
                }
                let pos = self.read & (self.cap - 1);
                self.prefetch_tail(pos, avail);
                // avail >= 8 (multiples of 8), so pos + 8 <= cap.
                let header = self.header_at(pos).ok_or(Corrupt("header out of bounds"))?;
                match parse(self.cap, self.read, avail, header)? {
                    Parsed::Pad(skip) => self.read = self.read.wrapping_add(skip),
                    Parsed::Record { offset, len, span } => {
                        return Ok(Ok(Record {
                            offset: offset + RECORD_HEADER,
                            len,
                            span,
                        }))
                    }
                }
            }
        }

        /// Copies the payload of `rec` (from [`next`](Self::next)) into `dst`
        /// (`dst.len() == rec.len`).
        #[cfg(any(test, fuzzing))]
        pub(crate) fn copy_out(&self, rec: Record, dst: &mut [u8]) {
            debug_assert_eq!(dst.len(), rec.len as usize);
            // Cannot fail: parse() checked that the record lies inside the ring.
            let _ = self.data.copy_out(rec.offset as usize, dst);
        }

        /// Replaces the contents of `out` by the payload of `rec`, without zero-filling it
        /// first. (`out` stays empty if `rec` did not come from [`next`](Self::next).)
        #[inline]
        pub(crate) fn copy_into(&self, rec: Record, out: &mut Vec<u8>) {
            let len = rec.len as usize;
            out.clear();
            out.reserve(len);
            let spare = &mut out.spare_capacity_mut()[..len];
            if self
                .data
                .copy_out_uninit(rec.offset as usize, spare)
                .is_ok()
            {
                // SAFETY: capacity >= len (reserved above), and the copy initialised all of
                // the first `len` bytes (it returned Ok).
                unsafe { out.set_len(len) };
            }
        }

        /// The payload of `rec` (from [`next`](Self::next)), in the shared memory.
        pub(crate) fn payload(&self, rec: Record) -> Option<SharedBytes<'_>> {
            self.data
                .subslice(rec.offset as usize, rec.len as usize)
                .ok()
        }

        /// Marks `rec` consumed (visible to the producer at the next publish).
        #[inline]
        pub(crate) fn consume(&mut self, rec: Record) {
            self.read = self.read.wrapping_add(rec.span);
        }

        /// Bytes consumed since the last publication.
        #[inline]
        pub(crate) fn unpublished(&self) -> u32 {
            self.read.wrapping_sub(self.published)
        }

        /// Units (bytes with headers and padding, or items) consumed so far.
        pub(crate) fn units(&self) -> u64 {
            self.counters.moved(self.read)
        }

        /// Publishes the read index. Returns how to wake the producer.
        pub(crate) fn publish(&mut self) -> Wake {
            if self.read == self.published {
                return Wake::None;
            }
            self.published = self.read;
            let mut woken = self.words.woken;
            let wake = publish(
                self.words.own_index(),
                self.read,
                self.words.peer_wait(),
                self.peer_parks,
                &mut woken,
            );
            self.words.woken = woken;
            wake
        }
    }

    /// Producer state of a typed ring of `T` slots.
    ///
    /// Invariants: `data` is valid for reads and writes of `cap` `T`s, aligned for `T`, and
    /// no other process writes it; `cached_read <= published <= write <= cached_read + cap`.
    #[derive(Debug)]
    pub(crate) struct PodProducer<T> {
        data: NonNull<T>,
        cap: u32,
        write: u32,
        published: u32,
        cached_read: u32,
        pub(crate) words: Words,
        pub(crate) peer_parks: bool,
        pub(crate) counters: Counters,
        _t: PhantomData<T>,
    }

    // SAFETY: see ByteProducer; T: Pod is Send.
    unsafe impl<T: bytemuck::Pod> Send for PodProducer<T> {}

    impl<T: bytemuck::Pod> PodProducer<T> {
        /// # Safety
        /// As [`ByteProducer::new`], for `cap` elements of `T`, aligned for `T`.
        pub(crate) unsafe fn new(
            data: NonNull<T>,
            cap: u32,
            words: Words,
            peer_parks: bool,
        ) -> Self {
            debug_assert!(valid_capacity(u64::from(cap)) && data.as_ptr().is_aligned());
            PodProducer {
                data,
                cap,
                write: 0,
                published: 0,
                cached_read: 0,
                words,
                peer_parks,
                counters: Counters::default(),
                _t: PhantomData,
            }
        }

        pub(crate) fn capacity(&self) -> u32 {
            self.cap
        }

        /// Free slots; refreshes the cached read index only if fewer than `want` are free.
        pub(crate) fn free(&mut self, want: u32) -> Result<Result<u32, Blocked>, Corrupt> {
            let free = self.cap - self.write.wrapping_sub(self.cached_read);
            if free >= want {
                return Ok(Ok(free));
            }
            self.counters.index_loads += 1;
            self.counters.fold(self.write);
            // Pairs with the Release store in the consumer's `publish`.
            let r = load_peer(self.words.peer_index());
            check_read(self.published, self.cached_read, r)?;
            self.cached_read = r;
            let free = self.cap - self.write.wrapping_sub(r);
            Ok(if free == 0 {
                self.counters.blocked += 1;
                Err(Blocked { seen: r })
            } else {
                Ok(free)
            })
        }

        /// Writes one item if the cached read index shows a free slot (no shared load).
        #[inline]
        pub(crate) fn push_cached(&mut self, item: T) -> bool {
            if self.write.wrapping_sub(self.cached_read) >= self.cap {
                return false;
            }
            let pos = self.write & (self.cap - 1);
            // SAFETY: pos < cap; the slot is free, so the consumer does not read it.
            unsafe { self.data.as_ptr().add(pos as usize).write(item) };
            self.write = self.write.wrapping_add(1);
            true
        }

        /// The slot at the write position and how many free slots follow it without
        /// crossing the end of the ring, at most `max` (by the cached read index).
        pub(crate) fn contiguous(&self, max: u32) -> (*mut T, u32) {
            let pos = self.write & (self.cap - 1);
            let free = self.cap - self.write.wrapping_sub(self.cached_read);
            let n = max.min(free).min(self.cap - pos);
            // SAFETY: pos < cap, inside the data area.
            (unsafe { self.data.as_ptr().add(pos as usize) }, n)
        }

        /// Advances the local write index over `n` slots written in place (at most what
        /// [`contiguous`](Self::contiguous) returned).
        pub(crate) fn advance(&mut self, n: u32) {
            debug_assert!(n <= self.cap - self.write.wrapping_sub(self.cached_read));
            self.write = self.write.wrapping_add(n);
        }

        /// Writes `items` (at most the free slots) and advances the local write index.
        pub(crate) fn write(&mut self, items: &[T]) {
            for item in items {
                let pos = self.write & (self.cap - 1);
                // SAFETY: pos < cap; the slot is free (caller checked `free`), so the
                // consumer does not read it.
                unsafe { self.data.as_ptr().add(pos as usize).write(*item) };
                self.write = self.write.wrapping_add(1);
            }
        }

        /// Items written so far.
        pub(crate) fn units(&self) -> u64 {
            self.counters.moved(self.write)
        }

        /// Publishes written items. Returns how to wake the consumer.
        pub(crate) fn publish(&mut self) -> Wake {
            if self.write == self.published {
                return Wake::None;
            }
            self.published = self.write;
            let mut woken = self.words.woken;
            let wake = publish(
                self.words.own_index(),
                self.write,
                self.words.peer_wait(),
                self.peer_parks,
                &mut woken,
            );
            self.words.woken = woken;
            wake
        }
    }

    /// Consumer state of a typed ring of `T` slots.
    ///
    /// Invariants: `data` is `cap` `T`s, aligned for `T`, valid for the life of the value
    /// (its `'static` stands for that; read only by copy); `read <= cached_write <= read +
    /// cap`.
    #[derive(Debug)]
    pub(crate) struct PodConsumer<T> {
        data: SharedBytes<'static>,
        cap: u32,
        read: u32,
        published: u32,
        cached_write: u32,
        pub(crate) words: Words,
        pub(crate) peer_parks: bool,
        pub(crate) counters: Counters,
        _t: PhantomData<T>,
    }

    // SAFETY: see ByteProducer.
    unsafe impl<T: bytemuck::Pod> Send for PodConsumer<T> {}

    impl<T: bytemuck::Pod> PodConsumer<T> {
        /// The consumer over `data`, `cap` slots of `T` (`None` if `cap` is not a valid
        /// capacity, `data` is not `cap` `T`s long, or not aligned for `T`).
        ///
        /// # Safety
        /// As [`ByteConsumer::new`].
        pub(crate) unsafe fn new(
            data: SharedBytes<'_>,
            cap: u32,
            words: Words,
            peer_parks: bool,
        ) -> Option<Self> {
            let fits = (cap as usize).checked_mul(std::mem::size_of::<T>()) == Some(data.len());
            if !valid_capacity(u64::from(cap)) || !fits || !data.as_ptr().cast::<T>().is_aligned() {
                return None;
            }
            Some(PodConsumer {
                // SAFETY: the same bytes, valid for the life of the value (the caller's
                // contract), which is what the `'static` of the field stands for.
                data: unsafe { SharedBytes::new(data.as_ptr(), data.len()) },
                cap,
                read: 0,
                published: 0,
                cached_write: 0,
                words,
                peer_parks,
                counters: Counters::default(),
                _t: PhantomData,
            })
        }

        /// Items available; refreshes the cached write index only if none are.
        pub(crate) fn available(&mut self) -> Result<Result<u32, Blocked>, Corrupt> {
            let avail = self.cached_write.wrapping_sub(self.read);
            if avail != 0 {
                return Ok(Ok(avail));
            }
            self.counters.index_loads += 1;
            self.counters.fold(self.read);
            // Pairs with the Release store in the producer's `publish`.
            let w = load_peer(self.words.peer_index());
            check_write(self.cap, self.read, self.cached_write, w)?;
            self.cached_write = w;
            let avail = w.wrapping_sub(self.read);
            Ok(if avail == 0 {
                self.counters.blocked += 1;
                Err(Blocked { seen: w })
            } else {
                Ok(avail)
            })
        }

        /// Takes one item if the cached write index shows one (no shared load).
        #[inline]
        pub(crate) fn pop_cached(&mut self) -> Option<T> {
            if self.cached_write == self.read {
                return None;
            }
            let pos = self.read & (self.cap - 1);
            // pos < cap, so the slot lies in `data` and is aligned for T: one volatile load.
            let item = self
                .data
                .read::<T>(pos as usize * std::mem::size_of::<T>())
                .ok()?;
            self.read = self.read.wrapping_add(1);
            Some(item)
        }

        /// Items consumed since the last publication.
        #[inline]
        pub(crate) fn unpublished(&self) -> u32 {
            self.read.wrapping_sub(self.published)
        }

        /// Copies `out.len()` items (at most the available ones) out and consumes them.
        pub(crate) fn read(&mut self, out: &mut [T]) {
            let mut done = 0;
            while done < out.len() {
                let pos = self.read & (self.cap - 1);
                let run = (out.len() - done).min((self.cap - pos) as usize);
                let dst = bytemuck::cast_slice_mut(&mut out[done..done + run]);
                // pos + run <= cap, inside `data`, so this cannot fail.
                if self
                    .data
                    .copy_out(pos as usize * std::mem::size_of::<T>(), dst)
                    .is_err()
                {
                    return;
                }
                done += run;
                self.read = self.read.wrapping_add(run as u32);
            }
        }

        /// Units (bytes with headers and padding, or items) consumed so far.
        pub(crate) fn units(&self) -> u64 {
            self.counters.moved(self.read)
        }

        /// Publishes the read index. Returns how to wake the producer.
        pub(crate) fn publish(&mut self) -> Wake {
            if self.read == self.published {
                return Wake::None;
            }
            self.published = self.read;
            let mut woken = self.words.woken;
            let wake = publish(
                self.words.own_index(),
                self.read,
                self.words.peer_wait(),
                self.peer_parks,
                &mut woken,
            );
            self.words.woken = woken;
            wake
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::ptr::NonNull;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use super::*;

    #[test]
    fn index_validation_rejects_impossible_values() {
        let cap = 64;
        assert!(check_write(cap, 0, 0, 64).is_ok());
        assert!(check_write(cap, 0, 0, 72).is_err(), "more than cap ahead");
        assert!(check_write(cap, 0, 16, 8).is_err(), "backwards");
        assert!(
            check_write(cap, u32::MAX - 7, u32::MAX - 7, 24).is_ok(),
            "wraps"
        );
        assert!(check_write(cap, 10, 10, 9).is_err(), "behind the reader");
        assert!(check_read(64, 0, 64).is_ok());
        assert!(check_read(64, 0, 72).is_err(), "past write");
        assert!(check_read(64, 16, 8).is_err(), "backwards");
        assert!(check_read(8, u32::MAX - 7, 8).is_ok(), "wraps");
        assert!(!valid_capacity(0) && !valid_capacity(48) && !valid_capacity(1 << 32));
        assert!(valid_capacity(16) && valid_capacity(1 << 31));
    }

    #[test]
    fn headers_are_validated_against_capacity_and_published_data() {
        let cap = 128;
        assert_eq!(
            parse(cap, 0, 16, record_header(5)),
            Ok(Parsed::Record {
                offset: 0,
                len: 5,
                span: 16
            })
        );
        assert!(
            parse(cap, 0, 8, record_header(5)).is_err(),
            "longer than published"
        );
        assert!(
            parse(cap, 0, 128, record_header(57)).is_err(),
            "over half the ring"
        );
        assert!(
            parse(cap, 120, 64, record_header(8)).is_err(),
            "crosses the end"
        );
        assert_eq!(parse(cap, 120, 64, pad_header()), Ok(Parsed::Pad(8)));
        assert!(
            parse(cap, 120, 0, pad_header()).is_err(),
            "pad beyond published"
        );
        assert!(parse(cap, 0, 128, pad_header()).is_err(), "pad at start");
        assert!(parse(cap, 0, 128, 7 << 32).is_err(), "unknown kind");
        assert!(parse(cap, 0, 128, u64::MAX).is_err());
        assert_eq!(max_record_len(128), 56);
        assert_eq!(record_span(usize::MAX), None);
    }

    #[test]
    fn placement_pads_to_the_end_when_a_record_does_not_fit() {
        assert_eq!(
            place(128, 96, 128, 48),
            Some(Placement {
                pad: 32,
                offset: 0,
                span: 48
            })
        );
        assert_eq!(place(128, 96, 64, 48), None);
        assert_eq!(
            place(128, 0, 128, 64),
            Some(Placement {
                pad: 0,
                offset: 0,
                span: 64
            })
        );
        // Any record of at most half the ring fits an empty ring at any position.
        for pos in (0..128).step_by(8) {
            assert!(place(128, pos, 128, 64).is_some(), "pos {pos}");
        }
    }

    #[test]
    fn a_waiter_is_woken_only_if_it_waits_on_another_value() {
        let index = AtomicU32::new(5);
        let wait = AtomicU64::new(0);
        let mut woken = 0;
        let mut publish = |new, peer_parks| publish(&index, new, &wait, peer_parks, &mut woken);
        assert_eq!(publish(6, true), Wake::None, "nobody waits");
        wait.store(WAITING | 6, Ordering::Relaxed);
        assert_eq!(publish(6, true), Wake::None, "waiter already saw 6");
        assert_eq!(publish(7, true), Wake::Futex);
        assert_eq!(publish(8, true), Wake::None, "already woken for this park");
        wait.store(WAITING | 8, Ordering::Relaxed);
        assert_eq!(publish(9, true), Wake::Futex, "a new park is woken");
        wait.store(WAITING | SIGNAL | 9, Ordering::Relaxed);
        assert_eq!(publish(10, true), Wake::Signal);
        assert_eq!(publish(11, true), Wake::None, "already signalled");
        wait.store(SIGNAL | 6, Ordering::Relaxed);
        assert_eq!(publish(12, true), Wake::None, "not parked");
        wait.store(WAITING | SIGNAL | 9, Ordering::Relaxed);
        assert_eq!(
            publish(13, true),
            Wake::Signal,
            "another word was seen in between"
        );
        wait.store(WAITING | 13, Ordering::Relaxed);
        assert_eq!(publish(14, false), Wake::None, "peer never parks");
        index.store(8, Ordering::Relaxed);
        let own = AtomicU64::new(0);
        let moved = prepare_park(&own, &index, 7, false);
        assert!(!moved, "index moved: do not sleep");
        assert_eq!(own.load(Ordering::Relaxed), 0);
        assert!(prepare_park(&own, &index, 8, false));
        assert_eq!(own.load(Ordering::Relaxed), WAITING | 8);
        assert!(prepare_park(&own, &index, 8, true));
        assert_eq!(own.load(Ordering::Relaxed), WAITING | SIGNAL | 8);
    }

    /// A byte ring over ordinary memory: both engines in one test, with the control words in
    /// boxes and the data in a Vec (this is what Miri runs).
    struct Mem {
        data: Vec<u64>,
        p_index: Box<AtomicU32>,
        p_wait: Box<AtomicU64>,
        c_index: Box<AtomicU32>,
        c_wait: Box<AtomicU64>,
    }

    impl Mem {
        fn new(cap: usize) -> Mem {
            Mem {
                data: vec![0; cap / 8],
                p_index: Box::default(),
                p_wait: Box::default(),
                c_index: Box::default(),
                c_wait: Box::default(),
            }
        }
        fn engines(&mut self) -> (ByteProducer, ByteConsumer) {
            let cap = (self.data.len() * 8) as u32;
            let data = NonNull::new(self.data.as_mut_ptr().cast::<u8>()).unwrap();
            // SAFETY: the boxes and the Vec outlive the engines (the tests drop the engines
            // first); only the producer writes `data`, the consumer reads by volatile copy.
            unsafe {
                let pw = Words::new(&*self.p_index, &*self.p_wait, &*self.c_index, &*self.c_wait)
                    .unwrap();
                let cw = Words::new(&*self.c_index, &*self.c_wait, &*self.p_index, &*self.p_wait)
                    .unwrap();
                (
                    ByteProducer::new(data, cap, pw, true),
                    ByteConsumer::new(
                        crate::shm::SharedBytes::new(data.as_ptr(), cap as usize),
                        cw,
                        true,
                    )
                    .unwrap(),
                )
            }
        }
    }

    fn send(p: &mut ByteProducer, msg: &[u8]) -> bool {
        match p.reserve(msg.len()).unwrap() {
            Ok(place) => {
                // SAFETY: the reservation holds msg.len() bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(msg.as_ptr(), p.payload_ptr(place), msg.len())
                };
                p.commit(place, msg.len());
                p.publish();
                true
            }
            Err(_) => false,
        }
    }

    fn recv(c: &mut ByteConsumer) -> Option<Vec<u8>> {
        let rec = c.next().unwrap().ok()?;
        let mut v = vec![0; rec.len as usize];
        c.copy_out(rec, &mut v);
        c.consume(rec);
        c.publish();
        Some(v)
    }

    #[test]
    fn byte_ring_wraps_and_keeps_order() {
        let mut mem = Mem::new(256);
        let (mut p, mut c) = mem.engines();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        for round in 0..200usize {
            // Lengths from 0 to 120 (the limit for 256 bytes) force padding at every offset.
            let len = (round * 37) % 121;
            while send(&mut p, &vec![next_in as u8; len]) {
                next_in += 1;
                if next_in % 3 == 0 {
                    break;
                }
            }
            while let Some(v) = recv(&mut c) {
                assert!(v.iter().all(|&b| b == next_out as u8), "record {next_out}");
                next_out += 1;
            }
        }
        assert_eq!(next_in, next_out);
        assert!(next_in > 200);
    }

    #[test]
    fn consumer_rejects_a_forged_write_index_and_header() {
        let mut mem = Mem::new(128);
        let (mut p, mut c) = mem.engines();
        assert!(send(&mut p, b"hello"));
        mem.p_index.store(1000, Ordering::Relaxed);
        assert!(c.next().is_err(), "index past capacity");

        for forged in [record_header(100), 5 << 32, pad_header()] {
            let mut mem = Mem::new(128);
            mem.p_index.store(16, Ordering::Relaxed);
            mem.data[0] = forged.to_le();
            let (_p, mut c) = mem.engines();
            assert!(c.next().is_err(), "header {forged:#x}");
        }
    }

    #[test]
    fn two_threads_stream_through_the_byte_ring() {
        let mut mem = Mem::new(512);
        let (mut p, mut c) = mem.engines();
        let n: u32 = if cfg!(miri) { 300 } else { 20_000 };
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..n {
                    let len = (i % 50) as usize;
                    let mut msg = vec![i as u8; len + 4];
                    msg[..4].copy_from_slice(&i.to_le_bytes());
                    while !send(&mut p, &msg) {
                        std::hint::spin_loop();
                    }
                }
            });
            for i in 0..n {
                let v = loop {
                    if let Some(v) = recv(&mut c) {
                        break v;
                    }
                    std::hint::spin_loop();
                };
                assert_eq!(v.len(), (i % 50) as usize + 4);
                assert_eq!(u32::from_le_bytes(v[..4].try_into().unwrap()), i);
                assert!(v[4..].iter().all(|&b| b == i as u8));
            }
        });
    }

    #[test]
    fn pod_ring_moves_items_in_order_across_the_wrap() {
        let mut data = vec![0u64; 16];
        let (pi, pw, ci, cw) = (
            AtomicU32::new(0),
            AtomicU64::new(0),
            AtomicU32::new(0),
            AtomicU64::new(0),
        );
        let ptr = NonNull::new(data.as_mut_ptr()).unwrap();
        // SAFETY: locals outlive the engines; only the producer writes `data`.
        let (mut p, mut c) = unsafe {
            (
                PodProducer::<u64>::new(ptr, 16, Words::new(&pi, &pw, &ci, &cw).unwrap(), false),
                PodConsumer::<u64>::new(
                    crate::shm::SharedBytes::new(ptr.as_ptr().cast(), 16 * 8),
                    16,
                    Words::new(&ci, &cw, &pi, &pw).unwrap(),
                    false,
                )
                .unwrap(),
            )
        };
        let mut next = 0u64;
        let mut expect = 0u64;
        for _ in 0..50 {
            let free = p.free(5).unwrap().map_or(0, |f| f.min(5));
            let items: Vec<u64> = (next..next + u64::from(free)).collect();
            p.write(&items);
            p.publish();
            next += u64::from(free);
            if let Ok(avail) = c.available().unwrap() {
                let mut out = vec![0u64; avail.min(3) as usize];
                c.read(&mut out);
                c.publish();
                for v in out {
                    assert_eq!(v, expect);
                    expect += 1;
                }
            }
        }
        assert!(expect > 50);
        // The single-item paths, which use only the cached peer index.
        while c.available().unwrap().is_ok() {
            let mut rest = [0u64; 1];
            c.read(&mut rest);
        }
        c.publish();
        p.free(16).unwrap().unwrap();
        for i in 0..16 {
            assert!(p.push_cached(1000 + i));
        }
        assert!(!p.push_cached(0), "ring full");
        p.publish();
        assert_eq!(c.pop_cached(), None, "not refreshed yet");
        c.available().unwrap().unwrap();
        for i in 0..16 {
            assert_eq!(c.pop_cached(), Some(1000 + i));
        }
        ci.store(99, Ordering::Relaxed);
        assert!(p.free(16).is_err(), "read index past write");
    }
}
