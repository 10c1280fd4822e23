//! sealpipe side by side with the alternatives, cross-process, same machine, same run.
//!
//! `sealpipe-compare [--quick] [--out DIR] [--only CASE]` prints one markdown table and
//! writes `DIR/results.md` and `DIR/throughput.svg` (default DIR: `results/` next to this
//! crate's Cargo.toml). CASE is one of `small`, `bulk`, `fanout`, `pingpong`.
//!
//! A hand-rolled runner: every figure is the median of several timed rounds after a warm-up
//! round; producer and consumer are separate processes pinned to different CPUs (rtrb, the
//! in-process reference, uses two pinned threads; memcpy one thread); every payload is
//! written by the producer and every byte checked by the consumer, which fails the run on
//! any lost, reordered or corrupted message.

mod bulk;
mod data;
mod fanout;
mod pingpong;
mod proc;
mod ring;
mod rounds;
mod small;
mod svg;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Columns of the table: key, title, and whether it is an alternative a user would pick
/// (references such as memcpy are not counted as "best alternative").
pub const COLUMNS: &[(&str, &str, bool)] = &[
    ("sealpipe", "sealpipe Channel", false),
    ("ring", "sealpipe ring", false),
    ("ring-park", "sealpipe ring (park)", false),
    ("ring-async", "sealpipe ring (async, park)", false),
    ("pool", "sealpipe pool", false),
    ("seqpacket", "unix seqpacket", true),
    ("stream", "unix stream", true),
    ("pipe", "pipe", true),
    ("ipc-bytes", "ipc-channel bytes", true),
    ("ipc-shmem", "ipc-channel shmem", true),
    ("iceoryx2", "iceoryx2", true),
    ("shmem-ipc", "shmem-ipc", true),
    ("rtrb", "rtrb (threads)", false),
    ("memcpy", "memcpy (1 thread)", false),
    ("cacheline", "cache line", false),
];

/// One measured figure.
pub enum Fig {
    /// Messages and bytes per second.
    Rate { msgs: f64, bytes: f64 },
    /// Round trip.
    Rtt { median: Duration, p99: Duration },
    /// Fan-out: time of one delivery to all, and memory added (bytes).
    Fan {
        time: Duration,
        mem: u64,
        size: usize,
    },
    /// The contender failed (lost or corrupted data, or an error).
    Fail,
}

impl Fig {
    fn speed(&self) -> Option<f64> {
        match self {
            Fig::Rate { msgs, .. } => Some(*msgs),
            Fig::Rtt { median, .. } => Some(1.0 / median.as_secs_f64()),
            Fig::Fan { time, .. } => Some(1.0 / time.as_secs_f64()),
            Fig::Fail => None,
        }
    }

    fn show(&self, bulk: bool) -> String {
        match self {
            Fig::Rate { msgs, bytes } if bulk => format!("{:.2} GB/s", bytes / 1e9),
            Fig::Rate { msgs, .. } => format!("{:.2} M/s", msgs / 1e6),
            Fig::Rtt { median, p99 } => format!("{} / {} µs", us(*median), us(*p99)),
            Fig::Fan { time, mem, size } => {
                format!(
                    "{:.0} ms · {:.2}× buf",
                    time.as_secs_f64() * 1e3,
                    *mem as f64 / *size as f64
                )
            }
            Fig::Fail => "FAIL".into(),
        }
    }
}

