//! Resource exhaustion on the receiving side: errors, not crashes, and recovery once
//! resources return.

mod common;

use std::time::Duration;

use rustix::process::{getrlimit, setrlimit, Resource};
use sealpipe::{Channel, Error, Policy, Region};

const T: Duration = Duration::from_secs(20);

/// Runs with a full descriptor table: a message with descriptors must be rejected as
/// `ControlTruncated` with none installed, and creating a region must fail cleanly. Once
/// the limit is raised again, the next message is received normally.
fn full_fd_table(ch: Channel) -> i32 {
    let original = getrlimit(Resource::Nofile);
    // The lowest free descriptor number: with the limit there, no new descriptor fits.
    let lowest_free = rustix::io::fcntl_dupfd_cloexec(&ch, 0).expect("dup");
    let mut limited = original;
    limited.current = Some(rustix::fd::AsRawFd::as_raw_fd(&lowest_free) as u64);
    drop(lowest_free);
    setrlimit(Resource::Nofile, limited).expect("setrlimit");

    let mut code = 0;
    match Region::new(4096) {
        Err(Error::Io {
            op: "memfd_create", ..
        }) => {}
        other => {
            eprintln!("region with a full fd table: {other:?}");
            code = 10;
        }
    }
    ch.send_timeout(b"full", &[], T).unwrap();
    match ch.recv_timeout(&Policy::immutable(), T) {
        Err(Error::ControlTruncated { received: 0 }) => {}
        other => {
            eprintln!("recv with a full fd table: {other:?}");
            code = 11;
        }
    }
    setrlimit(Resource::Nofile, original).expect("restore rlimit");
    ch.send_timeout(b"recovered", &[], T).unwrap();
    match ch.recv_timeout(&Policy::immutable(), T) {
        Ok(msg) if msg.regions().len() == 3 => {}
        other => {
            eprintln!("recv after recovery: {other:?}");
            code = 12;
        }
    }
    code
}

#[test]
fn receiver_with_a_full_descriptor_table() {
    common::peer_main(|role, ch| match role {
        "full_fd_table" => full_fd_table(ch),
        _ => 99,
    });
    let _serial = common::serial();
    let peer = common::spawn_peer("receiver_with_a_full_descriptor_table", "full_fd_table");
    let regions: Vec<_> = (0..3)
        .map(|_| Region::new(4096).unwrap().seal().unwrap())
        .collect();
    let refs: Vec<_> = regions.iter().collect();
    for expected in [&b"full"[..], b"recovered"] {
        let msg = peer.channel.recv_timeout(&Policy::immutable(), T).unwrap();
        assert_eq!(msg.payload(), expected);
        peer.channel.send_timeout(b"", &refs, T).unwrap();
    }
    assert_eq!(peer.wait(), 0);
}
