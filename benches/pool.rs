//! Pool benchmark: a stream of buffers from this process to another process through a
//! [`Pool`], every byte written by the producer and read by the consumer, side by side with
//! copying the same bytes through a unix `SOCK_STREAM` socket.
//!
//! Cases, per size (4 KiB, 64 KiB, 1 MiB, 64 MiB), each a pipelined stream of messages (the
//! producer never waits for a message to be consumed before it writes the next):
//! - `unix-stream`: the producer writes the bytes from a prepared buffer into a connected
//!   unix stream socket; the consumer reads them (64 KiB at a time into a reused buffer)
//!   and sums every `u64` word;
//! - `pool-copy`: the producer leases a buffer, copies the same bytes into it and sends it;
//!   the consumer copies it out ([`PoolBuffer::read_at`], 64 KiB at a time into a reused
//!   buffer), sums the copy and drops the buffer (a batched release);
//! - `pool-in-place`: the same, but the consumer sums the buffer in place through the
//!   `unsafe` [`PoolBuffer::as_bytes_unchecked`] (a trusted producer).
//!
//! At the end of each batch the consumer reports its total over the stream socket, and the
//! producer checks it. Fan-out: one 64 MiB buffer to 8 consumer processes (in place and
//! copy-out) against writing it into 8 stream sockets.
//!
//! Consumers are real processes (this binary in a worker role). For the one-consumer cases
//! the producer is pinned to CPU 0 and the consumer to CPU 1 (if possible); fan-out runs
//! unpinned. After criterion, an interleaved pass (rounds of short batches, one case after
//! another, so load on a shared machine hits every case alike) prints the medians and the
//! pool / socket ratios and writes them to `target/pool-ratios.md`. Only that pass:
//! `cargo bench --bench pool -- ratios-only`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use sealpipe::pool::{Pool, PoolBuffer, PoolOptions, PoolReceiver, PoolSender};
use sealpipe::Policy;

const WORKER_ENV: &str = "SEALPIPE_POOL_BENCH_WORKER";
const CPU_ENV: &str = "SEALPIPE_POOL_BENCH_CPU";
const CHUNK: usize = 64 << 10;
const T: Duration = Duration::from_secs(60);

const SIZES: [(usize, &str); 4] = [
    (4 << 10, "4KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
    (64 << 20, "64MiB"),
];
const FANOUT: usize = 8;
const FANOUT_LEN: usize = 64 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Op {
    Stream = 1,
    PoolCopy = 2,
    PoolInPlace = 3,
    /// Answer with this worker's CPU time.
    Sync = 4,
}

const OPS: [Op; 3] = [Op::Stream, Op::PoolCopy, Op::PoolInPlace];

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
    if std::env::args().any(|a| a == "--bench") {
        bench.ratios();
    }
}

// ---------------------------------------------------------------------------------------
// Consumer

fn worker(path: &str) {
    if let Some(cpu) = std::env::var(CPU_ENV).ok().and_then(|c| c.parse().ok()) {
        pin(cpu);
    }
    let ch = sealpipe::spawn::worker_channel().expect("worker channel");
    let mut rx = PoolReceiver::new(ch, &Policy::producer_writable()).expect("receiver");
    let mut stream = UnixStream::connect(path).expect("connect to the bench socket");
    stream.set_read_timeout(Some(T)).unwrap();
    let mut buf = vec![0u64; CHUNK / 8];
    loop {
        let mut cmd = [0u8; 17];
        if stream.read_exact(&mut cmd).is_err() {
            return; // the producer is done
        }
        let len = u64::from_le_bytes(cmd[1..9].try_into().unwrap()) as usize;
        let rounds = u64::from_le_bytes(cmd[9..17].try_into().unwrap());
        let mut total = 0u64;
        match cmd[0] {
            1 => {
                for _ in 0..rounds {
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(CHUNK);
                        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..n];
                        stream.read_exact(bytes).expect("stream read");
                        total = total.wrapping_add(sum_words(&buf[..n / 8]));
                        left -= n;
                    }
                }
            }
            2 | 3 => {
                for _ in 0..rounds {
                    let b = rx.recv_timeout(T).expect("receive buffer");
                    assert_eq!(b.len(), len);
                    let sum = if cmd[0] == 2 {
                        sum_copy(&b, &mut buf)
                    } else {
                        sum_in_place(&b)
                    };
                    total = total.wrapping_add(sum);
                }
                // Back to waiting on the command socket: give back what is queued first.
                rx.flush_releases().expect("flush releases");
            }
            _ => total = cpu_time().as_nanos() as u64,
        }
        stream.write_all(&total.to_le_bytes()).expect("answer");
    }
}