fn us(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e6;
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

/// One row: a case at one size.
pub struct Row {
    /// Case name as shown.
    pub case: String,
    /// Message size in bytes.
    pub size: usize,
    /// Whether figures show as bytes per second.
    pub bulk: bool,
    /// Figures by column key.
    pub figs: BTreeMap<&'static str, Fig>,
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

struct Settings {
    quick: bool,
    out: PathBuf,
    only: Option<String>,
}

fn main() {
    iceoryx2::prelude::set_log_level(iceoryx2::prelude::LogLevel::Error);
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2..]);
    }
    let mut s = Settings {
        quick: false,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"),
        only: None,
    };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => s.quick = true,
            "--out" => s.out = PathBuf::from(it.next().expect("--out DIR")),
            "--only" => s.only = Some(it.next().expect("--only CASE").clone()),
            "--inject-fault" => return inject_fault(),
            "-h" | "--help" => {
                println!("usage: sealpipe-compare [--quick] [--out DIR] [--only small|bulk|fanout|pingpong] | --inject-fault");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    eprintln!(
        "{} CPUs; producer on CPU 0, consumers on the others",
        proc::cpus()
    );
    proc::pin(0);
    let start = *START.get_or_init(Instant::now);
    watchdog(start);
    let mut rows = Vec::new();
    let want = |c: &str| s.only.as_deref().is_none_or(|o| o == c);
    if want("small") {
        small_rows(&s, &mut rows);
    }
    if want("bulk") {
        bulk_rows(&s, &mut rows);
    }
    if want("fanout") {
        fanout_rows(&s, &mut rows);
    }
    if want("pingpong") {
        pingpong_rows(&s, &mut rows);
    }
    let table = table(&rows);
    println!("{table}");
    eprintln!("total {:.0} s", start.elapsed().as_secs_f64());
    std::fs::create_dir_all(&s.out).expect("create output directory");
    std::fs::write(s.out.join("results.md"), &table).expect("write results.md");
    std::fs::write(s.out.join("throughput.svg"), svg::plot(&rows)).expect("write svg");
    eprintln!("wrote {}/results.md and throughput.svg", s.out.display());
}

/// `--inject-fault`: every small-message contender corrupts one message (one bit of
/// message 1000); each must come out as `FAIL`. Exits with status 1 if any does not.
fn inject_fault() {
    data::INJECT_FAULT.store(true, std::sync::atomic::Ordering::Relaxed);
    proc::cpus();
    proc::pin(0);
    let mut missed = Vec::new();
    for &(c, _) in small::CONTENDERS {
        for size in [8, 64] {
            let fig = measure(
                &format!("small {c} {size} B, one message corrupted"),
                || rate(10_000, size, small::run(c, size, false, 10_000, 1)),
            );
            if !matches!(fig, Fig::Fail) {
                missed.push(format!("{c} {size} B"));
            }
        }
    }
    if missed.is_empty() {
        eprintln!("every contender failed on the corrupted message, as it must");
    } else {
        eprintln!("corruption NOT detected by: {}", missed.join(", "));
        std::process::exit(1);
    }
}

/// Longest a single measurement may take before the run is abandoned (a transport that
/// lost a message leaves its consumer waiting forever).
const STUCK: Duration = Duration::from_secs(240);

/// Seconds since start at which the current measurement began.
static CURRENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn watchdog(start: Instant) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let began = CURRENT.load(std::sync::atomic::Ordering::Relaxed);
        if start.elapsed().as_secs().saturating_sub(began) > STUCK.as_secs() {
            eprintln!(
                "a measurement is stuck for {} s: giving up (consumers die with us)",
                STUCK.as_secs()
            );
            std::process::exit(2);
        }
    });
}

/// Measures one figure, turning a panic (bad data, transport error) into `Fig::Fail`.
fn measure(label: &str, f: impl FnOnce() -> Fig) -> Fig {
    CURRENT.store(
        START.get().map_or(0, |s| s.elapsed().as_secs()),
        std::sync::atomic::Ordering::Relaxed,
    );
    let fig = catch_unwind(AssertUnwindSafe(f)).unwrap_or(Fig::Fail);
    eprintln!("{label:<40} {}", fig.show(label.starts_with("bulk")));
    fig
}

fn rate(count: usize, size: usize, d: Duration) -> Fig {
    let s = d.as_secs_f64();
    Fig::Rate {
        msgs: count as f64 / s,
        bytes: (count * size) as f64 / s,
    }
}

