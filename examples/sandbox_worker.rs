//! A parent hands a sandboxed worker process two sealed regions and a ring; the worker
//! proves it can read them but not change them, and that it can do nothing else.
//!
//! The parent spawns this same binary in a worker role with one end of a channel on an
//! inherited descriptor (`spawn_sandboxed`: the worker starts under the sandbox's
//! spawn-time layer, and enters the full default profile itself once it holds its
//! channel), then sends:
//! - a 64 MiB **immutable** region (`WRITE | SHRINK | GROW | SEAL`), and
//! - a 1 MiB **producer-writable** region (`FUTURE_WRITE | SHRINK | GROW | SEAL`) whose first
//!   8 bytes the parent keeps updating.
//!
//! The worker verifies and checksums both, watches the producer's updates, then attacks
//! each region every way it can (write, pwrite, ftruncate, punch a hole, mprotect to
//! writable, a writable shared mapping, an executable mapping, reopen /proc/self/fd/N
//! read-write), tries to escape the sandbox (open a file, create sockets, execve a shell,
//! ptrace and kill its parent, fork, map memory executable) and reports. Finally the
//! parent streams records to it over a ring in shared memory.
//! Exit status 0 means every attack and escape was refused and every checksum matched.
//!
//! Run with `cargo run --release --example sandbox_worker`.
#![allow(unsafe_code)] // raw escape attempts, and attacks on the worker's own mappings

use std::os::fd::BorrowedFd;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use sealpipe::ring::{Consumer, Producer, RingOptions};
use sealpipe::sandbox::Sandbox;
use sealpipe::{Channel, Policy, Region, RegionView};

const BIG: usize = 64 << 20;
const SMALL: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);
const RING_RECORDS: u64 = 1_000_000;

