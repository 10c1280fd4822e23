//! Steady-state sending and receiving through the ring allocate nothing: a counting global
//! allocator watches this process while it streams to and from a real peer process.
#![allow(unsafe_code)] // the counting global allocator

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use sealpipe::ring::{Consumer, PodConsumer, PodProducer, Producer, RingOptions, SpinPolicy};
use sealpipe::Channel;

/// Counts allocations made by threads that asked to be counted.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping only
// touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
    });
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while running `f`.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get) - before
}

const T: Duration = Duration::from_secs(30);
const N: u64 = 100_000;

fn peer(role: &str, ch: Channel) -> i32 {
    let opts = RingOptions::new(1 << 16).spin(SpinPolicy::default());
    match role {
        "producer" => {
            let mut tx = Producer::setup(ch, &opts).unwrap();
            for i in 0..2 * N {
                tx.send_timeout(&[i as u8; 64], T).unwrap();
            }
            0
        }
        "consumer" => {
            let mut rx = Consumer::setup(ch, &opts).unwrap();
            let mut buf = Vec::new();
            for _ in 0..2 * N {
                rx.recv_timeout(&mut buf, T).unwrap();
            }
            0
        }
        "pod-consumer" => {
            let mut rx = PodConsumer::<u64>::setup(ch, &opts).unwrap();
            for i in 0..2 * N {
                assert_eq!(rx.recv_timeout(T).unwrap(), i);
            }
            0
        }
        _ => 99,
    }
}

#[test]
fn receiving_allocates_nothing_per_record() {
    common::peer_main(peer);
    let p = common::spawn_peer("receiving_allocates_nothing_per_record", "producer");
    let mut rx = Consumer::setup(p.channel, &RingOptions::default()).unwrap();
    let mut buf = Vec::new();
    // Warm-up: the receive buffer grows to the record size once.
    for _ in 0..N {
        rx.recv_timeout(&mut buf, T).unwrap();
    }
    let allocs = allocations_in(|| {
        for i in 0..N {
            rx.recv_timeout(&mut buf, T).unwrap();
            assert_eq!(buf[0], (N + i) as u8);
        }
    });
    assert_eq!(allocs, 0, "{allocs} allocations for {N} records");
    let control = allocations_in(|| drop(std::hint::black_box(vec![1u8; 10])));
    assert_eq!(control, 1, "the counter sees allocations");
    drop(rx);
    let child = p.child;
    assert_eq!(
        common::Peer {
            child,
            channel: Channel::pair().unwrap().0
        }
        .wait(),
        0
    );
}

#[test]
fn sending_allocates_nothing_per_record() {
    common::peer_main(peer);
    for role in ["consumer", "pod-consumer"] {
        let p = common::spawn_peer("sending_allocates_nothing_per_record", role);
        let allocs = if role == "consumer" {
            let mut tx = Producer::setup(p.channel, &RingOptions::new(1 << 16)).unwrap();
            for i in 0..N {
                tx.send_timeout(&[i as u8; 64], T).unwrap();
            }
            allocations_in(|| {
                for i in 0..N {
                    let mut r = tx.reserve_timeout(64, T).unwrap();
                    r.as_mut_slice().fill(i as u8);
                    r.commit();
                }
            })
        } else {
            let mut tx =
                PodProducer::<u64>::setup(p.channel, &RingOptions::new(1 << 12)).unwrap();
            for i in 0..N {
                tx.send_timeout(i, T).unwrap();
            }
            allocations_in(|| {
                for i in N..2 * N {
                    tx.send_timeout(i, T).unwrap();
                }
            })
        };
        assert_eq!(allocs, 0, "{role}: {allocs} allocations for {N} records");
        let child = p.child;
        assert_eq!(
            common::Peer {
                child,
                channel: Channel::pair().unwrap().0
            }
            .wait(),
            0
        );
    }
}
