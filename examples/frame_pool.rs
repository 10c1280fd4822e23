//! A producer streams video-sized frames through a region pool to worker processes.
//!
//! The parent spawns `WORKERS` copies of this binary in a worker role and attaches each
//! channel to one [`Pool`]. Every frame (1920 × 1080 RGBA, 8.3 MB) is written once into a
//! leased buffer and sent to **every** worker (fan-out); a buffer returns to the pool when
//! all of them have released it. Each worker receives the pool's memfds once (verified and
//! mapped once), copies every frame out, checks its header and checksum, and drops it
//! (a batched release). The parent prints a progress line; back-pressure from a slow
//! worker shows as the pool running out of free buffers, never as unbounded memory.
//!
//! Run with `cargo run --release --example frame_pool [frames]`.

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use sealpipe::pool::{Pool, PoolOptions, PoolReceiver, PoolSender};
use sealpipe::{Error, Policy};

const WIDTH: usize = 1920;
const HEIGHT: usize = 1080;
const FRAME: usize = WIDTH * HEIGHT * 4;
const WORKERS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let result = if std::env::args().nth(1).as_deref() == Some("--worker") {
        worker()
    } else {
        producer()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Frame `n`: a 16-byte header (frame number, checksum of the rest), then pixels.
fn paint(frame: &mut [u64], n: u64) {
    let mut sum = 0u64;
    for (i, px) in frame[2..].iter_mut().enumerate() {
        *px = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64;
        sum = sum.wrapping_add(*px);
    }
    frame[0] = n;
    frame[1] = sum;
}

fn producer() -> Result<(), Box<dyn std::error::Error>> {
    let frames: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(300), |s| s.parse())
        .map_err(|_| "usage: frame_pool [frames]")?;
    // Four frames in flight at most: 4 × 8 MiB (the size class of an 8.3 MB frame).
    let pool = Pool::new(
        PoolOptions::new()
            .max_bytes(4 * (8 << 20))
            .slab_len(8 << 20),
    )?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut workers: Vec<PoolSender> = Vec::new();
    for _ in 0..WORKERS {
        let (child, channel) = sealpipe::spawn::spawn(Command::new(&exe).arg("--worker"))?;
        children.push(child);
        workers.push(pool.attach(channel)?);
    }
    let to: Vec<&PoolSender> = workers.iter().collect();
    let start = Instant::now();
    let mut stdout = std::io::stdout();
    for n in 0..frames {
        let mut lease = pool.lease_timeout(FRAME, TIMEOUT)?;
        paint(lease.as_mut_slice_of::<u64>()?, n);
        lease.send_timeout(&to, TIMEOUT)?;
        if n % 10 == 9 || n + 1 == frames {
            let secs = start.elapsed().as_secs_f64();
            let stats = pool.stats();
            write!(
                stdout,
                "\rframe {:>5}/{frames}  {:6.1} frames/s  {:6.2} GB/s to {WORKERS} workers  \
                 {} in flight, {} memfds",
                n + 1,
                (n + 1) as f64 / secs,
                ((n + 1) as usize * FRAME * WORKERS) as f64 / secs / 1e9,
                stats.held,
                stats.memfds,
            )?;
            stdout.flush()?;
        }
    }
    writeln!(stdout)?;
    // Wait for the last releases, and learn of any worker that misbehaved.
    let end = Instant::now() + TIMEOUT;
    while pool.stats().held > 0 && Instant::now() < end {
        for w in &workers {
            w.poll_releases()?;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(to);
    drop(workers); // closes the channels: workers see the end of the stream
    for mut child in children {
        if !child.wait()?.success() {
            return Err("a worker failed".into());
        }
    }
    println!("all {frames} frames delivered to {WORKERS} workers and checked");
    Ok(())
}

fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let channel = sealpipe::spawn::worker_channel()?;
    let mut rx = PoolReceiver::new(channel, &Policy::producer_writable())?;
    let mut copy = vec![0u64; FRAME / 8];
    let mut expected = 0u64;
    loop {
        let frame = match rx.recv_timeout(TIMEOUT) {
            Ok(frame) => frame,
            Err(Error::PeerClosed) => break,
            Err(e) => return Err(e.into()),
        };
        // The producer could still write this memory: copy it out, then validate the copy.
        frame.read_at(0, bytemuck::cast_slice_mut(&mut copy))?;
        drop(frame); // release (batched, never blocks)
        let sum = copy[2..].iter().fold(0u64, |a, &p| a.wrapping_add(p));
        if copy[0] != expected || copy[1] != sum {
            return Err(format!("frame {expected}: bad header or checksum").into());
        }
        expected += 1;
    }
    if rx.memfds() > 4 {
        return Err(format!("{} memfds for a pool of 4 buffers", rx.memfds()).into());
    }
    Ok(())
}
