//! Waiting for the peer: spin, then park on a futex in shared memory, with a deadline and
//! dead-peer detection.
//!
//! A side waits for the *peer's* index word to change from the value it saw. It parks with a
//! non-private `FUTEX_WAIT` on that word through its read-only mapping of the peer's memfd
//! (a wait only reads the word; the futex key is the shared page, so it matches the peer's
//! mapping at any address), and the peer wakes it with `FUTEX_WAKE` on the same word through
//! its own writable mapping. The kernel compares the word with the value seen under its
//! hash-bucket lock, so a publication that lands between our check and our sleep makes the
//! wait return at once. Whether a wake is needed is decided by the protocol in
//! [`super::core::publish`] / [`super::core::prepare_park`].
//!
//! A side parked in an async runtime (feature `tokio`) asks instead for a signal: one byte
//! sent on the setup channel, which makes its end readable and wakes its task.

use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::thread::futex;

use super::core;
use crate::error::{Error, Result};
use crate::Channel;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// How a side waits when the ring is full (producer) or empty (consumer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpinPolicy {
    /// Never sleep: spin until the peer moves (lowest latency, burns a core while waiting).
    /// The deadline and the peer's liveness are still checked every few microseconds.
    Spin,
    /// Spin and yield for up to this many backoff steps (`crossbeam_utils::Backoff`: steps
    /// 0–6 spin 2^step times, later steps yield), then park on a futex. How long that is
    /// depends on the machine (a `pause` costs 8–28 ns on x86 CPUs of one kind): prefer
    /// [`SpinPolicy::Calibrated`].
    SpinThenPark(u32),
    /// Park at once (idle-friendly; every wait is a system call).
    Park,
    /// The default: spin for a time budget measured on the running machine, then park.
    ///
    /// The budget is twice the measured latency of a cross-thread futex wake (the cost of
    /// parking and being woken), within 50–200 µs. It is measured once per process, the
    /// first time a ring is set up with this policy (about 1 ms, in a short-lived helper
    /// thread; 60 µs if that thread cannot be started). Spinning for as long as a park and
    /// wake would cost keeps a busy stream free of system calls while an idle side still
    /// sleeps. [`calibrated_spin_budget`] tells the value (and measures it, if called
    /// first: a process that will forbid itself new threads, with a seccomp filter for
    /// example, should call it before, or choose another policy).
    Calibrated,
}

impl Default for SpinPolicy {
    /// [`SpinPolicy::Calibrated`].
    fn default() -> Self {
        SpinPolicy::Calibrated
    }
}

/// The spin budget of [`SpinPolicy::Calibrated`] on this machine (measured on first use).
///
/// ```
/// let budget = sealpipe::ring::calibrated_spin_budget();
/// assert!(budget >= std::time::Duration::from_micros(50));
/// assert!(budget <= std::time::Duration::from_micros(200));
/// ```
pub fn calibrated_spin_budget() -> Duration {
    static BUDGET: OnceLock<Duration> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let wake = measure_wake_latency().unwrap_or(FALLBACK_WAKE);
        (wake * 2).clamp(MIN_BUDGET, MAX_BUDGET)
    })
}

/// Bounds of the calibrated spin budget.
const MIN_BUDGET: Duration = Duration::from_micros(50);
const MAX_BUDGET: Duration = Duration::from_micros(200);
/// Wake latency assumed when it cannot be measured (a cross-CPU wake costs 25–100 µs on
/// the project's VMs).
const FALLBACK_WAKE: Duration = Duration::from_micros(30);

