//! A hostile peer process sends every kind of bad message; the receiver must answer each
//! with its specific error, close every descriptor that arrived, and keep serving the next
//! honest message.

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::fs::{self, MemfdFlags, OFlags, SealFlags};
use sealpipe::{wire, Channel, Error, Policy, Region, Seals};

const T: Duration = Duration::from_secs(20);

// ----- the hostile side -----

/// A memfd of `len` bytes, allocated, with exactly `seals` added (sealable unless
/// `sealable` is false). Sparse memfds are tests/committed.rs's subject.
fn memfd(len: u64, seals: u32, sealable: bool) -> OwnedFd {
    let flags = if sealable {
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING
    } else {
        MemfdFlags::CLOEXEC
    };
    let fd = fs::memfd_create("hostile", flags).unwrap();
    fs::ftruncate(&fd, len).unwrap();
    if len > 0 {
        fs::fallocate(&fd, fs::FallocateFlags::empty(), 0, len).unwrap();
    }
    if seals != 0 {
        fs::fcntl_add_seals(&fd, SealFlags::from_bits_retain(seals)).unwrap();
    }
    fd
}

fn send_one(sock: BorrowedFd<'_>, declared: u64, fd: impl AsFd) {
    common::forge::send_raw(
        sock,
        &common::forge::regions_message(&[declared]),
        &[fd.as_fd()],
    );
}

const IMM: u32 = 0x8 | 0x2 | 0x4 | 0x1;

/// Plays the hostile part named `role`, then sends one honest message.
fn hostile_peer(role: &str, ch: Channel) -> i32 {
    let sock = ch.as_fd();
    match role {
        "unsealed" => send_one(sock, 4096, memfd(4096, 0, true)),
        "no_shrink" => send_one(sock, 4096, memfd(4096, 0x8 | 0x4 | 0x1, true)),
        "no_grow" => send_one(sock, 4096, memfd(4096, 0x8 | 0x2 | 0x1, true)),
        "future_write" => send_one(sock, 4096, memfd(4096, 0x10 | 0x2 | 0x4 | 0x1, true)),
        "not_sealable" => send_one(sock, 4096, memfd(4096, 0, false)),
        "regular_file" => {
            let exe = std::env::current_exe().unwrap();
            let f = std::fs::File::open(exe).unwrap();
            let len = f.metadata().unwrap().len();
            send_one(sock, len, f)
        }
        "pipe" => send_one(sock, 4096, rustix::pipe::pipe().unwrap().0),
        "socket" => send_one(sock, 4096, Channel::pair().unwrap().0),
        "eventfd" => send_one(
            sock,
            4096,
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap(),
        ),
        "o_path" => {
            let m = memfd(4096, IMM, true);
            let path = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&m));
            let p = fs::open(
                path.as_str(),
                OFlags::PATH | OFlags::CLOEXEC,
                fs::Mode::empty(),
            )
            .unwrap();
            send_one(sock, 4096, p)
        }
        "dev_shm" => {
            let path = format!("/dev/shm/sealpipe-hostile-{}", std::process::id());
            let f = fs::open(
                path.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                fs::Mode::from_raw_mode(0o600),
            )
            .unwrap();
            fs::unlink(path.as_str()).unwrap();
            fs::ftruncate(&f, 4096).unwrap();
            send_one(sock, 4096, f)
        }
        "larger_than_declared" => send_one(sock, 4096, memfd(8192, IMM, true)),
        "smaller_than_declared" => send_one(sock, 8192, memfd(4096, IMM, true)),
        "zero_length" => send_one(sock, 0, memfd(0, IMM, true)),
        "over_limit" => send_one(sock, 1 << 20, memfd(1 << 20, IMM, true)),
        "huge_declared" => send_one(sock, u64::MAX, memfd(4096, IMM, true)),
        "flood_253_unsealed" => {
            let fds: Vec<OwnedFd> = (0..253).map(|_| memfd(4096, 0, true)).collect();
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            common::forge::send_raw(
                sock,
                &common::forge::regions_message(&[4096; 253]),
                &borrowed,
            );
        }
        "flood_253_sealed" => {
            let fds: Vec<OwnedFd> = (0..253).map(|_| memfd(4096, IMM, true)).collect();
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            common::forge::send_raw(
                sock,
                &common::forge::regions_message(&[4096; 253]),
                &borrowed,
            );
        }
        "ctrunc" => {
            let fds: Vec<OwnedFd> = (0..10).map(|_| memfd(4096, IMM, true)).collect();
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            common::forge::send_raw(
                sock,
                &common::forge::regions_message(&[4096; 10]),
                &borrowed,
            );
        }
        "header_without_fds" => {
            common::forge::send_raw(sock, &common::forge::regions_message(&[4096]), &[])
        }
        "more_fds_than_header" => {
            let (a, b) = (memfd(4096, IMM, true), memfd(4096, IMM, true));
            common::forge::send_raw(
                sock,
                &common::forge::regions_message(&[4096]),
                &[a.as_fd(), b.as_fd()],
            );
        }
        "fds_without_header" => {
            common::forge::send_raw(sock, b"", &[memfd(4096, IMM, true).as_fd()])
        }
        "garbage" => common::forge::send_raw(
            sock,
            b"\xde\xad\xbe\xef garbage bytes!",
            &[memfd(4096, IMM, true).as_fd()],
        ),
        "unknown_version" => {
            let m = common::forge::header(2, wire::KIND_REGIONS, &[4096], b"");
            common::forge::send_raw(sock, &m, &[memfd(4096, IMM, true).as_fd()]);
        }
        "oversized" => common::forge::send_raw(
            sock,
            &vec![0u8; wire::MAX_MESSAGE_LEN + 100],
            &[memfd(4096, IMM, true).as_fd()],
        ),
        "bad_second_region" => {
            let (a, b) = (memfd(4096, IMM, true), memfd(4096, 0, true));
            common::forge::send_raw(
                sock,
                &common::forge::regions_message(&[4096, 4096]),
                &[a.as_fd(), b.as_fd()],
            );
        }
        "send_then_exit" => {
            let r = Region::new(4096).unwrap().seal().unwrap();
            ch.send(b"last words", &[&r]).unwrap();
            return 0; // exits with the message (and its descriptor) still in flight
        }
        "silent" => {
            std::thread::sleep(Duration::from_secs(60));
            return 0;
        }
        "inflight" => return flood_in_flight(ch, false),
        "inflight_once" => return flood_in_flight(ch, true),
        other => {
            eprintln!("unknown role {other}");
            return 99;
        }
    }
    let honest = Region::new(4096).unwrap().seal().unwrap();
    ch.send_timeout(b"honest", &[&honest], T).unwrap();
    0
}

