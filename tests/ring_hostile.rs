//! The ring across real processes with a hostile peer: a producer that scribbles over its
//! own ring memory and a consumer that lies about its read index can neither crash nor
//! hang the other side, which reports `PeerCorrupt`, a timeout or the records it could
//! check.

mod common;

use std::time::{Duration, Instant};

use common::ring_peers::*;
use sealpipe::ring::{layout, Consumer, Producer, RingOptions};
use sealpipe::{Channel, Error, Policy, Region};

const T: Duration = Duration::from_secs(30);

/// The peer's part: `hostile-producer:<mode>:<seed>` or `hostile-consumer:<seed>`.
fn peer(role: &str, ch: Channel) -> i32 {
    let parts: Vec<&str> = role.split(':').collect();
    let arg = |i: usize| parts.get(i).copied().unwrap_or("");
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    match parts[0] {
        "hostile-producer" => hostile_producer(ch, arg(1), num(2)),
        "hostile-consumer" => hostile_consumer(ch, num(1)),
        _ => 99,
    }
}

fn run_peer() {
    common::peer_main(peer);
}

/// A producer that sets the ring up by hand, then scribbles over its own memory.
fn hostile_producer(ch: Channel, mode: &str, seed: u64) -> i32 {
    let cap = 4096usize;
    let mut region = Region::new(layout::CONTROL_LEN + cap).unwrap();
    let mut h = [0u8; 64];
    h[..8].copy_from_slice(&layout::PRODUCER_MAGIC);
    for (at, v) in [
        (layout::VERSION_AT, layout::VERSION),
        (layout::KIND_AT, layout::KIND_BYTES),
        (layout::CAPACITY_AT, cap as u32),
        (layout::UNIT_AT, 1),
        (layout::DATA_AT_AT, layout::CONTROL_LEN as u32),
        (layout::FLAGS_AT, layout::FLAG_PARKS),
        (layout::INDEX_AT_AT, layout::INDEX_AT as u32),
        (layout::WAIT_AT_AT, layout::WAIT_AT as u32),
    ] {
        h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    region.write_at(0, &h).unwrap();
    let mut shared = region.seal_producer_writable().unwrap();
    ch.send(b"sealpipe ring v1", &[shared.region()]).unwrap();
    let ack = ch.recv_timeout(&Policy::producer_writable(), T).unwrap();
    let ack = &ack.regions()[0];
    let mem = shared.as_mut_slice();
    let put32 =
        |mem: &mut [u8], at: usize, v: u32| mem[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |mem: &mut [u8], at: usize, v: u64| mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let data = layout::CONTROL_LEN;
    let end = Instant::now() + Duration::from_millis(700);
    let mut r = seed;
    let mut next = || {
        r = splitmix(r);
        r
    };
    while Instant::now() < end {
        let x = next();
        match mode {
            // Garbage everywhere: index, wait word, headers.
            "random" => {
                put32(mem, layout::INDEX_AT, x as u32);
                put64(mem, layout::WAIT_AT, next());
                let at = data + (next() as usize % (cap / 8)) * 8;
                put64(mem, at, next());
            }
            // Plausible values that change between two reads: a valid record whose length
            // flips to huge and back, a write index that flips between valid and not.
            // (A record header is `(index | kind) << 32 | length`, kind 1 = record, 0 =
            // the end mark: PROTOCOL.md, Ring.)
            "flip" => {
                put64(mem, data, 1 << 32 | 5);
                put32(mem, layout::INDEX_AT, 16);
                put64(mem, data, 1 << 32 | u64::from(u32::MAX));
                put64(mem, data, 0);
                put64(mem, data, 1 << 32 | 5);
                put32(mem, layout::INDEX_AT, if x % 2 == 0 { 1 << 30 } else { 16 });
                put64(mem, data, 0x1_0000_0000 | (x & 0xffff));
            }
            // Well-formed records at an honest pace, whose payload keeps changing after
            // publication (the consumer must keep working and see some mix of bytes).
            _ => {
                let w = u32::from_le_bytes(
                    mem[layout::INDEX_AT..layout::INDEX_AT + 4]
                        .try_into()
                        .unwrap(),
                );
                let read: u32 = ack.read_value(layout::INDEX_AT).unwrap();
                let pos = (w as usize) % cap;
                // 16 bytes of record and the 8 of the end mark after it.
                if w.wrapping_sub(read) as usize + 24 <= cap && pos + 16 <= cap {
                    let end = w.wrapping_add(16);
                    put64(mem, data + end as usize % cap, u64::from(end) << 32);
                    put64(mem, data + pos + 8, x);
                    put64(mem, data + pos, u64::from(w | 1) << 32 | 8);
                    put32(mem, layout::INDEX_AT, end);
                }
                // Rewrite the payload of every record in the ring.
                for at in (0..cap).step_by(16) {
                    put64(mem, data + at + 8, x ^ at as u64);
                }
            }
        }
    }
    0
}

fn victim_consumer(test: &str, mode: &str, seed: u64) -> (u64, u64, u64) {
    let p = split(common::spawn_peer(
        test,
        &format!("hostile-producer:{mode}:{seed}"),
    ));
    let mut rx = Consumer::setup(p.channel, &RingOptions::default()).unwrap();
    let (mut ok, mut corrupt, mut timeouts) = (0, 0, 0);
    let mut buf = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let wait = Duration::from_millis(30);
        let started = Instant::now();
        let r = rx.recv_timeout(&mut buf, wait);
        assert!(
            started.elapsed() < wait + Duration::from_secs(2),
            "call overran its deadline"
        );
        match r {
            Ok(()) => {
                assert!(buf.len() <= 4096 / 2 - 8);
                ok += 1;
            }
            Err(Error::PeerCorrupt { .. }) => {
                corrupt += 1;
                // The ring stays failed.
                assert!(matches!(
                    rx.try_recv(&mut buf),
                    Err(Error::PeerCorrupt { .. })
                ));
                break;
            }
            Err(Error::Timeout) => timeouts += 1,
            Err(Error::PeerClosed) => break,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    drop(rx);
    p.peer.kill();
    (ok, corrupt, timeouts)
}

#[test]
fn hostile_producer_cannot_crash_or_hang_the_consumer() {
    run_peer();
    let _serial = common::serial();
    let fds = common::fd_count();
    let maps = memfd_maps();
    let test = "hostile_producer_cannot_crash_or_hang_the_consumer";
    let mut corrupt_total = 0;
    for seed in 0..3 {
        for mode in ["random", "flip", "rewrite"] {
            let (ok, corrupt, timeouts) = victim_consumer(test, mode, seed);
            eprintln!("{mode}/{seed}: {ok} records, {corrupt} corrupt, {timeouts} timeouts");
            corrupt_total += corrupt;
            if mode == "rewrite" {
                assert_eq!(
                    corrupt, 0,
                    "well-formed records with changing payloads are fine"
                );
                assert!(ok > 100, "the consumer keeps working: {ok} records");
            }
        }
    }
    assert!(corrupt_total >= 3, "random garbage must be detected");
    assert_eq!(common::fd_count(), fds, "descriptors leaked");
    assert_eq!(memfd_maps(), maps, "mappings leaked");
}

/// A consumer that scribbles over its read index and wait word.
fn hostile_consumer(ch: Channel, seed: u64) -> i32 {
    let msg = ch.recv_timeout(&Policy::producer_writable(), T).unwrap();
    assert_eq!(msg.regions().len(), 1);
    let mut region = Region::new(layout::CONTROL_LEN).unwrap();
    let mut h = [0u8; 64];
    h[..8].copy_from_slice(&layout::CONSUMER_MAGIC);
    for (at, v) in [
        (layout::VERSION_AT, layout::VERSION),
        (layout::FLAGS_AT, layout::FLAG_PARKS),
        (layout::INDEX_AT_AT, layout::INDEX_AT as u32),
        (layout::WAIT_AT_AT, layout::WAIT_AT as u32),
    ] {
        h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    region.write_at(0, &h).unwrap();
    let mut shared = region.seal_producer_writable().unwrap();
    ch.send(b"sealpipe ring v1", &[shared.region()]).unwrap();
    let mem = shared.as_mut_slice();
    let end = Instant::now() + Duration::from_millis(700);
    let mut r = seed;
    while Instant::now() < end {
        r = splitmix(r);
        // Mostly plausible read indices (small steps, sometimes backwards), sometimes wild;
        // wait words that claim a parked consumer.
        let idx = if r % 4 == 0 {
            r as u32
        } else {
            ((r >> 8) % 8192) as u32 & !7
        };
        mem[layout::INDEX_AT..layout::INDEX_AT + 4].copy_from_slice(&idx.to_le_bytes());
        mem[layout::WAIT_AT..layout::WAIT_AT + 8]
            .copy_from_slice(&(1u64 << 32 | r >> 40).to_le_bytes());
    }
    0
}

#[test]
fn hostile_consumer_cannot_crash_or_hang_the_producer() {
    run_peer();
    let _serial = common::serial();
    let test = "hostile_consumer_cannot_crash_or_hang_the_producer";
    let mut corrupt = 0;
    for seed in 0..3 {
        let p = split(common::spawn_peer(
            test,
            &format!("hostile-consumer:{seed}"),
        ));
        let mut tx = Producer::setup(p.channel, &RingOptions::new(4096)).unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let wait = Duration::from_millis(30);
            let started = Instant::now();
            let r = tx.send_timeout(&[1u8; 100], wait);
            assert!(
                started.elapsed() < wait + Duration::from_secs(2),
                "call overran its deadline"
            );
            match r {
                Ok(()) | Err(Error::Timeout) => {}
                Err(Error::PeerCorrupt { .. }) => {
                    corrupt += 1;
                    break;
                }
                Err(Error::PeerClosed) => break,
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        drop(tx);
        p.peer.kill();
    }
    assert!(corrupt >= 1, "wild read indices must be detected");
}