/// Median latency of a cross-thread futex wake: from just before `FUTEX_WAKE` to the moment
/// the parked thread runs again. `None` if the helper thread cannot be started.
fn measure_wake_latency() -> Option<Duration> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    const ROUNDS: u32 = 5;
    struct Shared {
        word: AtomicU32,
        parked: AtomicBool,
        t0: std::sync::Mutex<Option<Instant>>,
    }
    let shared = Arc::new(Shared {
        word: AtomicU32::new(0),
        parked: AtomicBool::new(false),
        t0: std::sync::Mutex::new(None),
    });
    let theirs = shared.clone();
    let waiter = std::thread::Builder::new()
        .name("sealpipe-calibrate".into())
        .spawn(move || {
            let mut samples = Vec::with_capacity(ROUNDS as usize);
            for round in 1..=ROUNDS {
                theirs.parked.store(true, Ordering::Release);
                let deadline = Instant::now() + Duration::from_millis(50);
                while theirs.word.load(Ordering::Acquire) != round {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return samples;
                    }
                    futex_wait(&theirs.word, round - 1, left);
                }
                let woke = Instant::now();
                let t0 = theirs.t0.lock().ok().and_then(|g| *g);
                if let Some(t0) = t0 {
                    samples.push(woke.saturating_duration_since(t0));
                }
            }
            samples
        })
        .ok()?;
    for round in 1..=ROUNDS {
        if waiter.is_finished() {
            break; // it gave up (this thread was too slow): use what it measured
        }
        let give_up = Instant::now() + Duration::from_millis(50);
        while !shared.parked.swap(false, Ordering::AcqRel) && Instant::now() < give_up {
            std::thread::yield_now();
        }
        // Give it time to fall asleep in FUTEX_WAIT.
        std::thread::sleep(Duration::from_micros(200));
        if let Ok(mut t0) = shared.t0.lock() {
            *t0 = Some(Instant::now());
        }
        shared.word.store(round, Ordering::Release);
        let _ = futex::wake(&shared.word, futex::Flags::empty(), 1);
    }
    let mut samples = waiter.join().ok()?;
    samples.sort();
    samples.get(samples.len() / 2).copied()
}

impl SpinPolicy {
    /// Whether this side ever parks (the peer must then check its wait word when publishing).
    pub(crate) fn parks(self) -> bool {
        self != SpinPolicy::Spin
    }

    /// How long to spin before parking, for the time-based policies.
    pub(crate) fn budget(self) -> Option<Duration> {
        match self {
            SpinPolicy::Calibrated => Some(calibrated_spin_budget()),
            _ => None,
        }
    }
}

/// Counters of one side of a ring ([`Producer::stats`](super::Producer::stats) and the
/// other sides' `stats`): its traffic, its waits, and whether its peer corrupted the ring.
/// Updated with plain increments on the slow paths only (a busy ring's fast path counts
/// nothing), so they are always on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingStats {
    /// Units this side moved through the ring: for a byte ring, bytes of ring space it
    /// committed (producer) or consumed (consumer), records with their 8-byte headers
    /// rounded up to 8 plus the padding skipped at the wrap; for a typed ring, items
    /// (records). Exact, although counted only when the peer's index is loaded.
    pub units: u64,
    /// Times the peer wrote an impossible value (the ring failed; 0 or 1, since a failed
    /// ring stays failed).
    pub peer_corrupt: u64,
    /// Times this side parked: `FUTEX_WAIT` calls, or (async) waits for its runtime to
    /// report the channel readable.
    pub parks: u64,
    /// Wakes sent by this side (each publication that found the peer parked): `FUTEX_WAKE`
    /// calls, or signal bytes for a peer parked in an async runtime.
    pub wakes: u64,
    /// Parks that ended by their time slice running out although the peer had already moved
    /// its index: a wakeup that was due but did not come. Stays 0 unless the protocol is
    /// broken (or the peer is hostile, or was descheduled between publishing and waking).
    pub missed_wakes: u64,
    /// Loads of the peer's index word outside waits: a producer caches the consumer's
    /// index and reloads it only when the cached copy shows the ring full; a consumer loads
    /// the producer's index only when it finds the ring empty (a byte-ring consumer learns
    /// that a record is ready from the record's header, a typed-ring consumer from its
    /// cached copy of the index). This stays far below the record count on a busy stream.
    pub index_loads: u64,
    /// Times a reload of the peer's index still found the ring full (producer) or empty
    /// (consumer): the calls that then waited or returned [`Error::WouldBlock`].
    pub found_blocked: u64,
}

impl std::fmt::Display for RingStats {
    /// One line: `1024 units, 3 parks, 2 wakes, 0 missed wakes, 40 index loads (5 found
    /// blocked), peer corrupt 0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} units, {} parks, {} wakes, {} missed wakes, {} index loads ({} found blocked), peer corrupt {}",
            self.units,
            self.parks,
            self.wakes,
            self.missed_wakes,
            self.index_loads,
            self.found_blocked,
            self.peer_corrupt
        )
    }
}

/// Longest single park: how often a parked side looks at its deadline and at whether the
/// peer is still alive (its end of the setup channel still open).
pub(crate) const PEER_CHECK: Duration = Duration::from_millis(20);

/// Spins between liveness checks in [`SpinPolicy::Spin`].
const SPINS_PER_CHECK: u32 = 4096;