// ----- the receiving side -----

/// Spawns the hostile peer in `role`, receives its bad message with `policy`, checks the
/// error with `expect`, then checks the honest follow-up arrives and no descriptor leaked.
fn case(test: &str, role: &str, policy: Policy, expect: impl FnOnce(&Error) -> bool) {
    let _serial = common::serial();
    let peer = common::spawn_peer(test, role);
    let baseline = common::fds();
    let err = peer
        .channel
        .recv_timeout(&policy, T)
        .expect_err("hostile message accepted");
    assert!(expect(&err), "{role}: unexpected error {err:?}");
    assert!(
        err.is_peer_fault(),
        "{role}: {err:?} should be a peer fault"
    );
    assert!(!err.to_string().is_empty());
    // Descriptors whose close might block (sockets, files) are closed on sealpipe's
    // background closer: give it a moment.
    settle(&baseline);
    common::assert_no_new_fds(&baseline, &format!("{role}: descriptors leaked"));
    let honest = peer
        .channel
        .recv_timeout(&policy, T)
        .expect("honest message after hostile one");
    assert_eq!(honest.payload(), b"honest");
    drop(honest);
    common::assert_no_new_fds(&baseline, &format!("{role}: descriptors leaked"));
    assert_eq!(peer.wait(), 0, "{role}: hostile peer failed");
}

/// Waits (at most 5 s) for the descriptor count to return to `baseline`.
fn settle(baseline: &common::Fds) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !baseline.opened_since().is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
}

macro_rules! hostile {
    ($name:ident, $policy:expr, $pat:pat $(if $guard:expr)?) => {
        #[test]
        fn $name() {
            common::peer_main(hostile_peer);
            case(stringify!($name), stringify!($name), $policy, |e| matches!(e, $pat $(if $guard)?));
        }
    };
}

const IMMUTABLE: Policy = Policy::immutable();

