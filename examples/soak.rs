//! Soak test: mixed traffic for a configurable time, asserting that descriptors, mappings
//! and memory stay flat.
//!
//! Every epoch the parent spawns a fresh worker (a reconnect), sends it immutable and
//! producer-writable regions and checks the worker's checksums, streams ring records to it
//! over the same channel, and has it connect back through a named, secret-protected
//! listener to send one region. After each epoch the parent's descriptor count, mapping
//! count and RSS are compared with the first epoch's: any growth is a leak and fails the
//! run (exit status 1).
//!
//! ```sh
//! cargo run --release --example soak                 # 180 s
//! cargo run --release --example soak -- --secs 3600  # longer on demand
//! ```

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use sealpipe::ring::{Consumer, Producer, RingOptions};
use sealpipe::{Channel, HandshakeConfig, Listener, Policy, Region, Secret};

const T: Duration = Duration::from_secs(20);
const SECRET: &[u8] = b"soak test secret, 32 bytes long!";
const REGIONS: u64 = 50;
const RECORDS: u64 = 200_000;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let result = match args.next().as_deref() {
        Some("--worker") => worker(args.next().unwrap_or_default()),
        Some("--secs") => parent(args.next().and_then(|s| s.parse().ok()).unwrap_or(180)),
        _ => parent(180),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config() -> sealpipe::Result<HandshakeConfig> {
    Ok(HandshakeConfig::new().secret(Secret::new(SECRET)?))
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |a, &b| a.rotate_left(3) ^ u64::from(b))
}

/// (descriptors, mappings, RSS in KiB) of this process.
fn usage() -> (usize, usize, u64) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    (fds, maps, rss)
}

fn parent(secs: u64) -> Result<bool, Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("sealpipe-soak-{}.sock", std::process::id()));
    let mut listener = Listener::bind(&path, config()?)?;
    let exe = std::env::current_exe()?;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut baseline = None;
    let mut epoch = 0u64;
    println!("soak: {secs} s of regions, ring records and reconnects; a line every 5 s");
    let mut last_line = Instant::now() - Duration::from_secs(5);
    while epoch == 0 || Instant::now() < end {
        let started = Instant::now();
        let mut cmd = Command::new(&exe);
        cmd.arg("--worker").arg(&path);
        let (mut child, channel) = sealpipe::spawn::spawn(&mut cmd)?;

        // Regions, both seal modes; the worker answers with checksums.
        let mut shared = Region::new(1 << 16)?.seal_producer_writable()?;
        for i in 0..REGIONS {
            let data: Vec<u8> = (0..(4096 * (1 + i % 16)))
                .map(|j| (j ^ i ^ epoch) as u8)
                .collect();
            let mut r = Region::new(data.len())?;
            r.write_at(0, &data)?;
            let r = r.seal()?;
            let n = data.len().min(1 << 16);
            shared.as_mut_slice()[..n].copy_from_slice(&data[..n]);
            channel.send_timeout(&i.to_le_bytes(), &[&r, shared.region()], T)?;
            let reply = channel.recv_timeout(&Policy::immutable(), T)?;
            let expect = [checksum(&data), checksum(&data[..n])];
            if reply.payload() != bytemuck::bytes_of(&expect) {
                return Err(format!("epoch {epoch}: checksum mismatch on region {i}").into());
            }
        }

        // Ring records over the same channel, then the worker connects back by name.
        let mut tx = Producer::setup(channel, &RingOptions::new(1 << 20))?;
        for seq in 0..RECORDS {
            let len = 8 + (seq % 120) as usize;
            let mut r = tx.reserve_timeout(len, T)?;
            let rec = r.as_mut_slice();
            rec[..8].copy_from_slice(&seq.to_le_bytes());
            rec[8..].fill(seq as u8);
            r.commit();
        }
        drop(tx);
        let named = listener.accept_timeout(T)?;
        let msg = named.recv_timeout(&Policy::immutable(), T)?;
        if msg.regions().len() != 1 || msg.payload() != b"named" {
            return Err("named connection sent a bad message".into());
        }
        drop((msg, named, shared));
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("epoch {epoch}: worker failed: {status}").into());
        }

        let now = usage();
        let base = *baseline.get_or_insert(now);
        if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            println!(
                "epoch {epoch:>5}: {:>4.0} ms/epoch  fds {} maps {} rss {} KiB",
                started.elapsed().as_secs_f64() * 1e3,
                now.0,
                now.1,
                now.2
            );
        }
        // Descriptors must come back exactly; mappings and memory may wobble a little
        // (allocator arenas, thread stacks) but must not grow with the epoch count.
        if now.0 != base.0 || now.1 > base.1 + 8 || now.2 > base.2 + 16 * 1024 {
            println!(
                "LEAK: baseline fds {} maps {} rss {} KiB",
                base.0, base.1, base.2
            );
            return Ok(false);
        }
        epoch += 1;
    }
    println!("OK: {epoch} epochs, descriptors, mappings and memory flat");
    Ok(true)
}

fn worker(path: String) -> Result<bool, Box<dyn std::error::Error>> {
    let channel: Channel = sealpipe::spawn::worker_channel()?;
    let policy = Policy::producer_writable();
    let mut copy = vec![0u8; 1 << 16];
    for _ in 0..REGIONS {
        let msg = channel.recv_timeout(&policy, T)?;
        let [imm, shared] = msg.regions() else {
            return Err("expected two regions".into());
        };
        let bytes = imm.as_bytes()?;
        let n = bytes.len().min(1 << 16);
        shared.read_at(0, &mut copy[..n])?;
        let sums = [checksum(bytes), checksum(&copy[..n])];
        channel.send_timeout(bytemuck::bytes_of(&sums), &[], T)?;
    }
    let mut rx = Consumer::setup(channel, &RingOptions::default())?;
    let mut buf = Vec::new();
    for seq in 0..RECORDS {
        rx.recv_timeout(&mut buf, T)?;
        let ok = buf.len() == 8 + (seq % 120) as usize
            && buf[..8] == seq.to_le_bytes()
            && buf[8..].iter().all(|&b| b == seq as u8);
        if !ok {
            return Err(format!("ring record {seq} is wrong").into());
        }
    }
    let named = Channel::connect(&path, &config()?)?;
    named.send_timeout(b"named", &[&Region::new(4096)?.seal()?], T)?;
    Ok(true)
}
