//! What the sandbox costs: spawn-to-first-message latency of a worker with and without it,
//! and ring throughput into a sandboxed worker against an unsandboxed one.
//!
//! Spawn variants: `plain` (`spawn`), `enter` (`spawn`, the worker calls `Sandbox::enter`
//! before its first message), `spawn_sandboxed` (the spawn-time layer only) and
//! `spawn_sandboxed+enter` (both: what `examples/sandbox_worker` does). The latency runs
//! from the parent calling spawn to the parent holding the worker's first message.
//!
//! Ring: 10^6 records of 64 B from the parent into a worker consumer (default spin policy),
//! timed from the first send to the worker's exit after the last record.
//!
//! `cargo bench --bench sandbox` runs criterion and then an interleaved pass (7 rounds, each
//! variant next to its reference) whose median ratios are printed and written to
//! `target/sandbox-bench.md`. `cargo test --benches` runs every scenario once.
#![allow(missing_docs)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use sealpipe::ring::{Consumer, Producer, RingOptions};
use sealpipe::sandbox::Sandbox;
use sealpipe::{Channel, Policy};

const ROLE: &str = "SEALPIPE_BENCH_ROLE";
const ENTER: &str = "SEALPIPE_BENCH_ENTER";
const RECORDS: &str = "SEALPIPE_BENCH_RECORDS";
const T: Duration = Duration::from_secs(30);
const RECORD: [u8; 64] = [0x5a; 64];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Plain,
    Enter,
    AtSpawn,
    Both,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Plain,
        Variant::Enter,
        Variant::AtSpawn,
        Variant::Both,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Enter => "enter",
            Variant::AtSpawn => "spawn_sandboxed",
            Variant::Both => "spawn_sandboxed+enter",
        }
    }

    fn start(self, role: &str, records: u64) -> (std::process::Child, Channel) {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE, role)
            .env(RECORDS, records.to_string())
            .env(
                ENTER,
                matches!(self, Variant::Enter | Variant::Both).to_string(),
            )
            .stdin(Stdio::null());
        match self {
            Variant::Plain | Variant::Enter => sealpipe::spawn::spawn(&mut cmd).unwrap(),
            Variant::AtSpawn | Variant::Both => {
                let (child, ch, _) =
                    sealpipe::spawn::spawn_sandboxed(&mut cmd, &Sandbox::worker()).unwrap();
                (child, ch)
            }
        }
    }
}

fn worker(role: &str) -> i32 {
    let ch = sealpipe::spawn::worker_channel().expect("worker_channel");
    if std::env::var(ENTER).as_deref() == Ok("true") {
        Sandbox::worker().enter().expect("enter");
    }
    match role {
        "first" => {
            ch.send(b"ready", &[]).expect("send");
            // Wait for the parent to close (so the measured spawn ends at the message).
            let _ = ch.recv_timeout(&Policy::immutable(), T);
            0
        }
        "ring" => {
            let mut rx = Consumer::setup(ch, &RingOptions::new(1 << 16)).expect("connect");
            let n: u64 = std::env::var(RECORDS).unwrap().parse().unwrap();
            let mut buf = Vec::new();
            for _ in 0..n {
                rx.recv_timeout(&mut buf, T).expect("recv");
            }
            0
        }
        _ => 99,
    }
}

/// Spawn to first message, in the parent.
fn first_message(variant: Variant) -> Duration {
    let start = Instant::now();
    let (mut child, ch) = variant.start("first", 0);
    ch.recv_timeout(&Policy::immutable(), T).unwrap();
    let elapsed = start.elapsed();
    drop(ch);
    assert!(child.wait().unwrap().success());
    elapsed
}

/// Time to stream `n` records into a worker and see it exit.
fn ring(variant: Variant, n: u64) -> Duration {
    let (mut child, ch) = variant.start("ring", n);
    let mut tx = Producer::setup(ch, &RingOptions::new(1 << 16)).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        tx.send_timeout(&RECORD, T).unwrap();
    }
    assert!(child.wait().unwrap().success());
    start.elapsed()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        std::process::exit(worker(&role));
    }
    // `cargo bench` passes --bench; `cargo test --benches` runs every scenario once.
    let measuring = std::env::args().any(|a| a == "--bench");
    let n: u64 = if measuring { 1_000_000 } else { 10_000 };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("spawn_to_first_message");
        g.sample_size(20);
        for v in Variant::ALL {
            g.bench_function(v.name(), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| first_message(v)).sum())
            });
        }
    }
    {
        let mut g = c.benchmark_group("ring_64B_records_into_worker");
        g.sample_size(10);
        g.throughput(criterion::Throughput::Elements(n));
        for v in [Variant::Plain, Variant::Both] {
            g.bench_function(v.name(), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| ring(v, n)).sum())
            });
        }
    }
    c.final_summary();
    if !measuring {
        return;
    }

    // Interleaved pass: each variant right next to its reference, 7 rounds.
    const ROUNDS: usize = 7;
    let mut spawn_us = vec![Vec::new(); Variant::ALL.len()];
    let mut spawn_ratio = vec![Vec::new(); Variant::ALL.len()];
    let mut ring_mps = [Vec::new(), Vec::new()];
    let mut ring_ratio = Vec::new();
    for _ in 0..ROUNDS {
        let mut times = [0f64; 4];
        for (i, v) in Variant::ALL.into_iter().enumerate() {
            // Median of 5 spawns per round.
            let mut t: Vec<f64> = (0..5)
                .map(|_| first_message(v).as_secs_f64() * 1e6)
                .collect();
            times[i] = median(&mut t);
            spawn_us[i].push(times[i]);
        }
        for i in 0..Variant::ALL.len() {
            spawn_ratio[i].push(times[i] / times[0]);
        }
        let n = 1_000_000u64;
        let plain = n as f64 / ring(Variant::Plain, n).as_secs_f64() / 1e6;
        let inside = n as f64 / ring(Variant::Both, n).as_secs_f64() / 1e6;
        ring_mps[0].push(plain);
        ring_mps[1].push(inside);
        ring_ratio.push(inside / plain);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut table = String::new();
    table.push_str(&format!(
        "Interleaved pass: {ROUNDS} rounds; load average at the end: {}\n\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    table.push_str(
        "| spawn to first message | median µs | median ratio to plain |\n|---|---|---|\n",
    );
    for (i, v) in Variant::ALL.into_iter().enumerate() {
        table.push_str(&format!(
            "| {} | {:.0} | {:.2} |\n",
            v.name(),
            median(&mut spawn_us[i]),
            median(&mut spawn_ratio[i])
        ));
    }
    table.push_str(&format!(
        "\n| ring, 10^6 × 64 B into the worker | median M records/s |\n|---|---|\n| plain worker | {:.2} |\n| sandboxed worker (spawn_sandboxed+enter) | {:.2} |\n| median ratio sandboxed / plain | {:.2} |\n",
        median(&mut ring_mps[0]),
        median(&mut ring_mps[1]),
        median(&mut ring_ratio)
    ));
    println!("\n{table}");
    if let Ok(mut f) = std::fs::File::create("target/sandbox-bench.md") {
        let _ = f.write_all(table.as_bytes());
    }
}
