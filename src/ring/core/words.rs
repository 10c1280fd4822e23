//! The state both sides of every ring engine share: the control [`Words`], what a side
//! waits for ([`Blocked`]) and its [`Counters`].

use std::sync::atomic::{AtomicU32, AtomicU64};

use super::{load_peer, publish, Wake};

/// What every engine offers the side that drives it: its control words and the
/// publication of its index.
pub(crate) trait Engine<'a> {
    /// This side's control words.
    fn words(&self) -> &Words<'a>;

    /// Publishes this side's index. Returns how to wake the peer.
    fn publish(&mut self) -> Wake;
}

/// The four control words of a ring, seen from one side: `own_*` in memory only this side
/// writes, `peer_*` in memory only the peer writes (mapped read-only here: only loaded).
#[derive(Debug)]
pub(crate) struct Words<'a> {
    own_index: &'a AtomicU32,
    own_wait: &'a AtomicU64,
    peer_index: &'a AtomicU32,
    peer_wait: &'a AtomicU64,
    /// The index this side last stored to its index word.
    published: u32,
    /// The peer's wait word this side last woke (see [`publish`]).
    woken: u64,
}

impl<'a> Words<'a> {
    /// The words of one side. `peer_*` may be in read-only memory: they are only loaded
    /// (relaxed atomic loads of at most 8 bytes are allowed there).
    pub(crate) fn new(
        own_index: &'a AtomicU32,
        own_wait: &'a AtomicU64,
        peer_index: &'a AtomicU32,
        peer_wait: &'a AtomicU64,
    ) -> Words<'a> {
        Words {
            own_index,
            own_wait,
            peer_index,
            peer_wait,
            published: 0,
            woken: 0,
        }
    }

    pub(crate) fn own_index(&self) -> &AtomicU32 {
        self.own_index
    }
    pub(crate) fn own_wait(&self) -> &AtomicU64 {
        self.own_wait
    }
    pub(crate) fn peer_index(&self) -> &AtomicU32 {
        self.peer_index
    }
    pub(crate) fn peer_wait(&self) -> &AtomicU64 {
        self.peer_wait
    }

    /// The index this side last published.
    #[inline]
    pub(crate) fn published(&self) -> u32 {
        self.published
    }

    /// Publishes `new` as this side's index ([`publish`]) unless it already is, keeping
    /// the wait word last woken. Returns how to wake the peer.
    #[inline]
    pub(crate) fn publish(&mut self, new: u32, peer_parks: bool) -> Wake {
        if new == self.published {
            return Wake::None;
        }
        self.published = new;
        let mut woken = self.woken;
        let wake = publish(
            self.own_index(),
            new,
            self.peer_wait(),
            peer_parks,
            &mut woken,
        );
        self.woken = woken;
        wake
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

    /// Loads the peer's index ([`load_peer`]; it pairs with the Release store in the
    /// peer's `publish`), counting the load and the units moved up to the own index `own`.
    #[inline]
    pub(crate) fn load_peer_index(&mut self, words: &Words, own: u32) -> u32 {
        self.index_loads += 1;
        self.fold(own);
        load_peer(words.peer_index())
    }

    /// Units moved up to the own local index `pos`.
    pub(crate) fn moved(&self, pos: u32) -> u64 {
        self.moved + u64::from(pos.wrapping_sub(self.folded_at))
    }
}
