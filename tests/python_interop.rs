//! Interop: a Python 3 peer written from `PROTOCOL.md` with only the standard library
//! (`tests/python/peer.py`) speaks the wire format to a Rust [`Channel`], in both
//! directions, and the example message in `PROTOCOL.md` is checked byte for byte against
//! what Rust really sends. It also takes either side of a byte ring (section Ring), against
//! a Rust producer, and against blocking and async Rust consumers, each side waking the
//! other the way its wait word asks (futex or signal byte).
//!
//! `python3` is guaranteed on every machine of this project: a missing interpreter fails
//! these tests, it does not skip them.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use sealpipe::{Error, Policy, Region, Seals};

const T: Duration = Duration::from_secs(20);
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/peer.py");
const PROTOCOL_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");

/// Byte `i` of pattern `seed`: the same function as `pattern` in `peer.py`.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251 + 17 * seed) % 251) as u8)
        .collect()
}

/// Starts `python3 tests/python/peer.py MODE` with a channel on its descriptor 3.
fn spawn_python(mode: &str) -> common::Peer {
    let mut cmd = Command::new("python3");
    cmd.arg(PEER).arg(mode).stdin(Stdio::null());
    match sealpipe::spawn::spawn(&mut cmd) {
        Ok((child, channel)) => common::Peer { child, channel },
        Err(e) => panic!(
            "cannot start `python3 {PEER} {mode}`: {e} ({:?}); python3 (3.8 or newer) \
             is required by this test and guaranteed on every machine of this project",
            std::error::Error::source(&e)
        ),
    }
}

/// Mappings in this process of memfds the Python peer created (it names them `peer`).
/// Unlike `common::map_count`, this does not change when a test thread's stack is unmapped.
fn peer_memfd_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter(|l| l.contains("/memfd:peer "))
        .count()
}

/// Receives a message with no regions from the Python peer and returns its payload.
fn recv_payload(peer: &common::Peer) -> Vec<u8> {
    let msg = peer
        .channel
        .recv_timeout(&Policy::immutable(), T)
        .expect("message from the Python peer");
    assert!(msg.regions().is_empty());
    msg.payload().to_vec()
}

#[test]
fn python_sends_immutable_regions() {
    let _serial = common::serial();
    let peer = spawn_python("send-immutable");
    let msg = peer
        .channel
        .recv_timeout(&Policy::immutable().max_region_len(2 << 20), T)
        .expect("Rust accepts the Python peer's immutable regions");
    assert_eq!(msg.payload(), pattern(9, 65536), "a full 64 KiB payload");
    let sizes = [4096, (1 << 20) + 13, 3];
    assert_eq!(msg.regions().len(), sizes.len());
    for (i, (region, size)) in msg.regions().iter().zip(sizes).enumerate() {
        assert!(region.is_immutable(), "region {i}");
        assert!(region.seals().contains(Seals::IMMUTABLE), "region {i}");
        assert_eq!(region.len(), size, "region {i}");
        assert!(
            region.as_bytes().unwrap() == pattern(i + 1, size),
            "region {i}: contents differ"
        );
    }
    drop(msg);
    assert_eq!(peer.wait(), 0, "python peer failed (see its stderr)");
}

#[test]
fn python_sends_producer_writable_regions_and_keeps_writing() {
    let _serial = common::serial();
    let peer = spawn_python("send-producer-writable");
    let msg = peer
        .channel
        .recv_timeout(&Policy::producer_writable(), T)
        .expect("Rust accepts the Python peer's FUTURE_WRITE regions");
    assert_eq!(msg.payload(), b"live");
    let sizes = [8192, 65536 + 7];
    assert_eq!(msg.regions().len(), 2);
    for (i, (region, size)) in msg.regions().iter().zip(sizes).enumerate() {
        assert!(!region.is_immutable(), "region {i}");
        assert!(
            region.seals().contains(Seals::PRODUCER_WRITABLE),
            "region {i}"
        );
        assert!(
            matches!(region.as_bytes(), Err(Error::NotImmutable { .. })),
            "region {i}: no &[u8] over memory the producer can change"
        );
        assert!(region.to_vec() == pattern(i + 4, size), "region {i}");
    }
    peer.channel.send_timeout(b"read", &[], T).unwrap();
    assert_eq!(recv_payload(&peer), b"updated");
    assert!(
        msg.regions()[0].to_vec() == pattern(6, sizes[0]),
        "the Python producer's later writes are visible through the same mapping"
    );
    drop(msg);
    assert_eq!(peer.wait(), 0, "python peer failed (see its stderr)");
}

