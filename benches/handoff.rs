//! Handoff benchmark: one buffer handed from this process to another process, which reads
//! every byte, compared side by side with copying the same bytes through a unix
//! `SOCK_STREAM` socket.
//!
//! Cases, per size (4 KiB, 64 KiB, 1 MiB, 64 MiB):
//! - `sealpipe-immutable`: the producer creates a [`Region`], fills it from a prepared
//!   buffer, seals it immutable, sends it; the consumer receives, verifies, maps, sums
//!   every `u64` word through `as_slice_of::<u64>()` and acknowledges with the sum.
//! - `sealpipe-read-only`: the same with [`Region::seal_producer_writable`] (`FUTURE_WRITE`); the
//!   consumer must treat the bytes as changing, so it reads them by copy
//!   ([`sealpipe::RegionView::read_at`], 64 KiB at a time into a reused buffer) and sums
//!   the copy.
//! - `unix-stream`: the producer writes the bytes into a connected unix stream socket; the
//!   consumer reads them (64 KiB at a time into a reused buffer), sums them and answers
//!   with the sum.
//!
//! And fan-out: one 64 MiB immutable region to 4 consumer processes, against writing the
//! 64 MiB into 4 stream sockets. Every iteration checks the consumers' sums.
//!
//! Consumers are real processes: this binary spawned again in a worker role
//! ([`WORKER_ENV`]). For the one-consumer cases the producer is pinned to CPU 0 and the
//! consumer to CPU 1 (if the machine has two CPUs and allows it); fan-out runs unpinned.
//!
//! After criterion, an interleaved pass (every round runs a short batch of handoffs per
//! case, one case after the other, so load on a shared machine hits every case alike)
//! prints the median throughputs, the sealpipe / socket ratios and the CPU time per
//! handoff (producer + consumers, which load does not skew the way it skews wall time),
//! and writes them to `target/handoff-ratios.md`. Run only that pass with a filter that
//! matches no criterion case: `cargo bench --bench handoff -- ratios-only`.
//! `cargo test --benches` runs every case once and skips that pass.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use sealpipe::{Channel, Policy, Region};

/// Set (to the socket path) in a worker process.
const WORKER_ENV: &str = "SEALPIPE_BENCH_WORKER";
/// Set to the CPU a worker pins itself to, if any.
const CPU_ENV: &str = "SEALPIPE_BENCH_CPU";
/// Bytes a consumer copies per `read_at` / `read` call.
const CHUNK: usize = 64 << 10;
/// Timeout of every blocking call: a bug fails the bench instead of hanging it.
const T: Duration = Duration::from_secs(60);

const SIZES: [(usize, &str); 4] = [
    (4 << 10, "4KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
    (64 << 20, "64MiB"),
];
const FANOUT: usize = 4;
const FANOUT_LEN: usize = 64 << 20;

/// What a worker does next, sent as the payload of a sealpipe message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Op {
    Immutable = 1,
    ReadOnly = 2,
    Stream = 3,
    /// Answer at once: every earlier handoff, cleanup included, is done.
    Sync = 4,
}

