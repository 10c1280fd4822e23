//! Each layer working inside a sandboxed worker across real processes: channel and regions
//! (received, verified, answered), the ring with a spinning or parking consumer and a
//! parking producer, and the async channel. The denials are in `sandbox.rs`.
//!
//! This binary has the sandbox harness (`harness = false`, `common::sandboxed`): a peer
//! role runs on the main thread, before any test, as a sandbox requires.

mod common;

use std::time::Duration;

#[cfg(feature = "tokio")]
use common::sandboxed::reply;
use common::sandboxed::{checksum, enter, wait_child, Test};
use sealpipe::ring::{Consumer, Producer, RingOptions, SpinPolicy};
use sealpipe::sandbox::Sandbox;
use sealpipe::{Channel, Policy, Region};

const TIMEOUT: Duration = Duration::from_secs(20);
const RECORDS: u64 = 20_000;

fn record(i: u64) -> Vec<u8> {
    let len = (i % 200) as usize + 1;
    (0..len).map(|k| (i as u8).wrapping_add(k as u8)).collect()
}

fn peer(role: &str, ch: Channel) -> i32 {
    match role {
        "regions" => {
            enter(Sandbox::worker());
            let policy = Policy::producer_writable().max_region_len(1 << 26);
            let msg = ch.recv_timeout(&policy, TIMEOUT).expect("recv");
            let sum = checksum(msg.regions()[0].as_bytes().expect("as_bytes"));
            let mut copy = vec![0u8; msg.regions()[1].len()];
            msg.regions()[1].read_at(0, &mut copy).expect("read_at");
            // And the worker answers with a region of its own.
            let mut answer = Region::new(4096).expect("region");
            answer.write_at(0, &sum.to_le_bytes()).expect("write_at");
            answer
                .write_at(8, &checksum(&copy).to_le_bytes())
                .expect("write_at");
            let answer = answer.seal().expect("seal");
            ch.send(b"sums", &[&answer]).expect("send");
            0
        }
        "ring_consumer_spin" | "ring_consumer_park" => {
            enter(Sandbox::worker());
            let spin = if role.ends_with("spin") {
                SpinPolicy::Spin
            } else {
                SpinPolicy::Park
            };
            let opts = RingOptions::new(1 << 12).spin(spin).timeout(TIMEOUT);
            let mut rx = Consumer::setup(ch, &opts).expect("connect");
            let mut buf = Vec::new();
            for i in 0..RECORDS {
                rx.recv_timeout(&mut buf, TIMEOUT).expect("recv");
                if buf != record(i) {
                    eprintln!("peer: record {i} is wrong");
                    return 2;
                }
            }
            0
        }
        "ring_producer_park" => {
            enter(Sandbox::worker());
            let opts = RingOptions::new(1 << 10)
                .spin(SpinPolicy::Park)
                .timeout(TIMEOUT);
            let mut tx = Producer::setup(ch, &opts).expect("connect");
            for i in 0..RECORDS {
                tx.send_timeout(&record(i), TIMEOUT).expect("send");
            }
            // Wait for the consumer to finish reading before the channel closes.
            std::thread::sleep(Duration::from_millis(200));
            0
        }
        #[cfg(feature = "tokio")]
        "async" => {
            let policy = Policy::immutable().max_region_len(1 << 26);
            enter(Sandbox::worker());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let ch = sealpipe::asyncio::AsyncChannel::new(ch).expect("register");
                let msg = ch.recv(&policy).await.expect("recv");
                let sum = checksum(msg.regions()[0].as_bytes().expect("as_bytes"));
                tokio::time::sleep(Duration::from_millis(5)).await;
                ch.send(&sum.to_le_bytes(), &[]).await.expect("send");
            });
            0
        }
        _ => 99,
    }
}

// ---------------------------------------------------------------------------------------
// The tests (run in the parent, which is never sandboxed).