fn sum_copy(b: &PoolBuffer, buf: &mut [u64]) -> u64 {
    let mut sum = 0u64;
    let mut off = 0;
    while off < b.len() {
        let n = (b.len() - off).min(CHUNK);
        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(buf)[..n];
        b.read_at(off, bytes).expect("read_at");
        sum = sum.wrapping_add(sum_words(&buf[..n / 8]));
        off += n;
    }
    sum
}

#[allow(unsafe_code)]
fn sum_in_place(b: &PoolBuffer) -> u64 {
    // SAFETY: the bench's producer never writes a buffer it has sent until released.
    let bytes = unsafe { b.as_bytes_unchecked() };
    sum_words(bytemuck::cast_slice(bytes))
}

fn sum_words(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |a, &w| a.wrapping_add(w))
}

fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

// ---------------------------------------------------------------------------------------
// Producer

struct Worker {
    child: Child,
    tx: PoolSender,
    stream: UnixStream,
}

impl Worker {
    fn command(&mut self, op: Op, len: usize, rounds: u64) {
        let mut p = [0u8; 17];
        p[0] = op as u8;
        p[1..9].copy_from_slice(&(len as u64).to_le_bytes());
        p[9..17].copy_from_slice(&rounds.to_le_bytes());
        self.stream.write_all(&p).expect("command");
    }

    fn answer(&mut self) -> u64 {
        let mut a = [0u8; 8];
        self.stream.read_exact(&mut a).expect("answer");
        u64::from_le_bytes(a)
    }

    fn cpu(&mut self) -> Duration {
        self.command(Op::Sync, 0, 0);
        Duration::from_nanos(self.answer())
    }
}

struct Bench {
    listener: UnixListener,
    path: std::path::PathBuf,
    payload: Vec<u8>,
    pinned: bool,
    affinity: Option<rustix::thread::CpuSet>,
}

/// A pool for a stream of `len`-byte messages: 4 buffers of 64 MiB, 16 of 1 MiB, else
/// one 4 MiB slab.
fn pool_for(len: usize, consumers: usize) -> Pool {
    let buffers = match len {
        l if l >= 64 << 20 => 4,
        l if l >= 1 << 20 => 16,
        l => (4 << 20) / l,
    };
    let max = (buffers * len).max(4 << 20) + (64 << 20) * usize::from(consumers > 1);
    Pool::new(PoolOptions::new().max_bytes(max).slab_len(4 << 20)).expect("pool")
}

impl Bench {
    fn new() -> Bench {
        let path =
            std::env::temp_dir().join(format!("sealpipe-pool-bench-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind bench socket");
        let payload: Vec<u8> = (0..FANOUT_LEN)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 12)) as u8)
            .collect();
        Bench {
            listener,
            path,
            payload,
            pinned: std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
            affinity: rustix::thread::sched_getaffinity(None).ok(),
        }
    }

    fn unpin(&self) {
        if let Some(set) = &self.affinity {
            let _ = rustix::thread::sched_setaffinity(None, set);
        }
    }

    fn spawn_worker(&self, pool: &Pool, cpu: Option<usize>) -> Worker {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.env(WORKER_ENV, &self.path);
        if let Some(cpu) = cpu {
            cmd.env(CPU_ENV, cpu.to_string());
        }
        let (child, ch) = sealpipe::spawn::spawn(&mut cmd).expect("spawn worker");
        let (stream, _) = self.listener.accept().expect("accept worker");
        stream.set_read_timeout(Some(T)).unwrap();
        Worker {
            child,
            tx: pool.attach(ch).expect("attach"),
            stream,
        }
    }

    fn expected(&self, len: usize) -> u64 {
        self.payload[..len]
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap()))
            .fold(0u64, u64::wrapping_add)
    }

    fn single(&self, c: &mut Criterion) {
        let pinned = self.pinned && pin(0);
        let mut g = c.benchmark_group("pool");
        for &(len, name) in &SIZES {
            let pool = pool_for(len, 1);
            let mut w = self.spawn_worker(&pool, pinned.then_some(1));
            g.throughput(Throughput::Bytes(len as u64));
            if len >= 1 << 20 {
                g.sampling_mode(SamplingMode::Flat)
                    .sample_size(10)
                    .warm_up_time(Duration::from_millis(500))
                    .measurement_time(Duration::from_secs(3));
            } else {
                g.sampling_mode(SamplingMode::Auto)
                    .sample_size(20)
                    .warm_up_time(Duration::from_millis(300))
                    .measurement_time(Duration::from_secs(2));
            }
            let data = &self.payload[..len];
            let expected = self.expected(len);
            for op in OPS {
                let id = BenchmarkId::new(format!("{op:?}"), name);
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        let sum = batch(&pool, std::slice::from_mut(&mut w), op, data, iters);
                        assert_eq!(sum, expected.wrapping_mul(iters));
                        start.elapsed()
                    })
                });
            }
            finish(w);
        }
        g.finish();
        self.unpin();
    }

    fn fanout(&self, c: &mut Criterion) {
        let pool = pool_for(FANOUT_LEN, FANOUT);
        let mut ws: Vec<Worker> = (0..FANOUT)
            .map(|_| self.spawn_worker(&pool, None))
            .collect();
        let mut g = c.benchmark_group("pool-fanout-8x64MiB");
        g.throughput(Throughput::Bytes((FANOUT * FANOUT_LEN) as u64))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(5));
        let data = &self.payload[..FANOUT_LEN];
        let expected = self.expected(FANOUT_LEN);
        for op in OPS {
            g.bench_function(format!("{op:?}"), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    let sum = batch(&pool, &mut ws, op, data, iters);
                    assert_eq!(sum, expected.wrapping_mul(iters));
                    start.elapsed()
                })
            });
        }
        g.finish();
        ws.into_iter().for_each(finish);
    }
}

