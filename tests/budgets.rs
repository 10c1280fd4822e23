//! Budgets across messages and channels (issue 12 §4): one stalled peer must not spend the
//! sending user's in-flight descriptor budget for every other channel; received views do
//! not pin descriptors unless asked to; a message's total size is bounded by the policy.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use sealpipe::{Channel, Error, HandshakeConfig, Listener, Policy, Region};

const T: Duration = Duration::from_secs(20);
const PATH_ENV: &str = "SEALPIPE_TEST_PATH";
/// The sender's `RLIMIT_NOFILE`, which is also its user's in-flight descriptor limit.
const NOFILE: u64 = 64;
/// The stalled channel's in-flight limit.
const STALLED_LIMIT: usize = 32;

/// Connects twice to the listener at `$PATH_ENV` (as root, which the listener's same-user
/// policy admits), names the channels, then drops to an unprivileged user (if root) with
/// `RLIMIT_NOFILE` = 64: from then on, its descriptors in flight count against that user's
/// limit of 64.
fn connect_two_then_drop_privileges() -> (Channel, Channel) {
    let path = std::env::var(PATH_ENV).unwrap();
    let a = Channel::connect(&path, &HandshakeConfig::new().timeout(T)).unwrap();
    a.send_timeout(b"A", &[], T).unwrap();
    let b = Channel::connect(&path, &HandshakeConfig::new().timeout(T)).unwrap();
    b.send_timeout(b"B", &[], T).unwrap();
    use rustix::process::{setrlimit, Resource, Rlimit};
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(NOFILE),
            maximum: Some(NOFILE),
        },
    )
    .unwrap();
    // Only this thread's credentials (the kernel charges in-flight descriptors to the
    // sending thread's user); dropping uid 0 also drops CAP_SYS_RESOURCE. Run by an
    // unprivileged user, the test is already where it needs to be.
    if common::is_root() {
        rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(65534)).unwrap();
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(65534)).unwrap();
    }
    (a, b)
}