/// Rounds per run: a warm-up round and one timed round. Runs are repeated in passes.
const ROUNDS: usize = 2;

/// Passes: every contender of a row runs once per pass, one after another, so load that
/// comes and goes on a shared machine hits every contender alike; a figure is the median
/// over the passes.
fn passes(s: &Settings) -> usize {
    if s.quick {
        3
    } else {
        7
    }
}

type Job = (&'static str, String, Box<dyn FnMut() -> Fig>);

/// Runs `jobs` interleaved for `passes` passes and keeps each one's median run.
fn interleaved(passes: usize, mut jobs: Vec<Job>) -> BTreeMap<&'static str, Fig> {
    let mut runs: Vec<Vec<Fig>> = jobs.iter().map(|_| Vec::new()).collect();
    for pass in 0..passes {
        for (j, (_, label, f)) in jobs.iter_mut().enumerate() {
            runs[j].push(measure(&format!("{label} (pass {})", pass + 1), f));
        }
    }
    let mut figs = BTreeMap::new();
    for ((k, _, _), mut v) in jobs.into_iter().zip(runs) {
        let fig = if v.iter().any(|f| matches!(f, Fig::Fail)) {
            Fig::Fail
        } else {
            v.sort_by(|a, b| {
                b.speed()
                    .unwrap_or(0.0)
                    .total_cmp(&a.speed().unwrap_or(0.0))
            });
            v.swap_remove(v.len() / 2)
        };
        figs.insert(k, fig);
    }
    figs
}

fn small_rows(s: &Settings, rows: &mut Vec<Row>) {
    for batched in [false, true] {
        for size in [8usize, 64] {
            let count = match (s.quick, batched) {
                (true, false) => 100_000,
                (true, true) => 1_000_000,
                (false, false) => 1_000_000,
                (false, true) => 10_000_000,
            };
            let case = if batched {
                format!("small, batched ×{}", small::BATCH)
            } else {
                "small, one per call".into()
            };
            let mut jobs: Vec<Job> = Vec::new();
            for &(c, has_batch) in small::CONTENDERS {
                if batched && !has_batch {
                    continue;
                }
                let label = format!("small {c} {size} B batched={batched}");
                jobs.push((
                    key(c),
                    label,
                    Box::new(move || {
                        rate(count, size, small::run(c, size, batched, count, ROUNDS))
                    }),
                ));
            }
            let figs = interleaved(passes(s), jobs);
            rows.push(Row {
                case,
                size,
                bulk: false,
                figs,
            });
        }
    }
}

fn bulk_rows(s: &Settings, rows: &mut Vec<Row>) {
    let bytes_per_round: usize = if s.quick { 128 << 20 } else { 1 << 30 };
    for size in [64usize << 10, 1 << 20, 64 << 20] {
        // At least 8 per round, so that the warm-up round has touched every page a ring
        // will reuse.
        let count = (bytes_per_round / size).max(8);
        let mut jobs: Vec<Job> = Vec::new();
        for &(c, sizes) in bulk::CONTENDERS {
            if sizes.is_some_and(|v| !v.contains(&size)) {
                continue;
            }
            jobs.push((
                key(c),
                format!("bulk {c} {}", size_name(size)),
                Box::new(move || rate(count, size, bulk::run(c, size, count, ROUNDS))),
            ));
        }
        let figs = interleaved(passes(s), jobs);
        rows.push(Row {
            case: "bulk".into(),
            size,
            bulk: true,
            figs,
        });
    }
}

fn fanout_rows(s: &Settings, rows: &mut Vec<Row>) {
    let size = 64 << 20;
    for n in [1usize, 2, 4, 8] {
        let mut jobs: Vec<Job> = Vec::new();
        for &c in fanout::CONTENDERS {
            jobs.push((
                key(c),
                format!("fanout {c} to {n}"),
                Box::new(move || {
                    let (time, mem) = fanout::run(c, size, n, ROUNDS);
                    Fig::Fan { time, mem, size }
                }),
            ));
        }
        let figs = interleaved(passes(s), jobs);
        rows.push(Row {
            case: format!("fan-out to {n}"),
            size,
            bulk: false,
            figs,
        });
    }
}

