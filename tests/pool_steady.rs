//! A pool in steady state: no heap allocation per message on either side (a counting
//! allocator), and no system call per message but the notice's `sendmsg` and `recvmsg`
//! (every system call of a real process counted with `ptrace`).
//!
//! Both measure the same loop: one thread plays producer and consumer of one channel in
//! rounds of 128 messages (lease, fill, send ×128; receive, copy out, drop ×128), so that
//! no call ever waits and the counts show the pool's own costs: releases are batched, a
//! lease reads them only when its class has no free buffer.
#![allow(unsafe_code)] // a counting allocator; ptrace

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use sealpipe::pool::{Pool, PoolOptions, PoolReceiver};
use sealpipe::{Channel, Policy};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts (a const thread-local, no
// allocation of its own).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const LEN: usize = 4096;
const ROUND: usize = 128;
const T: Duration = Duration::from_secs(20);

struct Loop {
    pool: Pool,
    tx: sealpipe::pool::PoolSender,
    rx: PoolReceiver,
    copy: Vec<u8>,
}

impl Loop {
    fn new() -> Loop {
        let (a, b) = Channel::pair().unwrap();
        let pool = Pool::new(PoolOptions::new().max_bytes(4 << 20).slab_len(4 << 20)).unwrap();
        let tx = pool.attach(a).unwrap();
        let rx = PoolReceiver::new(b, &Policy::producer_writable()).unwrap();
        Loop {
            pool,
            tx,
            rx,
            copy: vec![0u8; LEN],
        }
    }

    /// `rounds` rounds of `ROUND` messages; returns a checksum of what was read.
    fn run(&mut self, rounds: usize) -> u64 {
        let mut sum = 0u64;
        for r in 0..rounds {
            for i in 0..ROUND {
                let mut lease = self.pool.lease_timeout(LEN, T).unwrap();
                lease[..8].copy_from_slice(&((r * ROUND + i) as u64).to_le_bytes());
                lease.send_timeout(&[&self.tx], T).unwrap();
            }
            for _ in 0..ROUND {
                let buf = self.rx.recv_timeout(T).unwrap();
                buf.read_at(0, &mut self.copy).unwrap();
                sum = sum.wrapping_add(u64::from_le_bytes(self.copy[..8].try_into().unwrap()));
            }
        }
        sum
    }
}

fn expected_sum(from: usize, rounds: usize) -> u64 {
    (from * ROUND..(from + rounds) * ROUND)
        .map(|i| i as u64)
        .sum()
}

#[test]
fn steady_state_allocates_nothing_per_message() {
    let mut l = Loop::new();
    assert_eq!(l.run(20), expected_sum(0, 20)); // warm up: memory made, capacities reached
    let before = ALLOCS.with(Cell::get);
    let sum = l.run(50);
    let allocs = ALLOCS.with(Cell::get) - before;
    assert_eq!(sum, (0..50 * ROUND).map(|i| i as u64).sum::<u64>());
    assert_eq!(
        allocs,
        0,
        "{allocs} heap allocations in {} messages (both sides)",
        50 * ROUND
    );
}

// ----- system calls, counted with ptrace -----

const MEASURED_ROUNDS: usize = 40;

/// The traced child: waits for the tracer, warms up, then runs the measured rounds between
/// two `getppid` calls (the markers the tracer looks for).
fn traced_child() -> i32 {
    let mut go = [0u8; 1];
    std::io::stdin().read_exact(&mut go).unwrap();
    let mut l = Loop::new();
    l.run(20);
    let _ = rustix::process::getppid();
    let sum = l.run(MEASURED_ROUNDS);
    let _ = rustix::process::getppid();
    assert_eq!(
        sum,
        (0..MEASURED_ROUNDS * ROUND).map(|i| i as u64).sum::<u64>()
    );
    0
}

#[repr(C)]
#[derive(Default)]
struct SyscallInfo {
    op: u8,
    pad: [u8; 3],
    arch: u32,
    instruction_pointer: u64,
    stack_pointer: u64,
    /// Entry: nr; exit: rval (s64) then is_error (u8).
    data: [u64; 7],
}

const PTRACE_GET_SYSCALL_INFO: libc::c_uint = 0x420e;
const OP_ENTRY: u8 = 1;
const OP_EXIT: u8 = 2;

#[test]
fn steady_state_makes_no_system_call_per_message_but_the_notice() {
    if std::env::var("SEALPIPE_POOL_TRACED").is_ok() {
        std::process::exit(traced_child());
    }
    let exe = std::env::current_exe().unwrap();
    #[allow(clippy::zombie_processes)] // reaped by the waitpid loop below
    let mut child = Command::new(exe)
        .args([
            "steady_state_makes_no_system_call_per_message_but_the_notice",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("SEALPIPE_POOL_TRACED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Attach to every thread the child has (it is starting up, or blocked reading stdin),
    // again until no new one appears: threads made after their parent was attached are
    // attached by the kernel (PTRACE_O_TRACECLONE), one made just before is found here.
    let mut seized = std::collections::HashSet::new();
    loop {
        let tids: Vec<libc::pid_t> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .filter(|tid| !seized.contains(tid))
            .collect();
        if tids.is_empty() {
            break;
        }
        for tid in tids {
            seized.insert(tid);
            // SAFETY: plain ptrace requests on our own child's threads.
            let r = unsafe {
                libc::ptrace(
                    libc::PTRACE_SEIZE,
                    tid,
                    0,
                    libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE,
                )
            };
            if r != 0 {
                // Already attached through its parent's clone, or gone.
                let e = std::io::Error::last_os_error().raw_os_error();
                assert!(
                    e == Some(libc::EPERM) || e == Some(libc::ESRCH),
                    "PTRACE_SEIZE: {e:?}"
                );
                continue;
            }
            // SAFETY: as above.
            let r = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
            assert_eq!(
                r,
                0,
                "PTRACE_INTERRUPT: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    child.stdin.take().unwrap().write_all(b"g").unwrap();

    // Per thread: phase (0 before the first marker, 1 measuring, 2 after), the system
    // call in progress, and counts of what it called while measuring.
    #[derive(Default)]
    struct Thread {
        phase: u8,
        nr: u64,
        calls: HashMap<u64, u64>,
        would_block: u64,
    }
    let mut threads: HashMap<libc::pid_t, Thread> = HashMap::new();
    let exit_code = loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let tid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
        assert!(tid > 0, "waitpid: {}", std::io::Error::last_os_error());
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            if tid == pid {
                break if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
            }
            continue;
        }
        let sig = libc::WSTOPSIG(status);
        let mut deliver = 0;
        if sig == libc::SIGTRAP | 0x80 {
            let mut info = SyscallInfo::default();
            // SAFETY: the kernel writes at most `size_of::<SyscallInfo>()` bytes into it.
            let n = unsafe {
                libc::ptrace(
                    PTRACE_GET_SYSCALL_INFO as _,
                    tid,
                    std::mem::size_of::<SyscallInfo>(),
                    &mut info as *mut SyscallInfo,
                )
            };
            assert!(
                n > 0,
                "PTRACE_GET_SYSCALL_INFO: {}",
                std::io::Error::last_os_error()
            );
            let t = threads.entry(tid).or_default();
            if info.op == OP_ENTRY {
                t.nr = info.data[0];
                if t.nr == libc::SYS_getppid as u64 {
                    t.phase += 1;
                } else if t.phase == 1 {
                    *t.calls.entry(t.nr).or_default() += 1;
                }
            } else if info.op == OP_EXIT
                && t.phase == 1
                && info.data[0] as i64 == -(libc::EAGAIN as i64)
            {
                t.would_block += 1;
            }
        } else if sig == libc::SIGTRAP || (status >> 16) != 0 {
            // A ptrace event (clone, interrupt): nothing to deliver.
        } else if sig != libc::SIGSTOP {
            deliver = sig;
        }
        // SAFETY: resume the stopped tracee until its next system call.
        unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0, deliver) };
    };
    assert_eq!(exit_code, 0, "the traced child failed");
    let measured: Vec<&Thread> = threads.values().filter(|t| t.phase >= 2).collect();
    assert_eq!(
        measured.len(),
        1,
        "one thread ran the measured rounds; threads (tid, phase, calls): {:?}",
        threads
            .iter()
            .map(|(tid, t)| (*tid, t.phase, t.calls.values().sum::<u64>()))
            .collect::<Vec<_>>()
    );
    let t = measured[0];
    let messages = (MEASURED_ROUNDS * ROUND) as u64;
    let sendmsg = t
        .calls
        .get(&(libc::SYS_sendmsg as u64))
        .copied()
        .unwrap_or(0);
    let recvmsg = t
        .calls
        .get(&(libc::SYS_recvmsg as u64))
        .copied()
        .unwrap_or(0);
    let other: Vec<(u64, u64)> = t
        .calls
        .iter()
        .filter(|(nr, _)| **nr != libc::SYS_sendmsg as u64 && **nr != libc::SYS_recvmsg as u64)
        .map(|(nr, n)| (*nr, *n))
        .collect();
    // One notice sent and received per message; releases in batches, read when needed.
    assert!(
        other.is_empty(),
        "other system calls (nr, count): {other:?}"
    );
    let extra = sendmsg + recvmsg - 2 * messages;
    assert!(
        sendmsg >= messages && recvmsg >= messages && extra * 8 <= messages,
        "{messages} messages: {sendmsg} sendmsg, {recvmsg} recvmsg ({} would block)",
        t.would_block
    );
    eprintln!(
        "{messages} messages: {sendmsg} sendmsg, {recvmsg} recvmsg ({} would block): \
         {:.3} system calls per message besides the notice's two",
        t.would_block,
        extra as f64 / messages as f64
    );
}
