//! Region pools: reuse sealed memory across messages, send each descriptor once, fan out
//! with release tracking.
//!
//! A fresh sealed [`Region`](crate::Region) per message pays for allocating and freeing its
//! pages every time, which costs more than copying the bytes through a socket. A [`Pool`]
//! keeps its memory: memfds sealed `FUTURE_WRITE | SHRINK | GROW | SEAL`, every page
//! committed when the memfd is made, mapped writable once by the producer and carved into
//! buffers. A consumer gets each memfd once, verifies it once (the same checks as any
//! region) and maps it read-only once; after that a message is a 48-byte notice naming a
//! buffer, and the consumer gives the buffer back with a batched release.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::Write;
//! use sealpipe::pool::{Pool, PoolOptions, PoolReceiver};
//! use sealpipe::{Channel, Policy};
//!
//! let (a, b) = Channel::pair()?; // or sealpipe::spawn for a worker process
//! let pool = Pool::new(PoolOptions::new().max_bytes(64 << 20))?;
//! let tx = pool.attach(a)?;
//! let mut rx = PoolReceiver::new(b, &Policy::producer_writable())?;
//!
//! let mut lease = pool.lease(1 << 20)?;     // a writable buffer of 1 MiB
//! lease.write_all(b"frame 0")?;
//! lease.send(&[&tx])?;                       // the buffer is the consumer's now
//!
//! let buf = rx.recv()?;                      // verified once, mapped once
//! let mut head = [0u8; 7];
//! buf.read_at(0, &mut head)?;                // copy out, then validate
//! assert_eq!(&head, b"frame 0");
//! drop(buf);                                 // queues a release; never blocks
//! rx.flush_releases()?;
//! assert_eq!(tx.poll_releases()?, 1);
//! # Ok(()) }
//! ```
//!
//! # Producer
//!
//! [`Pool::lease`] gives a [`Lease`]: a buffer of at least the asked length, writable as
//! `&mut [u8]`, as `&mut [T]` ([`Lease::as_mut_slice_of`]) or through [`std::io::Write`].
//! Its contents are whatever the buffer last held. [`Lease::send`] consumes it (safe code
//! can no longer write it) and hands it to one or several consumers ([`PoolSender`]s of
//! this pool); it returns to the pool when **every** one of them has released it.
//!
//! **Fan-out and full sockets.** A buffer is owed to each consumer separately: `send`
//! gives it to every consumer with room in its socket first, then waits for room in each
//! full one, so a slow consumer delays only itself. A consumer that fails (gone, timed
//! out, at fault) does not get the buffer and does not hold it; the others keep theirs.
//! `send` reports the first failure; to know each consumer's result, or to retry one whose
//! socket is full later, turn the lease into an [`Outgoing`] ([`Lease::into_outgoing`]) and
//! send it to each consumer with [`Outgoing::send_to`] / [`Outgoing::try_send_to`]. The
//! buffer returns to the pool when the `Outgoing` is dropped and every consumer it was
//! actually sent to has released it: it is never leaked, never freed while a consumer that
//! got it still holds it.
//!
//! Buffers come in size classes (4 steps per doubling, at least one 4 KiB page); each
//! memfd is a slab of one class ([`PoolOptions::slab_len`], one buffer per memfd for larger
//! classes), created on first need within [`PoolOptions::max_bytes`] and
//! [`PoolOptions::max_memfds`] and kept for the pool's life: memory a class has made stays
//! with that class and is **never given back**, neither to the system nor to another class,
//! until the pool and every consumer are gone (consumers keep each memfd mapped, and the
//! protocol has no message telling them to forget one). So use one pool per kind of buffer
//! (frames, tensors of one shape) rather than one pool for every length, and drop a pool to
//! free its memory.
//!
//! **Where releases are read.** The producer reads releases only (a) in `lease` when the
//! class has no free buffer, before it makes a new memfd or waits, and (b) in
//! [`PoolSender::poll_releases`]. Never in `send`, never in another thread: there is no
//! helper thread. A producer that stops leasing should call `poll_releases` now and then
//! (or just before it leases again) to learn of consumers that misbehaved or left.
//!
//! A consumer's fault (a bad release, a malformed message) never fails `lease`: it is
//! recorded on that consumer's [`PoolSender`] and returned once by its next `send` or
//! `poll_releases`. A consumer that closes its channel (or exits) gives back every buffer
//! it held.
//!
//! **Back-pressure and stalled consumers.** When every buffer is held and the limits are
//! reached, `lease` waits (in `epoll`, woken by releases) up to its deadline and then fails
//! with [`Error::PoolExhausted`](crate::Error::PoolExhausted); `try_lease` fails at once.
//! [`Pool::retire_held_longer_than`] takes buffers that consumers have held too long out
//! of circulation for good, never to be reused (a consumer may still be reading them), and
//! counts them against [`PoolOptions::max_retired_bytes`]; the pool may then make new
//! memory to replace them, so one stalled consumer cannot starve the others.
//!
//! # Consumer
//!
//! [`PoolReceiver::recv`] verifies each announced memfd once against the receiver's
//! [`Policy`](crate::Policy) (which must accept `FUTURE_WRITE` regions:
//! [`Policy::producer_writable`](crate::Policy::producer_writable)), caps how many memfds and bytes
//! one producer may make it map ([`Policy::max_pool_memfds`](crate::Policy::max_pool_memfds),
//! [`Policy::max_pool_bytes`](crate::Policy::max_pool_bytes)), and checks every notice
//! (known memfd, range inside it, generation above the last) before anything is read.
//!
//! A [`PoolBuffer`] has the read model of any producer-writable region: safe reads copy out
//! ([`PoolBuffer::read_at`], [`PoolBuffer::read_value`], each byte read once: validate the
//! copy); in-place access is the `unsafe` [`PoolBuffer::as_bytes_unchecked`], for a
//! producer you trust not to write a buffer it has sent.
//!
//! **Releases never block.** Dropping a `PoolBuffer` queues its release. The queue is sent
//! with one non-blocking `sendmsg` when it holds [`PoolReceiver::set_release_batch`]
//! entries (default 32) or 256 KiB of buffers, and before `recv` waits for the next notice; if the socket is full
//! the releases stay queued for the next attempt. [`PoolReceiver::flush_releases`] sends
//! them now.
//!
//! # Async
//!
//! With the `tokio` feature, `AsyncPool` awaits a free buffer and room in a
//! consumer's full socket (`AsyncPool::send`, `AsyncPool::send_to`), and `AsyncPoolReceiver`
//! awaits the next buffer, on a tokio runtime (no helper thread; see each method's
//! `# Cancel safety`).
//!
//! # What a consumer can see
//!
//! A consumer that was sent one buffer of a memfd has the whole memfd mapped: it can read
//! every buffer of that memfd, including ones later sent only to other consumers. Use one
//! pool per trust domain. Every consumer's mapping is read-only and the memfd is sealed
//! against every new writer, so no consumer can change what another reads.
//!
//! # Wire
//!
//! Three message kinds (16 announce, 17 notice, 18 release), specified in `PROTOCOL.md`
//! (section "Region pools"). A pool's channel carries only these.

#[cfg(feature = "tokio")]
mod async_pool;
mod consumer;
mod lease;
mod memory;
mod producer;
mod sender;

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use async_pool::{AsyncPool, AsyncPoolReceiver};
pub use consumer::{PoolBuffer, PoolReceiver};
pub use lease::{Lease, Outgoing};
pub use producer::{Pool, PoolOptions, PoolStats};
pub use sender::PoolSender;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poisoning: every critical section leaves the state consistent
/// before anything that could panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
