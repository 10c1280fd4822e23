//! Ring benchmarks: the sealpipe ring across two processes (pinned to different CPUs where
//! the machine has two), side by side with references measured in the same run — rtrb
//! between two threads, a raw cache-line ping-pong, single-thread cold memcpy, and a unix
//! `SOCK_SEQPACKET` ping-pong between two processes. With `--features tokio`, the async
//! ring (both sides on tokio current-thread runtimes) is measured against the blocking ring
//! with the same spin policy, in the same rounds.
//!
//! `cargo bench --bench ring` prints a ratio table at the end (also written to
//! `target/ring-bench.md`). `cargo test --benches` runs every scenario once, quickly.
#![allow(unsafe_code)] // adopting the inherited second socket in the child
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use crossbeam_utils::CachePadded;
use rustix::io::{fcntl_setfd, FdFlags};
use rustix::net::{
    recv, send, socketpair, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};
use sealpipe::ring::{
    Consumer, PodConsumer, PodProducer, Producer, RingOptions, RingStats, SpinPolicy,
};
use sealpipe::Channel;

const ROLE: &str = "SEALPIPE_BENCH_ROLE";
const FD2: &str = "SEALPIPE_BENCH_FD2";
const T: Duration = Duration::from_secs(30);
/// First byte of a record that asks the consumer for an acknowledgement.
const ACK: u8 = 0xFF;

// ------------------------------------------------------------------ plumbing

