//! A parent hands a sandboxed worker process two sealed regions and the worker proves it
//! can read them but not change them.
//!
//! The parent spawns this same binary in a worker role with one end of a channel on an
//! inherited descriptor, then sends:
//! - a 64 MiB **immutable** region (`WRITE | SHRINK | GROW | SEAL`), and
//! - a 1 MiB **producer-writable** region (`FUTURE_WRITE | SHRINK | GROW | SEAL`) whose first
//!   8 bytes the parent keeps updating.
//!
//! The worker verifies and checksums both, watches the producer's updates, then attacks
//! each region every way it can (write, pwrite, ftruncate, punch a hole, mprotect to
//! writable, a writable shared mapping, reopen /proc/self/fd/N read-write) and reports.
//! Exit status 0 means every attack was refused and every checksum matched.
//!
//! Run with `cargo run --release --example sandbox_worker`.
#![allow(unsafe_code)] // one mprotect attack on the worker's own mapping

use std::os::fd::BorrowedFd;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use sealpipe::{Channel, Policy, Region, RegionView};

const BIG: usize = 64 << 20;
const SMALL: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

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
    let (mut child, channel) = sealpipe::spawn::spawn(Command::new(exe).arg("--worker"))?;
    println!("parent: spawned worker pid {}", child.id());
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
    let mut shared = Region::new(SMALL)?.share_read_only()?;
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
    let status = child.wait()?;

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
    println!("parent: {refused}/{attempted} attacks refused by the kernel; worker {status}");
    let ok = big_ok && small_ok && all_refused && status.success();
    println!("{}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}

fn worker() -> Result<bool, Box<dyn std::error::Error>> {
    let channel: Channel = sealpipe::spawn::worker_channel()?;
    // Accept the producer-writable region too; the immutable one is checked by its seals.
    // Keep the descriptors: the attacks below try them.
    let policy = Policy::read_only_view()
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
    channel.send_timeout(bytemuck::bytes_of(&[refused, attempted]), &[], TIMEOUT)?;
    Ok(refused == attempted)
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
    // The open itself succeeds (fd modes are no boundary); the seals stop the write.
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
