//! Two processes stream a few GB through a sealpipe ring.
//!
//! The parent creates the ring and writes records in place (a sequence number, a length and
//! a checksum in front of a payload); a child process it spawns (this same program, given
//! the `consumer` argument) copies every record out, checks its sequence number and
//! checksum, and prints a progress line. The program exits 0 only if every record arrived,
//! in order, with a matching checksum.
//!
//! ```text
//! cargo run --release --example ring_pipeline            # 4 GB
//! cargo run --release --example ring_pipeline -- 16      # 16 GB
//! ```

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use sealpipe::ring::{Consumer, Producer, RingOptions};

const T: Duration = Duration::from_secs(30);
const HEADER: usize = 24; // seq, payload length, checksum (u64 each, little-endian)

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Checksum of a payload (whole 8-byte words; payload lengths are multiples of 8).
fn checksum(payload: &[u8]) -> u64 {
    payload.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325, |h, w| {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        (h ^ w).wrapping_mul(0x100_0000_01b3).rotate_left(29)
    })
}

/// Payload length of record `seq`: 8 B to 256 KiB, multiples of 8.
fn payload_len(seq: u64) -> usize {
    8 * (1 + (splitmix(seq) % (32 * 1024)) as usize)
}

fn produce(gigabytes: u64) -> sealpipe::Result<ExitCode> {
    let exe = std::env::current_exe().map_err(|source| sealpipe::Error::Io {
        op: "current_exe",
        source,
    })?;
    let mut cmd = Command::new(exe);
    cmd.arg("consumer");
    let (mut child, channel) = sealpipe::spawn::spawn(&mut cmd)?;
    let mut tx = Producer::setup(channel, &RingOptions::new(8 << 20))?;
    let total = gigabytes << 30;
    let mut sent = 0u64;
    let mut seq = 0u64;
    while sent < total {
        let len = payload_len(seq);
        let mut r = tx.reserve_timeout(HEADER + len, T)?;
        let rec = r.as_mut_slice();
        let (head, payload) = rec.split_at_mut(HEADER);
        let base = splitmix(seq);
        for (i, w) in payload.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(base ^ i as u64).to_le_bytes());
        }
        head[..8].copy_from_slice(&seq.to_le_bytes());
        head[8..16].copy_from_slice(&(len as u64).to_le_bytes());
        head[16..].copy_from_slice(&checksum(payload).to_le_bytes());
        r.commit();
        sent += (HEADER + len) as u64;
        seq += 1;
    }
    drop(tx); // end of stream: the consumer sees PeerClosed after the last record
    let status = child
        .wait()
        .map_err(|source| sealpipe::Error::Io { op: "wait", source })?;
    println!("producer: sent {seq} records, {:.2} GB", sent as f64 / 1e9);
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn consume() -> sealpipe::Result<ExitCode> {
    let channel = sealpipe::spawn::worker_channel()?;
    let mut rx = Consumer::setup(channel, &RingOptions::default())?;
    let mut buf = Vec::new();
    let (mut records, mut bytes, mut bad) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut last = (start, 0u64, 0u64);
    loop {
        match rx.recv_timeout(&mut buf, T) {
            Ok(()) => {}
            Err(sealpipe::Error::PeerClosed) => break,
            Err(e) => return Err(e),
        }
        let ok = buf.len() >= HEADER && {
            let word =
                |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            let payload = &buf[HEADER..];
            word(0) == records && word(1) == payload.len() as u64 && word(2) == checksum(payload)
        };
        if !ok {
            bad += 1;
        }
        records += 1;
        bytes += buf.len() as u64;
        let now = Instant::now();
        if now.duration_since(last.0) >= Duration::from_secs(1) {
            let dt = now.duration_since(last.0).as_secs_f64();
            print!(
                "\rconsumer: {:>10} records  {:>8.0} k msg/s  {:>6.2} GB/s  {:>6.2} GB so far",
                records,
                (records - last.1) as f64 / dt / 1e3,
                (bytes - last.2) as f64 / dt / 1e9,
                bytes as f64 / 1e9
            );
            let _ = std::io::stdout().flush();
            last = (now, records, bytes);
        }
    }
    let dt = start.elapsed().as_secs_f64();
    println!(
        "\nconsumer: {records} records, {:.2} GB in {dt:.2} s: {:.0} k msg/s, {:.2} GB/s; {bad} bad records",
        bytes as f64 / 1e9,
        records as f64 / dt / 1e3,
        bytes as f64 / dt / 1e9
    );
    Ok(if bad == 0 && records > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    let result = match arg.as_deref() {
        Some("consumer") => consume(),
        Some(gb) => match gb.parse() {
            Ok(gb) => produce(gb),
            Err(_) => {
                eprintln!("usage: ring_pipeline [GIGABYTES]");
                return ExitCode::from(2);
            }
        },
        None => produce(4),
    };
    result.unwrap_or_else(|e| {
        eprintln!("ring_pipeline: {e}");
        ExitCode::FAILURE
    })
}
