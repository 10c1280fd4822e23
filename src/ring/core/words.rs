//! The state both sides of every ring engine share: the control [`Words`], what a side
//! waits for ([`Blocked`]) and its [`Counters`].

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

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
    pub(crate) fn fold(&mut self, pos: u32) {
        self.moved += u64::from(pos.wrapping_sub(self.folded_at));
        self.folded_at = pos;
    }

    /// Units moved up to the own local index `pos`.
    pub(crate) fn moved(&self, pos: u32) -> u64 {
        self.moved + u64::from(pos.wrapping_sub(self.folded_at))
    }
}
