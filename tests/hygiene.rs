//! Descriptor hygiene: every descriptor sealpipe creates or receives is close-on-exec, so a
//! child spawned through `sealpipe::spawn::spawn` inherits exactly one: its channel, on
//! fd 3.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use rustix::io::{fcntl_getfd, FdFlags};
use sealpipe::{Channel, GuardedMap, Policy, PositionalFile, Region};

const T: Duration = Duration::from_secs(20);

/// Descriptors this process has open that lack close-on-exec: any child inherits them,
/// whoever opened them (the test runner may hand some down, e.g. a jobserver pipe).
fn inheritable_fds() -> BTreeSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&fd| fd > 2)
        .filter(|&fd| is_inheritable(fd))
        .collect()
}

fn is_inheritable(fd: i32) -> bool {
    // Read F_GETFD through /proc: `flags:` in fdinfo has O_CLOEXEC (02000000) for
    // close-on-exec descriptors. No unsafe borrow of a raw number needed.
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|info| {
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
            u32::from_str_radix(flags.trim(), 8).ok()
        })
        .is_some_and(|flags| flags & 0o2000000 == 0)
}

fn assert_cloexec(what: &str, fd: BorrowedFd<'_>) {
    let flags = fcntl_getfd(fd).unwrap();
    assert!(
        flags.contains(FdFlags::CLOEXEC),
        "{what} (fd {}) is not close-on-exec",
        fd.as_raw_fd()
    );
}

/// The child: reports every descriptor it has, with what it points to.
fn lister(ch: Channel) -> i32 {
    let own_dir = format!("/proc/{}/fd", std::process::id());
    let mut report = String::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        if target == own_dir {
            continue; // the directory listing itself
        }
        let own_pidfd = ch.peer_pidfd().map(|fd| fd.as_raw_fd().to_string());
        if Some(entry.file_name().to_string_lossy().into_owned()) == own_pidfd {
            continue; // the parent's pidfd, opened (close-on-exec) by worker_channel
        }
        let _ = writeln!(report, "{} {}", entry.file_name().to_string_lossy(), target);
    }
    ch.send_timeout(report.as_bytes(), &[], T).unwrap();
    0
}

#[test]
fn a_spawned_child_inherits_only_its_channel() {
    common::peer_main(|_, ch| lister(ch));
    let _serial = common::serial();
    let inherited_by_us = inheritable_fds();

    // One of every kind of descriptor sealpipe makes.
    let mut region = Region::new(8192).unwrap();
    region.write_at(0, b"hygiene").unwrap();
    let sealed = region.seal().unwrap();
    let sealed_clone = sealed.try_clone().unwrap();
    let mut unsealed = Region::new(4096).unwrap();
    unsealed.as_mut_slice().unwrap()[0] = 1; // memfd + writable mapping, never sealed
    let shared = Region::new(4096).unwrap().seal_producer_writable().unwrap();
    let (a, b) = Channel::pair().unwrap();
    a.send_timeout(b"x", &[&sealed, shared.region()], T)
        .unwrap();
    let received = b
        .recv_timeout(&Policy::producer_writable().keep_descriptors(true), T)
        .unwrap();
    let (_, views) = received.into_parts();
    let mut views = views.into_iter();
    let view = views.next().unwrap();
    let positional = PositionalFile::try_from(views.next().unwrap()).unwrap();
    let positional_clone = positional.try_clone().unwrap();
    let from_fd = Channel::from_fd(a.into_fd()).unwrap();
    let guarded = GuardedMap::new(sealed_clone.try_clone().unwrap().into_fd()).unwrap();

    for (what, fd) in [
        ("sealed region", sealed.as_fd()),
        ("try_clone of a sealed region", sealed_clone.as_fd()),
        ("shared region", shared.region().as_fd()),
        ("channel end", b.as_fd()),
        ("channel from_fd", from_fd.as_fd()),
        ("received region view", view.fd().unwrap()),
        ("PositionalFile from a received region", positional.as_fd()),
        ("PositionalFile::try_clone", positional_clone.as_fd()),
        ("GuardedMap", guarded.as_fd()),
    ] {
        assert_cloexec(what, fd);
    }

    let peer = common::spawn_peer("a_spawned_child_inherits_only_its_channel", "lister");
    assert_cloexec("spawn's parent end", peer.channel.as_fd());
    let report = peer.channel.recv_timeout(&Policy::immutable(), T).unwrap();
    let report = String::from_utf8(report.payload().to_vec()).unwrap();
    assert_eq!(peer.wait(), 0);

    let mut seen = BTreeSet::new();
    let mut targets = Vec::new();
    for line in report.lines() {
        let (fd, target) = line.split_once(' ').unwrap();
        let fd: i32 = fd.parse().unwrap();
        if fd > 2 && !(inherited_by_us.contains(&fd) && fd != 3) {
            seen.insert(fd);
            targets.push(target.to_string());
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from([3]),
        "the child inherited more than its channel:\n{report}"
    );
    assert!(targets[0].starts_with("socket:"), "fd 3 is {}", targets[0]);
    // Keep everything alive until the child has reported.
    drop((
        unsealed,
        shared,
        view,
        positional,
        positional_clone,
        guarded,
        b,
    ));
}

/// The suite's leak check sees a descriptor opened and left open, and does not mistake a
/// descriptor closed meanwhile (or the same number reused for another file) for one.
#[test]
fn the_leak_check_sees_a_leaked_descriptor() {
    let _serial = common::serial();
    let older = std::fs::File::open("/dev/null").unwrap();
    let before = common::fds();
    assert!(before.opened_since().is_empty());
    drop(older);
    assert!(before.opened_since().is_empty(), "a close is not a leak");
    let leaked = Region::new(4096).unwrap();
    let opened = before.opened_since();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(opened[0].contains("memfd:"), "{opened:?}");
    let caught = std::panic::catch_unwind(|| common::assert_no_new_fds(&before, "leak"));
    assert!(caught.is_err(), "a descriptor left open fails the check");
    drop(leaked);
    common::assert_no_new_fds(&before, "closed again");
}
