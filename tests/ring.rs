//! The ring across real processes: streams in both wait modes, lost wakeups, peer death,
//! the peer index cached. Hostile peers: `ring_hostile.rs`; setup checks: `ring_setup.rs`.
//!
//! Sizes: the defaults keep this binary under 10 s in the debug profile.
//! `SEALPIPE_RING_STRESS=full` runs the counts the ring was specified with (10^8 8-byte
//! items and 10^7 variable-length records per mode, 2·10^6 park/wake cycles each way; about
//! 3 minutes with `--release --test-threads=1`); `SEALPIPE_RING_WAKES=N` sets the number of
//! park/wake cycles alone.

mod common;

use std::time::{Duration, Instant};

use common::ring_peers::*;
use sealpipe::ring::{Consumer, PodConsumer, PodProducer, Producer, RingOptions, SpinPolicy};
use sealpipe::{Channel, Error};

const T: Duration = Duration::from_secs(30);

fn full() -> bool {
    std::env::var("SEALPIPE_RING_STRESS").is_ok_and(|v| v == "full")
}

/// Length of record `i`: mostly 1..=64 bytes, one in 16 log-uniform up to 64 KiB.
fn record_len(i: u64) -> usize {
    let r = splitmix(i);
    if r % 16 == 0 {
        let bits = (r >> 8) % 17;
        ((1u64 << bits) + (r >> 32) % (1u64 << bits)).clamp(1, 65536) as usize
    } else {
        1 + (r >> 8) as usize % 64
    }
}