fn regions_are_received_verified_and_answered_inside() {
    let peer = common::spawn_peer(
        "regions_are_received_verified_and_answered_inside",
        "regions",
    );
    let data: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i * 7 + i / 4093) as u8)
        .collect();
    let mut big = Region::new(data.len()).unwrap();
    big.write_at(0, &data).unwrap();
    let big = big.seal().unwrap();
    let mut shared = Region::new(1 << 16).unwrap().seal_producer_writable().unwrap();
    shared.as_mut_slice().fill(0x5a);
    let small = vec![0x5au8; 1 << 16];
    peer.channel
        .send(b"regions", &[&big, shared.region()])
        .unwrap();
    let msg = peer
        .channel
        .recv_timeout(&Policy::immutable(), TIMEOUT)
        .expect("the worker's answer");
    assert_eq!(msg.payload(), b"sums");
    let sums: [u64; 2] = msg.regions()[0].read_value(0).unwrap();
    assert_eq!(sums, [checksum(&data), checksum(&small)]);
    drop(msg);
    assert_eq!(peer.wait(), 0);
}

fn ring_consumer(test: &str, role: &str) {
    let peer = common::spawn_peer(test, role);
    let common::Peer { mut child, channel } = peer;
    let mut tx = Producer::setup(channel, &RingOptions::new(1 << 12).timeout(TIMEOUT))
        .expect("connect to the sandboxed consumer");
    for i in 0..RECORDS {
        tx.send_timeout(&record(i), TIMEOUT).expect("send");
        if i % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(1)); // let the consumer park
        }
    }
    let status = wait_child(&mut child);
    drop(tx);
    assert_eq!(status, 0);
}

fn ring_spinning_consumer_works_inside() {
    ring_consumer("ring_spinning_consumer_works_inside", "ring_consumer_spin");
}

fn ring_parking_consumer_works_inside() {
    ring_consumer("ring_parking_consumer_works_inside", "ring_consumer_park");
}

fn ring_parking_producer_works_inside() {
    let peer = common::spawn_peer("ring_parking_producer_works_inside", "ring_producer_park");
    let common::Peer { mut child, channel } = peer;
    let mut rx = Consumer::setup(channel, &RingOptions::new(1 << 10).timeout(TIMEOUT))
        .expect("connect to the sandboxed producer");
    let mut buf = Vec::new();
    for i in 0..RECORDS {
        rx.recv_timeout(&mut buf, TIMEOUT).expect("recv");
        assert_eq!(buf, record(i));
        if i % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(1)); // let the producer fill up and park
        }
    }
    assert_eq!(wait_child(&mut child), 0);
}

#[cfg(feature = "tokio")]
fn async_channel_works_inside() {
    let peer = common::spawn_peer("async_channel_works_inside", "async");
    let data = vec![0x33u8; 1 << 20];
    let mut region = Region::new(data.len()).unwrap();
    region.write_at(0, &data).unwrap();
    peer.channel.send(b"", &[&region.seal().unwrap()]).unwrap();
    assert_eq!(reply(&peer), checksum(&data).to_le_bytes());
    assert_eq!(peer.wait(), 0);
}

fn tests() -> Vec<Test> {
    #[allow(unused_mut)] // pushed to with the tokio feature
    let mut t: Vec<Test> = vec![
        (
            "regions_are_received_verified_and_answered_inside",
            regions_are_received_verified_and_answered_inside,
            None,
        ),
        (
            "ring_spinning_consumer_works_inside",
            ring_spinning_consumer_works_inside,
            None,
        ),
        (
            "ring_parking_consumer_works_inside",
            ring_parking_consumer_works_inside,
            None,
        ),
        (
            "ring_parking_producer_works_inside",
            ring_parking_producer_works_inside,
            None,
        ),
    ];
    #[cfg(feature = "tokio")]
    t.push((
        "async_channel_works_inside",
        async_channel_works_inside,
        None,
    ));
    t
}

fn main() {
    common::peer_main(peer);
    common::sandboxed::run(tests());
}