fn pingpong_rows(s: &Settings, rows: &mut Vec<Row>) {
    let count = if s.quick { 5_000 } else { 20_000 };
    // Round trips of every pass pooled per contender; median and p99 of the pool.
    let mut pools: Vec<Option<Vec<Duration>>> = pingpong::CONTENDERS
        .iter()
        .map(|_| Some(Vec::new()))
        .collect();
    for pass in 0..passes(s) {
        for (j, &c) in pingpong::CONTENDERS.iter().enumerate() {
            let mut got = None;
            let fig = measure(&format!("pingpong {c} (pass {})", pass + 1), || {
                let v = pingpong::run(c, 64, count);
                let fig = pingpong::summarize(&v);
                got = Some(v);
                fig
            });
            match (got, &mut pools[j]) {
                (Some(v), Some(pool)) if !matches!(fig, Fig::Fail) => pool.extend(v),
                _ => pools[j] = None,
            }
        }
    }
    let figs = pingpong::CONTENDERS
        .iter()
        .zip(pools)
        .map(|(&c, pool)| (key(c), pool.map_or(Fig::Fail, |v| pingpong::summarize(&v))))
        .collect();
    rows.push(Row {
        case: "ping-pong RTT (median / p99)".into(),
        size: 64,
        bulk: false,
        figs,
    });
}

/// The static column key for a contender name.
fn key(c: &str) -> &'static str {
    COLUMNS
        .iter()
        .find(|(k, _, _)| *k == c)
        .map(|(k, _, _)| *k)
        .expect("known contender")
}

/// Human size: 8 B, 64 KiB, 1 MiB.
pub fn size_name(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn table(rows: &[Row]) -> String {
    let used: Vec<_> = COLUMNS
        .iter()
        .filter(|(k, _, _)| rows.iter().any(|r| r.figs.contains_key(k)))
        .collect();
    let mut out = String::from("| case | size |");
    for (_, title, _) in &used {
        out += &format!(" {title} |");
    }
    out += " sealpipe vs best alternative |\n|---|---|";
    for _ in &used {
        out += "---|";
    }
    out += "---|\n";
    for r in rows {
        out += &format!("| {} | {} |", r.case, size_name(r.size));
        for (k, _, _) in &used {
            out += &format!(
                " {} |",
                r.figs.get(k).map_or("–".into(), |f| f.show(r.bulk))
            );
        }
        let best_alt = COLUMNS
            .iter()
            .filter(|(_, _, alt)| *alt)
            .filter_map(|(k, t, _)| r.figs.get(k).and_then(Fig::speed).map(|v| (v, *t)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let ours = ["sealpipe", "ring", "ring-park", "ring-async", "pool"]
            .iter()
            .filter_map(|k| r.figs.get(k).and_then(Fig::speed))
            .max_by(f64::total_cmp);
        out += &match (ours, best_alt) {
            (Some(o), Some((a, t))) => format!(" {:.2}× ({t}) |\n", o / a),
            _ => " – |\n".into(),
        };
    }
    out
}

/// Entry point of a consumer process.
fn child(args: &[String]) {
    let (p, cpu, mut ctl, fds) = proc::child_args(args);
    proc::pin(cpu);
    let parts: Vec<&str> = p.role.split('/').collect();
    match parts.as_slice() {
        ["small", kind, b] => small::consume(kind, *b == "1", &p, &mut ctl, fds),
        ["bulk", kind] => bulk::consume(kind, &p, &mut ctl, fds),
        ["fanout", kind] => fanout::consume(kind, &p, &mut ctl, fds),
        ["pingpong", kind] => pingpong::consume(kind, &p, &mut ctl, fds),
        _ => panic!("unknown role {}", p.role),
    }
    ctl.wait_exit();
}
