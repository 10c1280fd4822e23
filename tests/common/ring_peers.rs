//! Helpers for tests of the ring across processes: a spawned peer taken apart (so that its
//! channel can be handed to a ring), memfd mappings and descriptors of this process, and
//! the pseudo-random sequence the peers agree on.

use std::time::{Duration, Instant};

use sealpipe::Channel;

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Mappings of memfds in this process (other mappings, such as test threads' stacks, come
/// and go with the test harness).
pub fn memfd_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter(|l| l.contains("/memfd:"))
        .count()
}

pub fn fd_list() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| format!("{:?}", std::fs::read_link(e.path()).ok()))
        .collect();
    v.sort();
    v
}

/// A spawned peer taken apart, so the channel can be handed to a ring.
pub struct Peer2 {
    pub peer: PeerHandle,
    pub channel: Channel,
}

/// The process half of a [`Peer2`].
pub struct PeerHandle(pub std::process::Child);

impl PeerHandle {
    /// Waits (at most 60 s) for the peer and returns its exit code (128 + signal if killed).
    pub fn wait(mut self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("peer did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILLs and reaps the peer.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Takes a spawned peer apart into its process and its channel.
pub fn split(p: super::Peer) -> Peer2 {
    Peer2 {
        peer: PeerHandle(p.child),
        channel: p.channel,
    }
}