#[test]
fn python_receives_and_verifies_rust_regions() {
    let _serial = common::serial();
    let peer = spawn_python("recv-check");
    let mut immutable = Region::new(1 << 20).unwrap();
    immutable.write_at(0, &pattern(11, 1 << 20)).unwrap();
    let immutable = immutable.seal().unwrap();
    let shared_len = 12288 + 5;
    let mut shared = Region::new(shared_len)
        .unwrap()
        .seal_producer_writable()
        .unwrap();
    shared
        .as_mut_slice()
        .copy_from_slice(&pattern(12, shared_len));

    peer.channel
        .send_timeout(b"rust->python", &[&immutable, shared.region()], T)
        .unwrap();
    let verdict = recv_payload(&peer);
    assert!(
        verdict == b"ok",
        "python: {}",
        String::from_utf8_lossy(&verdict)
    );

    // Rust keeps writing its FUTURE_WRITE region; Python's read-only mapping sees it.
    shared
        .as_mut_slice()
        .copy_from_slice(&pattern(13, shared_len));
    peer.channel.send_timeout(b"updated", &[], T).unwrap();
    let verdict = recv_payload(&peer);
    assert!(
        verdict == b"ok",
        "python: {}",
        String::from_utf8_lossy(&verdict)
    );
    assert_eq!(peer.wait(), 0, "python peer failed (see its stderr)");
}

#[test]
fn rust_rejects_hostile_python_messages_without_leaking() {
    let _serial = common::serial();
    let peer = spawn_python("hostile");
    let fds = common::fds();
    assert_eq!(peer_memfd_maps(), 0);
    let immutable = Policy::immutable();
    let reject = |what: &str, check: &dyn Fn(&Error) -> bool| {
        let err = peer.channel.recv_timeout(&immutable, T).expect_err(what);
        assert!(check(&err), "{what}: wrong error {err:?}");
        assert!(err.is_peer_fault(), "{what}: {err:?}");
        common::assert_no_new_fds(&fds, &format!("{what}: descriptor leaked"));
        assert_eq!(peer_memfd_maps(), 0, "{what}: mapping leaked");
    };
    let need = Seals::WRITE | Seals::SHRINK | Seals::GROW;
    reject(
        "unsealed memfd",
        &|e| matches!(e, Error::MissingSeals { index: 0, missing, .. } if *missing == need),
    );
    reject("version 2", &|e| {
        matches!(
            e,
            Error::UnsupportedVersion {
                got: 2,
                supported: 1
            }
        )
    });
    reject("size mismatch", &|e| {
        matches!(
            e,
            Error::SizeMismatch {
                index: 0,
                declared: 8192,
                actual: 4096
            }
        )
    });
    reject("fd count mismatch", &|e| {
        matches!(
            e,
            Error::FdCountMismatch {
                declared: 2,
                received: 1
            }
        )
    });
    reject("reserved flags", &|e| matches!(e, Error::Malformed { .. }));
    reject(
        "FUTURE_WRITE to an immutable receiver",
        &|e| matches!(e, Error::MissingSeals { index: 0, missing, .. } if *missing == Seals::WRITE),
    );
    reject("write-only descriptor", &|e| {
        matches!(e, Error::NotMemfd { index: 0, .. })
    });

    let msg = peer
        .channel
        .recv_timeout(&immutable, T)
        .expect("the channel still works after rejections");
    assert_eq!(msg.payload(), b"still here");
    assert!(msg.regions()[0].as_bytes().unwrap() == pattern(7, 4096));
    assert_eq!(peer_memfd_maps(), 1, "the accepted region is mapped");
    drop(msg);
    assert_eq!(peer_memfd_maps(), 0);
    common::assert_no_new_fds(&fds, "descriptors leaked");
    assert_eq!(peer.wait(), 0, "python peer failed (see its stderr)");
}