fn main() -> ExitCode {
    let result = if std::env::args().nth(1).as_deref() == Some("--worker") {
        worker()
    } else {
        parent()
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parent() -> Result<bool, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let (mut child, channel, enforced) =
        sealpipe::spawn::spawn_sandboxed(Command::new(exe).arg("--worker"), &Sandbox::worker())?;
    println!(
        "parent: spawned worker pid {}, sandboxed before main: {enforced}",
        child.id()
    );
    // spawn() returned only after the handshake: the kernel vouched that the process at the
    // other end is the child we started, and the channel watches the child's pidfd.
    if let Some(peer) = channel.peer_credentials() {
        println!(
            "parent: handshake ok: peer pid {} uid {}, pidfd {}",
            peer.pid,
            peer.uid,
            if channel.peer_pidfd().is_some() {
                "held"
            } else {
                "unavailable"
            }
        );
    }

    // The immutable region: filled with pwrite from a prepared buffer, then sealed.
    let data: Vec<u64> = (0..BIG as u64 / 8)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let expected_big = checksum(&data);
    let start = Instant::now();
    let mut big = Region::new(BIG)?;
    big.write_at(0, bytemuck::cast_slice(&data))?;
    let big = big.seal()?;
    let sealed_at = start.elapsed();

    // The producer-writable region: a fixed body after an 8-byte counter the parent updates.
    let mut shared = Region::new(SMALL)?.seal_producer_writable()?;
    let body = &mut shared.as_mut_slice_of::<u64>()?[1..];
    body.iter_mut()
        .enumerate()
        .for_each(|(i, w)| *w = i as u64 ^ 0xA5A5);
    let expected_small = checksum(body);

    channel.send_timeout(b"", &[&big, shared.region()], TIMEOUT)?;
    let stop = Arc::new(AtomicBool::new(false));
    let updater = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut generation = 0u64;
            while !stop.load(Ordering::Relaxed) {
                generation += 1;
                shared.as_mut_slice()[..8].copy_from_slice(&generation.to_le_bytes());
                std::thread::sleep(Duration::from_micros(200));
            }
            generation
        })
    };

    let sums = channel.recv_timeout(&Policy::immutable(), TIMEOUT)?;
    let handed_over = start.elapsed();
    let report = channel.recv_timeout(&Policy::immutable(), TIMEOUT)?;
    stop.store(true, Ordering::Relaxed);
    let generations = updater.join().map_err(|_| "updater thread panicked")?;

    // The ring, into the sandboxed worker: it creates and seals its half inside.
    let mut tx = Producer::setup(channel, &RingOptions::new(1 << 16).timeout(TIMEOUT))?;
    let ring_start = Instant::now();
    for i in 0..RING_RECORDS {
        tx.send_timeout(&ring_record(i), TIMEOUT)?;
    }
    let ring_time = ring_start.elapsed();
    let status = child.wait()?;
    drop(tx);
    println!(
        "parent: {RING_RECORDS} ring records sent in {:.1} ms ({:.1} M records/s)",
        ring_time.as_secs_f64() * 1e3,
        RING_RECORDS as f64 / ring_time.as_secs_f64() / 1e6
    );

    let ([got_big, got_small], [refused, attempted]) = (words(&sums)?, words(&report)?);
    let secs = handed_over.as_secs_f64();
    println!(
        "parent: 64 MiB sealed in {:.1} ms; created, sent, verified, mapped and checksummed by the worker in {:.1} ms ({:.2} GB/s)",
        sealed_at.as_secs_f64() * 1e3,
        secs * 1e3,
        BIG as f64 / secs / 1e9
    );
    let big_ok = got_big == expected_big;
    let small_ok = got_small == expected_small;
    println!(
        "parent: checksums {} (immutable) and {} (producer-writable); the producer made {generations} updates meanwhile",
        if big_ok { "match" } else { "MISMATCH" },
        if small_ok { "match" } else { "MISMATCH" }
    );
    let all_refused = refused == attempted && attempted > 0;
    println!(
        "parent: {refused}/{attempted} attacks and escapes refused by the kernel; worker {status}"
    );
    let ok = big_ok && small_ok && all_refused && status.success();
    println!("{}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}

fn worker() -> Result<bool, Box<dyn std::error::Error>> {
    let channel: Channel = sealpipe::spawn::worker_channel()?;
    // Setup is done: from here on, receive, read and answer, and nothing else.
    let enforced = Sandbox::worker().enter()?;
    println!("worker: entered the sandbox: {enforced}");
    // Accept the producer-writable region too; the immutable one is checked by its seals.
    // Keep the descriptors: the attacks below try them.
    let policy = Policy::producer_writable()
        .max_region_len(BIG as u64)
        .keep_descriptors(true);
    let msg = channel.recv_timeout(&policy, TIMEOUT)?;
    let [big, small] = msg.regions() else {
        return Err("expected two regions".into());
    };
    // Immutable: read in place, zero-copy.
    let sum_big = checksum(big.as_slice_of::<u64>()?);
    // Producer-writable: copy out, then use the private copy.
    let mut body = vec![0u64; SMALL / 8 - 1];
    small.read_at(8, bytemuck::cast_slice_mut(&mut body))?;
    let sum_small = checksum(&body);
    channel.send_timeout(bytemuck::bytes_of(&[sum_big, sum_small]), &[], TIMEOUT)?;

    let g1: u64 = small.read_value(0)?;
    std::thread::sleep(Duration::from_millis(20));
    let g2: u64 = small.read_value(0)?;
    println!(
        "worker: immutable region {} MiB, seals {}",
        big.len() >> 20,
        big.seals()
    );
    println!(
        "worker: producer-writable region {} MiB, seals {}; counter moved {g1} -> {g2} while reading",
        small.len() >> 20,
        small.seals()
    );

    let (mut refused, mut attempted) = (0u64, 0u64);
    for (name, view) in [("immutable", big), ("producer-writable", small)] {
        for (attack, result) in attacks(view) {
            attempted += 1;
            match result {
                Err(e) => {
                    refused += 1;
                    println!(
                        "worker: {name:>17}: {attack:<40} refused: {}",
                        errno_name(e)
                    );
                }
                Ok(()) => println!("worker: {name:>17}: {attack:<40} SUCCEEDED"),
            }
        }
    }
    for (escape, result) in escapes() {
        attempted += 1;
        match result {
            Err(e) => {
                refused += 1;
                println!(
                    "worker:   sandbox escape: {escape:<40} refused: {}",
                    errno_name(e)
                );
            }
            Ok(()) => println!("worker:   sandbox escape: {escape:<40} SUCCEEDED"),
        }
    }
    channel.send_timeout(bytemuck::bytes_of(&[refused, attempted]), &[], TIMEOUT)?;
    drop(msg);

    // The ring still works inside: connect (create and seal this side's memfd), then
    // receive and check every record.
    let mut rx = Consumer::setup(channel, &RingOptions::new(1 << 16).timeout(TIMEOUT))?;
    let mut record = Vec::new();
    let mut ring_ok = true;
    for i in 0..RING_RECORDS {
        rx.recv_timeout(&mut record, TIMEOUT)?;
        ring_ok &= record == ring_record(i);
    }
    println!(
        "worker: ring: {RING_RECORDS} records received inside the sandbox, {}",
        if ring_ok { "all correct" } else { "SOME WRONG" }
    );
    Ok(refused == attempted && ring_ok)
}

/// Record `i` of the ring stream: 8 to 64 bytes derived from `i`.
fn ring_record(i: u64) -> Vec<u8> {
    let len = 8 + (i % 57) as usize;
    (0..len)
        .map(|k| (i.wrapping_mul(31) as u8) ^ k as u8)
        .collect()
}

/// Every way out of the sandbox the worker tries. Each must fail.
fn escapes() -> Vec<(&'static str, Result<(), Errno>)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::net::{AddressFamily, SocketType};
    let parent = rustix::process::getppid().ok_or(Errno::SRCH);
    vec![
        (
            "open(\"/etc/passwd\")",
            rustix::fs::open("/etc/passwd", OFlags::RDONLY, Mode::empty()).map(drop),
        ),
        (
            "socket(AF_INET, SOCK_STREAM)",
            rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).map(drop),
        ),
        (
            "socket(AF_UNIX, SOCK_STREAM)",
            rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).map(drop),
        ),
        ("execve(\"/bin/sh\")", exec_shell()),
        (
            "ptrace(PTRACE_ATTACH, parent)",
            parent.and_then(ptrace_attach),
        ),
        (
            "kill(parent, SIGKILL)",
            parent.and_then(|p| rustix::process::kill_process(p, rustix::process::Signal::KILL)),
        ),
        ("fork()", fork()),
        ("mmap(PROT_EXEC) anonymous memory", map_exec(None)),
        ("mprotect(PROT_EXEC) own memory", mprotect_exec()),
    ]
}