/// Waits until `peer_index` differs from `seen` or `changed()` says that what the engine
/// waits for has changed, or fails. The spin phases look only at `changed()` (a byte-ring
/// consumer spins on the header word at its read position, a producer on the index); a
/// park sleeps on the index word, and ends when either has moved.
///
/// # Errors
/// [`Error::Timeout`] once `deadline` passes (`None`: never); [`Error::PeerClosed`] if the
/// peer's end of `channel` is closed (it exited or dropped its side).
#[allow(clippy::too_many_arguments)]
pub(crate) fn wait_change(
    policy: SpinPolicy,
    stats: &mut RingStats,
    peer_index: &AtomicU32,
    own_wait: &AtomicU64,
    seen: u32,
    deadline: Option<Instant>,
    channel: &Channel,
    changed: impl Fn() -> bool,
) -> Result<()> {
    // Relaxed (the words are in the peer's read-only mapping): on return the engine loads
    // them again with acquire semantics.
    let spun = &changed;
    let moved = || changed() || peer_index.load(Ordering::Relaxed) != seen;
    let backoff = Backoff::new();
    match policy {
        // One pause per look: an exponential backoff would add up to 64 pauses (several
        // hundred ns) of latency after the peer has moved.
        SpinPolicy::Spin => loop {
            for _ in 0..SPINS_PER_CHECK {
                if spun() {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            check(deadline, channel)?;
            if spun() {
                return Ok(());
            }
        },
        SpinPolicy::SpinThenPark(steps) => {
            for i in 0..steps {
                if spun() {
                    return Ok(());
                }
                backoff.snooze();
                if i % 16 == 15 {
                    check(deadline, channel)?;
                }
            }
        }
        SpinPolicy::Calibrated => {
            let start = Instant::now();
            let budget = policy.budget().unwrap_or(MIN_BUDGET);
            let end = match deadline {
                Some(d) => d.min(start + budget),
                None => start + budget,
            };
            // The clock is read once per 64 looks (0.5–2 µs), so the budget holds in time
            // whatever a `pause` costs on this CPU.
            loop {
                for _ in 0..64 {
                    if spun() {
                        return Ok(());
                    }
                    std::hint::spin_loop();
                }
                if Instant::now() >= end {
                    break;
                }
            }
        }
        SpinPolicy::Park => {}
    }
    loop {
        if moved() {
            return Ok(());
        }
        let slice = check(deadline, channel)?;
        if !core::prepare_park(own_wait, peer_index, seen, false) {
            return Ok(());
        }
        stats.parks += 1;
        let timed_out = futex_wait(peer_index, seen, slice);
        core::end_park(own_wait);
        if moved() {
            if timed_out {
                stats.missed_wakes += 1;
            }
            return Ok(());
        }
    }
}

/// Checks deadline and peer; returns the time to the next check.
fn check(deadline: Option<Instant>, channel: &Channel) -> Result<Duration> {
    let mut slice = PEER_CHECK;
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout);
        }
        slice = slice.min(left);
    }
    if peer_gone(channel) || channel.peer_exited() {
        return Err(Error::PeerClosed);
    }
    Ok(slice)
}

/// Whether the peer's end of the channel is closed (`POLLHUP`/`POLLRDHUP`); a pending
/// message (`POLLIN` alone) does not count.
pub(crate) fn peer_gone(channel: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(channel, PollFlags::RDHUP)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
}

/// `FUTEX_WAIT` (shared, not private) on `word` while it holds `expected`, for at most
/// `timeout`. Returns whether the wait ended by its timeout. Spurious returns are fine:
/// callers re-check.
///
/// # References
///  - [`futex(2)`](https://man7.org/linux/man-pages/man2/futex.2.html)
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> bool {
    let ts = Timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    matches!(
        futex::wait(word, futex::Flags::empty(), expected, Some(&ts)),
        Err(Errno::TIMEDOUT)
    )
}

/// Wakes the peer as its wait word asked: `FUTEX_WAKE` (shared) of one waiter on
/// `own_index` (an SPSC ring has one legitimate waiter per word), or one signal byte on
/// `channel` for a peer parked in an async runtime.
pub(crate) fn wake(how: core::Wake, own_index: &AtomicU32, channel: &Channel) {
    match how {
        core::Wake::None => {}
        // Errors are impossible for a valid mapped word; a lost wake is bounded by PEER_CHECK.
        core::Wake::Futex => {
            let _ = futex::wake(own_index, futex::Flags::empty(), 1);
        }
        // Never blocks, whatever the peer does (MSG_DONTWAIT is per call, unlike O_NONBLOCK
        // on a shared file description). EAGAIN means the peer's queue is full of unread
        // signals, so it is readable and will wake anyway; EPIPE means it is gone, which
        // its own side notices.
        core::Wake::Signal => {
            let _ = rustix::net::send(
                channel,
                &[1],
                rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
            );
        }
    }
}