hostile!(unsealed, IMMUTABLE, Error::MissingSeals { index: 0, missing, have } if *missing == Seals::WRITE | Seals::SHRINK | Seals::GROW && !have.contains(Seals::SHRINK));
hostile!(no_shrink, IMMUTABLE, Error::MissingSeals { missing, .. } if *missing == Seals::SHRINK);
hostile!(no_grow, IMMUTABLE, Error::MissingSeals { missing, .. } if *missing == Seals::GROW);
hostile!(future_write, IMMUTABLE, Error::MissingSeals { missing, .. } if *missing == Seals::WRITE);
hostile!(not_sealable, Policy::producer_writable(), Error::MissingSeals { have, .. } if *have == Seals::SEAL);
hostile!(regular_file, IMMUTABLE, Error::NotMemfd { reason, .. } if reason.contains("regular file"));
hostile!(pipe, IMMUTABLE, Error::NotMemfd { reason, .. } if reason.contains("pipe"));
hostile!(socket, IMMUTABLE, Error::NotMemfd { reason, .. } if reason.contains("socket"));
hostile!(eventfd, IMMUTABLE, Error::NotMemfd { reason, .. } if reason.contains("anonymous inode"));
hostile!(o_path, IMMUTABLE, Error::NotMemfd { reason, .. } if reason.contains("O_PATH"));
// A /dev/shm file looks like a memfd that cannot be sealed: seals = SEAL only.
hostile!(dev_shm, IMMUTABLE, Error::MissingSeals { have, .. } if *have == Seals::SEAL);
hostile!(
    larger_than_declared,
    IMMUTABLE,
    Error::SizeMismatch {
        declared: 4096,
        actual: 8192,
        ..
    }
);
hostile!(
    smaller_than_declared,
    IMMUTABLE,
    Error::SizeMismatch {
        declared: 8192,
        actual: 4096,
        ..
    }
);
hostile!(zero_length, IMMUTABLE, Error::EmptyRegion { index: 0 });
hostile!(
    over_limit,
    Policy::immutable().max_region_len(4096),
    Error::RegionTooLarge {
        len: 1048576,
        max: 4096,
        ..
    }
);
hostile!(
    huge_declared,
    IMMUTABLE,
    Error::RegionTooLarge { len: u64::MAX, .. }
);
hostile!(
    flood_253_unsealed,
    IMMUTABLE,
    Error::MissingSeals { index: 0, .. }
);
// More descriptors than the policy allows: the receive has room for the kernel's maximum
// anyway (so the kernel never drops the surplus in the receiving thread, where its close
// could block), and the policy check rejects the message.
hostile!(
    ctrunc,
    Policy::immutable().max_regions(2),
    Error::PolicyLimit {
        what: "regions",
        got: 10,
        max: 2
    }
);
hostile!(
    header_without_fds,
    IMMUTABLE,
    Error::FdCountMismatch {
        declared: 1,
        received: 0
    }
);
hostile!(
    more_fds_than_header,
    IMMUTABLE,
    Error::FdCountMismatch {
        declared: 1,
        received: 2
    }
);
hostile!(fds_without_header, IMMUTABLE, Error::Malformed { .. });
hostile!(garbage, IMMUTABLE, Error::Malformed { .. });
hostile!(
    unknown_version,
    IMMUTABLE,
    Error::UnsupportedVersion {
        got: 2,
        supported: 1
    }
);
hostile!(oversized, IMMUTABLE, Error::MessageTruncated { .. });
hostile!(
    bad_second_region,
    IMMUTABLE,
    Error::MissingSeals { index: 1, .. }
);

#[test]
fn flood_253_sealed() {
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let peer = common::spawn_peer("flood_253_sealed", "flood_253_sealed");
    let baseline = common::fds();
    let msg = peer.channel.recv_timeout(&Policy::immutable(), T).unwrap();
    assert_eq!(msg.regions().len(), 253, "the kernel's maximum is accepted");
    assert!(msg.regions().iter().all(|r| r.len() == 4096));
    // Views keep their mappings, not their descriptors (Policy::keep_descriptors).
    common::assert_no_new_fds(&baseline, "descriptors leaked");
    drop(msg);
    common::assert_no_new_fds(&baseline, "descriptors leaked");
    let honest = peer.channel.recv_timeout(&Policy::immutable(), T).unwrap();
    assert_eq!(honest.payload(), b"honest");
    drop(honest);
    assert_eq!(peer.wait(), 0);
}

#[test]
fn send_then_exit() {
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let peer = common::spawn_peer("send_then_exit", "send_then_exit");
    let baseline = common::fds();
    // The message sent just before the peer died still arrives, intact...
    let msg = peer.channel.recv_timeout(&Policy::immutable(), T).unwrap();
    assert_eq!(msg.payload(), b"last words");
    drop(msg);
    // ...and then the channel reports the peer gone, promptly and cleanly.
    let err = peer
        .channel
        .recv_timeout(&Policy::immutable(), T)
        .unwrap_err();
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    let err = peer.channel.send_timeout(b"anyone?", &[], T).unwrap_err();
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    common::assert_no_new_fds(&baseline, "descriptors leaked");
    assert_eq!(peer.wait(), 0);
}