/// The hex dump after `<!-- example-message -->` in PROTOCOL.md, as bytes.
fn documented_example() -> Vec<u8> {
    let doc = std::fs::read_to_string(PROTOCOL_MD).expect("PROTOCOL.md");
    let (_, after) = doc
        .split_once("<!-- example-message -->")
        .expect("PROTOCOL.md has an example-message marker");
    let block = after
        .split("```")
        .nth(1)
        .expect("a fenced hex dump follows the marker");
    let mut bytes = Vec::new();
    for line in block.lines().skip(1) {
        // "00000010  00 10 00 00 ...  |ascii|": offset, then hex pairs up to the ASCII column.
        let hex = line.split('|').next().unwrap_or("");
        let mut words = hex.split_whitespace();
        let Some(offset) = words.next() else { continue };
        let offset = usize::from_str_radix(offset, 16).expect("hex offset");
        assert_eq!(offset, bytes.len(), "offsets in the dump are consecutive");
        bytes.extend(words.map(|w| u8::from_str_radix(w, 16).expect("hex byte")));
    }
    bytes
}

#[test]
fn protocol_md_example_is_what_rust_sends() {
    let _serial = common::serial();
    let peer = spawn_python("echo");
    let immutable = Region::new(4096).unwrap().seal().unwrap();
    let shared = Region::new((1 << 20) + 13)
        .unwrap()
        .seal_producer_writable()
        .unwrap();
    peer.channel
        .send_timeout(b"hello", &[&immutable, shared.region()], T)
        .unwrap();
    let echoed = recv_payload(&peer);
    assert_eq!(echoed[0], 2, "two descriptors arrived in Python");
    assert_eq!(
        &echoed[1..],
        documented_example(),
        "PROTOCOL.md's example differs from the bytes Rust sent"
    );
    assert_eq!(peer.wait(), 0, "python peer failed (see its stderr)");
}

// ----- the ring (PROTOCOL.md, section Ring) -----

use sealpipe::ring::{Consumer, Producer, RingOptions};

/// As `RING_RECORDS` in `peer.py`.
const RING_RECORDS: usize = 3000;

/// Record `i`: the same function as `ring_record` in `peer.py`.
fn ring_record(i: usize) -> Vec<u8> {
    (0..(i * 7) % 300).map(|j| ((i + j) % 251) as u8).collect()
}

fn exit_code(mut child: std::process::Child) -> Option<i32> {
    child.wait().expect("wait for the Python peer").code()
}

