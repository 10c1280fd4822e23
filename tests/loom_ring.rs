//! Loom model of the ring's publish/park protocol: every interleaving (and every weak-memory
//! outcome loom models) of a side publishing its index while the other side parks on it.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --test loom_ring --release`.
//!
//! The futex is modelled as the kernel implements it: `FUTEX_WAIT` takes the hash-bucket
//! lock, compares the word with the expected value and sleeps (releasing the lock) only if
//! they are equal; `FUTEX_WAKE` takes the same lock and wakes every sleeper. A lost wakeup
//! shows up as a loom deadlock (the waiter sleeps forever after the publisher finished).
//!
//! An async waiter parks in its runtime's reactor instead, on the readiness of its socket,
//! and asks (with the `SIGNAL` bit of its wait word) for a byte on the socket rather than a
//! futex wake. That is modelled as a readiness flag: the signal sets it, the waiter sleeps
//! until it is set and clears it (drains the socket) before it looks at the index again.
//!
//! The byte ring's consumer learns that a record is ready from the record's header (ring
//! version 2: the header is tagged with its index), spins on that header, and parks on the
//! producer's index; the producer stores the header (release) and then its index with the
//! park protocol. The `byte_ring_*` models check that this two-word publication loses no
//! wakeup, makes the record visible with its header, and never shows an index ahead of a
//! header that is not ready.
#![cfg(loom)]

use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use sealpipe::ring::loom_api::{end_park, load_peer, prepare_park, publish};

#[derive(Default)]
struct Futex {
    bucket: Mutex<()>,
    sleepers: Condvar,
}

impl Futex {
    fn wait(&self, word: &AtomicU32, expected: u32) {
        let guard = self.bucket.lock().unwrap();
        if word.load(Ordering::SeqCst) == expected {
            drop(self.sleepers.wait(guard).unwrap());
        }
    }
    fn wake(&self) {
        let _guard = self.bucket.lock().unwrap();
        self.sleepers.notify_all();
    }
}

/// A socket's readability as the reactor sees it: set by a signal byte, cleared by draining.
#[derive(Default)]
struct Readiness {
    ready: Mutex<bool>,
    changed: Condvar,
}

