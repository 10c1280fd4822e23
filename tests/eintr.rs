//! Signals interrupting blocked calls (`EINTR`): a channel receive and a ring receive that
//! are interrupted again and again must neither fail nor lose the message that comes after.
#![allow(unsafe_code)] // installing a signal handler

mod common;

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sealpipe::ring::{Consumer, Producer, RingOptions};
use sealpipe::{Channel, Policy, Region};

const T: Duration = Duration::from_secs(20);
const SIGUSR1: i32 = 10;

/// The thread that blocks, and how many signals it took while blocked.
static BLOCKED_TID: AtomicI32 = AtomicI32::new(0);
static HITS: AtomicUsize = AtomicUsize::new(0);

fn install_counting_handler() {
    // SAFETY: the handler only makes async-signal-safe calls: gettid (one syscall) and
    // atomic operations; it allocates nothing and takes no lock.
    unsafe {
        signal_hook::low_level::register(SIGUSR1, || {
            if rustix::thread::gettid().as_raw_nonzero().get()
                == BLOCKED_TID.load(Ordering::Relaxed)
            {
                HITS.fetch_add(1, Ordering::Relaxed);
            }
        })
    }
    .expect("install SIGUSR1 handler");
}

/// Blocks in `f` on a dedicated thread, after telling the parent that thread's id (so the
/// parent can aim its signals at it: `kill` with a thread id prefers that thread); exit 0 if
/// `f` succeeded and at least one signal landed on that thread while it was blocked.
fn blocked_on_a_thread(ch: Channel, f: impl FnOnce(Channel) -> bool + Send + 'static) -> i32 {
    install_counting_handler();
    let t = std::thread::spawn(move || {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        BLOCKED_TID.store(tid, Ordering::Relaxed);
        ch.send_timeout(&tid.to_le_bytes(), &[], T).unwrap();
        f(ch)
    });
    match (t.join(), HITS.load(Ordering::Relaxed)) {
        (Ok(true), hits) if hits > 0 => 0,
        (Ok(true), _) => 3, // no signal hit the blocked thread: the test proved nothing
        _ => 1,
    }
}

fn peer(role: &str, ch: Channel) -> i32 {
    match role {
        "channel" => blocked_on_a_thread(ch, |ch| {
            let msg = ch.recv_timeout(&Policy::immutable(), T).unwrap();
            msg.payload() == b"after the storm" && msg.regions().len() == 1
        }),
        "ring" => blocked_on_a_thread(ch, |ch| {
            let mut rx = Consumer::setup(ch, &RingOptions::default()).unwrap();
            let mut buf = Vec::new();
            rx.recv_timeout(&mut buf, T).unwrap();
            buf == b"after the storm"
        }),
        _ => 99,
    }
}

/// Receives the blocked thread's id from the peer.
fn blocked_tid(ch: &Channel) -> i32 {
    let msg = ch.recv_timeout(&Policy::immutable(), T).unwrap();
    i32::from_le_bytes(msg.payload().try_into().unwrap())
}

/// Sends SIGUSR1 to thread `tid` every 500 µs for 300 ms.
fn signal_storm(tid: i32) {
    let pid = rustix::process::Pid::from_raw(tid).unwrap();
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        rustix::process::kill_process(
            pid,
            rustix::process::Signal::from_named_raw(SIGUSR1).unwrap(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_micros(500));
    }
}

#[test]
fn channel_recv_survives_a_signal_storm() {
    common::peer_main(peer);
    let _serial = common::serial();
    let p = common::spawn_peer("channel_recv_survives_a_signal_storm", "channel");
    signal_storm(blocked_tid(&p.channel));
    let region = Region::new(4096).unwrap().seal().unwrap();
    p.channel
        .send_timeout(b"after the storm", &[&region], T)
        .unwrap();
    assert_eq!(
        p.wait(),
        0,
        "1: the receive failed; 3: no signal reached the blocked thread"
    );
}

#[test]
fn ring_recv_survives_a_signal_storm() {
    common::peer_main(peer);
    let _serial = common::serial();
    let p = common::spawn_peer("ring_recv_survives_a_signal_storm", "ring");
    let tid = blocked_tid(&p.channel);
    let mut child = p.child;
    let mut tx = Producer::setup(p.channel, &RingOptions::new(1 << 16)).unwrap();
    // The consumer is now parked (spin briefly, then futex) waiting for the first record.
    std::thread::sleep(Duration::from_millis(20));
    signal_storm(tid);
    tx.send_timeout(b"after the storm", T).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "1: the receive failed; 3: no signal reached the blocked thread"
    );
}