/// CPUs of the machine, as seen by the parent before it pinned itself (children inherit
/// the parent's affinity, so they are told).
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::env::var(CPUS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

const CPUS_ENV: &str = "SEALPIPE_BENCH_CPUS";

fn pin(cpu: usize) {
    let n = cpus();
    if n >= 2 {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu % n);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

/// A child process of this bench binary, in `role`, with two channels: `ch1` (sealpipe's
/// inherited channel) and `raw2` (a second SEQPACKET socket).
struct Peer {
    child: Child,
    ch1: Option<Channel>,
    raw2: Option<OwnedFd>,
}

fn spawn(role: &str) -> Peer {
    let (mine, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    fcntl_setfd(&theirs, FdFlags::empty()).unwrap(); // inherited across exec
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, role)
        .env(CPUS_ENV, cpus().to_string())
        .env(FD2, rustix::fd::AsRawFd::as_raw_fd(&theirs).to_string())
        .stdin(Stdio::null());
    let (child, ch1) = sealpipe::spawn::spawn(&mut cmd).unwrap();
    drop(theirs);
    Peer {
        child,
        ch1: Some(ch1),
        raw2: Some(mine),
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.ch1.take();
        self.raw2.take();
        let _ = self.child.wait();
    }
}

/// The ring options of one side.
fn opts(cap: usize, spin: SpinPolicy) -> RingOptions {
    RingOptions::new(cap).spin(spin)
}

/// "spin": pure spinning; "park": the default blocking policy (spin ~10 µs, then park).
fn spin_of(s: &str) -> SpinPolicy {
    if s == "park" {
        SpinPolicy::default()
    } else {
        SpinPolicy::Spin
    }
}

/// Child side. Roles: `bytes:<spin>:<batch>`, `pod:<spin>:<batch>`, `echo:<spin>`,
/// `sock-echo`.
fn child_main(role: &str) {
    pin(1);
    let ch1 = sealpipe::spawn::worker_channel().unwrap();
    let fd2: i32 = std::env::var(FD2).unwrap().parse().unwrap();
    // SAFETY: the parent left this socket open across exec for us, named in FD2; nothing
    // else in this process owns it.
    let raw2 = unsafe { OwnedFd::from_raw_fd(fd2) };
    fcntl_setfd(&raw2, FdFlags::CLOEXEC).unwrap();
    let parts: Vec<&str> = role.split(':').collect();
    let spin = spin_of(parts.get(1).copied().unwrap_or(""));
    match parts[0] {
        "bytes" => {
            // `bytes:<spin>:batch`: take records with batch reads (one publication of the
            // read index per batch), waiting only when the ring is empty.
            let batched = parts.get(2) == Some(&"batch");
            let mut rx = Consumer::setup(ch1, &opts(0, spin)).unwrap();
            let mut acks =
                PodProducer::<u64>::setup(Channel::from_fd(raw2).unwrap(), &opts(64, spin))
                    .unwrap();
            let mut buf = Vec::new();
            let mut n = 0u64;
            let mut ack = |rx: &Consumer, n: u64| {
                let s = rx.stats();
                for v in [n, s.index_loads, s.found_blocked, s.wakes, s.parks] {
                    acks.send_timeout(v, T).unwrap();
                }
            };
            loop {
                if batched {
                    let mut b = rx.batch();
                    while b.try_recv(&mut buf).is_ok() {
                        n += 1;
                        if buf.first() == Some(&ACK) {
                            b.finish();
                            ack(&rx, n);
                            break;
                        }
                    }
                }
                if rx
                    .recv_timeout(&mut buf, Duration::from_secs(3600))
                    .is_err()
                {
                    break;
                }
                n += 1;
                if buf.first() == Some(&ACK) {
                    ack(&rx, n);
                }
            }
        }
        "pod" => {
            let batch = parts.get(2).and_then(|b| b.parse().ok()).unwrap_or(1usize);
            let mut rx = PodConsumer::<u64>::setup(ch1, &opts(0, spin)).unwrap();
            let mut acks =
                PodProducer::<u64>::setup(Channel::from_fd(raw2).unwrap(), &opts(64, spin))
                    .unwrap();
            let mut buf = vec![0u64; batch];
            let mut sum = 0u64;
            loop {
                let (n, last) = if batch == 1 {
                    match rx.recv_timeout(Duration::from_secs(3600)) {
                        Ok(v) => (1, v),
                        Err(_) => break,
                    }
                } else {
                    match rx.try_recv_slice(&mut buf) {
                        Ok(n) => (n, buf[n - 1]),
                        // Empty: wait through the ring (which notices a closed producer).
                        Err(sealpipe::Error::WouldBlock) => {
                            match rx.recv_timeout(Duration::from_secs(3600)) {
                                Ok(v) => (1, v),
                                Err(_) => break,
                            }
                        }
                        Err(_) => break,
                    }
                };
                sum = sum.wrapping_add(n as u64);
                if last == u64::MAX {
                    acks.send_timeout(sum, T).unwrap();
                }
            }
            black_box(sum);
        }
        "echo" => {
            let mut rx = Consumer::setup(ch1, &opts(0, spin)).unwrap();
            let mut tx =
                Producer::setup(Channel::from_fd(raw2).unwrap(), &opts(1 << 16, spin)).unwrap();
            let mut buf = Vec::new();
            while rx.recv_timeout(&mut buf, Duration::from_secs(3600)).is_ok() {
                if tx.send_timeout(&buf, T).is_err() {
                    break;
                }
            }
        }
        #[cfg(feature = "tokio")]
        "abytes" => asynchronous::consumer(ch1, raw2),
        #[cfg(feature = "tokio")]
        "aecho" => asynchronous::echo(ch1, raw2),
        "sock-echo" => {
            let mut buf = [0u8; 256];
            while let Ok((n, _)) = recv(&raw2, &mut buf, RecvFlags::empty()) {
                if n == 0 || send(&raw2, &buf[..n], SendFlags::NOSIGNAL).is_err() {
                    break;
                }
            }
        }
        _ => panic!("unknown role {role}"),
    }
    std::process::exit(0);
}

// ------------------------------------------------------------------ sealpipe scenarios

/// What one side of a ring did during a run: records, loads of the peer's index outside
/// waits, times it found the ring full/empty, wakes sent, parks (`RingStats`).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    records: u64,
    index_loads: u64,
    found_blocked: u64,
    wakes: u64,
    parks: u64,
}

impl Counters {
    fn of(s: RingStats) -> Counters {
        Counters {
            records: 0,
            index_loads: s.index_loads,
            found_blocked: s.found_blocked,
            wakes: s.wakes,
            parks: s.parks,
        }
    }
    fn since(self, before: Counters) -> Counters {
        Counters {
            records: self.records - before.records,
            index_loads: self.index_loads - before.index_loads,
            found_blocked: self.found_blocked - before.found_blocked,
            wakes: self.wakes - before.wakes,
            parks: self.parks - before.parks,
        }
    }
}

/// A run of a byte ring: its time, and both sides' counters over it.
struct Run {
    time: Duration,
    producer: Counters,
    consumer: Counters,
}

/// Parent producer of a byte ring, with the acknowledgement ring back.
struct BytesSession {
    tx: Producer,
    acks: PodConsumer<u64>,
    consumer: Counters,
    _peer: Peer,
}

impl BytesSession {
    /// `batch`: the consumer takes records with batch reads.
    fn new(spin: &str, cap: usize, batch: bool) -> BytesSession {
        let mode = if batch { ":batch" } else { "" };
        let mut peer = spawn(&format!("bytes:{spin}{mode}"));
        let s = spin_of(spin);
        let tx = Producer::setup(peer.ch1.take().unwrap(), &opts(cap, s)).unwrap();
        let acks = PodConsumer::<u64>::setup(
            Channel::from_fd(peer.raw2.take().unwrap()).unwrap(),
            &opts(0, s),
        )
        .unwrap();
        BytesSession {
            tx,
            acks,
            consumer: Counters::default(),
            _peer: peer,
        }
    }

    /// Sends an acknowledgement request; returns the consumer's counters once it has
    /// received everything before it.
    fn ack(&mut self) -> Counters {
        let mut r = self.tx.reserve_timeout(8, T).unwrap();
        r.as_mut_slice()
            .copy_from_slice(&[ACK, 0, 0, 0, 0, 0, 0, 0]);
        r.commit();
        let mut v = [0u64; 5];
        for x in &mut v {
            *x = self.acks.recv_timeout(T).unwrap();
        }
        Counters {
            records: v[0],
            index_loads: v[1],
            found_blocked: v[2],
            wakes: v[3],
            parks: v[4],
        }
    }

    /// Runs `send` (which sends records), then waits for the consumer's acknowledgement.
    fn run(&mut self, send: impl FnOnce(&mut Producer)) -> Run {
        let p0 = Counters::of(self.tx.stats());
        let start = Instant::now();
        send(&mut self.tx);
        let consumer = self.ack();
        let time = start.elapsed();
        let run = Run {
            time,
            producer: Counters::of(self.tx.stats()).since(p0),
            consumer: consumer.since(self.consumer),
        };
        self.consumer = consumer;
        run
    }

    /// `iters` records of `len` bytes, one per call.
    fn one_per_call(&mut self, iters: u64, len: usize) -> Run {
        let rec = vec![0u8; len];
        self.run(|tx| {
            for _ in 0..iters {
                tx.send_timeout(&rec, T).unwrap();
            }
        })
    }

    /// `iters` records of `len` bytes, published `batch` at a time.
    fn batched(&mut self, iters: u64, len: usize, batch: u64) -> Run {
        let rec = vec![0u8; len];
        self.run(|tx| {
            let mut left = iters;
            while left > 0 {
                let k = left.min(batch);
                let mut b = tx.batch();
                for _ in 0..k {
                    b.send_timeout(&rec, T).unwrap();
                }
                b.publish();
                left -= k;
            }
        })
    }

    /// Records of `len` bytes written in place (filled), copied out by the consumer.
    fn bulk(&mut self, iters: u64, len: usize) -> Run {
        self.run(|tx| {
            for i in 0..iters {
                let mut r = tx.reserve_timeout(len, T).unwrap();
                r.as_mut_slice().fill(i as u8 & 0x7f);
                r.commit();
            }
        })
    }
}

struct PodSession {
    tx: PodProducer<u64>,
    acks: PodConsumer<u64>,
    _peer: Peer,
}

impl PodSession {
    fn new(batch: usize) -> PodSession {
        let mut peer = spawn(&format!("pod:spin:{batch}"));
        let s = SpinPolicy::Spin;
        let tx = PodProducer::<u64>::setup(peer.ch1.take().unwrap(), &opts(1024, s)).unwrap();
        let acks = PodConsumer::<u64>::setup(
            Channel::from_fd(peer.raw2.take().unwrap()).unwrap(),
            &opts(0, s),
        )
        .unwrap();
        PodSession {
            tx,
            acks,
            _peer: peer,
        }
    }

    fn run(&mut self, iters: u64, batch: usize) -> Duration {
        let start = Instant::now();
        if batch == 1 {
            for i in 0..iters {
                self.tx.send_timeout(i, T).unwrap();
            }
        } else {
            // In place: up to `batch` slots reserved, written and published at once.
            let mut left = iters as usize;
            let mut next = 0u64;
            while left > 0 {
                let mut slots = self.tx.reserve_slice_timeout(left.min(batch), T).unwrap();
                let n = slots.len();
                for slot in slots.as_mut_slice() {
                    *slot = next;
                    next += 1;
                }
                slots.commit(n);
                left -= n;
            }
        }
        self.tx.send_timeout(u64::MAX, T).unwrap();
        self.acks.recv_timeout(T).unwrap();
        start.elapsed()
    }
}

/// Ping-pong over two rings: parent → child on one, child → parent on the other.
struct PingPong {
    tx: Producer,
    rx: Consumer,
    buf: Vec<u8>,
    _peer: Peer,
}

impl PingPong {
    fn new(spin: &str) -> PingPong {
        let mut peer = spawn(&format!("echo:{spin}"));
        let s = spin_of(spin);
        let tx = Producer::setup(peer.ch1.take().unwrap(), &opts(1 << 16, s)).unwrap();
        let rx = Consumer::setup(
            Channel::from_fd(peer.raw2.take().unwrap()).unwrap(),
            &opts(0, s),
        )
        .unwrap();
        PingPong {
            tx,
            rx,
            buf: Vec::with_capacity(64),
            _peer: peer,
        }
    }

    /// Stops (`SIGSTOP`) or continues the echo child.
    fn pause(&self, stop: bool) {
        let pid = rustix::process::Pid::from_raw(self._peer.child.id() as i32).unwrap();
        let sig = if stop {
            rustix::process::Signal::STOP
        } else {
            rustix::process::Signal::CONT
        };
        rustix::process::kill_process(pid, sig).unwrap();
    }

    fn run(&mut self, iters: u64) -> Duration {
        let msg = [7u8; 64];
        let start = Instant::now();
        for _ in 0..iters {
            self.tx.send_timeout(&msg, T).unwrap();
            self.rx.recv_timeout(&mut self.buf, T).unwrap();
        }
        start.elapsed()
    }
}

/// The async ring (feature `tokio`): both sides on current-thread runtimes, default spin
/// policy (as the blocking "park" sessions), so ratios compare like with like.
#[cfg(feature = "tokio")]
mod asynchronous {
    use super::*;
    use sealpipe::ring::{AsyncConsumer, AsyncPodConsumer, AsyncPodProducer, AsyncProducer};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn options(cap: usize) -> RingOptions {
        opts(cap, SpinPolicy::default())
    }

    /// Child: async consumer of byte records, acknowledging `ACK` records with the count.
    pub(super) fn consumer(ch1: Channel, raw2: OwnedFd) {
        runtime().block_on(async {
            let mut rx = AsyncConsumer::setup(ch1, &options(0)).await.unwrap();
            let ch2 = Channel::from_fd(raw2).unwrap();
            let mut acks = AsyncPodProducer::<u64>::setup(ch2, &options(64))
                .await
                .unwrap();
            let mut buf = Vec::new();
            let mut n = 0u64;
            while rx.recv(&mut buf).await.is_ok() {
                n += 1;
                if buf.first() == Some(&ACK) {
                    acks.send(n).await.unwrap();
                }
            }
        });
    }

    /// Child: async echo from one ring to the other.
    pub(super) fn echo(ch1: Channel, raw2: OwnedFd) {
        runtime().block_on(async {
            let mut rx = AsyncConsumer::setup(ch1, &options(0)).await.unwrap();
            let ch2 = Channel::from_fd(raw2).unwrap();
            let mut tx = AsyncProducer::setup(ch2, &options(1 << 16)).await.unwrap();
            let mut buf = Vec::new();
            while rx.recv(&mut buf).await.is_ok() {
                if tx.send(&buf).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Parent: async producer of byte records to an async consumer.
    pub(super) struct BytesSession {
        rt: tokio::runtime::Runtime,
        tx: AsyncProducer,
        acks: AsyncPodConsumer<u64>,
        _peer: Peer,
    }

    impl BytesSession {
        pub(super) fn new(cap: usize) -> BytesSession {
            let mut peer = spawn("abytes");
            let rt = runtime();
            let (tx, acks) = rt.block_on(async {
                let tx = AsyncProducer::setup(peer.ch1.take().unwrap(), &options(cap))
                    .await
                    .unwrap();
                let ch2 = Channel::from_fd(peer.raw2.take().unwrap()).unwrap();
                let acks = AsyncPodConsumer::<u64>::setup(ch2, &options(0))
                    .await
                    .unwrap();
                (tx, acks)
            });
            BytesSession {
                rt,
                tx,
                acks,
                _peer: peer,
            }
        }

        /// Wakes (signal bytes) the producer has sent so far.
        pub(super) fn wakes(&mut self) -> u64 {
            self.tx.get_mut().stats().wakes
        }

        /// `iters` records of `len` bytes, one per call, then waits for the consumer.
        pub(super) fn one_per_call(&mut self, iters: u64, len: usize) -> Duration {
            let rec = vec![0u8; len];
            let (tx, acks) = (&mut self.tx, &mut self.acks);
            self.rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tx.send(&rec).await.unwrap();
                }
                tx.send(&[ACK, 0, 0, 0, 0, 0, 0, 0]).await.unwrap();
                acks.recv().await.unwrap();
                start.elapsed()
            })
        }
    }

    /// Parent: ping-pong over two async rings.
    pub(super) struct PingPong {
        rt: tokio::runtime::Runtime,
        tx: AsyncProducer,
        rx: AsyncConsumer,
        buf: Vec<u8>,
        _peer: Peer,
    }

    impl PingPong {
        pub(super) fn new() -> PingPong {
            let mut peer = spawn("aecho");
            let rt = runtime();
            let (tx, rx) = rt.block_on(async {
                let tx = AsyncProducer::setup(peer.ch1.take().unwrap(), &options(1 << 16))
                    .await
                    .unwrap();
                let ch2 = Channel::from_fd(peer.raw2.take().unwrap()).unwrap();
                let rx = AsyncConsumer::setup(ch2, &options(0)).await.unwrap();
                (tx, rx)
            });
            PingPong {
                rt,
                tx,
                rx,
                buf: Vec::with_capacity(64),
                _peer: peer,
            }
        }

        pub(super) fn run(&mut self, iters: u64) -> Duration {
            let msg = [7u8; 64];
            let (tx, rx, buf) = (&mut self.tx, &mut self.rx, &mut self.buf);
            self.rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tx.send(&msg).await.unwrap();
                    rx.recv(buf).await.unwrap();
                }
                start.elapsed()
            })
        }
    }
}

