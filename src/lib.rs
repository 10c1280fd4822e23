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
//! | regions | [`Region`], [`SealedRegion`], [`ProducerWritableRegion`] | create, fill and seal memfds ([`memfile::MemFile`] underneath; interop both ways) |
//! | transport | [`Channel`], [`Message`] | messages of descriptors + a header over `SOCK_SEQPACKET` (format: `PROTOCOL.md`) |
//! | verification | [`verify()`], [`RegionView`], [`Policy`] | check seals and sizes, then map read-only |
//! | channels | [`spawn`], [`Listener`], [`handshake`] | authenticated connections: spawned workers, named endpoints |
//! | ring | [`ring`] | a single-producer single-consumer ring in two sealed memfds |
//! | pools | [`pool`] | reusable sealed buffers, each memfd sent once, fan-out with release tracking |
//! | async | `asyncio` (feature `tokio`) | the same channels, awaited on a tokio runtime |
//! | I/O safety | [`PositionalFile`], [`GuardedMap`] | descriptors shared with other processes; mapping files that are not shrink-sealed |
//! | sandbox | [`sandbox`] | a worker that can receive, read and answer, and nothing else (Landlock, seccomp, limits, namespaces) |
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
//! - **Producer-writable** ([`Region::seal_producer_writable`]: `F_SEAL_FUTURE_WRITE | SHRINK |
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
//! close-on-exec; every blocking call has a timeout variant, and a timeout too large to
//! represent (`Duration::MAX`) means "no deadline", never a panic. sealpipe does not protect
//! against a peer that sends well-formed but wrong *data*: validate what you read.
//!
//! - **Memory charged to the receiver.** A region whose pages were never allocated would be
//!   allocated page by page as the receiver reads it, in the receiver's name (its memory
//!   cgroup). [`verify()`] refuses it ([`Error::Uncommitted`]) before touching a page, and
//!   refuses huge-page regions unless [`Policy::huge_pages`] opts in
//!   ([`Error::HugePages`]); see [Committed pages](verify#committed-pages).
//! - **A relay between client and listener.** With a [`Secret`], both proofs of the
//!   handshake cover the kernel-reported credentials of both ends of the connection, so a
//!   same-user process that takes over a listener's path and forwards messages fails on
//!   both sides ([`handshake`]).
//! - **Mapping failures** of verified regions are [`Error::Map`], a peer fault.
//!
//! Descriptors and budgets:
//!
//! - **Descriptors whose close blocks** (a TCP socket lingering with unsent data, a file on
//!   FUSE): refused where none are expected (`SO_PASSRIGHTS` on Linux 6.16+, during
//!   handshakes and on ring channels after setup); every receive has room for the kernel's
//!   253, so the kernel never drops surplus ones in your thread; rejected descriptors are
//!   classified without `fstat` and, unless their close cannot wait, closed on a background
//!   thread; dropping a [`Channel`], [`Listener`] or ring drains its socket first. Every
//!   call keeps its deadline, `try_` calls and `Drop` do not block; a backlog at the
//!   background closer shows as [`Error::DisposalBacklog`], not as growth. See [`Channel`].
//! - **Descriptors in flight**: each channel bounds its own
//!   ([`Channel::with_in_flight_limit`]), so a peer that stops reading stalls only its
//!   channel instead of spending the sending user's kernel budget for all of them.
//! - **Pinned views**: a [`RegionView`] keeps its mapping, not its descriptor, unless
//!   [`Policy::keep_descriptors`]; [`Policy::max_message_len`] bounds a message. See
//!   [what a retained view costs](RegionView#what-a-retained-view-costs).
//! - **Files to map or read**: [`GuardedMap`] maps shared memory of at most 1 GiB unless
//!   [`GuardOptions`] say otherwise; [`PositionalFile`] I/O on a peer's FUSE or network
//!   file can block without bound.
//!
//! # Sandboxing workers
//!
//! Seals make buffers safe from a worker; [`sandbox::Sandbox`] makes the machine safe from
//! it. The default profile ([`sandbox::Sandbox::worker`]) sets `no_new_privs`, denies
//! every filesystem right, TCP, abstract unix sockets and signals outside the sandbox with
//! Landlock where the kernel has it, and installs a seccomp allow-list of exactly the calls
//! a sealpipe worker makes (channel, verification, read-only mapping, the ring's futex and
//! clocks, allocation, exit) — no `openat`, `socket`, `execve`, `ptrace`, `kill`, `fork` or
//! `PROT_EXEC`; anything else fails with `EPERM` or kills the worker. The worker enters it
//! itself ([`sandbox::Sandbox::enter`]) or the parent applies it before the program starts
//! ([`spawn::spawn_sandboxed`]); both report what was enforced
//! ([`sandbox::Enforcement`]) so you can log it or refuse to run weaker. See the
//! [`sandbox`] module for the allow-list with reasons, how to extend it, and what it cannot
//! stop.
//!
//! ```no_run
//! # fn main() -> sealpipe::Result<()> {
//! use sealpipe::sandbox::Sandbox;
//!
//! let channel = sealpipe::spawn::worker_channel()?; // setup first
//! let enforced = Sandbox::worker().enter()?;         // then: receive, read, answer
//! eprintln!("{enforced}");
//! let msg = channel.recv(&sealpipe::Policy::immutable())?;
//! # drop(msg); Ok(()) }
//! ```
//!
//! # Observability
//!
//! Counters are always on and cheap (relaxed atomics or plain increments, no locks, nothing
//! on a ring's record path): [`Channel::stats`] ([`ChannelStats`]: messages, regions and
//! bytes received, rejections by [`RejectReason`], descriptors of rejected messages closed
//! inline or in the background), [`Listener::stats`] ([`ListenerStats`]: handshakes
//! accepted, refused by reason, abandoned), `stats()` on every ring side
//! ([`ring::RingStats`]: units moved, parks, wakes, index loads, peer corruption), and
//! [`pool::PoolReceiver::stats`] / [`pool::PoolSender::stats`]. [`RejectReason::of`] is the
//! one mapping from an [`Error`] to the reason a peer was refused.
//!
//! The `tracing` feature reports through the `tracing` crate:
//!
//! - **INFO**: spans `sealpipe_handshake` (client, spawned parent and worker) and
//!   `sealpipe_ring_setup` (producer, consumer), with an event when each succeeds; a
//!   listener's accepted handshake (peer pid, uid, gid).
//! - **WARN**: a handshake this side refused (reason, error, peer credentials); a ring whose
//!   peer wrote an impossible value; the *first* message a channel rejects (reason, error,
//!   peer pid/uid/gid when known).
//! - **DEBUG**: the channel's later rejections, so that a flooding peer cannot flood the
//!   log (they are all counted in [`ChannelStats::rejected`]); handshakes the peer abandoned
//!   or refused; setups that failed for local reasons.
//!
//! Nothing is traced on a ring's busy path.
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
mod closer;
mod deadline;
mod error;
#[cfg(fuzzing)]
pub mod fuzz;
#[cfg(all(test, not(fuzzing)))]
mod fuzz;
mod guard;
pub mod handshake;
mod in_flight;
mod listener;
pub mod pool;
pub mod positional;
mod region;
pub mod ring;
pub mod sandbox;
mod seals;
mod shm;
pub mod spawn;
mod stats;
mod sys;
mod transport;
mod verify;
// Not public API: hidden, exempt from semver. Public only so that this crate's integration
// tests can play hostile peers byte by byte (see the module's docs).
#[doc(hidden)]
pub mod wire;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The memfd crate sealpipe's regions are made of, re-exported: [`SealedRegion::from_memfile`],
/// [`ProducerWritableRegion::from_memfile`], [`SealedRegion::into_memfile`] and
/// [`RegionView::into_memfile`] take and give its [`MemFile`](memfile::MemFile).
pub use memfile;

pub use error::{Error, Result};
pub use guard::{GuardOptions, GuardedMap};
pub use handshake::{
    HandshakeConfig, HandshakeFailure, PeerCredentials, PeerPolicy, RefusalReason, Secret,
};
pub use listener::{default_path, Listener};
pub use positional::PositionalFile;
pub use region::{ProducerWritableRegion, Region, SealedRegion};
pub use seals::{Policy, Seals};
pub use stats::{ChannelStats, ListenerStats, RejectReason, Rejections};
pub use transport::{Channel, Message};
pub use verify::{capabilities, verify, Capabilities, RegionView};