fn exec_shell() -> Result<(), Errno> {
    let sh = c"/bin/sh";
    let argv = [sh.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: a NUL-terminated path and null-terminated argv/envp arrays that outlive the
    // call; if it succeeded this process would be replaced (and the example fail).
    let r = unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    if r < 0 {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
    } else {
        Ok(())
    }
}

fn ptrace_attach(pid: rustix::process::Pid) -> Result<(), Errno> {
    // SAFETY: PTRACE_ATTACH takes a pid and no pointers.
    let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid.as_raw_nonzero().get(), 0, 0) };
    if r < 0 {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
    } else {
        Ok(())
    }
}

fn fork() -> Result<(), Errno> {
    // SAFETY: a child, if one were created, only calls the async-signal-safe `_exit`.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => {
            // SAFETY: leaving the forked child at once.
            unsafe { libc::_exit(0) }
        }
        p if p < 0 => {
            Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
        }
        p => {
            // SAFETY: reaping the child created just above.
            unsafe { libc::waitpid(p, std::ptr::null_mut(), 0) };
            Ok(())
        }
    }
}

fn mprotect_exec() -> Result<(), Errno> {
    let mut page = memmap2::MmapMut::map_anon(4096).map_err(|_| Errno::NOMEM)?;
    page[0] = 0xc3; // `ret`, were it ever executable
                    // SAFETY: the range is exactly the 4096-byte mapping `page` owns; nothing is executed.
    unsafe {
        rustix::mm::mprotect(
            page.as_mut_ptr().cast(),
            4096,
            rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::EXEC,
        )
    }
}