// ------------------------------------------------------------------ references

/// rtrb 0.4 between two threads pinned to CPUs 0 and 1 (where the machine has two): 1 024
/// slots of `N`-byte items, a tight `push`/`pop` spin loop with no per-item work beyond the
/// copy; the time runs from the first push until the consumer thread has popped every item.
///
/// (The harness this replaces used 16 384 slots — a 1 MiB ring of 64 B items, twice the L2
/// cache of the machines this project runs on — and a consumer that also loaded a stop flag
/// and tested a marker byte per item; it measured rtrb 64 B at 22.7 M/s where this one
/// measures 35–60 M/s on the same machine.)
fn rtrb_run<const N: usize>(iters: u64) -> Duration {
    let (mut p, mut c) = rtrb::RingBuffer::<[u8; N]>::new(1024);
    let t = std::thread::spawn(move || {
        pin(1);
        let mut n = 0u64;
        let mut x = 0u8;
        while n < iters {
            if let Ok(item) = c.pop() {
                x ^= item[0];
                n += 1;
            }
        }
        black_box(x)
    });
    pin(0);
    let item = [1u8; N];
    let start = Instant::now();
    for _ in 0..iters {
        while p.push(item).is_err() {
            std::hint::spin_loop();
        }
    }
    t.join().unwrap();
    start.elapsed()
}

