//! Shared harness for tests that use real processes.
//!
//! A test plays both parts: it calls [`peer_main`] first (which, in a spawned peer, runs the
//! peer's part and exits), then spawns peers with [`spawn_peer`], which re-executes this
//! test binary running only that one test, in a named role, with a [`Channel`] inherited on
//! a descriptor (through `sealpipe::spawn`).
//!
//! ```ignore
//! #[test]
//! fn fan_out() {
//!     common::peer_main(|role, ch| match role {
//!         "reader" => { /* ... */ 0 }
//!         _ => 99,
//!     });
//!     let _serial = common::serial();
//!     let peer = common::spawn_peer("fan_out", "reader");
//!     // ... talk over peer.channel ...
//!     assert_eq!(peer.wait(), 0);
//! }
//! ```
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of the harness

use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sealpipe::Channel;

pub mod endpoints;
pub mod forge;
pub mod ring_peers;
pub mod sandboxed;

/// Environment variable carrying the role of a spawned peer.
pub const ROLE_ENV: &str = "SEALPIPE_TEST_ROLE";

/// A spawned peer process and the parent's end of its channel.
pub struct Peer {
    /// The child process.
    pub child: Child,
    /// The parent's end of the channel; the child has the other end.
    pub channel: Channel,
}

impl Peer {
    /// Closes the parent's end of the channel (so a peer reading until EOF finishes), waits
    /// for the peer (at most 60 s, then kills it) and returns its exit code; a peer killed by
    /// a signal gives `128 + signal`.
    pub fn wait(mut self) -> i32 {
        let (_, channel) = sealpipe::Channel::pair().expect("pair");
        drop(std::mem::replace(&mut self.channel, channel));
        self.exit_code()
    }

    /// Waits for the peer to exit (at most 60 s, then kills it) without closing the channel,
    /// and returns its exit code; a peer killed by a signal gives `128 + signal`.
    pub fn exit_code(&mut self) -> i32 {
        let child = &mut self.child;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                use std::os::unix::process::ExitStatusExt;
                return status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("peer did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills the peer with SIGKILL and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The peer's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// If this process is a peer spawned by [`spawn_peer`], runs `part(role, channel)` and exits
/// with the code it returns. Otherwise returns at once.
pub fn peer_main(part: impl FnOnce(&str, Channel) -> i32) {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let channel = sealpipe::spawn::worker_channel().expect("peer: no inherited channel");
        let code = part(&role, channel);
        std::process::exit(code);
    }
}

/// Spawns this test binary as a peer that runs only `test`, in `role`.
pub fn spawn_peer(test: &str, role: &str) -> Peer {
    spawn_peer_with(test, role, |_| {})
}

/// [`spawn_peer`], letting the caller adjust the command (environment, uid, ...) first.
pub fn spawn_peer_with(test: &str, role: &str, adjust: impl FnOnce(&mut Command)) -> Peer {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    // --include-ignored: the peer of an ignored test (run with --ignored) runs it too.
    cmd.args([
        test,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ROLE_ENV, role)
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    adjust(&mut cmd);
    let (child, channel) = sealpipe::spawn::spawn(&mut cmd).expect("spawn peer");
    Peer { child, channel }
}

/// Number of descriptors open in this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// The descriptors open in this process, each as `"fd -> target"` (a socket's or pipe's
/// target names its inode, so a descriptor number reused for another file shows as a
/// different entry).
pub fn fd_table() -> Vec<String> {
    let mut table: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let target = std::fs::read_link(&path).ok()?;
            Some(format!(
                "{} -> {}",
                path.file_name()?.to_str()?,
                target.display()
            ))
        })
        .collect();
    table.sort();
    table
}

/// The descriptors open at one moment, for a leak check with [`assert_no_new_fds`].
#[derive(Debug, Clone)]
pub struct Fds(Vec<String>);

/// The descriptors open in this process now.
pub fn fds() -> Fds {
    Fds(fd_table())
}

impl Fds {
    /// How many there were.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The descriptors open now that were not open then.
    pub fn opened_since(&self) -> Vec<String> {
        fd_table()
            .into_iter()
            .filter(|e| !is_listing(e) && !self.0.contains(e))
            .collect()
    }
}

/// The directory descriptor `read_dir` holds while [`fd_table`] lists `/proc/self/fd`.
fn is_listing(entry: &str) -> bool {
    entry.contains("/proc/") && entry.ends_with("/fd")
}

/// Asserts that every descriptor open now was already open at `before` (same number, same
/// file): whatever the test opened, it closed.
///
/// Descriptors that were open at `before` and are closed now are not a leak, and are
/// allowed: the library finishes earlier tests' work on its own threads (the background
/// closer disposes of peers' descriptors at its own pace), so a count taken at `before` can
/// include a descriptor that goes away during this test. The failure message lists both.
pub fn assert_no_new_fds(before: &Fds, what: &str) {
    let now = fd_table();
    let opened: Vec<&String> = now
        .iter()
        .filter(|e| !is_listing(e) && !before.0.contains(e))
        .collect();
    let closed: Vec<&String> = before
        .0
        .iter()
        .filter(|e| !is_listing(e) && !now.contains(e))
        .collect();
    assert!(
        opened.is_empty(),
        "{what}: opened and not closed: {opened:#?} (closed meanwhile: {closed:#?})"
    );
}

/// Number of mappings in this process (`/proc/self/maps` lines).
pub fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .count()
}

