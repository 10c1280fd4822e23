//! Regions handed between real processes: both seal modes, fan-out, typed views.

mod common;

use std::time::Duration;

use sealpipe::{Policy, Region, Seals};

const T: Duration = Duration::from_secs(20);

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12)) as u8
}

/// Reads regions until the parent closes, replying with a checksum of each.
fn checksum_reader(ch: sealpipe::Channel, policy: Policy) -> i32 {
    loop {
        match ch.recv_timeout(&policy, T) {
            Ok(msg) => {
                let region = &msg.regions()[0];
                let sum: u64 = if region.is_immutable() {
                    region
                        .as_bytes()
                        .unwrap()
                        .iter()
                        .map(|&b| u64::from(b))
                        .sum()
                } else {
                    region.to_vec().iter().map(|&b| u64::from(b)).sum()
                };
                ch.send_timeout(&sum.to_le_bytes(), &[], T).unwrap();
            }
            Err(sealpipe::Error::PeerClosed) => return 0,
            Err(e) => {
                eprintln!("reader: {e}");
                return 1;
            }
        }
    }
}

fn reply_u64(ch: &sealpipe::Channel) -> u64 {
    let msg = ch.recv_timeout(&Policy::immutable(), T).unwrap();
    u64::from_le_bytes(msg.payload().try_into().unwrap())
}

#[test]
fn immutable_region_fans_out_to_four_processes() {
    common::peer_main(|_, ch| checksum_reader(ch, Policy::immutable()));
    let _serial = common::serial();
    let len = 4 << 20;
    let mut region = Region::new(len).unwrap();
    let data: Vec<u8> = (0..len).map(pattern).collect();
    region.write_at(0, &data).unwrap();
    let region = region.seal().unwrap();
    let expected: u64 = data.iter().map(|&b| u64::from(b)).sum();

    let peers: Vec<_> = (0..4)
        .map(|_| common::spawn_peer("immutable_region_fans_out_to_four_processes", "reader"))
        .collect();
    for p in &peers {
        p.channel.send(b"", &[&region]).unwrap();
    }
    for p in &peers {
        assert_eq!(reply_u64(&p.channel), expected);
    }
    for p in peers {
        assert_eq!(p.wait(), 0);
    }
}

#[test]
fn producer_writable_region_shows_updates_to_another_process() {
    common::peer_main(|_, ch| checksum_reader(ch, Policy::producer_writable()));
    let _serial = common::serial();
    let mut shared = Region::new(1 << 16).unwrap().seal_producer_writable().unwrap();
    assert!(shared.region().seals().contains(Seals::PRODUCER_WRITABLE));
    let peer = common::spawn_peer(
        "producer_writable_region_shows_updates_to_another_process",
        "reader",
    );
    for round in 1..=3u8 {
        shared.as_mut_slice().fill(round);
        peer.channel.send(b"", &[shared.region()]).unwrap();
        assert_eq!(reply_u64(&peer.channel), u64::from(round) << 16);
    }
    assert_eq!(peer.wait(), 0);
}
