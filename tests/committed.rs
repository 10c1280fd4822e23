//! Regions whose pages the receiver would pay for: a peer that sizes a memfd and seals it
//! without allocating its pages must be refused before the receiver touches any of them,
//! and nothing may be charged to the receiver.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::fs::{self, FallocateFlags, MemfdFlags, SealFlags};
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use sealpipe::ring::{layout, Consumer, RingOptions};
use sealpipe::{wire, Channel, Error, Policy, Region};

const T: Duration = Duration::from_secs(20);
const MIB: u64 = 1 << 20;
const IMMUTABLE: u32 = 0x8 | 0x2 | 0x4 | 0x1;
const PRODUCER_WRITABLE: u32 = 0x10 | 0x2 | 0x4 | 0x1;

/// A sealable memfd of `len` bytes; `prepare` allocates (or not) before `seals` are added.
fn memfd(len: u64, huge: bool, prepare: impl FnOnce(&OwnedFd), seals: u32) -> OwnedFd {
    let mut flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    if huge {
        flags |= MemfdFlags::HUGETLB;
    }
    let fd = fs::memfd_create("sparse", flags).unwrap();
    fs::ftruncate(&fd, len).unwrap();
    prepare(&fd);
    fs::fcntl_add_seals(&fd, SealFlags::from_bits_retain(seals)).unwrap();
    fd
}

fn allocated(fd: impl AsFd) -> u64 {
    fs::fstat(fd).unwrap().st_blocks as u64 * 512
}