#[test]
fn python_ring_consumer_reads_every_record_and_parks_for_signals() {
    let common::Peer { child, channel } = spawn_python("ring-consumer");
    // Default policy: this side parks on a futex when the ring is full, and the Python
    // consumer must wake it.
    let mut tx = Producer::setup(channel, &RingOptions::new(4096).timeout(T)).unwrap();
    for i in 0..RING_RECORDS {
        tx.send_timeout(&ring_record(i), T).unwrap();
        if i % 200 == 199 {
            // Let the consumer run dry, so that it parks and asks for a signal.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let stats = tx.stats();
    drop(tx); // end of stream
    assert_eq!(exit_code(child), Some(0), "the Python consumer's verdict");
    assert!(
        stats.wakes > 0,
        "the Python consumer parked with the signal bit, and was signalled: {stats:?}"
    );
}

#[test]
fn python_ring_producer_wakes_a_blocking_consumer_by_futex() {
    let common::Peer { child, channel } = spawn_python("ring-producer");
    let mut rx = Consumer::setup(channel, &RingOptions::default().timeout(T)).unwrap();
    let mut out = Vec::new();
    for i in 0..RING_RECORDS {
        rx.recv_timeout(&mut out, T).unwrap();
        assert_eq!(out, ring_record(i), "record {i}");
    }
    let end = rx.recv_timeout(&mut out, T).unwrap_err();
    assert!(matches!(end, Error::PeerClosed), "{end:?}");
    let stats = rx.stats();
    assert!(stats.parks > 0, "the producer's pauses must make us park");
    // Python has no fence between its store and its load, so an occasional wake can be
    // missed; most must arrive (a producer that never woke us would miss every one).
    assert!(
        stats.missed_wakes * 4 <= stats.parks,
        "the Python producer's futex wakes: {stats:?}"
    );
    assert_eq!(exit_code(child), Some(0));
}

#[cfg(feature = "tokio")]
#[test]
fn python_ring_producer_signals_an_async_consumer() {
    use sealpipe::ring::AsyncConsumer;
    let common::Peer { child, channel } = spawn_python("ring-producer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let parks = rt.block_on(async {
        let options = RingOptions::default().timeout(T);
        let mut rx = AsyncConsumer::setup(channel, &options).await.unwrap();
        let mut out = Vec::new();
        for i in 0..RING_RECORDS {
            tokio::time::timeout(T, rx.recv(&mut out))
                .await
                .expect("not woken")
                .unwrap();
            assert_eq!(out, ring_record(i), "record {i}");
        }
        let end = tokio::time::timeout(T, rx.recv(&mut out)).await.unwrap();
        assert!(matches!(end, Err(Error::PeerClosed)), "{end:?}");
        rx.get_mut().stats().parks
    });
    assert!(parks > 0, "the producer's pauses must make us park");
    assert_eq!(exit_code(child), Some(0));
}

#[test]
fn python_takes_the_consumer_side_of_a_pool() {
    use sealpipe::pool::{Pool, PoolOptions};
    let _serial = common::serial();
    let peer = spawn_python("pool-consumer");
    let pool = Pool::new(PoolOptions::new().max_bytes(16 << 20).slab_len(2 << 20)).unwrap();
    let common::Peer { mut child, channel } = peer;
    let tx = pool.attach(channel).unwrap();
    let sizes = [4096, 100, 70_000, 1 << 20];
    for i in 0..40 {
        let len = sizes[i % sizes.len()];
        let mut lease = pool.lease_timeout(len, T).unwrap();
        lease.copy_from_slice(&pattern(i, len));
        lease.send_timeout(&[&tx], T).unwrap();
    }
    let end = std::time::Instant::now() + T;
    while tx.held() > 0 {
        assert!(
            std::time::Instant::now() < end,
            "python released too little"
        );
        tx.poll_releases()
            .expect("the Python consumer's releases are valid");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(pool.stats().held, 0);
    drop(tx);
    assert!(
        child.wait().unwrap().success(),
        "python peer failed (see its stderr)"
    );
}

#[test]
fn python_takes_the_producer_side_of_a_pool() {
    use sealpipe::pool::PoolReceiver;
    let _serial = common::serial();
    let peer = spawn_python("pool-producer");
    let common::Peer { mut child, channel } = peer;
    let mut rx = PoolReceiver::new(channel, &Policy::producer_writable()).unwrap();
    let mut n = 0;
    loop {
        match rx.recv_timeout(T) {
            Ok(buf) => {
                let i = buf.generation() as usize - 1;
                assert_eq!(buf.len(), 256 * 1024 - 1000 * i);
                assert!(buf.to_vec() == pattern(i, buf.len()), "buffer {i} differs");
                n += 1;
            }
            Err(Error::PeerClosed) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(n, 40);
    assert_eq!(rx.memfds(), 1, "one memfd, announced once");
    assert!(
        child.wait().unwrap().success(),
        "python peer failed (see its stderr)"
    );
}