fn map_exec(fd: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
    use rustix::mm::{MapFlags, ProtFlags};
    let prot = ProtFlags::READ | ProtFlags::EXEC;
    // SAFETY: a fresh 4096-byte mapping at an address the kernel chooses, unmapped at once
    // if it is ever created; nothing is read or executed through it.
    unsafe {
        let p = match fd {
            None => {
                rustix::mm::mmap_anonymous(std::ptr::null_mut(), 4096, prot, MapFlags::PRIVATE)?
            }
            Some(fd) => {
                rustix::mm::mmap(std::ptr::null_mut(), 4096, prot, MapFlags::PRIVATE, fd, 0)?
            }
        };
        rustix::mm::munmap(p, 4096)
    }
}

/// Every way an unprivileged holder of the descriptor could try to change the region.
fn attacks(view: &RegionView) -> Vec<(&'static str, Result<(), Errno>)> {
    let Some(fd) = view.fd() else {
        return vec![("the descriptor was kept", Err(Errno::BADF))];
    };
    vec![
        ("write(2)", rustix::io::write(fd, b"x").map(drop)),
        (
            "pwrite(2) at offset 0",
            rustix::io::pwrite(fd, b"x", 0).map(drop),
        ),
        ("ftruncate(2) to 0", rustix::fs::ftruncate(fd, 0)),
        (
            "fallocate(2) PUNCH_HOLE",
            rustix::fs::fallocate(
                fd,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                4096,
            ),
        ),
        (
            "mprotect(2) a read-only map to writable",
            mprotect_writable(fd),
        ),
        ("mmap(2) PROT_WRITE, MAP_SHARED", map_writable(fd)),
        (
            "reopen /proc/self/fd/N O_RDWR + write",
            reopen_and_write(fd),
        ),
        ("mmap(2) PROT_EXEC", map_exec(Some(fd))),
    ]
}

fn mprotect_writable(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let map = memmap2::MmapOptions::new()
        .len(4096)
        .map_raw_read_only(rustix::fd::AsRawFd::as_raw_fd(&fd))
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    // SAFETY: the range is exactly the 4096-byte mapping `map` owns; if the kernel allowed
    // the change we only report it and never write through it.
    unsafe {
        rustix::mm::mprotect(
            map.as_mut_ptr().cast(),
            4096,
            rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::WRITE,
        )
    }
}

fn map_writable(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    memmap2::MmapOptions::new()
        .len(4096)
        .map_raw(rustix::fd::AsRawFd::as_raw_fd(&fd))
        .map(drop)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
}

fn reopen_and_write(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let path = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
    // Without a sandbox the open succeeds (fd modes are no boundary) and the seals stop the
    // write; inside the default sandbox the open itself is refused.
    let rw = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::io::write(&rw, b"x").map(drop)
}

fn errno_name(e: Errno) -> String {
    match e {
        Errno::PERM => "EPERM".into(),
        Errno::ACCESS => "EACCES".into(),
        Errno::BADF => "EBADF".into(),
        Errno::INVAL => "EINVAL".into(),
        e => std::io::Error::from(e).to_string(),
    }
}

/// Two u64 words from a report message.
fn words(msg: &sealpipe::Message) -> Result<[u64; 2], Box<dyn std::error::Error>> {
    let mut w = [0u64; 2];
    if msg.payload().len() != 16 {
        return Err("worker sent a malformed report".into());
    }
    bytemuck::bytes_of_mut(&mut w).copy_from_slice(msg.payload());
    Ok(w)
}

fn checksum(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |acc, &w| acc.rotate_left(5) ^ w)
}