/// Raw cache-line round trip between two pinned threads: `iters` round trips timed.
fn cacheline_pingpong(iters: u64) -> Duration {
    let line = Arc::new(CachePadded::new(AtomicU64::new(0)));
    let l2 = line.clone();
    let t = std::thread::spawn(move || {
        pin(1);
        for i in 0..=iters {
            while l2.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            l2.store(2 * i + 2, Ordering::Release);
        }
    });
    // The clock starts after the first round trip: the thread has started and is pinned.
    let mut start = Instant::now();
    for i in 0..=iters {
        if i == 1 {
            start = Instant::now();
        }
        line.store(2 * i + 1, Ordering::Release);
        while line.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
    }
    let d = start.elapsed();
    t.join().unwrap();
    d
}

/// Single-thread memcpy of `len`-byte chunks through 256 MiB buffers (cold caches).
struct Memcpy {
    src: Vec<u8>,
    dst: Vec<u8>,
    at: usize,
}

impl Memcpy {
    fn new() -> Memcpy {
        Memcpy {
            src: vec![1u8; 256 << 20],
            dst: vec![2u8; 256 << 20], // written here: no page faults while timing,
            at: 0,
        }
    }
    fn run(&mut self, iters: u64, len: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            if self.at + len > self.src.len() {
                self.at = 0;
            }
            self.dst[self.at..self.at + len].copy_from_slice(&self.src[self.at..self.at + len]);
            black_box(&self.dst[self.at]);
            self.at += len;
        }
        start.elapsed()
    }

    /// Single-thread memcpy of the same `len` bytes again and again (hot caches).
    fn hot(&mut self, iters: u64, len: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.dst[..len].copy_from_slice(black_box(&self.src[..len]));
            black_box(&self.dst[0]);
        }
        start.elapsed()
    }
}

