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
mod byte;
#[cfg(not(loom))]
mod pod;
#[cfg(all(test, not(loom)))]
mod tests;
#[cfg(not(loom))]
mod words;

#[cfg(not(loom))]
pub(crate) use byte::*;
#[cfg(not(loom))]
pub(crate) use pod::*;
#[cfg(not(loom))]
pub(crate) use words::*;
