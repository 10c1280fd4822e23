//! Smaller defences: no public call panics on a huge timeout, and a mapping failure after
//! verification counts as the peer's doing.

mod common;

use std::thread;
use std::time::Duration;

use sealpipe::ring::{Consumer, PodConsumer, PodProducer, Producer, RingOptions};
use sealpipe::{Channel, Error, HandshakeConfig, Listener, Policy, Region};

const MAX: Duration = Duration::MAX;
const T: Duration = Duration::from_secs(20);

/// Every public call that takes a timeout, given `Duration::MAX` ("no deadline"): each
/// must work (or fail for its real reason), never panic on `Instant + timeout`.
#[test]
fn every_timeout_accepts_duration_max() {
    let _serial = common::serial();
    // Channels: with work ready, and waiting (the peer goes away while we wait).
    let (a, b) = Channel::pair().unwrap();
    let r = Region::new(4096).unwrap().seal().unwrap();
    a.send_timeout(b"x", &[&r], MAX).unwrap();
    b.recv_timeout(&Policy::immutable(), MAX).unwrap();
    let closer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        drop(a);
    });
    assert!(matches!(
        b.recv_timeout(&Policy::immutable(), MAX),
        Err(Error::PeerClosed)
    ));
    closer.join().unwrap();

    // Named endpoints: a handshake timeout of Duration::MAX on both sides, and accept.
    let dir = std::env::temp_dir().join(format!("sealpipe-max-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("ep");
    let config = HandshakeConfig::new().timeout(MAX);
    let mut l = Listener::bind(&path, &config).unwrap();
    let client = {
        let (path, config) = (path.clone(), config.clone());
        thread::spawn(move || Channel::connect(&path, &config))
    };
    let server_end = l.accept_timeout(MAX).unwrap();
    let client_end = client.join().unwrap().unwrap();
    assert_eq!(l.next_deadline(), None);

    // Rings over that connection: setup, then every waiting call.
    let options = RingOptions::new(1 << 12).timeout(MAX);
    let consumer = thread::spawn(move || {
        let mut rx = Consumer::setup(client_end, &options).unwrap();
        let mut out = Vec::new();
        for _ in 0..3 {
            rx.recv_timeout(&mut out, MAX).unwrap();
        }
        out
    });
    let mut tx = Producer::setup(server_end, &options).unwrap();
    tx.send_timeout(b"one", MAX).unwrap();
    let mut reservation = tx.reserve_timeout(3, MAX).unwrap();
    reservation.as_mut_slice().copy_from_slice(b"two");
    reservation.commit();
    let mut batch = tx.batch();
    batch.send_timeout(b"six", MAX).unwrap();
    batch.publish();
    assert_eq!(consumer.join().unwrap(), b"six");

    let (a, b) = Channel::pair().unwrap();
    let popper = thread::spawn(move || {
        let mut rx = PodConsumer::<u64>::setup(b, &options).unwrap();
        rx.recv_timeout(MAX).unwrap()
    });
    let mut tx = PodProducer::<u64>::setup(a, &options).unwrap();
    tx.send_timeout(7, MAX).unwrap();
    assert_eq!(popper.join().unwrap(), 7);
    drop((tx, l));
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "tokio")]
#[test]
fn async_connect_and_accept_accept_duration_max() {
    use sealpipe::asyncio::{AsyncChannel, AsyncListener};
    use sealpipe::ring::{AsyncConsumer, AsyncProducer};
    let _serial = common::serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("sealpipe-amax-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("ep");
        let config = HandshakeConfig::new().timeout(MAX);
        let mut l = AsyncListener::bind(&path, &config).unwrap();
        let (server, client) = tokio::join!(l.accept(), AsyncChannel::connect(&path, &config));
        let (server, client) = (server.unwrap(), client.unwrap());
        let options = RingOptions::new(1 << 12).timeout(MAX);
        let (tx, rx) = tokio::join!(
            AsyncProducer::setup(server.into_inner(), &options),
            AsyncConsumer::setup(client.into_inner(), &options)
        );
        let (mut tx, mut rx) = (tx.unwrap(), rx.unwrap());
        tx.send(b"async").await.unwrap();
        let mut out = Vec::new();
        rx.recv(&mut out).await.unwrap();
        assert_eq!(out, b"async");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

// ----- a mapping that fails after verification -----

/// Limits its own address space, then receives a region larger than what is left: the
/// verified region cannot be mapped, which must be reported as the peer's doing, and the
/// next honest message must still be served.
fn small_address_space(role: &str, ch: Channel) -> i32 {
    if role != "receiver" {
        return 99;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let limit = (vm_kib << 10) + (32 << 20);
    rustix::process::setrlimit(
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: None,
        },
    )
    .unwrap();
    ch.send_timeout(b"limited", &[], T).unwrap();
    match ch.recv_timeout(&Policy::immutable(), T) {
        Err(e @ Error::Map { index: 0, .. }) if e.is_peer_fault() => {}
        other => {
            eprintln!("a region over the address-space limit: {other:?}");
            return 1;
        }
    }
    match ch.recv_timeout(&Policy::immutable(), T) {
        Ok(m) if m.regions()[0].as_bytes().unwrap()[..2] == *b"ok" => 0,
        other => {
            eprintln!("the honest message after it: {other:?}");
            2
        }
    }
}

#[test]
fn a_region_that_cannot_be_mapped_is_a_peer_fault() {
    common::peer_main(small_address_space);
    let _serial = common::serial();
    let peer = common::spawn_peer("a_region_that_cannot_be_mapped_is_a_peer_fault", "receiver");
    let ready = peer.channel.recv_timeout(&Policy::immutable(), T).unwrap();
    assert_eq!(ready.payload(), b"limited");
    let big = Region::new(256 << 20).unwrap().seal().unwrap();
    peer.channel.send_timeout(b"", &[&big], T).unwrap();
    let mut ok = Region::new(4096).unwrap();
    ok.write_at(0, b"ok").unwrap();
    peer.channel
        .send_timeout(b"", &[&ok.seal().unwrap()], T)
        .unwrap();
    assert_eq!(peer.wait(), 0);
}