struct SockPingPong {
    fd: OwnedFd,
    _peer: Peer,
}

impl SockPingPong {
    fn new() -> SockPingPong {
        let mut peer = spawn("sock-echo");
        SockPingPong {
            fd: peer.raw2.take().unwrap(),
            _peer: peer,
        }
    }
    fn run(&mut self, iters: u64) -> Duration {
        let msg = [7u8; 64];
        let mut buf = [0u8; 256];
        let start = Instant::now();
        for _ in 0..iters {
            send(self.fd.as_fd(), &msg, SendFlags::NOSIGNAL).unwrap();
            recv(self.fd.as_fd(), &mut buf, RecvFlags::empty()).unwrap();
        }
        start.elapsed()
    }
}

// ------------------------------------------------------------------ criterion

fn bench(
    c: &mut Criterion,
    group: &str,
    name: &str,
    throughput: Throughput,
    mut f: impl FnMut(u64) -> Duration,
) {
    let mut g = c.benchmark_group(group);
    g.throughput(throughput);
    g.bench_function(BenchmarkId::from_parameter(name), |b| b.iter_custom(&mut f));
    g.finish();
}

fn throughput_benches(c: &mut Criterion) {
    pin(0);
    {
        let mut s = BytesSession::new("spin", 1 << 16, false);
        bench(
            c,
            "one_per_call",
            "sealpipe_bytes_64B",
            Throughput::Elements(1),
            |n| s.one_per_call(n, 64).time,
        );
        bench(
            c,
            "one_per_call",
            "sealpipe_bytes_8B",
            Throughput::Elements(1),
            |n| s.one_per_call(n, 8).time,
        );
    }
    {
        let mut s = BytesSession::new("spin", 1 << 20, true);
        bench(
            c,
            "batched_32",
            "sealpipe_bytes_64B_1MiB",
            Throughput::Elements(1),
            |n| s.batched(n, 64, 32).time,
        );
    }
    {
        let mut s = BytesSession::new("park", 1 << 16, false);
        bench(
            c,
            "one_per_call",
            "sealpipe_bytes_64B_park",
            Throughput::Elements(1),
            |n| s.one_per_call(n, 64).time,
        );
    }
    #[cfg(feature = "tokio")]
    {
        let mut s = asynchronous::BytesSession::new(1 << 16);
        bench(
            c,
            "one_per_call",
            "sealpipe_async_bytes_64B",
            Throughput::Elements(1),
            |n| s.one_per_call(n, 64),
        );
    }
    bench(
        c,
        "one_per_call",
        "rtrb_64B",
        Throughput::Elements(1),
        rtrb_run::<64>,
    );
    bench(
        c,
        "one_per_call",
        "rtrb_8B",
        Throughput::Elements(1),
        rtrb_run::<8>,
    );
    {
        let mut s = PodSession::new(1);
        bench(
            c,
            "one_per_call",
            "sealpipe_pod_u64",
            Throughput::Elements(1),
            |n| s.run(n, 1),
        );
    }
    {
        let mut s = PodSession::new(32);
        bench(
            c,
            "batched_32",
            "sealpipe_pod_u64",
            Throughput::Elements(1),
            |n| s.run(n, 32),
        );
    }
    {
        let mut s = BytesSession::new("spin", 8 << 20, false);
        bench(
            c,
            "bulk",
            "sealpipe_64KiB",
            Throughput::Bytes(64 << 10),
            |n| s.bulk(n, 64 << 10).time,
        );
        bench(
            c,
            "bulk",
            "sealpipe_1MiB",
            Throughput::Bytes(1 << 20),
            |n| s.bulk(n, 1 << 20).time,
        );
    }
    {
        let mut m = Memcpy::new();
        bench(
            c,
            "bulk",
            "memcpy_cold_64KiB",
            Throughput::Bytes(64 << 10),
            |n| m.run(n, 64 << 10),
        );
        bench(
            c,
            "bulk",
            "memcpy_cold_1MiB",
            Throughput::Bytes(1 << 20),
            |n| m.run(n, 1 << 20),
        );
        bench(
            c,
            "bulk",
            "memcpy_hot_1MiB",
            Throughput::Bytes(1 << 20),
            |n| m.hot(n, 1 << 20),
        );
    }
}

