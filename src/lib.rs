//! Zero-copy, zero-trust transfer of sealed memory between Linux processes.
//!
//! A producer writes data into a [`Region`] (a memfd), **seals** it so that nobody can
//! change, shrink or grow it, and sends the descriptor over a [`Channel`]. The receiver
//! **verifies** every descriptor before it maps it (it is a memfd, it carries the seals the
//! receiver's [`Policy`] requires, its size is what the header says and within limits),
//! and only then maps it read-only as a [`RegionView`]. No byte of the payload is copied,
//! and one sealed region can be sent to any number of receivers.
//!
//! ```
//! # fn main() -> sealpipe::Result<()> {
//! use sealpipe::{Channel, Policy, Region};
//!
//! let (producer, consumer) = Channel::pair()?;
//!
//! // Producer: fill, seal, send.
//! let mut region = Region::new(64 * 1024)?;
//! region.as_mut_slice_of::<u32>()?.iter_mut().enumerate().for_each(|(i, x)| *x = i as u32);
//! let region = region.seal()?; // immutable: WRITE | SHRINK | GROW | SEAL
//! producer.send(b"frame 0", &[&region])?;
//!
//! // Consumer: receive, verify, map read-only, read in place.
//! let msg = consumer.recv(&Policy::immutable().max_region_len(1 << 20))?;
//! let words: &[u32] = msg.regions()[0].as_slice_of()?;
//! assert_eq!(words[1000], 1000);
//! assert_eq!(msg.payload(), b"frame 0");
//! # Ok(()) }
//! ```
//!
//! # Layers
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | regions | [`Region`], [`SealedRegion`], [`SharedRegion`] | create, fill and seal memfds |
//! | transport | [`Channel`], [`wire`] | messages of descriptors + a header over `SOCK_SEQPACKET` |
//! | verification | [`verify()`], [`RegionView`], [`Policy`] | check seals and sizes, then map read-only |
//! | channels | [`spawn`], [`Listener`], [`handshake`] | authenticated connections: spawned workers, named endpoints |
//! | ring | [`ring`] | a single-producer single-consumer ring in two sealed memfds |
//! | pools | [`pool`] | reusable sealed buffers, each memfd sent once, fan-out with release tracking |
//! | async | `asyncio` (feature `tokio`) | the same channels, awaited on a tokio runtime |
//! | I/O safety | [`PositionalFile`], [`GuardedMap`] | descriptors shared with other processes; mapping files that are not shrink-sealed |
//!
//! See [Sharing descriptors safely](positional#sharing-descriptors-safely) for what sharing a
//! descriptor shares, why sealpipe trusts seals and not descriptor modes, and which tool to
//! use when.
//!
//! # Two kinds of sealed region, and how you may read them
//!
//! - **Immutable** ([`Region::seal`]: `F_SEAL_WRITE | SHRINK | GROW | SEAL`). No process can
//!   write the memory by any path: not `write`, not a new writable mapping, not `mprotect`,
//!   not `/proc/self/fd` reopened read-write. A receiver may therefore read it in place,
//!   as `&[u8]` or `&[T]` ([`RegionView::as_bytes`], [`RegionView::as_slice_of`]).
//! - **Producer-writable** ([`Region::share_read_only`]: `F_SEAL_FUTURE_WRITE | SHRINK |
//!   GROW | SEAL`). Nobody *new* can write it, but the producer keeps its mapping and goes
//!   on writing. Any byte can change under the reader at any moment, so a Rust reference to
//!   it would be a data race. The safe API copies out instead ([`RegionView::read_at`],
//!   [`RegionView::read_value`]): each byte is read exactly once into your memory, where
//!   you validate it before use. Direct access exists only as the `unsafe`
//!   [`RegionView::as_bytes_unchecked`], for producers you trust.
//!
//! # Threat model
//!
//! The peer is hostile. Every byte, length, descriptor and seal it sends is checked before
//! use; a bad message is rejected whole with a specific [`Error`], every descriptor it
//! carried is closed, and the channel keeps working. Shrink seals are required, so a peer
//! cannot truncate a mapped region under us (no `SIGBUS`); sizes are checked against
//! `fstat` before mapping, so nothing is read out of bounds; sends use `MSG_NOSIGNAL`, so a
//! dead peer cannot kill us with `SIGPIPE`; every descriptor we create or receive is
//! close-on-exec; every blocking call has a timeout variant. sealpipe does not protect
//! against a peer that sends well-formed but wrong *data*: validate what you read.
//!
//! # Platform
//!
//! Linux only. Kernel features are probed at run time ([`capabilities`]) and missing ones
//! get a deliberate fallback, never a silent downgrade of the seal policy.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::print_stdout, clippy::print_stderr)]

#[cfg(not(target_os = "linux"))]
compile_error!("sealpipe supports Linux only: it is built on memfd seals and SCM_RIGHTS");

#[cfg(feature = "tokio")]
pub mod asyncio;
mod error;
#[cfg(fuzzing)]
pub mod fuzz;
#[cfg(all(test, not(fuzzing)))]
mod fuzz;
mod guard;
pub mod handshake;
mod listener;
pub mod pool;
pub mod positional;
mod region;
pub mod ring;
mod seals;
pub mod spawn;
mod sys;
mod transport;
mod verify;
pub mod wire;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use error::{Error, Result};
pub use guard::GuardedMap;
pub use handshake::{HandshakeConfig, PeerCredentials, PeerPolicy, RefusalReason, Secret};
pub use listener::{default_path, Listener};
pub use positional::PositionalFile;
pub use region::{Region, SealedRegion, SharedRegion};
pub use seals::{Policy, Seals};
pub use transport::{Channel, Message};
pub use verify::{capabilities, verify, Capabilities, RegionView};