#[test]
fn recv_times_out_on_a_silent_peer_and_try_recv_does_not_block() {
    let _serial = common::serial();
    let (a, _b) = Channel::pair().unwrap();
    let err = a
        .recv_timeout(&IMMUTABLE, Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(matches!(
        a.try_recv(&IMMUTABLE).unwrap_err(),
        Error::WouldBlock
    ));
}

#[test]
fn send_reports_backpressure_when_the_peer_does_not_read() {
    let _serial = common::serial();
    let (a, _b) = Channel::pair().unwrap();
    let payload = vec![0u8; wire::MAX_PAYLOAD];
    let mut sent = 0;
    let err = loop {
        match a.try_send(&payload, &[]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "socket never filled up");
    };
    assert!(matches!(err, Error::WouldBlock), "{err:?}");
    let err = a
        .send_timeout(&payload, &[], Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
}

#[test]
fn non_seqpacket_descriptors_are_refused_as_channels() {
    let _serial = common::serial();
    let baseline = common::fds();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let r_raw = r.as_raw_fd();
    let Err((err, back)) = Channel::from_fd(r) else {
        panic!("a pipe was taken as a channel");
    };
    assert!(matches!(err, Error::NotSeqpacket), "{err:?}");
    // The refused descriptor comes back open, the same one.
    assert_eq!(back.as_raw_fd(), r_raw);
    assert!(rustix::io::fcntl_getfd(&back).is_ok());
    drop(back);
    drop(_w);
    common::assert_no_new_fds(
        &baseline,
        "the descriptor given back, once dropped, is closed",
    );
}

/// Sends 10-descriptor messages to a peer that does not read, until the kernel's per-user
/// in-flight budget (RLIMIT_NOFILE of the sender) runs out. Exit code 0 means the limit was
/// hit and reported as `TooManyInFlight`. With `once`, sends a single message instead (to
/// show the budget is back).
fn flood_in_flight(ch: Channel, once: bool) -> i32 {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let limit = Rlimit {
        current: Some(64),
        maximum: Some(64),
    };
    if setrlimit(Resource::Nofile, limit).is_err() {
        return 2;
    }
    let region = Region::new(4096).unwrap().seal().unwrap();
    let ten = [&region; 10];
    if once {
        return match ch.try_send(b"", &ten) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("inflight after drain: {e:?}");
                5
            }
        };
    }
    for _ in 0..1000 {
        match ch.try_send(b"", &ten) {
            Ok(()) => {}
            Err(Error::TooManyInFlight) => return 0,
            Err(e) => {
                eprintln!("inflight: {e:?}");
                return 3;
            }
        }
    }
    4 // the limit never applied
}

fn spawn_unprivileged(test: &str, role: &str) -> common::Peer {
    let root = common::is_root();
    common::spawn_peer_with(test, role, |cmd| {
        if root {
            // Root (CAP_SYS_RESOURCE) skips the in-flight limit: flood as an unprivileged uid.
            use std::os::unix::process::CommandExt;
            cmd.uid(65534).gid(65534);
        }
    })
}

#[test]
fn too_many_in_flight_is_backpressure_not_a_crash() {
    const NAME: &str = "too_many_in_flight_is_backpressure_not_a_crash";
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let mut peer = spawn_unprivileged(NAME, "inflight");
    let baseline = common::fds();
    // The flooder exits once the kernel refused with ETOOMANYREFS; its messages stay queued.
    assert_eq!(peer.exit_code(), 0, "flooder never saw TooManyInFlight");
    let mut received = 0;
    let err = loop {
        match peer.channel.recv_timeout(&IMMUTABLE, T) {
            Ok(msg) => {
                assert_eq!(msg.regions().len(), 10);
                received += 1;
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    assert!(received >= 1);
    common::assert_no_new_fds(&baseline, "every flooded descriptor closed");
    drop(peer);
    // Resources returned: the same user can send again.
    let peer = spawn_unprivileged(NAME, "inflight_once");
    let msg = peer.channel.recv_timeout(&IMMUTABLE, T).unwrap();
    assert_eq!(msg.regions().len(), 10);
    drop(msg);
    assert_eq!(peer.wait(), 0);
}

#[test]
fn peer_killed_while_receiver_is_blocked() {
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let peer = common::spawn_peer("peer_killed_while_receiver_is_blocked", "silent");
    let baseline = common::fds();
    let pid = rustix::process::Pid::from_raw(peer.pid() as i32).unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    });
    // Blocks with no timeout: only the peer's death can end it.
    let err = peer.channel.recv(&IMMUTABLE).unwrap_err();
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    killer.join().unwrap();
    common::assert_no_new_fds(&baseline, "descriptors leaked");
    assert_eq!(peer.wait(), 128 + 9);
}