/// Serialises the tests of one test binary, so that descriptor and mapping counts are not
/// disturbed by tests running on other threads. Take it first thing in every test of a
/// binary that counts descriptors.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asserts that running `f` leaves no descriptor open that it opened.
pub fn assert_no_fd_leak<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let before = fds();
    let r = f();
    assert_no_new_fds(&before, what);
    r
}

/// Whether this process runs as root (some kernel limits do not apply to root).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Fails the test unless this process runs as root. For tests marked
/// `#[ignore = "needs root: ..."]`: run with `--ignored` by an unprivileged user they fail,
/// they never pass without having run. `.ci/run` runs them as root.
pub fn require_root(why: &str) {
    assert!(
        is_root(),
        "this test needs root ({why}); run it as root, as .ci/run does"
    );
}

/// Environment variable naming the descriptor [`spawn_peer_sharing`] hands to a peer.
pub const SHARED_FD_ENV: &str = "SEALPIPE_TEST_SHARED_FD";

/// [`spawn_peer`], and the peer also inherits a duplicate of `fd`: a descriptor for the
/// **same open file description** (offset, status flags), as `fork` or `SCM_RIGHTS` would
/// give it. The peer takes it with [`shared_fd`].
///
/// The duplicate is inheritable only while this call spawns the peer; hold [`serial`] so
/// that no other test of the binary spawns a process meanwhile.
pub fn spawn_peer_sharing(test: &str, role: &str, fd: std::os::fd::BorrowedFd<'_>) -> Peer {
    use std::os::fd::AsRawFd;
    let dup = rustix::io::fcntl_dupfd_cloexec(fd, 10).expect("dup");
    rustix::io::fcntl_setfd(&dup, rustix::io::FdFlags::empty()).expect("clear FD_CLOEXEC");
    let number = dup.as_raw_fd().to_string();
    let peer = spawn_peer_with(test, role, |cmd| {
        cmd.env(SHARED_FD_ENV, number);
    });
    drop(dup);
    peer
}

/// In a peer started by [`spawn_peer_sharing`], takes the shared descriptor (once).
#[allow(unsafe_code)]
pub fn shared_fd() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let fd: i32 = std::env::var(SHARED_FD_ENV)
        .expect("peer: no shared descriptor")
        .parse()
        .expect("peer: bad descriptor number");
    std::env::remove_var(SHARED_FD_ENV); // a second call fails instead of double-owning
                                         // SAFETY: the parent made `fd` inheritable just for this process and named it in the
                                         // variable, which is removed above, so exactly one owner is ever created for it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).expect("set FD_CLOEXEC");
    owned
}

/// A memory cgroup for one test (cgroup v1 `memory` controller under this process's own
/// group, or cgroup v2 with `memory` enabled), removed on drop. Creating one needs root.
pub struct MemoryCgroup {
    dir: std::path::PathBuf,
    v1: bool,
}

impl MemoryCgroup {
    /// A new group limited to `limit` bytes. With `oom_killer` false the group's OOM killer
    /// is turned off (cgroup v1 only), so an over-limit charge fails instead of killing.
    /// `Err` with the reason where this machine does not allow it.
    pub fn create(limit: u64, oom_killer: bool) -> Result<MemoryCgroup, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let name = format!("sealpipe-test-{}-{limit}", std::process::id());
        // cgroup v1: "N:memory:/path"; v2: "0::/path" with a memory controller.
        let (root, rel, v1) = if let Some(rel) = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|x| x.1.to_owned()))
        {
            ("/sys/fs/cgroup/memory", rel, true)
        } else if let Some(rel) = own
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        {
            ("/sys/fs/cgroup", rel, false)
        } else {
            return Err("no memory cgroup".into());
        };
        let dir = std::path::Path::new(root)
            .join(rel.trim_start_matches('/'))
            .join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cg = MemoryCgroup { dir, v1 };
        let limit_file = if v1 {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        std::fs::write(cg.dir.join(limit_file), limit.to_string())
            .map_err(|e| format!("cannot set {limit_file}: {e}"))?;
        if !oom_killer {
            if !v1 {
                return Err("cgroup v2 cannot disable the OOM killer for a group".into());
            }
            std::fs::write(cg.dir.join("memory.oom_control"), "1")
                .map_err(|e| format!("cannot disable the cgroup's OOM killer: {e}"))?;
        }
        Ok(cg)
    }

    /// Moves process `pid` into the group.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).map_err(|e| e.to_string())
    }

    /// The most memory the group has been charged so far, in bytes.
    pub fn peak(&self) -> u64 {
        let file = if self.v1 {
            "memory.max_usage_in_bytes"
        } else {
            "memory.peak"
        };
        std::fs::read_to_string(self.dir.join(file))
            .expect("read the cgroup's peak usage")
            .trim()
            .parse()
            .expect("a number")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
