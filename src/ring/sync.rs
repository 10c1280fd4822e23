//! The atomics the ring protocol uses: `loom`'s under `cfg(loom)` (so `tests/loom_ring.rs`
//! can explore every interleaving of the publish/park protocol), `std`'s otherwise.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