fn finish(w: Worker) {
    let Worker {
        mut child,
        tx,
        stream,
    } = w;
    drop((tx, stream));
    let _ = child.wait();
}

/// `iters` messages of `data` to every worker, pipelined; returns the first worker's total
/// (every worker must report the same).
fn batch(pool: &Pool, ws: &mut [Worker], op: Op, data: &[u8], iters: u64) -> u64 {
    for w in ws.iter_mut() {
        w.command(op, data.len(), iters);
    }
    if op == Op::Stream {
        for _ in 0..iters {
            for w in ws.iter_mut() {
                w.stream.write_all(data).expect("stream write");
            }
        }
    } else {
        let to: Vec<&PoolSender> = ws.iter().map(|w| &w.tx).collect();
        for _ in 0..iters {
            let mut lease = pool.lease_timeout(data.len(), T).expect("lease");
            lease.copy_from_slice(data);
            lease.send_timeout(&to, T).expect("send");
        }
    }
    let sums: Vec<u64> = ws.iter_mut().map(Worker::answer).collect();
    assert!(sums.windows(2).all(|s| s[0] == s[1]), "consumers disagree");
    sums[0]
}

fn pin(cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}

// ---------------------------------------------------------------------------------------
// Ratio report

/// Interleaved pass, per size: rounds, and messages per batch.
const ROUNDS: [(usize, u64); 4] = [(15, 4000), (15, 400), (15, 60), (9, 4)];
const FANOUT_ROUNDS: (usize, u64) = (5, 2);

impl Bench {
    fn ratios(&self) {
        let load_before = read_trimmed("/proc/loadavg");
        let pinned = self.pinned && pin(0);
        let mut out = String::from(
            "\n| size | unix-stream GB/s | pool-copy GB/s | pool-in-place GB/s | copy / stream | in-place / stream |\n|---|---|---|---|---|---|\n",
        );
        let mut cpu_table = String::from(
            "\n| CPU µs per message (producer + consumer) | unix-stream | pool-copy | pool-in-place |\n|---|---|---|---|\n",
        );
        for (&(len, name), &(rounds, iters)) in SIZES.iter().zip(&ROUNDS) {
            let pool = pool_for(len, 1);
            let mut w = self.spawn_worker(&pool, pinned.then_some(1));
            let (t, cpu) = self.interleave(&pool, std::slice::from_mut(&mut w), len, rounds, iters);
            let [s, c, p] = t.map(|t| gbps(len, t));
            out.push_str(&format!(
                "| {name} | {s:.2} | {c:.2} | {p:.2} | {:.2}× | {:.2}× |\n",
                c / s,
                p / s
            ));
            let [s, c, p] = cpu.map(median_us);
            cpu_table.push_str(&format!("| {name} | {s:.1} | {c:.1} | {p:.1} |\n"));
            finish(w);
        }
        self.unpin();
        let pool = pool_for(FANOUT_LEN, FANOUT);
        let mut ws: Vec<Worker> = (0..FANOUT)
            .map(|_| self.spawn_worker(&pool, None))
            .collect();
        let (rounds, iters) = FANOUT_ROUNDS;
        let (t, cpu) = self.interleave(&pool, &mut ws, FANOUT_LEN, rounds, iters);
        let [s, c, p] = t.map(|t| gbps(FANOUT * FANOUT_LEN, t));
        out.push_str(&format!(
            "| fan-out {FANOUT} × 64MiB | {s:.2} | {c:.2} | {p:.2} | {:.2}× | {:.2}× |\n",
            c / s,
            p / s
        ));
        let [s, c, p] = cpu.map(median_us);
        cpu_table.push_str(&format!(
            "| fan-out {FANOUT} × 64MiB | {s:.0} | {c:.0} | {p:.0} |\n"
        ));
        ws.into_iter().for_each(finish);
        out.push_str(&self.fanout_memory());
        out.push_str(&format!(
            "\nGB/s = 10^9 bytes delivered per second (fan-out: to all consumers), median batch of an \
             interleaved pass (rounds × messages per batch: {}; fan-out {}×{}); {}.\n",
            ROUNDS.map(|(r, b)| format!("{r}×{b}")).join(", "),
            FANOUT_ROUNDS.0,
            FANOUT_ROUNDS.1,
            if pinned {
                "single consumer: producer on CPU 0, consumer on CPU 1; fan-out unpinned"
            } else {
                "not pinned"
            }
        ));
        out.push_str(&cpu_table);
        out.push_str(&machine(&load_before));
        println!("{out}");
        if let Some(dir) = target_dir() {
            let path = dir.join("pool-ratios.md");
            if std::fs::write(&path, &out).is_ok() {
                println!("written to {}", path.display());
            }
        }
    }

