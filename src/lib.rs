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
//! | async | `asyncio` (feature `tokio`) | the same channels, awaited on a tokio runtime (the ring's and the pool's async sides are in [`ring`] and [`pool`]) |
//! | I/O safety | [`PositionalFile`], [`GuardedMap`] | descriptors shared with other processes; mapping files that are not shrink-sealed |
//! | sandbox | [`sandbox`] | a worker that can receive, read and answer, and nothing else (Landlock, seccomp, limits, namespaces) |
//!
//! Inside the crate, imports point one way: the channels ([`spawn`], [`Listener`],
//! [`handshake`]) use the transport, which uses verification, which uses the regions; the
//! error type, [`Seals`] and [`PeerCredentials`] sit below them all, and the ring and the
//! pools sit on the channels (their async sides on `asyncio`). Memory a peer may write is
//! read only through one internal type, `shm::SharedBytes` (copies by volatile loads; a
//! reference only behind an `unsafe` promise), and a ring producer writes its data area
//! through `shm::SharedBytesMut`; system calls that rustix does not wrap sit in one
//! internal module, `sys`. Most of the crate's `unsafe` code lives in those two modules.
//!
//! See [Sharing descriptors safely](#sharing-descriptors-safely) for what sharing a
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
//! # Sharing descriptors safely
//!
//! ## A descriptor you send is not a copy: it is the same *open file description*
//!
//! A descriptor number points to an *open file description* (OFD): the kernel object made
//! by `open`, `memfd_create` or `socket`. `dup`, `fork` and sending the descriptor over a
//! unix socket (`SCM_RIGHTS`, what [`crate::Channel`] does) all make a new descriptor for the
//! **same** OFD. Everything the OFD holds is then shared between the processes:
//!
//! - the **file offset**: `read`, `write` and `lseek` through [`std::fs::File`] (or any
//!   `Read`/`Write`/`Seek` that uses them) in one process move the offset the other process
//!   reads and writes at. Two processes that each "read the file from the start" through
//!   `File` get interleaved pieces of it, and neither can tell;
//! - the **status flags** (`O_APPEND`, `O_NONBLOCK`, `O_DIRECT`, ...): `fcntl(F_SETFL)` in
//!   one process changes them for the other. Set `O_APPEND` on a shared OFD and every
//!   `write` — and on Linux even every `pwrite` — of the other side goes to the end of the
//!   file;
//! - **OFD locks** (`F_OFD_SETLK`) and `flock` locks are held by the OFD, so both processes
//!   hold them; a lock taken "by the peer" is one you hold too.
//!
//! The close-on-exec flag is *not* shared: it belongs to each descriptor.
//!
//! [`PositionalFile`] is the tool for the first two: it keeps its own offset and does every
//! transfer with `pread`/`pwrite` at an explicit position, so neither side's offset moves,
//! and it writes with `RWF_NOAPPEND` where the kernel has it (Linux 6.9+), so an `O_APPEND`
//! set by the peer cannot redirect its writes.
//!
//! ## Seals bind everyone; descriptor modes bind only the honest
//!
//! Opening a file `O_RDONLY`, or receiving a descriptor that was, is **not** a protection
//! for shared memory: any process holding a descriptor to a memfd can open
//! `/proc/self/fd/N` with `O_RDWR` and get a new, *writable* descriptor to the same file
//! (it works on memfds, created 0777, 0666 with `MFD_NOEXEC_SEAL`, or 0600 by this crate's
//! fallback, whenever the peer runs as the same user; only file permissions that deny the
//! peer's user write access stop it, and not for a privileged peer). A read-only descriptor
//! tells you what *you* can do, never what the peer can.
//!
//! Seals are different: they belong to the file itself (the inode), so they bind every
//! descriptor, every mapping and every process, including one that reopens the file
//! through `/proc`; and they can only ever be added, never removed. That is why this crate
//! trusts seals and only seals:
//!
//! | the peer must not... | seal | what a receiver gets without it |
//! |---|---|---|
//! | change the bytes | `F_SEAL_WRITE` (or `F_SEAL_FUTURE_WRITE` for everyone but the producer's own mapping) | data that changes while you read it |
//! | shrink the file | `F_SEAL_SHRINK` | `SIGBUS` when you touch a mapped page past the new end |
//! | grow it | `F_SEAL_GROW` | a size that no longer matches what you verified |
//! | add or remove seals later | `F_SEAL_SEAL` | no guarantee at all for the future |
//!
//! ## Which tool to use
//!
//! - **You control the producer**: seal. [`crate::Region::seal`] for data that never
//!   changes (read it in place as `&[u8]`), [`crate::Region::seal_producer_writable`] for a region
//!   the producer keeps writing (read it by copy with [`crate::RegionView::read_at`]). The
//!   receiver's [`crate::verify()`] refuses anything else.
//! - **The file cannot be sealed** (a legacy producer, a `/dev/shm` file, a memfd from a
//!   library that does not use `MFD_ALLOW_SEALING`), and you want to avoid mapping it:
//!   [`PositionalFile`] reads it with `pread`. A truncation then shows up as a short read
//!   or an end of file, never as a signal.
//! - **The file cannot be sealed and you need it mapped** (large, random access):
//!   [`crate::GuardedMap`] maps it read-only and turns the `SIGBUS` of a truncation during a
//!   read into [`crate::Error::Truncated`].
//! - **Any descriptor shared with another process**, sealed or not, that you read or write
//!   as a stream: wrap it in a [`PositionalFile`] instead of a [`std::fs::File`]
//!   ([`PositionalFile::from`] takes any [`OwnedFd`](std::os::fd::OwnedFd); `PositionalFile::try_from` a received
//!   [`crate::RegionView`] whose policy kept its descriptor, [`crate::Policy::keep_descriptors`]).
//!
//! **A peer's descriptor can block I/O without bound.** `pread`/`pwrite` on a descriptor
//! another process sent you run that file's filesystem code: on a FUSE mount they wait for
//! the peer's daemon, which may never answer (the thread then sleeps uninterruptibly); on a
//! network filesystem they wait for the server. sealpipe's channels accept only shared
//! memory as regions, but a [`PositionalFile`] or [`crate::GuardedMap`] over a descriptor of
//! unknown origin inherits this: check what it is first (`F_GET_SEALS` succeeds only for
//! shared memory), or do such I/O on a thread you can abandon.
//!
//! Every descriptor sealpipe creates or receives is close-on-exec (memfds, sockets,
//! descriptors received with `MSG_CMSG_CLOEXEC`, duplicates made with `F_DUPFD_CLOEXEC`), so a
//! child process you spawn inherits none of them unless you hand one over on purpose, as
//! [`crate::spawn::spawn`] does with exactly one.
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
mod checks;
mod closer;
mod connect;
mod credentials;
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
mod platform;
mod policy;
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

pub use credentials::PeerCredentials;
pub use error::{Error, HandshakeFailure, RefusalReason, Result};
pub use guard::{GuardOptions, GuardedMap};
pub use handshake::{HandshakeConfig, PeerPolicy, Secret};
pub use listener::{default_path, Listener};
pub use platform::{capabilities, Capabilities};
pub use policy::Policy;
pub use positional::PositionalFile;
pub use region::{ProducerWritableRegion, Region, SealedRegion};
pub use seals::Seals;
pub use stats::{ChannelStats, ListenerStats, RejectReason, Rejections};
pub use transport::{Channel, Message};
pub use verify::{verify, RegionView};