fn main() {
    if let Ok(path) = std::env::var(WORKER_ENV) {
        worker(&path);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    let bench = Bench::new();
    bench.single(&mut criterion);
    bench.fanout(&mut criterion);
    criterion.final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` runs every case once without
    // it, and then there is nothing to compare.
    if std::env::args().any(|a| a == "--bench") {
        bench.ratios();
    }
}

// ---------------------------------------------------------------------------------------
// Consumer side

fn worker(path: &str) {
    if let Some(cpu) = std::env::var(CPU_ENV).ok().and_then(|c| c.parse().ok()) {
        pin(cpu);
    }
    let ch = sealpipe::spawn::worker_channel().expect("worker channel");
    let mut stream = UnixStream::connect(path).expect("connect to the bench socket");
    stream.set_read_timeout(Some(T)).unwrap();
    stream.set_write_timeout(Some(T)).unwrap();
    let immutable = Policy::immutable();
    let read_only = Policy::producer_writable();
    let mut buf = vec![0u64; CHUNK / 8];
    loop {
        // A command: op, length, number of rounds.
        let cmd = match ch.recv_timeout(&immutable, T) {
            Ok(msg) => msg,
            Err(sealpipe::Error::PeerClosed) => return,
            Err(e) => panic!("worker: {e}"),
        };
        let p = cmd.payload();
        let op = p[0];
        let len = u64::from_le_bytes(p[1..9].try_into().unwrap()) as usize;
        let rounds = u64::from_le_bytes(p[9..17].try_into().unwrap());
        for _ in 0..rounds {
            if op == Op::Stream as u8 {
                let mut sum = 0u64;
                let mut left = len;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..n];
                    stream.read_exact(bytes).expect("stream read");
                    sum = sum.wrapping_add(sum_words(&buf[..n / 8]));
                    left -= n;
                }
                stream.write_all(&sum.to_le_bytes()).expect("stream ack");
            } else if op == Op::Immutable as u8 {
                let msg = ch.recv_timeout(&immutable, T).expect("receive region");
                let view = &msg.regions()[0];
                let sum = sum_words(view.as_slice_of::<u64>().expect("immutable view"));
                ch.send_timeout(&sum.to_le_bytes(), &[], T).expect("ack");
            } else {
                let msg = ch.recv_timeout(&read_only, T).expect("receive region");
                let view = &msg.regions()[0];
                let mut sum = 0u64;
                let mut off = 0;
                while off < view.len() {
                    let n = (view.len() - off).min(CHUNK);
                    let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..n];
                    view.read_at(off, bytes).expect("read_at");
                    sum = sum.wrapping_add(sum_words(&buf[..n / 8]));
                    off += n;
                }
                ch.send_timeout(&sum.to_le_bytes(), &[], T).expect("ack");
            }
        }
        if op == Op::Sync as u8 {
            let cpu = cpu_time().as_nanos() as u64;
            ch.send_timeout(&cpu.to_le_bytes(), &[], T).expect("sync");
        }
    }
}

/// CPU time used by this process so far (all threads, user and system).
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn sum_words(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |a, &w| a.wrapping_add(w))
}

// ---------------------------------------------------------------------------------------
// Producer side

struct Worker {
    child: Child,
    ch: Channel,
    stream: UnixStream,
}

impl Worker {
    fn command(&self, op: Op, len: usize, rounds: u64) {
        let mut p = [0u8; 17];
        p[0] = op as u8;
        p[1..9].copy_from_slice(&(len as u64).to_le_bytes());
        p[9..17].copy_from_slice(&rounds.to_le_bytes());
        self.ch.send_timeout(&p, &[], T).expect("command");
    }

    fn region_ack(&self) -> u64 {
        let msg = self.ch.recv_timeout(&Policy::immutable(), T).expect("ack");
        u64::from_le_bytes(msg.payload().try_into().expect("8-byte ack"))
    }

    /// Waits until the worker has finished (and cleaned up after) every handoff so far;
    /// returns the CPU time the worker process has used.
    fn sync(&self) -> Duration {
        self.command(Op::Sync, 0, 0);
        Duration::from_nanos(self.region_ack())
    }

    fn stream_ack(&mut self) -> u64 {
        let mut ack = [0u8; 8];
        self.stream.read_exact(&mut ack).expect("stream ack");
        u64::from_le_bytes(ack)
    }
}

struct Bench {
    listener: UnixListener,
    path: std::path::PathBuf,
    /// Fills every region and every socket write (a prefix of it, per size).
    payload: Vec<u8>,
    pinned: bool,
    /// The CPUs this process may run on at start, restored after the pinned cases (and
    /// inherited by the fan-out workers).
    affinity: Option<rustix::thread::CpuSet>,
}

impl Bench {
    fn new() -> Bench {
        let path = std::env::temp_dir().join(format!("sealpipe-bench-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind bench socket");
        let len = SIZES[SIZES.len() - 1].0.max(FANOUT_LEN);
        let payload: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 12)) as u8)
            .collect();
        let pinned = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
        Bench {
            listener,
            path,
            payload,
            pinned,
            affinity: rustix::thread::sched_getaffinity(None).ok(),
        }
    }

    /// Undoes [`pin`]: back to the CPUs this process started with.
    fn unpin(&self) {
        if let Some(set) = &self.affinity {
            let _ = rustix::thread::sched_setaffinity(None, set);
        }
    }

    fn spawn_worker(&self, cpu: Option<usize>) -> Worker {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.env(WORKER_ENV, &self.path);
        if let Some(cpu) = cpu {
            cmd.env(CPU_ENV, cpu.to_string());
        }
        let (child, ch) = sealpipe::spawn::spawn(&mut cmd).expect("spawn worker");
        let (stream, _) = self.listener.accept().expect("accept worker");
        stream.set_read_timeout(Some(T)).unwrap();
        stream.set_write_timeout(Some(T)).unwrap();
        Worker { child, ch, stream }
    }

    /// What a consumer's sum of the first `len` payload bytes must be.
    fn expected(&self, len: usize) -> u64 {
        self.payload[..len]
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap()))
            .fold(0u64, u64::wrapping_add)
    }

    fn single(&self, c: &mut Criterion) {
        let pinned = self.pinned && pin(0);
        let mut w = self.spawn_worker(pinned.then_some(1));
        println!(
            "handoff: producer and consumer {}",
            if pinned {
                "pinned to CPUs 0 and 1"
            } else {
                "not pinned"
            }
        );
        for &(len, name) in &SIZES {
            let data = &self.payload[..len];
            let expected = self.expected(len);
            // Correctness first, outside the timing.
            for op in [Op::Immutable, Op::ReadOnly, Op::Stream] {
                assert_eq!(round(&mut w, op, data, 1), expected, "{op:?} at {name}");
            }
            let mut g = c.benchmark_group(format!("handoff/{name}"));
            g.throughput(Throughput::Bytes(len as u64));
            if len >= 64 << 20 {
                g.sampling_mode(SamplingMode::Flat)
                    .sample_size(15)
                    .warm_up_time(Duration::from_secs(1))
                    .measurement_time(Duration::from_secs(5));
            } else {
                g.sample_size(40)
                    .warm_up_time(Duration::from_millis(500))
                    .measurement_time(Duration::from_secs(2));
            }
            for (op, case) in [
                (Op::Immutable, "sealpipe-immutable"),
                (Op::ReadOnly, "sealpipe-read-only"),
                (Op::Stream, "unix-stream"),
            ] {
                let id = format!("handoff/{name}/{case}");
                g.bench_function(BenchmarkId::from_parameter(case), |b| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        let sum = round(&mut w, op, data, iters);
                        let t = start.elapsed();
                        assert_eq!(sum, expected.wrapping_mul(iters), "{id}");
                        t
                    })
                });
            }
            g.finish();
        }
        drop(w.ch);
        let _ = w.child.wait();
        self.unpin();
    }

    fn fanout(&self, c: &mut Criterion) {
        let mut ws: Vec<Worker> = (0..FANOUT).map(|_| self.spawn_worker(None)).collect();
        let data = &self.payload[..FANOUT_LEN];
        let expected = self.expected(FANOUT_LEN);
        assert_eq!(fanout_round(&mut ws, Op::Immutable, data, 1), expected);
        assert_eq!(fanout_round(&mut ws, Op::Stream, data, 1), expected);
        let mut g = c.benchmark_group("fanout-4x64MiB");
        g.throughput(Throughput::Bytes((FANOUT * FANOUT_LEN) as u64))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(6));
        for (op, case) in [
            (Op::Immutable, "sealpipe-immutable"),
            (Op::Stream, "unix-stream"),
        ] {
            let id = format!("fanout-4x64MiB/{case}");
            g.bench_function(BenchmarkId::from_parameter(case), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    let sum = fanout_round(&mut ws, op, data, iters);
                    let t = start.elapsed();
                    assert_eq!(sum, expected.wrapping_mul(iters), "{id}");
                    t
                })
            });
        }
        g.finish();
        for w in ws {
            drop(w.ch);
            let mut child = w.child;
            let _ = child.wait();
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `iters` handoffs of `data` to one worker; returns the sum of the worker's sums.
fn round(w: &mut Worker, op: Op, data: &[u8], iters: u64) -> u64 {
    w.command(op, data.len(), iters);
    let mut total = 0u64;
    for _ in 0..iters {
        let sum = match op {
            Op::Immutable => {
                let region = fill(data).seal().expect("seal");
                w.ch.send_timeout(&[], &[&region], T).expect("send");
                drop(region); // sent and forgotten: the consumer holds the last reference
                w.region_ack()
            }
            Op::ReadOnly => {
                let shared = fill(data).seal_producer_writable().expect("seal_producer_writable");
                w.ch.send_timeout(&[], &[shared.region()], T).expect("send");
                drop(shared);
                w.region_ack()
            }
            Op::Stream => {
                w.stream.write_all(data).expect("stream write");
                w.stream_ack()
            }
            Op::Sync => unreachable!("not a handoff"),
        };
        total = total.wrapping_add(sum);
    }
    total
}

/// `iters` fan-outs of `data` to every worker; returns the sum of every worker's sums
/// divided among workers (each worker must report the same sum).
fn fanout_round(ws: &mut [Worker], op: Op, data: &[u8], iters: u64) -> u64 {
    for w in ws.iter() {
        w.command(op, data.len(), iters);
    }
    let mut total = 0u64;
    for _ in 0..iters {
        let mut sums = Vec::with_capacity(ws.len());
        match op {
            Op::Immutable => {
                let region = fill(data).seal().expect("seal");
                for w in ws.iter() {
                    w.ch.send_timeout(&[], &[&region], T).expect("send");
                }
                drop(region);
                sums.extend(ws.iter().map(Worker::region_ack));
            }
            Op::Stream => {
                for w in ws.iter_mut() {
                    w.stream.write_all(data).expect("stream write");
                }
                sums.extend(ws.iter_mut().map(Worker::stream_ack));
            }
            Op::ReadOnly | Op::Sync => unreachable!("fan-out is measured for immutable regions"),
        }
        assert!(sums.windows(2).all(|s| s[0] == s[1]), "fan-out sums differ");
        total = total.wrapping_add(sums[0]);
    }
    total
}

fn fill(data: &[u8]) -> Region {
    let mut region = Region::new(data.len()).expect("Region::new");
    region.write_at(0, data).expect("write_at");
    region
}

/// Pins this process to `cpu`. Returns whether it worked.
fn pin(cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}

// ---------------------------------------------------------------------------------------
// Ratio report

/// Interleaved pass, per size: rounds, and handoffs per case in each round.
const ROUNDS: [(usize, u64); 4] = [(30, 20), (20, 20), (20, 8), (6, 2)];
const FANOUT_ROUNDS: (usize, u64) = (5, 2);

impl Bench {
    /// Side-by-side pass for the ratio table: every round runs a short batch of handoffs
    /// per case, one case after the other, so load that comes and goes on a shared machine
    /// hits every case alike. A batch's time runs until the worker has also cleaned up
    /// after its last handoff (unmapped, closed), so no case leaves work behind for the
    /// next. Prints medians (GB/s) and ratios, and writes them to
    /// `target/handoff-ratios.md`.
    fn ratios(&self) {
        let load_before = read_trimmed("/proc/loadavg");
        let pinned = self.pinned && pin(0);
        let mut w = self.spawn_worker(pinned.then_some(1));
        let mut cpu_table = String::from(
            "\n| CPU µs per handoff (producer + consumer) | sealpipe-immutable | sealpipe-read-only | unix-stream |\n|---|---|---|---|\n",
        );
        let mut out = String::from(
            "\n| size | sealpipe-immutable GB/s | sealpipe-read-only GB/s | unix-stream GB/s | immutable / stream | read-only / stream |\n|---|---|---|---|---|---|\n",
        );
        for (&(len, name), &(rounds, batch)) in SIZES.iter().zip(&ROUNDS) {
            let data = &self.payload[..len];
            let expected = self.expected(len);
            let ops = [Op::Immutable, Op::ReadOnly, Op::Stream];
            let mut times = [vec![], vec![], vec![]];
            let mut cpus = [vec![], vec![], vec![]];
            let mut worker_cpu = w.sync();
            for r in 0..rounds {
                for k in 0..ops.len() {
                    let k = (k + r) % ops.len(); // rotate who goes first
                    let (start, own_cpu) = (Instant::now(), cpu_time());
                    let sum = round(&mut w, ops[k], data, batch);
                    let now_worker_cpu = w.sync();
                    times[k].push(start.elapsed() / batch as u32);
                    let cpu = cpu_time() - own_cpu + (now_worker_cpu - worker_cpu);
                    cpus[k].push(cpu / batch as u32);
                    worker_cpu = now_worker_cpu;
                    assert_eq!(sum, expected.wrapping_mul(batch));
                }
            }
            let [imm, ro, st] = times.map(|t| gbps(len, t));
            out.push_str(&format!(
                "| {name} | {imm:.2} | {ro:.2} | {st:.2} | {:.2}× | {:.2}× |\n",
                imm / st,
                ro / st
            ));
            let [imm, ro, st] = cpus.map(median_us);
            cpu_table.push_str(&format!("| {name} | {imm:.0} | {ro:.0} | {st:.0} |\n"));
        }
        drop(w.ch);
        let _ = w.child.wait();
        self.unpin();

        let mut ws: Vec<Worker> = (0..FANOUT).map(|_| self.spawn_worker(None)).collect();
        let data = &self.payload[..FANOUT_LEN];
        let expected = self.expected(FANOUT_LEN);
        let mut times = [vec![], vec![]];
        let mut cpus = [vec![], vec![]];
        let (rounds, batch) = FANOUT_ROUNDS;
        let workers_cpu = |ws: &[Worker]| ws.iter().map(Worker::sync).sum::<Duration>();
        let mut worker_cpu = workers_cpu(&ws);
        for r in 0..rounds {
            for k in 0..2 {
                let k = (k + r) % 2;
                let op = [Op::Immutable, Op::Stream][k];
                let (start, own_cpu) = (Instant::now(), cpu_time());
                let sum = fanout_round(&mut ws, op, data, batch);
                let now_worker_cpu = workers_cpu(&ws);
                times[k].push(start.elapsed() / batch as u32);
                let cpu = cpu_time() - own_cpu + (now_worker_cpu - worker_cpu);
                cpus[k].push(cpu / batch as u32);
                worker_cpu = now_worker_cpu;
                assert_eq!(sum, expected.wrapping_mul(batch));
            }
        }
        for w in ws {
            drop(w.ch);
            let mut child = w.child;
            let _ = child.wait();
        }
        let [imm, st] = times.map(|t| gbps(FANOUT * FANOUT_LEN, t));
        let [imm_cpu, st_cpu] = cpus.map(median_us);
        cpu_table.push_str(&format!(
            "| fan-out 4 × 64MiB (5 processes) | {imm_cpu:.0} | - | {st_cpu:.0} |\n"
        ));
        out.push_str(&format!(
            "\n| fan-out, 64 MiB to 4 processes | sealpipe-immutable GB/s | unix-stream GB/s | immutable / stream |\n|---|---|---|---|\n| 4 × 64 MiB delivered | {imm:.2} | {st:.2} | {:.2}× |\n",
            imm / st
        ));
        out.push_str(&format!(
            "\nGB/s = 10^9 bytes delivered per second, from the median batch of an interleaved \
             pass (rounds × handoffs per batch: {}; fan-out {}×{}); {}.\n",
            ROUNDS.map(|(r, b)| format!("{r}×{b}")).join(", "),
            FANOUT_ROUNDS.0,
            FANOUT_ROUNDS.1,
            if pinned {
                "producer on CPU 0, consumer on CPU 1"
            } else {
                "not pinned"
            }
        ));
        out.push_str(&cpu_table);
        out.push_str(
            "\nCPU µs: process CPU time (user + system) of the producer and its consumers per \
             handoff, median batch: what each way costs the machine, whatever else runs on it.\n",
        );
        out.push_str(&machine(&load_before));
        println!("{out}");
        if let Some(dir) = target_dir() {
            let path = dir.join("handoff-ratios.md");
            if std::fs::write(&path, &out).is_ok() {
                println!("written to {}", path.display());
            }
        }
    }
}

/// The machine in a few lines: CPUs, model, kernel, huge page settings, load.
fn machine(load_before: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |m| m.trim_start_matches([' ', '\t', ':']));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let uname = rustix::system::uname();
    format!(
        "\nmachine: {cpus} CPUs, {model}, kernel {}; shmem THP: {}; hugetlb pages: {}\n\
         load average before: {load_before}; after: {}\n",
        uname.release().to_string_lossy(),
        read_trimmed("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        read_trimmed("/proc/sys/vm/nr_hugepages"),
        read_trimmed("/proc/loadavg"),
    )
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}

/// The median, in µs.
fn median_us(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e6
}

/// Throughput of the median handoff, in GB/s.
fn gbps(bytes: usize, mut times: Vec<Duration>) -> f64 {
    times.sort();
    bytes as f64 / times[times.len() / 2].as_secs_f64() / 1e9
}

/// `target/` of this build: the bench binary lives in `target/<profile>/deps/`.
fn target_dir() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.to_path_buf())
}