fn sender(role: &str, ctl: Channel) -> i32 {
    if role == "guard_files" {
        // A sparse 100 TiB memfd and a regular file, sent raw (no sealpipe message).
        let huge = rustix::fs::memfd_create("huge", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&huge, 100 << 40).unwrap();
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        use std::os::fd::AsFd;
        let fds = [huge.as_fd(), file.as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &ctl,
            &[std::io::IoSlice::new(b"fds")],
            &mut control,
            rustix::net::SendFlags::NOSIGNAL,
        )
        .unwrap();
        let _ = ctl.recv_timeout(&Policy::immutable(), T);
        return 0;
    }
    if role == "three_regions" {
        // Three 1 MiB regions in one message (over a 2 MiB total limit), then the same
        // three regions again, and an honest small message.
        let regions: Vec<_> = (0..3)
            .map(|_| Region::new(1 << 20).unwrap().seal().unwrap())
            .collect();
        let refs: Vec<_> = regions.iter().collect();
        ctl.send_timeout(b"big", &refs, T).unwrap();
        ctl.send_timeout(b"kept", &refs, T).unwrap();
        let small = Region::new(4096).unwrap().seal().unwrap();
        ctl.send_timeout(b"honest", &[&small], T).unwrap();
        let _ = ctl.recv_timeout(&Policy::immutable(), T);
        return 0;
    }
    let (a, b) = connect_two_then_drop_privileges();
    let region = Region::new(4096).unwrap().seal().unwrap();
    let ten = [&region; 10];
    let report = |s: String| ctl.send_timeout(s.as_bytes(), &[], T).unwrap();
    match role {
        // B is bounded: it stalls on its own budget, and A keeps working.
        "bounded" => {
            // Both channels bounded, the sum (2 x 32) within the user's 64.
            let a = a.with_in_flight_limit(STALLED_LIMIT);
            let b = b.with_in_flight_limit(STALLED_LIMIT);
            let mut sent = 0;
            let stalled = loop {
                match b.try_send(b"", &ten) {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
                if sent > 100 {
                    break Error::WouldBlock;
                }
            };
            let timed = b.send_timeout(b"", &ten, Duration::from_millis(50));
            let mut a_failed = None;
            for _ in 0..20 {
                if let Err(e) = a.send_timeout(b"", &ten, T) {
                    a_failed = Some(e);
                    break;
                }
            }
            report(format!("B {sent} {stalled:?} {timed:?}; A {a_failed:?}"));
            // The parent reads B's messages, then says so: B's budget is back.
            let _ = ctl.recv_timeout(&Policy::immutable(), T).unwrap();
            let resumed = b.send_timeout(b"resumed", &ten, T);
            report(format!("resumed {resumed:?}"));
            let _ = ctl.recv_timeout(&Policy::immutable(), T);
            0
        }
        // The control experiment: B unbounded exhausts the user's budget, and A fails too.
        "unbounded" => {
            let b = b.with_in_flight_limit(usize::MAX);
            let stalled = loop {
                if let Err(e) = b.try_send(b"", &ten) {
                    break e;
                }
            };
            let a_result = a.try_send(b"", &ten);
            report(format!("B {stalled:?}; A {a_result:?}"));
            let _ = ctl.recv_timeout(&Policy::immutable(), T);
            0
        }
        _ => 99,
    }
}

struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        let dir = std::env::temp_dir().join(format!("sealpipe-bud-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        TempPath(dir)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Binds a listener, spawns the sender in `role`, accepts its two channels and returns
/// them as (A, B).
fn setup(test: &str, role: &str, dir: &TempPath) -> (common::Peer, Channel, Channel) {
    let path = dir.0.join("ep");
    let mut listener = Listener::bind(&path, &HandshakeConfig::new().timeout(T)).unwrap();
    let peer = common::spawn_peer_with(test, role, |c| {
        c.env(PATH_ENV, &path);
    });
    let (mut a, mut b) = (None, None);
    for _ in 0..2 {
        let ch = listener.accept_timeout(T).unwrap();
        let name = ch.recv_timeout(&Policy::immutable(), T).unwrap();
        match name.payload() {
            b"A" => a = Some(ch),
            b"B" => b = Some(ch),
            other => panic!("{other:?}"),
        }
    }
    (peer, a.unwrap(), b.unwrap())
}

fn read_report(ctl: &Channel) -> String {
    let msg = ctl.recv_timeout(&Policy::immutable(), T).unwrap();
    String::from_utf8(msg.payload().to_vec()).unwrap()
}

#[test]
fn a_stalled_peer_stalls_only_its_own_channel() {
    common::peer_main(sender);
    let _serial = common::serial();
    let dir = TempPath::new("bounded");
    let (peer, a, b) = setup(
        "a_stalled_peer_stalls_only_its_own_channel",
        "bounded",
        &dir,
    );
    // A's reader keeps up; B's never reads until the report is in.
    let reader = std::thread::spawn(move || {
        for _ in 0..20 {
            let msg = a.recv_timeout(&Policy::immutable(), T).unwrap();
            assert_eq!(msg.regions().len(), 10);
        }
        a
    });
    let report = read_report(&peer.channel);
    // 3 messages of 10 fit a budget of 32; the 4th waits, and A is unaffected.
    assert_eq!(report, "B 3 WouldBlock Err(Timeout); A None", "{report}");
    let _a = reader.join().unwrap();
    for _ in 0..3 {
        assert_eq!(
            b.recv_timeout(&Policy::immutable(), T)
                .unwrap()
                .regions()
                .len(),
            10
        );
    }
    peer.channel.send_timeout(b"read", &[], T).unwrap();
    assert_eq!(read_report(&peer.channel), "resumed Ok(())");
    let msg = b.recv_timeout(&Policy::immutable(), T).unwrap();
    assert_eq!(msg.payload(), b"resumed");
    assert_eq!(peer.wait(), 0);
}

#[test]
fn without_a_bound_one_stalled_peer_fails_every_channel() {
    common::peer_main(sender);
    let _serial = common::serial();
    let dir = TempPath::new("unbounded");
    let (peer, _a, _b) = setup(
        "without_a_bound_one_stalled_peer_fails_every_channel",
        "unbounded",
        &dir,
    );
    // The problem the bound solves, shown: the kernel's budget is per user.
    assert_eq!(
        read_report(&peer.channel),
        "B TooManyInFlight; A Err(TooManyInFlight)"
    );
    assert_eq!(peer.wait(), 0);
}

#[test]
fn message_size_limit_and_views_without_descriptors() {
    common::peer_main(sender);
    let _serial = common::serial();
    let peer = common::spawn_peer(
        "message_size_limit_and_views_without_descriptors",
        "three_regions",
    );
    let baseline = common::fds();
    let maps = common::ring_peers::memfd_maps();
    let policy = Policy::immutable().max_message_len(2 << 20);
    let err = peer.channel.recv_timeout(&policy, T).unwrap_err();
    assert!(
        matches!(
            err,
            Error::PolicyLimit {
                what: "total region bytes",
                got: 3145728,
                max: 2097152
            }
        ),
        "{err:?}"
    );
    assert!(err.is_peer_fault());
    common::assert_no_new_fds(&baseline, "rejected descriptors closed");
    assert_eq!(common::ring_peers::memfd_maps(), maps, "nothing mapped");
    // Accepted views hold a mapping each, no descriptor, unless the policy keeps them.
    let kept = peer
        .channel
        .recv_timeout(&Policy::immutable().keep_descriptors(true), T)
        .unwrap();
    assert_eq!(
        baseline.opened_since().len(),
        3,
        "one descriptor per kept view"
    );
    assert!(kept.regions().iter().all(|r| r.fd().is_some()));
    let honest = peer.channel.recv_timeout(&policy, T).unwrap();
    assert_eq!(honest.payload(), b"honest");
    assert!(honest.regions()[0].fd().is_none());
    assert_eq!(
        baseline.opened_since().len(),
        3,
        "the honest view pins no descriptor"
    );
    assert!(common::ring_peers::memfd_maps() > maps);
    drop((kept, honest));
    common::assert_no_new_fds(&baseline, "descriptors leaked");
    assert_eq!(peer.wait(), 0);
}

#[test]
fn guarded_map_refuses_huge_and_non_shared_memory_files() {
    use sealpipe::{GuardOptions, GuardedMap};
    use std::os::fd::OwnedFd;
    common::peer_main(sender);
    let _serial = common::serial();
    let peer = common::spawn_peer(
        "guarded_map_refuses_huge_and_non_shared_memory_files",
        "guard_files",
    );
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = [0u8; 16];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(
        &peer.channel,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )
    .unwrap();
    for msg in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(iter) = msg {
            fds.extend(iter);
        }
    }
    let (huge, file) = {
        let mut it = fds.into_iter();
        (it.next().unwrap(), it.next().unwrap())
    };
    let huge2 = rustix::io::fcntl_dupfd_cloexec(&huge, 0).unwrap();
    let err = GuardedMap::new(huge).unwrap_err();
    assert!(
        matches!(err, Error::RegionTooLarge { len, max, .. } if len == 100 << 40 && max == 1 << 30),
        "{err:?}"
    );
    let err = GuardedMap::with_options(huge2, &GuardOptions::new().max_len(1 << 40)).unwrap_err();
    assert!(matches!(err, Error::RegionTooLarge { .. }), "{err:?}");
    let file2 = rustix::io::fcntl_dupfd_cloexec(&file, 0).unwrap();
    let err = GuardedMap::new(file).unwrap_err();
    assert!(
        matches!(&err, Error::NotMemfd { reason, .. } if reason.contains("regular file")),
        "{err:?}"
    );
    let maps_now = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps_now.contains("memfd:huge"),
        "the sparse file was not mapped"
    );
    // Asked for explicitly, any file is mapped.
    let map = GuardedMap::with_options(file2, &GuardOptions::new().any_file(true)).unwrap();
    let mut elf = [0u8; 4];
    map.read_at(0, &mut elf).unwrap();
    assert_eq!(&elf, b"\x7fELF");
    drop(map);
    assert_eq!(peer.wait(), 0);
}