    /// Memory of a fan-out: a pool of one 64 MiB buffer sent to 8 consumers that read it in
    /// place; the growth of the sum of every process's PSS, against one copy of the data.
    fn fanout_memory(&self) -> String {
        let pool = Pool::new(
            PoolOptions::new()
                .max_bytes(FANOUT_LEN)
                .slab_len(FANOUT_LEN),
        )
        .expect("pool");
        let mut ws: Vec<Worker> = (0..FANOUT)
            .map(|_| self.spawn_worker(&pool, None))
            .collect();
        let pss = |ws: &[Worker]| {
            pss_of(std::process::id()) + ws.iter().map(|w| pss_of(w.child.id())).sum::<u64>()
        };
        let data = &self.payload[..FANOUT_LEN];
        for w in ws.iter_mut() {
            w.cpu(); // the worker is up and idle
        }
        let before = pss(&ws);
        let sum = batch(&pool, &mut ws, Op::PoolInPlace, data, 3);
        assert_eq!(sum, self.expected(FANOUT_LEN).wrapping_mul(3));
        let after = pss(&ws);
        ws.into_iter().for_each(finish);
        let grown = after.saturating_sub(before) as f64;
        format!(
            "\nfan-out memory: one 64 MiB pool buffer read in place by {FANOUT} consumers: sum of PSS \
             (producer + consumers) grew by {:.1} MiB = {:.3}× one copy of the data\n",
            grown / f64::from(1 << 20),
            grown / FANOUT_LEN as f64
        )
    }

    /// Rounds of one batch per case (rotating who goes first); per case the time and the
    /// CPU time (all processes) per message.
    fn interleave(
        &self,
        pool: &Pool,
        ws: &mut [Worker],
        len: usize,
        rounds: usize,
        iters: u64,
    ) -> ([Vec<Duration>; 3], [Vec<Duration>; 3]) {
        let data = &self.payload[..len];
        let expected = self.expected(len);
        let mut times = [vec![], vec![], vec![]];
        let mut cpus = [vec![], vec![], vec![]];
        let workers_cpu = |ws: &mut [Worker]| ws.iter_mut().map(Worker::cpu).sum::<Duration>();
        // Warm up: the pool makes its memory, consumers map it.
        for op in OPS {
            batch(pool, ws, op, data, iters.min(64));
        }
        let mut worker_cpu = workers_cpu(ws);
        for r in 0..rounds {
            for k in 0..OPS.len() {
                let k = (k + r) % OPS.len();
                let (start, own) = (Instant::now(), cpu_time());
                let sum = batch(pool, ws, OPS[k], data, iters);
                times[k].push(start.elapsed() / iters as u32);
                let now = workers_cpu(ws);
                cpus[k].push((cpu_time() - own + (now - worker_cpu)) / iters as u32);
                worker_cpu = now;
                assert_eq!(sum, expected.wrapping_mul(iters));
            }
        }
        (times, cpus)
    }
}

fn machine(load_before: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |m| m.trim_start_matches([' ', '\t', ':']));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let uname = rustix::system::uname();
    format!(
        "\nmachine: {cpus} CPUs, {model}, kernel {}\nload average before: {load_before}; after: {}\n",
        uname.release().to_string_lossy(),
        read_trimmed("/proc/loadavg"),
    )
}

/// Proportional set size of process `pid`, in bytes (`/proc/<pid>/smaps_rollup`).
fn pss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}

fn median_us(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e6
}

fn gbps(bytes: usize, mut times: Vec<Duration>) -> f64 {
    times.sort();
    bytes as f64 / times[times.len() / 2].as_secs_f64() / 1e9
}

fn target_dir() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.to_path_buf())
}
