//! `GuardedMap` against a real truncating process, and proof that faults the guard does
//! not own still kill the process.
//!
//! Knob: `SEALPIPE_GUARD_FAULTS` (default 2000) is how many caught truncations the race
//! test requires.
#![allow(unsafe_code)] // a counting allocator, and children that crash on purpose

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use memmap2::MmapOptions;
use sealpipe::{Error, GuardedMap, Policy};

const LEN: u64 = 16 * 4096;

/// Counts, per thread, bytes allocated minus bytes freed: what a stretch of code on this
/// thread (signal handlers included: they run on the faulting thread) leaves allocated.
struct Counting;

thread_local! {
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping touches
// only a const-initialised thread-local without destructor, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let _ = NET_BYTES.try_with(|n| n.set(n.get() + layout.size() as i64));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.dealloc(ptr, layout) };
        let _ = NET_BYTES.try_with(|n| n.set(n.get() - layout.size() as i64));
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn net_bytes() -> i64 {
    NET_BYTES.with(Cell::get)
}

fn required_faults() -> usize {
    std::env::var("SEALPIPE_GUARD_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn no_core_dumps() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Core);
    let _ = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: current.maximum,
        },
    );
}

/// The truncating peer: shrinks the shared file to nothing and grows it back, over and
/// over, until the parent closes the channel.
fn truncator(ch: sealpipe::Channel) -> i32 {
    let fd = common::shared_fd();
    loop {
        match ch.try_recv(&Policy::immutable()) {
            Err(Error::WouldBlock) => {}
            Err(Error::PeerClosed) => return 0,
            other => {
                eprintln!("truncator: unexpected {other:?}");
                return 1;
            }
        }
        rustix::fs::ftruncate(&fd, 0).unwrap();
        std::thread::sleep(Duration::from_micros(100));
        rustix::fs::ftruncate(&fd, LEN).unwrap();
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn another_process_truncating_during_reads_gives_errors_not_sigbus() {
    common::peer_main(|_, ch| truncator(ch));
    let _serial = common::serial();
    let fd = rustix::fs::memfd_create("guarded", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, LEN).unwrap();
    // Register the hook before measuring (its registration allocates once).
    drop(GuardedMap::new(rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap()).unwrap());
    let fds_before = common::fds();

    let peer = common::spawn_peer_sharing(
        "another_process_truncating_during_reads_gives_errors_not_sigbus",
        "truncator",
        fd.as_fd(),
    );
    let want = required_faults();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut faults, mut reads, mut remaps) = (0usize, 0usize, 0usize);
    let mut buf = [0u8; 64];
    let bytes_before = net_bytes();
    let mut map: Option<GuardedMap> = None;
    let mut spare = Some(rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap());
    while faults < want {
        assert!(
            Instant::now() < deadline,
            "only {faults} of {want} truncations caught in 60 s ({reads} reads)"
        );
        let m = match map.take() {
            Some(m) => m,
            None => match GuardedMap::new(spare.take().unwrap()) {
                Ok(m) => {
                    remaps += 1;
                    m
                }
                // Caught the peer with the file at length 0: try again.
                Err(Error::EmptyRegion { .. }) => {
                    spare = Some(rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap());
                    continue;
                }
                Err(e) => panic!("mapping failed: {e}"),
            },
        };
        let page = reads % (m.len() / 4096);
        reads += 1;
        match m.read_at(page * 4096 + 100, &mut buf) {
            Ok(()) => map = Some(m),
            Err(Error::Truncated { offset, len, .. }) => {
                assert_eq!((offset, len), ((page * 4096 + 100) as u64, 64));
                faults += 1;
                // A truncated map stays truncated: map the file again.
                spare = Some(m.into_fd());
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    drop(map);
    drop(spare);
    let leaked = net_bytes() - bytes_before;
    assert_eq!(peer.wait(), 0, "truncator failed");
    eprintln!(
        "guard race: {faults} truncations caught in {reads} reads, {remaps} maps, \
         {leaked} bytes left allocated"
    );
    common::assert_no_new_fds(&fds_before, "descriptor leaked");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(!maps.contains("memfd:guarded"), "mapping leaked:\n{maps}");
    // The only allocation a caught fault may leave behind is hw-exception 0.1.0's own
    // hook list (16 bytes per registered hook; one hook), skipped by its longjmp.
    assert!(
        leaked <= 16 * faults as i64,
        "{leaked} bytes leaked over {faults} caught faults"
    );
}

/// Crashing peers. Each first proves that the guard is installed and working in its
/// process (a caught truncation), then makes a fault the guard does not own.
fn crasher(role: &str) -> i32 {
    no_core_dumps();
    let fd = rustix::fs::memfd_create("guarded", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 2 * 4096).unwrap();
    let guarded = GuardedMap::new(rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap()).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    if !matches!(
        guarded.read_at(4096, &mut [0u8; 8]),
        Err(Error::Truncated { .. })
    ) {
        return 3; // the guard did not work: not what this test is about
    }
    // An ordinary, unguarded mapping of a file that is then truncated.
    let other = rustix::fs::memfd_create("plain", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&other, 4096).unwrap();
    let plain = MmapOptions::new()
        .len(4096)
        .map_raw_read_only(std::os::fd::AsRawFd::as_raw_fd(&other))
        .unwrap();
    rustix::fs::ftruncate(&other, 0).unwrap();
    let touch_plain = || {
        // SAFETY: deliberately not safe: the file was truncated, so this raises SIGBUS,
        // which must kill this process. Nothing after it runs.
        unsafe { plain.as_ptr().read_volatile() }
    };
    match role {
        "bad-pointer" => {
            // SAFETY: deliberately not safe: address 16 is never mapped, so this raises
            // SIGSEGV, which must kill this process.
            let v = unsafe { (16 as *const u8).read_volatile() };
            i32::from(v) + 4
        }
        "unguarded-truncated-map" => i32::from(touch_plain()) + 4,
        "unguarded-while-other-thread-guards" => {
            // Another thread sits in guarded reads the whole time while this one touches
            // the unguarded mapping: the guard must not take that fault.
            let fd2 = rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
            std::thread::spawn(move || {
                let m = GuardedMap::new(fd2).unwrap();
                let mut buf = [0u8; 64];
                loop {
                    m.read_at(0, &mut buf).unwrap();
                }
            });
            std::thread::sleep(Duration::from_millis(20));
            i32::from(touch_plain()) + 4
        }
        _ => 2,
    }
}

#[test]
fn faults_outside_the_guard_still_kill_the_process() {
    common::peer_main(|role, _| crasher(role));
    let _serial = common::serial();
    const SIGBUS: i32 = 7;
    const SIGSEGV: i32 = 11;
    for (role, signal) in [
        ("bad-pointer", SIGSEGV),
        ("unguarded-truncated-map", SIGBUS),
        ("unguarded-while-other-thread-guards", SIGBUS),
    ] {
        let peer = common::spawn_peer_with(
            "faults_outside_the_guard_still_kill_the_process",
            role,
            |cmd| {
                cmd.stderr(std::process::Stdio::null());
            },
        );
        assert_eq!(
            peer.wait(),
            128 + signal,
            "{role}: must die by signal {signal}"
        );
    }
}