/// Sends one message of regions `fds` (declared at their real sizes), bypassing the
/// sender's own checks.
fn send_raw(sock: BorrowedFd<'_>, fds: &[BorrowedFd<'_>]) {
    let mut msg = Vec::new();
    msg.extend_from_slice(&wire::MAGIC);
    msg.extend_from_slice(&wire::VERSION.to_le_bytes());
    msg.extend_from_slice(&wire::KIND_REGIONS.to_le_bytes());
    msg.extend_from_slice(&(fds.len() as u16).to_le_bytes());
    msg.extend_from_slice(&0u16.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    for fd in fds {
        msg.extend_from_slice(&(fs::fstat(fd).unwrap().st_size as u64).to_le_bytes());
    }
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    sendmsg(
        sock,
        &[std::io::IoSlice::new(&msg)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
}

fn honest(tx: &Channel) {
    let mut r = Region::new(MIB as usize).unwrap();
    r.write_at(MIB as usize - 5, b"after").unwrap();
    tx.send_timeout(b"honest", &[&r.seal().unwrap()], T)
        .unwrap();
}

fn expect_honest(rx: &Channel, policy: &Policy) -> bool {
    match rx.recv_timeout(policy, T) {
        Ok(m) => m.payload() == b"honest" && m.regions()[0].to_vec().ends_with(b"after"),
        Err(e) => panic!("the honest message after a refusal: {e:?}"),
    }
}

/// Sends `fd` from one end of a pair and returns what the other end's `recv` says; checks
/// that nothing of it was allocated meanwhile and that the next honest message is served.
fn refused(fd: OwnedFd, policy: &Policy) -> Error {
    let before = allocated(&fd);
    let (tx, rx) = Channel::pair().unwrap();
    send_raw(tx.as_fd(), &[fd.as_fd()]);
    let err = rx.recv_timeout(policy, T).unwrap_err();
    assert!(err.is_peer_fault(), "{err:?}");
    assert_eq!(allocated(&fd), before, "the receiver allocated pages");
    honest(&tx);
    assert!(expect_honest(&rx, policy));
    err
}

#[test]
fn sparse_region_is_refused_before_any_page_is_touched() {
    let fd = memfd(256 * MIB, false, |_| {}, IMMUTABLE);
    assert_eq!(allocated(&fd), 0);
    let err = refused(fd, &Policy::immutable());
    assert!(
        matches!(err, Error::Uncommitted { index: 0, len, committed: 0 } if len == 256 * MIB),
        "{err:?}"
    );
}

#[test]
fn producer_writable_sparse_region_is_refused_too() {
    let fd = memfd(8 * MIB, false, |_| {}, PRODUCER_WRITABLE);
    let err = refused(fd, &Policy::producer_writable());
    assert!(matches!(err, Error::Uncommitted { .. }), "{err:?}");
}

#[test]
fn one_hole_in_the_middle_is_found() {
    // Every page but one allocated: st_blocks falls one page short.
    let fd = memfd(
        4 * MIB,
        false,
        |fd| {
            fs::fallocate(fd, FallocateFlags::empty(), 0, 2 * MIB).unwrap();
            fs::fallocate(fd, FallocateFlags::empty(), 2 * MIB + 4096, 2 * MIB - 4096).unwrap();
        },
        IMMUTABLE,
    );
    let err = refused(fd, &Policy::immutable());
    assert!(
        matches!(err, Error::Uncommitted { committed, .. } if committed == 4 * MIB - 4096),
        "{err:?}"
    );
}

#[test]
fn pages_allocated_past_the_end_do_not_hide_holes() {
    // st_blocks covers st_size, but every allocated page lies past the end of the file
    // (fallocate KEEP_SIZE before sealing): a check of st_blocks alone would accept this.
    let fd = memfd(
        4 * MIB,
        false,
        |fd| fs::fallocate(fd, FallocateFlags::KEEP_SIZE, 4 * MIB, 4 * MIB).unwrap(),
        IMMUTABLE,
    );
    assert_eq!(allocated(&fd), 4 * MIB, "the disguise");
    let err = refused(fd, &Policy::immutable());
    assert!(
        matches!(err, Error::Uncommitted { committed: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn a_committed_region_with_pages_past_the_end_is_accepted() {
    let fd = memfd(
        MIB,
        false,
        |fd| fs::fallocate(fd, FallocateFlags::KEEP_SIZE, 0, 2 * MIB).unwrap(),
        IMMUTABLE,
    );
    let (tx, rx) = Channel::pair().unwrap();
    send_raw(tx.as_fd(), &[fd.as_fd()]);
    let msg = rx.recv_timeout(&Policy::immutable(), T).unwrap();
    assert_eq!(msg.regions()[0].len() as u64, MIB);
}

#[test]
fn regions_sealpipe_makes_are_committed_at_any_length() {
    let (tx, rx) = Channel::pair().unwrap();
    for len in [1, 4095, 4097, 3 * 4096 + 1, MIB as usize + 7] {
        let r = Region::new(len).unwrap().seal().unwrap();
        tx.send_timeout(b"", &[&r], T).unwrap();
        rx.recv_timeout(&Policy::immutable(), T).unwrap();
        let shared = Region::new(len).unwrap().seal_producer_writable().unwrap();
        tx.send_timeout(b"", &[shared.region()], T).unwrap();
        rx.recv_timeout(&Policy::producer_writable(), T).unwrap();
    }
}

#[test]
fn huge_page_regions_need_the_policy_to_opt_in() {
    // MFD_HUGETLB memfds can be created and sized without a huge-page pool.
    let Ok(probe) = fs::memfd_create("probe", MemfdFlags::HUGETLB | MemfdFlags::CLOEXEC) else {
        panic!("this kernel has no MFD_HUGETLB");
    };
    drop(probe);
    let err = refused(
        memfd(2 * MIB, true, |_| {}, IMMUTABLE),
        &Policy::immutable(),
    );
    assert!(matches!(err, Error::HugePages { index: 0 }), "{err:?}");
    // Opted in: still refused while its pages do not exist.
    let policy = Policy::immutable().huge_pages(true);
    let err = refused(memfd(2 * MIB, true, |_| {}, IMMUTABLE), &policy);
    assert!(
        matches!(err, Error::Uncommitted { committed: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn ring_setup_refuses_a_sparse_producer_memfd() {
    let cap = 1u32 << 20;
    let fd = memfd(
        layout::CONTROL_LEN as u64 + u64::from(cap),
        false,
        |fd| {
            let mut h = [0u8; 64];
            h[..8].copy_from_slice(&layout::PRODUCER_MAGIC);
            for (at, v) in [
                (layout::VERSION_AT, layout::VERSION),
                (layout::KIND_AT, layout::KIND_BYTES),
                (layout::CAPACITY_AT, cap),
                (layout::UNIT_AT, 1),
                (layout::DATA_AT_AT, layout::CONTROL_LEN as u32),
                (layout::INDEX_AT_AT, layout::INDEX_AT as u32),
                (layout::WAIT_AT_AT, layout::WAIT_AT as u32),
            ] {
                h[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            // The header page is real; the data area is not.
            rustix::io::pwrite(fd, &h, 0).unwrap();
        },
        PRODUCER_WRITABLE,
    );
    let (a, b) = Channel::pair().unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&wire::MAGIC);
    msg.extend_from_slice(&wire::VERSION.to_le_bytes());
    msg.extend_from_slice(&wire::KIND_REGIONS.to_le_bytes());
    msg.extend_from_slice(&1u16.to_le_bytes());
    msg.extend_from_slice(&0u16.to_le_bytes());
    let setup = b"sealpipe ring v1";
    msg.extend_from_slice(&(setup.len() as u32).to_le_bytes());
    msg.extend_from_slice(&(fs::fstat(&fd).unwrap().st_size as u64).to_le_bytes());
    msg.extend_from_slice(setup);
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    sendmsg(
        &a,
        &[std::io::IoSlice::new(&msg)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
    let opts = RingOptions::default().timeout(Duration::from_secs(2));
    let err = Consumer::setup(b, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Uncommitted {
                committed: 4096,
                ..
            }
        ) && err.is_peer_fault(),
        "{err:?}"
    );
    assert_eq!(allocated(&fd), 4096);
}

// ----- a receiver in a small memory cgroup -----

const SPARSE_LEN: u64 = 256 * MIB;
const CGROUP_LIMIT: u64 = 64 * MIB;

/// The receiver, inside a 64 MiB memory cgroup whose OOM killer is on: told "go" once it
/// is in the group, it receives a 256 MiB sparse region (which it must refuse) and then an
/// honest one. Were the sparse region accepted, it reads it all, as an application would,
/// and is killed by the group's OOM killer.
fn receiver(role: &str, ch: Channel) -> i32 {
    if role != "receiver" {
        return 99;
    }
    ch.recv_timeout(&Policy::immutable(), T).unwrap(); // "go"
    match ch.recv_timeout(&Policy::immutable(), T) {
        Err(Error::Uncommitted {
            index: 0,
            len: SPARSE_LEN,
            committed: 0,
        }) => {}
        Err(e) => {
            eprintln!("sparse region: {e:?}");
            return 1;
        }
        Ok(msg) => {
            let bytes = msg.regions()[0].as_bytes().unwrap();
            let sum = bytes
                .iter()
                .step_by(4096)
                .map(|b| u64::from(*b))
                .sum::<u64>();
            eprintln!("sparse region accepted and read (sum {sum})");
            return 2;
        }
    }
    if expect_honest(&ch, &Policy::immutable()) {
        0
    } else {
        3
    }
}

#[test]
#[ignore = "needs root: creates a memory cgroup (.ci/run runs it as root)"]
fn receiver_in_a_small_memory_cgroup_refuses_a_sparse_region_and_lives() {
    common::peer_main(receiver);
    let _serial = common::serial();
    let cgroup = common::MemoryCgroup::create(CGROUP_LIMIT, true)
        .unwrap_or_else(|why| panic!("cannot create a memory cgroup here: {why}"));
    let peer = common::spawn_peer(
        "receiver_in_a_small_memory_cgroup_refuses_a_sparse_region_and_lives",
        "receiver",
    );
    cgroup.add(peer.pid()).unwrap();
    peer.channel.send_timeout(b"go", &[], T).unwrap();
    let sparse = memfd(SPARSE_LEN, false, |_| {}, IMMUTABLE);
    send_raw(peer.channel.as_fd(), &[sparse.as_fd()]);
    honest(&peer.channel);
    let code = peer.wait();
    let peak = cgroup.peak();
    assert_eq!(
        code, 0,
        "1: another error; 2: sparse region accepted; 3: honest message lost; 137: OOM-killed"
    );
    assert_eq!(
        allocated(&sparse),
        0,
        "pages of the sparse region were allocated"
    );
    assert!(
        peak < 32 * MIB,
        "the receiver's cgroup peaked at {peak} bytes"
    );
    println!("receiver's cgroup peak: {} KiB", peak / 1024);
}
