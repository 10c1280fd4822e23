//! The pool's memory: memfds (slabs of one size class) carved into slots, and the state
//! of each slot.

use std::sync::Arc;
use std::time::Instant;

use memmap2::MmapRaw;

use crate::region::SealedRegion;

/// Buffers are multiples of this many bytes (and page-aligned within their memfd).
const GRANULE: usize = 4096;

/// The buffer length of the class that holds `len` bytes: whole 4 KiB granules, rounded up
/// to one of four steps per doubling (at most 25% slack beyond the first 16 KiB).
pub(super) fn class_len(len: usize) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let granules = len.checked_add(GRANULE - 1)? / GRANULE;
    let granules = if granules <= 4 {
        granules
    } else {
        let k = usize::BITS - 1 - granules.leading_zeros();
        let step = 1usize << (k - 2);
        granules.checked_add(step - 1)? & !(step - 1)
    };
    granules.checked_mul(GRANULE)
}

/// One backing memfd: a slab of `buffers` buffers of `buffer_len` bytes.
#[derive(Debug)]
pub(super) struct Memfd {
    /// Index in `PoolState::memfds`, and the id announced on the wire.
    pub(super) id: u32,
    pub(super) region: SealedRegion,
    /// The producer's writable shared mapping, made before the seals.
    pub(super) map: MmapRaw,
    pub(super) buffer_len: usize,
    pub(super) buffers: usize,
    /// Index in `PoolState::slots` of this memfd's first buffer.
    pub(super) first_slot: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    Leased,
    /// Sent to `holders` consumers that have not released it yet.
    Sent,
    /// Taken out of circulation for good.
    Retired,
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) memfd: usize,
    pub(super) offset: usize,
    pub(super) state: SlotState,
    pub(super) holders: u32,
    pub(super) sent_at: Instant,
}

#[derive(Debug)]
pub(super) struct Class {
    pub(super) buffer_len: usize,
    pub(super) free: Vec<usize>,
}

#[derive(Debug)]
pub(super) struct PoolState {
    pub(super) memfds: Vec<Arc<Memfd>>,
    pub(super) slots: Vec<Slot>,
    pub(super) classes: Vec<Class>,
    /// Bytes of all memfds.
    pub(super) bytes: usize,
    /// Bytes of retired buffers (included in `bytes`).
    pub(super) retired_bytes: usize,
    /// Buffers in state `Sent`.
    pub(super) held: usize,
}

impl PoolState {
    /// Drops one holder of `slot`; frees it when none is left. Returns whether it was freed.
    pub(super) fn unhold(&mut self, slot: usize) -> bool {
        let s = &mut self.slots[slot];
        s.holders = s.holders.saturating_sub(1);
        if s.holders > 0 {
            return false;
        }
        match s.state {
            SlotState::Sent => {
                self.held -= 1;
                self.free_slot(slot);
                true
            }
            _ => false,
        }
    }

    /// Takes `slot` (in state `Sent`) out of circulation for good.
    pub(super) fn retire(&mut self, slot: usize) {
        let len = self.memfds[self.slots[slot].memfd].buffer_len;
        self.slots[slot].state = SlotState::Retired;
        self.held -= 1;
        self.retired_bytes += len;
    }

    pub(super) fn free_slot(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.state = SlotState::Free;
        let len = self.memfds[s.memfd].buffer_len;
        if let Some(class) = self.classes.iter_mut().find(|c| c.buffer_len == len) {
            class.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_a_quarter() {
        assert_eq!(class_len(0), None);
        assert_eq!(class_len(1), Some(4096));
        assert_eq!(class_len(4096), Some(4096));
        assert_eq!(class_len(4097), Some(8192));
        assert_eq!(class_len(16 << 10), Some(16 << 10));
        assert_eq!(class_len((16 << 10) + 1), Some(20 << 10));
        assert_eq!(class_len(1 << 20), Some(1 << 20));
        assert_eq!(class_len(1920 * 1080 * 4), Some(8 << 20));
        assert_eq!(class_len(usize::MAX), None);
        for len in (1..(64 << 20)).step_by(9973) {
            let c = class_len(len).unwrap();
            assert!(c >= len && c % GRANULE == 0);
            assert!(c <= 16 << 10 || (c - len) * 4 <= len, "{len} -> {c}");
        }
    }
}