fn latency_benches(c: &mut Criterion) {
    pin(0);
    {
        let mut p = PingPong::new("spin");
        bench(
            c,
            "round_trip",
            "sealpipe_spin_64B",
            Throughput::Elements(1),
            |n| p.run(n),
        );
    }
    bench(
        c,
        "round_trip",
        "cache_line",
        Throughput::Elements(1),
        cacheline_pingpong,
    );
    {
        let mut p = PingPong::new("park");
        bench(
            c,
            "round_trip",
            "sealpipe_park_64B",
            Throughput::Elements(1),
            |n| p.run(n),
        );
    }
    #[cfg(feature = "tokio")]
    {
        let mut p = asynchronous::PingPong::new();
        bench(
            c,
            "round_trip",
            "sealpipe_async_64B",
            Throughput::Elements(1),
            |n| p.run(n),
        );
    }
    {
        let mut s = SockPingPong::new();
        bench(
            c,
            "round_trip",
            "seqpacket_64B",
            Throughput::Elements(1),
            |n| s.run(n),
        );
    }
}

/// Median idle round trip (µs): before each ping both sides have been idle for 300 µs, so
/// a parking ring has parked (its spin budget is about 10 µs) and pays a futex wake each way.
fn idle_round_trip(mut once: impl FnMut() -> Duration, rounds: usize) -> f64 {
    let mut v: Vec<Duration> = (0..rounds)
        .map(|_| {
            let end = Instant::now() + Duration::from_micros(300);
            while Instant::now() < end {
                std::hint::spin_loop();
            }
            once()
        })
        .collect();
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

/// Medians over rounds; in each round every scenario runs one short batch right after its
/// reference, so load from other processes on this shared machine hits both alike.
#[derive(Default)]
struct Rounds(HashMap<String, Vec<f64>>);

impl Rounds {
    fn add(&mut self, name: &str, v: f64) {
        self.0.entry(name.to_string()).or_default().push(v);
    }
    fn median(&self, name: &str) -> f64 {
        median(self.0.get(name).cloned().unwrap_or_default())
    }
    /// The values of `name`, in round order.
    fn values(&self, name: &str) -> String {
        let v = self.0.get(name).cloned().unwrap_or_default();
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
    /// Median over rounds of `a / b` taken within each round.
    fn ratio(&self, a: &str, b: &str) -> f64 {
        let (x, y) = (self.0.get(a), self.0.get(b));
        let mut v: Vec<f64> = match (x, y) {
            (Some(x), Some(y)) => x.iter().zip(y).map(|(p, q)| p / q).collect(),
            _ => return f64::NAN,
        };
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }
    /// Records a byte-ring run: `name` in M records/s, and its per-record counters.
    fn add_run(&mut self, name: &str, n: u64, run: &Run) {
        self.add(name, n as f64 / run.time.as_secs_f64() / 1e6);
        let per = |v: u64| v as f64 / n as f64;
        self.add(&format!("{name}.p_loads"), per(run.producer.index_loads));
        self.add(&format!("{name}.p_full"), per(run.producer.found_blocked));
        self.add(&format!("{name}.c_loads"), per(run.consumer.index_loads));
        self.add(&format!("{name}.c_empty"), per(run.consumer.found_blocked));
        let wakes = run.producer.wakes + run.consumer.wakes;
        self.add(&format!("{name}.wakes"), wakes as f64 * 1e6 / n as f64);
        let parks = run.producer.parks + run.consumer.parks;
        self.add(&format!("{name}.parks"), parks as f64 * 1e6 / n as f64);
    }
}

/// Rounds of the interleaved pass: `SEALPIPE_RING_ROUNDS` (default 7; 3 is a quick look).
fn rounds() -> usize {
    std::env::var("SEALPIPE_RING_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(7)
}

/// One row alone, for comparing two builds row by row: `SEALPIPE_RING_ONLY=bytes64`,
/// `bytes8`, `batched64` or `podb` runs that scenario ten times in each of
/// `SEALPIPE_RING_ROUNDS` fresh child processes and prints one line per child: the rates
/// (M records or items per second) and their median. Which regime a spinning pair settles
/// in changes from one child process to the next, so compare medians over many children,
/// alternating the builds.
fn only(row: &str) {
    const N: u64 = 1_000_000;
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64() / 1e6;
    for _ in 0..rounds() {
        let runs: Vec<f64> = match row {
            "bytes64" | "bytes8" => {
                let len = if row == "bytes64" { 64 } else { 8 };
                let mut s = BytesSession::new("spin", 1 << 16, false);
                (0..10)
                    .map(|_| rate(N, s.one_per_call(N, len).time))
                    .collect()
            }
            "batched64" => {
                let mut s = BytesSession::new("spin", 1 << 20, true);
                (0..10)
                    .map(|_| rate(N, s.batched(N, 64, 32).time))
                    .collect()
            }
            "podb" => {
                let mut s = PodSession::new(32);
                (0..10).map(|_| rate(16 * N, s.run(16 * N, 32))).collect()
            }
            _ => {
                eprintln!("SEALPIPE_RING_ONLY: one of bytes64, bytes8, batched64, podb");
                return;
            }
        };
        let shown: Vec<String> = runs.iter().map(|r| format!("{r:.1}")).collect();
        println!(
            "{row}: median {:.1} M/s; runs {}",
            median(runs),
            shown.join(" ")
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Spin round trips: pairs of batches per round, and round trips per batch (the cache line
/// runs twice as many, each half as long).
const RTT_BATCHES: usize = 20;
const RTT_BATCH: u64 = 2_500;

fn interleaved(rounds: usize) -> Rounds {
    let mut r = Rounds::default();
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    let mut memcpy = Memcpy::new();
    const N: u64 = 1_000_000;
    for _ in 0..rounds {
        {
            let mut s = BytesSession::new("spin", 1 << 16, false);
            r.add_run("bytes64", N, &s.one_per_call(N, 64));
            r.add("rtrb64", rate(N, rtrb_run::<64>(N)) / 1e6);
            r.add_run("bytes8", N, &s.one_per_call(N, 8));
        }
        {
            let mut s = BytesSession::new("spin", 1 << 20, true);
            r.add_run("batched64", N, &s.batched(N, 64, 32));
        }
        {
            let mut s = PodSession::new(1);
            r.add("pod", rate(4 * N, s.run(4 * N, 1)) / 1e6);
            r.add("rtrb8", rate(4 * N, rtrb_run::<8>(4 * N)) / 1e6);
            let mut s = PodSession::new(32);
            r.add("podb", rate(16 * N, s.run(16 * N, 32)) / 1e6);
        }
        {
            let mut s = BytesSession::new("spin", 8 << 20, false);
            let run = s.bulk(300, 1 << 20);
            r.add("bulk1m", rate(300, run.time) * 1048576.0 / 1e9);
            r.add(
                "memcpy1m_hot",
                rate(1000, memcpy.hot(1000, 1 << 20)) * 1048576.0 / 1e9,
            );
        }
        {
            // Short batches of each, alternating; the ratio of a round is the median of the
            // ratios of adjacent pairs of batches. Adjacent batches share the host's current
            // placement of the two vCPUs (which sets the cost of a cache-line transfer and
            // changes over seconds), and a batch interrupted by another process's time slice
            // (many, on a loaded machine) spoils only its pair. The echo child is stopped
            // while the cache line runs: its spinning wait would share CPU 1 with it.
            let mut p = PingPong::new("spin");
            let (mut ring, mut line, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..RTT_BATCHES {
                let a = p.run(RTT_BATCH).as_secs_f64() * 1e6 / RTT_BATCH as f64;
                p.pause(true);
                let b =
                    cacheline_pingpong(2 * RTT_BATCH).as_secs_f64() * 1e6 / (2 * RTT_BATCH) as f64;
                p.pause(false);
                ring.push(a);
                line.push(b);
                pairs.push(a / b);
            }
            r.add("rtt_spin", median(ring));
            r.add("rtt_line", median(line));
            r.add("rtt_ratio", median(pairs));
        }
        {
            let mut p = PingPong::new("park");
            r.add("idle_park", idle_round_trip(|| p.run(1), 400));
            let mut s = SockPingPong::new();
            r.add("idle_sock", idle_round_trip(|| s.run(1), 400));
            #[cfg(feature = "tokio")]
            {
                let mut a = asynchronous::PingPong::new();
                r.add("idle_async", idle_round_trip(|| a.run(1), 400));
            }
        }
        {
            let mut s = BytesSession::new("park", 1 << 16, false);
            r.add_run("park64", N, &s.one_per_call(N, 64));
            #[cfg(feature = "tokio")]
            {
                let mut a = asynchronous::BytesSession::new(1 << 16);
                let w0 = a.wakes();
                r.add("async64", rate(N, a.one_per_call(N, 64)) / 1e6);
                r.add("async_wakes", (a.wakes() - w0) as f64 * 1e6 / N as f64);
            }
        }
    }
    r
}

fn table() {
    let rounds = rounds();
    let r = interleaved(rounds);
    let md = |n: &str| r.median(n);
    let mut out = String::new();
    let mut row = |what: &str, value: String, reference: String, ratio: f64, target: &str| {
        let bound = |t: &str| {
            t.trim_start_matches(['≥', '≤', ' '])
                .trim_end_matches('×')
                .parse::<f64>()
        };
        let mark = match (target.chars().next(), bound(target)) {
            (Some('≥'), Ok(b)) if ratio >= b => " ✓",
            (Some('≤'), Ok(b)) if ratio <= b => " ✓",
            (Some('≥' | '≤'), Ok(_)) => " ✗",
            _ => "",
        };
        out.push_str(&format!(
            "| {what} | {value} | {reference} | {ratio:.2} | {target}{mark} |\n"
        ));
    };
    let (b64, r64, b8, r8, pod) = (
        md("bytes64"),
        md("rtrb64"),
        md("bytes8"),
        md("rtrb8"),
        md("pod"),
    );
    row(
        "64 B records, one per call, spin, 64 KiB ring",
        format!("{b64:.1} M/s"),
        format!("rtrb 64 B: {r64:.1} M/s"),
        r.ratio("bytes64", "rtrb64"),
        "≥ 1.0×",
    );
    row(
        "8 B records, one per call",
        format!("{b8:.1} M/s"),
        format!("rtrb u64: {r8:.1} M/s"),
        r.ratio("bytes8", "rtrb8"),
        "≥ 0.5×",
    );
    row(
        "u64 typed path, one per call, 1 024 slots",
        format!("{pod:.1} M/s"),
        format!("rtrb u64: {r8:.1} M/s"),
        r.ratio("pod", "rtrb8"),
        "≥ 1.0×",
    );
    row(
        "64 B records, batched 32 (both sides), 1 MiB ring",
        format!("{:.1} M/s", md("batched64")),
        format!("rtrb 64 B: {r64:.1} M/s"),
        r.ratio("batched64", "rtrb64"),
        "≥ 1.5×",
    );
    row(
        "u64 typed, in-place batches of 32",
        format!("{:.1} M/s", md("podb")),
        format!("one per call: {pod:.1} M/s"),
        r.ratio("podb", "pod"),
        "report",
    );
    row(
        "1 MiB in place + copy out",
        format!("{:.1} GB/s", md("bulk1m")),
        format!("hot memcpy 1 MiB: {:.1} GB/s", md("memcpy1m_hot")),
        r.ratio("bulk1m", "memcpy1m_hot"),
        "≥ 0.6×",
    );
    row(
        "64 B round trip, spin",
        format!("{:.3} µs", md("rtt_spin")),
        format!(
            "cache line: {:.3} µs ({RTT_BATCHES} alternating pairs of batches per round; ratio per round: {})",
            md("rtt_line"),
            r.values("rtt_ratio")
        ),
        md("rtt_ratio"),
        "≤ 1.5×",
    );
    row(
        "busy stream, default policy, 64 B: futex wakes per 10^6 records",
        format!(
            "{:.2} ({:.1} M/s, parks {:.1} per 10^6)",
            md("park64.wakes"),
            md("park64"),
            md("park64.parks")
        ),
        "target".into(),
        md("park64.wakes"),
        "≤ 1",
    );
    row(
        "64 B idle round trip (median), default policy",
        format!("{:.1} µs", md("idle_park")),
        format!("SEQPACKET idle: {:.1} µs", md("idle_sock")),
        r.ratio("idle_park", "idle_sock"),
        "≤ 0.8×",
    );
    #[cfg(feature = "tokio")]
    {
        row(
            "async ring, 64 B one per call, default policy",
            format!(
                "{:.1} M/s ({:.2} signals per 10^6)",
                md("async64"),
                md("async_wakes")
            ),
            format!("blocking ring, same policy: {:.1} M/s", md("park64")),
            r.ratio("async64", "park64"),
            "≥ 0.9×",
        );
        row(
            "async ring, 64 B idle round trip (median)",
            format!("{:.1} µs", md("idle_async")),
            format!("blocking ring (futex): {:.1} µs", md("idle_park")),
            r.ratio("idle_async", "idle_park"),
            "report",
        );
    }
    let mut counters = String::from(
        "\n| byte-ring case | producer index loads / record | found full / record | consumer index loads / record | found empty / record | wakes / 10^6 records |\n|---|---|---|---|---|---|\n",
    );
    for (name, what) in [
        ("bytes64", "64 B one per call, spin"),
        ("bytes8", "8 B one per call, spin"),
        ("batched64", "64 B batched 32, spin, 1 MiB"),
        ("park64", "64 B one per call, default policy"),
    ] {
        counters.push_str(&format!(
            "| {what} | {:.4} | {:.4} | {:.4} | {:.4} | {:.2} |\n",
            md(&format!("{name}.p_loads")),
            md(&format!("{name}.p_full")),
            md(&format!("{name}.c_loads")),
            md(&format!("{name}.c_empty")),
            md(&format!("{name}.wakes")),
        ));
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let head = format!(
        "machine: {cpu}, {} CPUs, kernel {}, load average {}; calibrated spin budget {:?}; medians of {rounds} interleaved rounds (ratio: median of per-round ratios)\n\n| scenario | sealpipe ring | reference (same run) | ratio | target |\n|---|---|---|---|---|\n",
        cpus(),
        rustix::system::uname().release().to_string_lossy(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        sealpipe::ring::calibrated_spin_budget(),
    );
    let text = head + &out + &counters;
    println!("\n{text}");
    if let Ok(mut f) = std::fs::File::create("target/ring-bench.md") {
        let _ = f.write_all(text.as_bytes());
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = throughput_benches, latency_benches
}

fn main() {
    cpus(); // before anything pins this process
    if let Ok(role) = std::env::var(ROLE) {
        child_main(&role);
        return;
    }
    if let Ok(row) = std::env::var("SEALPIPE_RING_ONLY") {
        only(&row);
        return;
    }
    benches();
    let measuring = std::env::args().any(|a| a == "--bench");
    if measuring {
        table();
    }
    Criterion::default().configure_from_args().final_summary();
}