/// Fills `buf` with record `i`'s contents: word j is `splitmix(i << 20 ^ j)`.
fn fill(i: u64, buf: &mut [u8]) {
    let seed = i << 20;
    let j = (buf.len() / 8) as u64;
    let mut chunks = buf.chunks_exact_mut(8);
    for (j, c) in (&mut chunks).enumerate() {
        c.copy_from_slice(&splitmix(seed ^ j as u64).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&splitmix(seed ^ j).to_le_bytes()[..n]);
}

/// Whether `buf` is exactly record `i` (length and every byte): no loss, no reordering,
/// no duplication, no corruption.
fn is_record(i: u64, buf: &[u8]) -> bool {
    if buf.len() != record_len(i) {
        return false;
    }
    let seed = i << 20;
    let mut chunks = buf.chunks_exact(8);
    for (j, c) in (&mut chunks).enumerate() {
        if c != splitmix(seed ^ j as u64).to_le_bytes() {
            return false;
        }
    }
    let j = (buf.len() / 8) as u64;
    let tail = chunks.remainder();
    tail == &splitmix(seed ^ j).to_le_bytes()[..tail.len()]
}

fn spin_policy(name: &str) -> SpinPolicy {
    match name {
        "spin" => SpinPolicy::Spin,
        "park" => SpinPolicy::Park,
        _ => SpinPolicy::default(),
    }
}

/// Peer roles shared by the tests of this binary. A role is `name:arg:arg...`.
fn peer(role: &str, ch: Channel) -> i32 {
    let parts: Vec<&str> = role.split(':').collect();
    let arg = |i: usize| parts.get(i).copied().unwrap_or("");
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    match parts[0] {
        // bytes-producer:<spin>:<count>:<capacity>
        "bytes-producer" => {
            let opts = RingOptions::new(num(3) as usize).spin(spin_policy(arg(1)));
            let mut tx = Producer::setup(ch, &opts).expect("connect");
            let mut scratch = vec![0u8; 65536];
            for i in 0..num(2) {
                let len = record_len(i);
                if i % 2 == 0 {
                    // In place.
                    let mut r = tx.reserve_timeout(len, T).expect("reserve");
                    fill(i, r.as_mut_slice());
                    r.commit();
                } else {
                    fill(i, &mut scratch[..len]);
                    tx.send_timeout(&scratch[..len], T).expect("send");
                }
            }
            0
        }
        // pod-producer:<spin>:<count>:<capacity>:<batch>[:inplace]
        "pod-producer" => {
            let opts = RingOptions::new(num(3) as usize).spin(spin_policy(arg(1)));
            let mut tx = PodProducer::<u64>::setup(ch, &opts).expect("connect");
            let batch = num(4).max(1);
            let mut buf = vec![0u64; batch as usize];
            let mut i = 0;
            let n = num(2);
            while i < n {
                if arg(5) == "inplace" {
                    // Written straight into reserved slots, one publication per batch.
                    let want = batch.min(n - i) as usize;
                    let mut slots = tx.reserve_slice_timeout(want, T).expect("reserve");
                    let k = slots.len();
                    assert!((1..=want).contains(&k), "reserved {k} of {want}");
                    for (j, slot) in slots.as_mut_slice().iter_mut().enumerate() {
                        *slot = i + j as u64;
                    }
                    slots.commit(k);
                    i += k as u64;
                } else if batch == 1 {
                    tx.send_timeout(i, T).expect("push");
                    i += 1;
                } else {
                    let k = batch.min(n - i) as usize;
                    for (j, b) in buf[..k].iter_mut().enumerate() {
                        *b = i + j as u64;
                    }
                    let mut done = 0;
                    while done < k {
                        match tx.try_send_slice(&buf[done..k]) {
                            Ok(m) => done += m,
                            Err(Error::WouldBlock) => std::hint::spin_loop(),
                            Err(e) => panic!("send_slice: {e}"),
                        }
                    }
                    i += k as u64;
                }
            }
            0
        }
        // irregular-producer:<count>: publishes u64s with random pauses (0-40 µs, busy)
        "irregular-producer" => {
            let opts = RingOptions::new(1024).spin(SpinPolicy::Park);
            let mut tx = PodProducer::<u64>::setup(ch, &opts).expect("connect");
            for i in 0..num(1) {
                pause(splitmix(i) % 40);
                tx.send_timeout(i, T).expect("push");
            }
            0
        }
        // irregular-consumer:<count>: takes u64s with random pauses, so the producer
        // keeps finding the ring full
        "irregular-consumer" => {
            let opts = RingOptions::default().spin(SpinPolicy::Park);
            let mut rx = PodConsumer::<u64>::setup(ch, &opts).expect("connect");
            for i in 0..num(1) {
                pause(splitmix(i) % 40);
                assert_eq!(rx.recv_timeout(T).expect("pop"), i);
            }
            0
        }
        // endless-producer: streams until killed
        "endless-producer" => {
            let mut tx = Producer::setup(ch, &RingOptions::new(1 << 16)).expect("connect");
            let mut i = 0u64;
            loop {
                let _ = tx.send_timeout(&i.to_le_bytes(), T);
                i += 1;
            }
        }
        // sleepy-consumer: connects and never reads
        "sleepy-consumer" => {
            let _rx = Consumer::setup(ch, &RingOptions::default()).expect("connect");
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        _ => 99,
    }
}

/// Busy-waits about `us` microseconds.
fn pause(us: u64) {
    let end = Instant::now() + Duration::from_micros(us);
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

fn run_peer() {
    common::peer_main(peer);
}

fn stream_bytes(test: &str, spin: &str, count: u64) {
    stream_bytes_with(test, spin, count, false);
}

/// `batched`: the consumer takes what is published with batch reads (one publication of
/// its read index per batch), and waits only when the ring is empty.
fn stream_bytes_with(test: &str, spin: &str, count: u64, batched: bool) {
    run_peer();
    let _serial = common::serial();
    let fds = common::fd_count();
    let maps = memfd_maps();
    let cap = 1 << 18;
    let p = common::spawn_peer(test, &format!("bytes-producer:{spin}:{count}:{cap}"));
    let Peer2 { peer, channel } = split(p);
    let opts = RingOptions::default().spin(spin_policy(spin));
    let mut rx = Consumer::setup(channel, &opts).unwrap();
    assert_eq!(rx.capacity(), cap);
    let mut buf = Vec::new();
    let mut i = 0;
    while i < count {
        if batched {
            let mut batch = rx.batch();
            while i < count {
                match batch.try_recv(&mut buf) {
                    Ok(()) => {
                        assert!(is_record(i, &buf), "record {i} is wrong (batch)");
                        i += 1;
                    }
                    Err(Error::WouldBlock) => break,
                    Err(e) => panic!("record {i}: {e}"),
                }
            }
            batch.finish();
            if i == count {
                break;
            }
        }
        rx.recv_timeout(&mut buf, T)
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
        assert!(
            is_record(i, &buf),
            "record {i} (len {}) is wrong",
            buf.len()
        );
        i += 1;
    }
    assert!(matches!(
        rx.recv_timeout(&mut buf, T),
        Err(Error::PeerClosed)
    ));
    drop(rx);
    assert_eq!(peer.wait(), 0);
    assert_eq!(common::fd_count(), fds, "descriptors leaked");
    assert_eq!(memfd_maps(), maps, "mappings leaked");
}

fn stream_pod(test: &str, spin: &str, count: u64, batch: u64) {
    stream_pod_with(test, spin, count, batch, "");
}

/// `mode` "inplace": the producer writes items into reserved slots.
fn stream_pod_with(test: &str, spin: &str, count: u64, batch: u64, mode: &str) {
    run_peer();
    let _serial = common::serial();
    let p = common::spawn_peer(
        test,
        &format!("pod-producer:{spin}:{count}:4096:{batch}:{mode}"),
    );
    let Peer2 { peer, channel } = split(p);
    let opts = RingOptions::default().spin(spin_policy(spin));
    let mut rx = PodConsumer::<u64>::setup(channel, &opts).unwrap();
    let mut buf = vec![0u64; 256];
    let mut next = 0u64;
    let deadline = Instant::now() + T * 4;
    while next < count {
        match rx.try_recv_slice(&mut buf) {
            Ok(n) => {
                for &v in &buf[..n] {
                    assert_eq!(v, next, "item out of sequence");
                    next += 1;
                }
            }
            Err(Error::WouldBlock) => {
                assert!(Instant::now() < deadline, "stream stalled at {next}");
                // Blocking mode waits for the next item through the ring's own wait.
                if spin != "spin" {
                    let v = rx.recv_timeout(T).unwrap();
                    assert_eq!(v, next);
                    next += 1;
                }
            }
            Err(e) => panic!("pop at {next}: {e}"),
        }
    }
    assert!(matches!(rx.recv_timeout(T), Err(Error::PeerClosed)));
    assert_eq!(peer.wait(), 0);
}

fn count(default: u64, full_count: u64) -> u64 {
    if full() {
        full_count
    } else {
        default
    }
}

#[test]
fn variable_records_stream_across_processes_spinning() {
    stream_bytes(
        "variable_records_stream_across_processes_spinning",
        "spin",
        count(60_000, 10_000_000),
    );
}

#[test]
fn variable_records_stream_across_processes_parking() {
    stream_bytes(
        "variable_records_stream_across_processes_parking",
        "park",
        count(60_000, 10_000_000),
    );
}

#[test]
fn variable_records_stream_to_batch_reads() {
    stream_bytes_with(
        "variable_records_stream_to_batch_reads",
        "default",
        count(60_000, 10_000_000),
        true,
    );
}

#[test]
fn pod_items_stream_from_in_place_batches() {
    stream_pod_with(
        "pod_items_stream_from_in_place_batches",
        "default",
        count(1_000_000, 100_000_000),
        32,
        "inplace",
    );
}

#[test]
fn pod_items_stream_across_processes_spinning() {
    stream_pod(
        "pod_items_stream_across_processes_spinning",
        "spin",
        count(1_000_000, 100_000_000),
        1,
    );
}

#[test]
fn pod_items_stream_across_processes_parking_batched() {
    stream_pod(
        "pod_items_stream_across_processes_parking_batched",
        "park",
        count(1_000_000, 100_000_000),
        32,
    );
}

// ----------------------------------------------------------------- lost wakeups

fn wake_cycles() -> u64 {
    std::env::var("SEALPIPE_RING_WAKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full() { 2_000_000 } else { 40_000 })
}

#[test]
fn parked_consumer_never_misses_a_wakeup() {
    run_peer();
    let _serial = common::serial();
    let n = wake_cycles();
    let p = split(common::spawn_peer(
        "parked_consumer_never_misses_a_wakeup",
        &format!("irregular-producer:{n}"),
    ));
    let opts = RingOptions::default().spin(SpinPolicy::Park);
    let mut rx = PodConsumer::<u64>::setup(p.channel, &opts).unwrap();
    for i in 0..n {
        assert_eq!(rx.recv_timeout(T).unwrap(), i);
    }
    let stats = rx.stats();
    eprintln!("consumer: {stats:?} over {n} items");
    assert!(
        stats.parks > n / 20,
        "too few parks to test anything: {stats:?}"
    );
    assert_eq!(
        stats.missed_wakes, 0,
        "waits ended by timeout instead of a wake: {stats:?}"
    );
    assert_eq!(p.peer.wait(), 0);
}

#[test]
fn parked_producer_never_misses_a_wakeup() {
    run_peer();
    let _serial = common::serial();
    let n = wake_cycles();
    let p = split(common::spawn_peer(
        "parked_producer_never_misses_a_wakeup",
        &format!("irregular-consumer:{n}"),
    ));
    let opts = RingOptions::new(16).spin(SpinPolicy::Park);
    let mut tx = PodProducer::<u64>::setup(p.channel, &opts).unwrap();
    for i in 0..n {
        tx.send_timeout(i, T).unwrap();
    }
    let stats = tx.stats();
    eprintln!("producer: {stats:?} over {n} items");
    assert!(
        stats.parks > n / 20,
        "too few parks to test anything: {stats:?}"
    );
    assert_eq!(
        stats.missed_wakes, 0,
        "waits ended by timeout instead of a wake: {stats:?}"
    );
    assert_eq!(p.peer.wait(), 0);
}

// ----------------------------------------------------------------- peer death

#[test]
fn consumer_survives_producer_killed_mid_stream() {
    run_peer();
    let _serial = common::serial();
    let fds = common::fd_count();
    let maps = memfd_maps();
    let p = split(common::spawn_peer(
        "consumer_survives_producer_killed_mid_stream",
        "endless-producer",
    ));
    let mut rx =
        Consumer::setup(p.channel, &RingOptions::default().spin(SpinPolicy::Park)).unwrap();
    let mut buf = Vec::new();
    for i in 0..10_000u64 {
        rx.recv_timeout(&mut buf, T).unwrap();
        assert_eq!(buf, i.to_le_bytes());
    }
    p.peer.kill();
    let deadline = Duration::from_secs(5);
    let err = loop {
        match rx.recv_timeout(&mut buf, deadline) {
            Ok(()) => continue, // records published before the kill
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    drop(rx);
    assert_eq!(common::fd_count(), fds, "descriptors leaked");
    assert_eq!(memfd_maps(), maps, "mappings leaked");
}

/// The non-waiting calls notice a dead peer too, once the ring has stayed empty (full)
/// for a while: without a system call while records flow, and whether they are called in a
/// tight loop (consumer here) or now and then (producer here, once per millisecond).
#[test]
fn try_calls_notice_a_dead_peer() {
    run_peer();
    let _serial = common::serial();
    let p = split(common::spawn_peer(
        "try_calls_notice_a_dead_peer",
        "endless-producer",
    ));
    let mut rx = Consumer::setup(p.channel, &RingOptions::default()).unwrap();
    let mut buf = Vec::new();
    rx.recv_timeout(&mut buf, T).unwrap();
    p.peer.kill();
    let start = Instant::now();
    let err = loop {
        match rx.try_recv(&mut buf) {
            Ok(()) | Err(Error::WouldBlock) => {
                assert!(
                    start.elapsed() < T,
                    "try_recv never noticed the dead producer"
                );
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::PeerClosed), "{err:?}");

    let p = split(common::spawn_peer(
        "try_calls_notice_a_dead_peer",
        "sleepy-consumer",
    ));
    let mut tx = Producer::setup(p.channel, &RingOptions::new(4096)).unwrap();
    while tx.try_send(&[7u8; 100]).is_ok() {}
    p.peer.kill();
    let start = Instant::now();
    let err = loop {
        match tx.try_send(&[7u8; 100]) {
            Err(Error::WouldBlock) => {
                assert!(
                    start.elapsed() < T,
                    "try_send never noticed the dead consumer"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            other => break other,
        }
    };
    assert!(matches!(err, Err(Error::PeerClosed)), "{err:?}");
}

/// The producer caches the consumer's index and loads it again only when the cached copy
/// shows the ring full; the consumer learns that a record is ready from the record's own
/// header and loads the producer's index only when it finds the ring empty: the counters in
/// `RingStats` show exactly how often.
#[test]
fn the_peer_index_is_reloaded_only_when_the_cached_copy_runs_out() {
    let _serial = common::serial();
    let (a, b) = Channel::pair().unwrap();
    let spin = SpinPolicy::Spin;
    let t =
        std::thread::spawn(move || Consumer::setup(b, &RingOptions::default().spin(spin)).unwrap());
    let mut tx = Producer::setup(a, &RingOptions::new(1024).spin(spin)).unwrap();
    let mut rx = t.join().unwrap();
    for i in 0..10u8 {
        tx.try_send(&[i; 24]).unwrap(); // 32 bytes each with the header
    }
    assert_eq!(tx.stats().index_loads, 0, "room was known without a load");
    let mut buf = Vec::new();
    for i in 0..10u8 {
        rx.try_recv(&mut buf).unwrap();
        assert_eq!(buf, [i; 24]);
    }
    let s = rx.stats();
    assert_eq!(
        (s.index_loads, s.found_blocked),
        (0, 0),
        "the headers showed all ten"
    );
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock)));
    let s = rx.stats();
    assert_eq!((s.index_loads, s.found_blocked), (1, 1));
    // The producer's cached copy (read index 0) still shows 704 bytes free, of which 8 stay
    // for the end mark after the last record: 21 more records, no load.
    for _ in 0..21 {
        tx.try_send(&[9; 24]).unwrap();
    }
    assert_eq!(tx.stats().index_loads, 0);
    // Then one load shows the 320 bytes the consumer freed (and published when it found
    // the ring empty), and one more finds the ring full.
    for _ in 0..10 {
        tx.try_send(&[9; 24]).unwrap();
    }
    assert_eq!(tx.stats().index_loads, 1);
    assert!(matches!(tx.try_send(&[9; 24]), Err(Error::WouldBlock)));
    let s = tx.stats();
    assert_eq!((s.index_loads, s.found_blocked), (2, 1));
    assert_eq!((s.parks, s.wakes), (0, 0));
}

#[test]
fn producer_blocked_on_a_full_ring_survives_consumer_killed() {
    run_peer();
    let _serial = common::serial();
    let fds = common::fd_count();
    let maps = memfd_maps();
    let p = split(common::spawn_peer(
        "producer_blocked_on_a_full_ring_survives_consumer_killed",
        "sleepy-consumer",
    ));
    let mut tx = Producer::setup(p.channel, &RingOptions::new(4096)).unwrap();
    while tx.try_send(&[7u8; 100]).is_ok() {}
    assert!(matches!(
        tx.send_timeout(&[7u8; 100], Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    p.peer.kill();
    let started = Instant::now();
    let err = tx
        .send_timeout(&[7u8; 100], Duration::from_secs(5))
        .unwrap_err();
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(tx);
    assert_eq!(common::fd_count(), fds, "descriptors leaked");
    assert_eq!(memfd_maps(), maps, "mappings leaked");
}