impl Readiness {
    fn wait_and_drain(&self) {
        let mut ready = self.ready.lock().unwrap();
        while !*ready {
            ready = self.changed.wait(ready).unwrap();
        }
        *ready = false;
    }
    fn signal(&self) {
        *self.ready.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

#[derive(Default)]
struct Ring {
    /// The publisher's index (its memory).
    index: AtomicU32,
    /// The waiter's wait word (its memory).
    wait: AtomicU64,
    futex: Futex,
    socket: Readiness,
}

/// The waiter's side of `wait::wait_change` in park mode (no spinning, no time slices).
fn wait_until(ring: &Ring, target: u32) {
    loop {
        let seen = load_peer(&ring.index);
        if seen >= target {
            return;
        }
        if prepare_park(&ring.wait, &ring.index, seen, false) {
            ring.futex.wait(&ring.index, seen);
            end_park(&ring.wait);
        }
    }
}

/// The async waiter (`ring::asyncio::wait_signal`): park on the socket's readiness.
fn await_until(ring: &Ring, target: u32) {
    loop {
        let seen = load_peer(&ring.index);
        if seen >= target {
            return;
        }
        if prepare_park(&ring.wait, &ring.index, seen, true) {
            ring.socket.wait_and_drain();
            end_park(&ring.wait);
        }
    }
}

/// Publishes `values`, waking the waiter the way its wait word asks.
/// (At most one wake per announcement: the wait word last woken is remembered.)
fn publisher(ring: &Ring, values: &[u32]) {
    let mut woken = 0;
    for &v in values {
        match publish(&ring.index, v, &ring.wait, true, &mut woken) {
            Some(true) => ring.socket.signal(),
            Some(false) => ring.futex.wake(),
            None => {}
        }
    }
}

#[test]
fn one_publication_always_wakes_a_parked_waiter() {
    loom::model(|| {
        let ring = Arc::new(Ring::default());
        let r = ring.clone();
        let t = loom::thread::spawn(move || publisher(&r, &[1]));
        wait_until(&ring, 1);
        t.join().unwrap();
    });
}

/// The peer's index is loaded `Relaxed` (its page is read-only here) and followed by
/// `fence(Acquire)`: data written before the `Release` publication is visible once the new
/// index is seen, in every interleaving.
#[test]
fn a_relaxed_load_and_acquire_fence_see_the_published_data() {
    loom::model(|| {
        let ring = Arc::new(Ring::default());
        let data = Arc::new(AtomicU64::new(0));
        let (r, d) = (ring.clone(), data.clone());
        let t = loom::thread::spawn(move || {
            d.store(42, Ordering::Relaxed); // the record, written before publication
            publisher(&r, &[1]);
        });
        wait_until(&ring, 1);
        assert_eq!(data.load(Ordering::Relaxed), 42);
        t.join().unwrap();
    });
}

#[test]
fn a_waiter_that_parks_again_is_woken_again() {
    loom::model(|| {
        let ring = Arc::new(Ring::default());
        let r = ring.clone();
        let t = loom::thread::spawn(move || publisher(&r, &[1, 2]));
        wait_until(&ring, 1);
        wait_until(&ring, 2);
        t.join().unwrap();
    });
}

#[test]
fn both_sides_park_on_each_other() {
    // A ping-pong: each side publishes, then parks until the other answers.
    loom::model(|| {
        let ping = Arc::new(Ring::default());
        let pong = Arc::new(Ring::default());
        let (a, b) = (ping.clone(), pong.clone());
        let t = loom::thread::spawn(move || {
            wait_until(&a, 1);
            publisher(&b, &[1]);
        });
        publisher(&ping, &[1]);
        wait_until(&pong, 1);
        t.join().unwrap();
    });
}

#[test]
fn an_async_waiter_is_signalled() {
    loom::model(|| {
        let ring = Arc::new(Ring::default());
        let r = ring.clone();
        let t = loom::thread::spawn(move || publisher(&r, &[1, 2]));
        await_until(&ring, 1);
        await_until(&ring, 2);
        t.join().unwrap();
    });
}

#[test]
fn async_and_blocking_sides_park_on_each_other() {
    loom::model(|| {
        let ping = Arc::new(Ring::default());
        let pong = Arc::new(Ring::default());
        let (a, b) = (ping.clone(), pong.clone());
        let t = loom::thread::spawn(move || {
            await_until(&a, 1);
            publisher(&b, &[1]);
        });
        publisher(&ping, &[1]);
        wait_until(&pong, 1);
        t.join().unwrap();
    });
}

/// A byte ring's data area reduced to what the publication rule touches: the header word
/// at the consumer's position (holding the end mark, then the record's header) and the
/// record's payload, next to the producer's index and the consumer's wait word.
#[derive(Default)]
struct ByteRing {
    ring: Ring,
    header: AtomicU64,
    payload: AtomicU64,
}

/// The header of the record at index 0 (tag 0 | kind 1, length 8); the end mark is 0.
const READY: u64 = 1 << 32 | 8;
/// The write index after that record.
const AFTER: u32 = 16;

/// `ByteProducer::commit` + `publish`: payload, then the header (release), then the index
/// with the park protocol, waking the consumer the way its wait word asks.
fn byte_producer(r: &ByteRing) {
    r.payload.store(42, Ordering::Relaxed);
    r.header.store(READY, Ordering::Release);
    let mut woken = 0;
    match publish(&r.ring.index, AFTER, &r.ring.wait, true, &mut woken) {
        Some(true) => r.ring.socket.signal(),
        Some(false) => r.ring.futex.wake(),
        None => {}
    }
}

/// `ByteConsumer::next` and the park loop of `wait::wait_change`/the async wait: the header
/// decides; on the end mark, the index tells an empty ring (park on it) from one published
/// past the header (which must then be ready).
fn byte_consumer(r: &ByteRing, signal: bool) {
    let header = || {
        let h = r.header.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        h
    };
    loop {
        if header() == READY {
            break;
        }
        let w = load_peer(&r.ring.index);
        if w != 0 {
            assert_eq!(header(), READY, "index ahead of a header that is not ready");
            break;
        }
        // Blocked { seen: 0, header: end mark }: park on the index.
        if r.header.load(Ordering::Relaxed) != 0 {
            continue;
        }
        if prepare_park(&r.ring.wait, &r.ring.index, 0, signal) {
            if signal {
                r.ring.socket.wait_and_drain();
            } else {
                r.ring.futex.wait(&r.ring.index, 0);
            }
            end_park(&r.ring.wait);
        }
    }
    assert_eq!(
        r.payload.load(Ordering::Relaxed),
        42,
        "record visible with its header"
    );
}

#[test]
fn byte_ring_header_publication_wakes_a_parked_consumer() {
    loom::model(|| {
        let ring = Arc::new(ByteRing::default());
        let r = ring.clone();
        let t = loom::thread::spawn(move || byte_producer(&r));
        byte_consumer(&ring, false);
        t.join().unwrap();
    });
}

#[test]
fn byte_ring_header_publication_signals_an_async_consumer() {
    loom::model(|| {
        let ring = Arc::new(ByteRing::default());
        let r = ring.clone();
        let t = loom::thread::spawn(move || byte_producer(&r));
        byte_consumer(&ring, true);
        t.join().unwrap();
    });
}

/// Negative control: the same model with the fences taken out (the "one flag" protocol:
/// store the index, look at the flag) loses a wakeup, and loom finds it.
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_fences_a_wakeup_is_lost() {
    loom::model(|| {
        let ring = Arc::new(Ring::default());
        let r = ring.clone();
        let t = loom::thread::spawn(move || {
            r.index.store(1, Ordering::Release);
            if r.wait.load(Ordering::Relaxed) != 0 {
                r.futex.wake();
            }
        });
        loop {
            let seen = ring.index.load(Ordering::Acquire);
            if seen >= 1 {
                break;
            }
            ring.wait
                .store(1 << 32 | u64::from(seen), Ordering::Relaxed);
            if ring.index.load(Ordering::Acquire) == seen {
                ring.futex.wait(&ring.index, seen);
            }
            ring.wait.store(0, Ordering::Relaxed);
        }
        t.join().unwrap();
    });
}
