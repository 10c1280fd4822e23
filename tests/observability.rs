//! Observability: what a hostile peer does shows up in `stats()` (and, with the `tracing`
//! feature, in the log) with the right reason, against real second processes.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use rustix::fs::{self, MemfdFlags};
use sealpipe::pool::{Pool, PoolOptions, PoolReceiver};
use sealpipe::ring::{Consumer, Producer, RingOptions, SpinPolicy};
use sealpipe::{
    wire, Channel, Error, HandshakeConfig, Listener, Policy, Region, RejectReason, Secret,
};

const T: Duration = Duration::from_secs(20);

// ----- the hostile side -----

/// An allocated memfd of 4096 bytes with no seals: the receiver's policy refuses it.
fn unsealed_memfd() -> OwnedFd {
    let fd = fs::memfd_create("unsealed", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    fs::ftruncate(&fd, 4096).unwrap();
    fs::fallocate(&fd, fs::FallocateFlags::empty(), 0, 4096).unwrap();
    fd
}

/// Sends an unsealed region, then (`socket`) a socket as a region, then one honest
/// message.
fn hostile(ch: &Channel, socket: bool) {
    let sock = ch.as_fd();
    common::forge::send_raw(
        sock,
        &common::forge::regions_message(&[4096]),
        &[unsealed_memfd().as_fd()],
    );
    if socket {
        let (a, _b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        common::forge::send_raw(sock, &common::forge::regions_message(&[4096]), &[a.as_fd()]);
    }
    let honest = Region::new(4096).unwrap().seal().unwrap();
    ch.send(b"honest", &[&honest]).unwrap();
}

fn peer(role: &str, ch: Channel) -> i32 {
    match role {
        "hostile" => hostile(&ch, true),
        "unsealed" => hostile(&ch, false),
        "no_secret" => {
            let path = PathBuf::from(std::env::var("OBS_PATH").unwrap());
            return match Channel::connect(&path, &HandshakeConfig::new()) {
                Err(Error::Handshake { .. }) => 0,
                other => {
                    eprintln!("expected a refused handshake, got {other:?}");
                    1
                }
            };
        }
        "ring_consumer" => return ring_consumer(ch),
        "pool_forger" => return pool_forger(ch),
        _ => return 99,
    }
    // Stay until the parent has read everything.
    let _ = ch.recv_timeout(&Policy::immutable(), T);
    0
}

/// The consumer of `rings_count_parks_wakes_and_units`: parks on an empty ring, lets the
/// producer fill it, then reads every record; checks its own counters.
fn ring_consumer(ch: Channel) -> i32 {
    let options = RingOptions::new(64).spin(SpinPolicy::Park);
    let mut c = Consumer::setup(ch, &options).unwrap();
    let mut out = Vec::new();
    // The producer waits 200 ms before its first record: this park must be woken.
    c.recv_timeout(&mut out, T).unwrap();
    // Let the producer fill the ring and park.
    std::thread::sleep(Duration::from_millis(200));
    for _ in 1..RECORDS {
        c.recv_timeout(&mut out, T).unwrap();
    }
    let s = c.stats();
    if s.parks == 0 || s.units != RECORDS * 16 || s.peer_corrupt != 0 {
        eprintln!("consumer stats {s:?}");
        return 1;
    }
    0
}

const RECORDS: u64 = 40;

/// A pool consumer that sends a forged release (a generation it was never sent) before
/// its honest one.
fn pool_forger(ch: Channel) -> i32 {
    let mut rx = PoolReceiver::new(ch, &Policy::producer_writable()).unwrap();
    let buf = rx.recv_timeout(T).unwrap();
    let mut m = Vec::new();
    m.extend_from_slice(&wire::MAGIC);
    m.extend_from_slice(&wire::VERSION.to_le_bytes());
    m.extend_from_slice(&wire::KIND_POOL_RELEASE.to_le_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&24u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // memfd id
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&0u64.to_le_bytes()); // offset
    m.extend_from_slice(&99u64.to_le_bytes()); // generation
    common::forge::send_raw(rx.channel().as_fd(), &m, &[]);
    drop(buf);
    rx.flush_releases().unwrap();
    // Stay until the producer is done.
    let _ = rx.recv_timeout(T);
    0
}

// ----- the tests -----

#[test]
fn a_rejected_message_is_counted_by_reason_and_the_channel_keeps_working() {
    common::peer_main(peer);
    let _serial = common::serial();
    let p = common::spawn_peer(
        "a_rejected_message_is_counted_by_reason_and_the_channel_keeps_working",
        "hostile",
    );
    let policy = Policy::immutable();
    let e = p.channel.recv_timeout(&policy, T).unwrap_err();
    assert!(matches!(e, Error::MissingSeals { .. }), "{e}");
    let e = p.channel.recv_timeout(&policy, T).unwrap_err();
    assert!(matches!(e, Error::NotMemfd { .. }), "{e}");
    let msg = p.channel.recv_timeout(&policy, T).unwrap();
    assert_eq!(msg.payload(), b"honest");

    let s = p.channel.stats();
    assert_eq!(s.rejected.get(RejectReason::MissingSeals), 1, "{s}");
    assert_eq!(s.rejected.get(RejectReason::NotMemfd), 1, "{s}");
    assert_eq!(s.rejected.total(), 2, "{s}");
    // The memfd closed at once, the socket on the background closer.
    assert_eq!(s.descriptors_closed_inline, 1, "{s}");
    assert_eq!(s.descriptors_closed_background, 1, "{s}");
    assert_eq!(
        (s.messages_received, s.regions_received, s.bytes_mapped),
        (1, 1, 4096),
        "{s}"
    );
    assert_eq!(
        s.rejected.iter().collect::<Vec<_>>(),
        vec![(RejectReason::NotMemfd, 1), (RejectReason::MissingSeals, 1)]
    );
    assert_eq!(p.wait(), 0);
}

#[test]
fn a_refused_handshake_is_counted_on_the_listener() {
    common::peer_main(peer);
    let _serial = common::serial();
    let dir = std::env::temp_dir().join(format!("sealpipe-obs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let path = dir.join("ep");
    let secret = Secret::new(&[7u8; 32]).unwrap();
    let mut l = Listener::bind(&path, &HandshakeConfig::new().secret(secret)).unwrap();
    let p = common::spawn_peer_with(
        "a_refused_handshake_is_counted_on_the_listener",
        "no_secret",
        |cmd| {
            cmd.env("OBS_PATH", &path);
        },
    );
    let e = l.accept_timeout(T).unwrap_err();
    assert_eq!(
        RejectReason::of(&e),
        Some(RejectReason::HandshakeSecretPresence),
        "{e}"
    );
    let s = l.stats();
    assert_eq!(
        s.handshakes_refused
            .get(RejectReason::HandshakeSecretPresence),
        1,
        "{s}"
    );
    assert_eq!(s.handshakes_refused.total(), 1, "{s}");
    assert_eq!(s.handshakes_accepted, 0, "{s}");
    assert_eq!(p.wait(), 0);
    drop(l);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rings_count_parks_wakes_and_units() {
    common::peer_main(peer);
    let _serial = common::serial();
    let p = common::spawn_peer("rings_count_parks_wakes_and_units", "ring_consumer");
    let mut child = p.child;
    let options = RingOptions::new(64).spin(SpinPolicy::Park);
    let mut producer = Producer::setup(p.channel, &options).unwrap();
    // The consumer parks on the empty ring meanwhile.
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..RECORDS {
        // 8 bytes: 16 of ring space with the header.
        producer.send_timeout(&i.to_le_bytes(), T).unwrap();
    }
    let s = producer.stats();
    assert_eq!(s.units, RECORDS * 16, "{s:?}");
    assert!(s.wakes >= 1, "the parked consumer was woken: {s:?}");
    assert!(s.parks >= 1, "a 64-byte ring fills: {s:?}");
    assert_eq!(s.peer_corrupt, 0, "{s:?}");
    let status = child.wait().unwrap();
    assert!(status.success(), "consumer: {status:?}");
}

#[test]
fn a_forged_pool_release_is_counted_and_the_pool_keeps_working() {
    common::peer_main(peer);
    let _serial = common::serial();
    let p = common::spawn_peer(
        "a_forged_pool_release_is_counted_and_the_pool_keeps_working",
        "pool_forger",
    );
    let mut child = p.child;
    let pool = Pool::new(PoolOptions::new().max_bytes(64 << 10).slab_len(64 << 10)).unwrap();
    let tx = pool.attach(p.channel).unwrap();
    pool.lease(4096).unwrap().send(&[&tx]).unwrap();
    let end = std::time::Instant::now() + T;
    let mut bad = 0;
    while tx.held() > 0 || bad == 0 {
        match tx.poll_releases() {
            Ok(_) => {}
            Err(Error::BadRelease { .. }) => bad += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(std::time::Instant::now() < end, "timed out");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(bad, 1);
    let s = tx.stats();
    assert_eq!(s.rejected.get(RejectReason::BadRelease), 1, "{s}");
    assert_eq!(s.rejected.total(), 1, "{s}");
    assert!(s.messages_received >= 2, "both release messages: {s}");
    drop(tx);
    let status = child.wait().unwrap();
    assert!(status.success(), "consumer: {status:?}");
}

/// The events `CaptureSubscriber` saw: (level, message and fields).
#[cfg(feature = "tracing")]
static EVENTS: std::sync::Mutex<Vec<(tracing::Level, String)>> = std::sync::Mutex::new(Vec::new());

/// A minimal `tracing` subscriber that records every event's level and fields.
#[cfg(feature = "tracing")]
struct CaptureSubscriber;

#[cfg(feature = "tracing")]
impl tracing::Subscriber for CaptureSubscriber {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", f.name(), v));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.push_str(&format!("{}={} ", f.name(), v));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        EVENTS
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
#[cfg_attr(not(feature = "tracing"), ignore = "needs the `tracing` feature")]
fn a_rejection_is_traced_at_warn_once_then_at_debug() {
    common::peer_main(peer);
    #[cfg(feature = "tracing")]
    {
        let _serial = common::serial();
        let p = common::spawn_peer(
            "a_rejection_is_traced_at_warn_once_then_at_debug",
            "hostile",
        );
        let policy = Policy::immutable();
        tracing::subscriber::with_default(CaptureSubscriber, || {
            assert!(p.channel.recv_timeout(&policy, T).is_err());
            assert!(p.channel.recv_timeout(&policy, T).is_err());
            p.channel.recv_timeout(&policy, T).unwrap();
        });
        let events = EVENTS.lock().unwrap().clone();
        let rejections: Vec<_> = events
            .iter()
            .filter(|(_, f)| f.contains("reason="))
            .collect();
        assert_eq!(rejections.len(), 2, "{events:?}");
        assert_eq!(rejections[0].0, tracing::Level::WARN, "{events:?}");
        assert!(
            rejections[0].1.contains("reason=missing_seals"),
            "{events:?}"
        );
        assert_eq!(rejections[1].0, tracing::Level::DEBUG, "{events:?}");
        assert!(rejections[1].1.contains("reason=not_memfd"), "{events:?}");
        // The spawned peer's credentials are known to the channel.
        let pid = format!("pid={} ", p.pid());
        assert!(rejections[0].1.contains(&pid), "{events:?}");
        assert_eq!(p.wait(), 0);
    }
}
