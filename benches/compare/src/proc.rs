//! Processes: spawning a consumer (this same binary, re-executed in a child role), pinning,
//! the control socket that orders the rounds, and memory accounting (PSS).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};

/// Pins the calling thread to one CPU (best effort).
pub fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// Number of CPUs this process could use when it started (read once, before any pinning:
/// afterwards the affinity mask says 1).
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The CPU the `i`-th consumer runs on: never the producer's CPU 0 when there are two or more.
pub fn consumer_cpu(i: usize) -> usize {
    let n = cpus();
    if n < 2 {
        0
    } else {
        1 + i % (n - 1)
    }
}

/// What a child is told on its command line.
#[derive(Clone, Debug)]
pub struct Params {
    /// Role (which transport and case), e.g. `small/pipe`.
    pub role: String,
    /// Message size in bytes.
    pub size: usize,
    /// Messages per round.
    pub count: usize,
    /// Rounds (the first is the warm-up).
    pub rounds: usize,
    /// Free-form extra argument (a service or server name).
    pub extra: String,
}

/// The parent's handle on a consumer process.
pub struct Peer {
    child: Option<Child>,
    ctl: UnixStream,
}

impl Peer {
    /// Spawns this binary as a consumer with `params`, inheriting `fds` (closed here after
    /// the spawn), pinned to `cpu`; waits until it says it is ready.
    pub fn spawn(params: &Params, cpu: usize, fds: Vec<OwnedFd>) -> Peer {
        let (ctl, child_ctl) = UnixStream::pair().expect("control socketpair");
        let child_ctl = OwnedFd::from(child_ctl);
        let mut all = vec![child_ctl];
        all.extend(fds);
        for fd in &all {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).expect("clear CLOEXEC");
        }
        let fd_list: Vec<String> = all.iter().map(|fd| fd.as_raw_fd().to_string()).collect();
        let child = Command::new(std::env::current_exe().expect("current_exe"))
            .arg("--child")
            .arg(&params.role)
            .arg(cpu.to_string())
            .arg(params.size.to_string())
            .arg(params.count.to_string())
            .arg(params.rounds.to_string())
            .arg(if params.extra.is_empty() {
                "-"
            } else {
                &params.extra
            })
            .arg(fd_list.join(","))
            .spawn()
            .expect("spawn consumer");
        drop(all);
        let mut peer = Peer {
            child: Some(child),
            ctl,
        };
        peer.expect(b'R');
        peer
    }

    /// Reads one control byte and panics unless it is `want` (EOF means the child failed).
    pub fn expect(&mut self, want: u8) {
        let got = self.read_byte();
        assert_eq!(got, want, "{}: unexpected control byte", self.describe());
    }

    /// Reads one control byte.
    pub fn read_byte(&mut self) -> u8 {
        let mut b = [0u8];
        if self.ctl.read_exact(&mut b).is_err() {
            let status = self.child.take().map(|mut c| c.wait());
            panic!("consumer exited early ({status:?}): it found bad data or failed");
        }
        b[0]
    }

    /// Reads control bytes until the end-of-round `D`, skipping flow-control acks.
    pub fn wait_done(&mut self) {
        while self.read_byte() != b'D' {}
    }

    /// Sends one control byte.
    pub fn send(&mut self, b: u8) {
        self.ctl.write_all(&[b]).expect("control write");
    }

    /// Panics if the consumer has exited (it found bad data): for producers that spin on a
    /// full ring and would otherwise wait forever. Call it every few thousand spins.
    pub fn check_alive(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                panic!("consumer exited early ({status}): it found bad data or failed");
            }
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Tells the child to exit and checks that it exited with status 0.
    pub fn finish(mut self) {
        self.send(b'X');
        let status = self.child.take().expect("child").wait().expect("wait");
        assert!(status.success(), "consumer failed: {status}");
    }

    fn describe(&self) -> String {
        format!("consumer pid {}", self.pid())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The child's end of the control socket.
pub struct Ctl(File, bool);

impl Ctl {
    /// Says "ready" (after setup, before the first round).
    pub fn ready(&mut self) {
        self.0.write_all(b"R").expect("control write");
    }
    /// Says "this round is received and checked".
    pub fn done(&mut self) {
        self.0.write_all(b"D").expect("control write");
    }
    /// Sends one byte (setup steps some transports need).
    pub fn send_byte(&mut self, b: u8) {
        self.0.write_all(&[b]).expect("control write");
    }
    /// Flow-control credit: "I have consumed `ACK_EVERY` more messages".
    pub fn ack(&mut self) {
        self.0.write_all(b"A").expect("control write");
    }
    /// Waits until the parent says exit (or closes the socket).
    pub fn wait_exit(&mut self) {
        if !self.1 {
            let mut b = [0u8];
            let _ = self.0.read(&mut b);
            self.1 = true;
        }
    }
}

/// Parses the child command line (after `--child`) into params, cpu, control and fds.
pub fn child_args(args: &[String]) -> (Params, usize, Ctl, Vec<OwnedFd>) {
    let p = Params {
        role: args[0].clone(),
        size: args[2].parse().expect("size"),
        count: args[3].parse().expect("count"),
        rounds: args[4].parse().expect("rounds"),
        extra: if args[5] == "-" {
            String::new()
        } else {
            args[5].clone()
        },
    };
    let cpu = args[1].parse().expect("cpu");
    // A consumer never outlives the runner (a spinning consumer would spin forever).
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let mut fds: Vec<OwnedFd> = args[6]
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let raw: i32 = s.parse().expect("fd");
            // SAFETY: the parent cleared CLOEXEC on exactly these descriptors and passed
            // their numbers; nothing else in this fresh process owns them.
            unsafe { OwnedFd::from_raw_fd(raw) }
        })
        .collect();
    let ctl = Ctl(File::from(fds.remove(0)), false);
    for fd in &fds {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC).expect("set CLOEXEC");
    }
    (p, cpu, ctl, fds)
}

/// Proportional set size of process `pid` in bytes (from `/proc/<pid>/smaps_rollup`).
pub fn pss(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
