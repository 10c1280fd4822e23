//! Timing: rounds of messages, the first a warm-up, and the median of the others; flow
//! control for transports whose messages pin memory (descriptors in flight).

use crate::proc::{Ctl, Peer};
use std::time::{Duration, Instant};

/// Runs `rounds` rounds: each calls `send_round(peer, round)` and waits for the consumer's
/// "received and checked". Returns the median time of the rounds after the first.
pub fn timed(
    peer: &mut Peer,
    rounds: usize,
    mut send_round: impl FnMut(&mut Peer, usize),
) -> Duration {
    let mut times = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let t = Instant::now();
        send_round(peer, r);
        peer.wait_done();
        if r > 0 || rounds == 1 {
            times.push(t.elapsed());
        }
    }
    median(&mut times)
}

/// Median of `v` (sorts it).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Messages the producer may be ahead of the consumer (for transports that pass
/// descriptors: each one in flight pins a whole buffer).
pub const WINDOW: usize = 32;
/// The consumer returns credit every this many messages.
pub const ACK_EVERY: usize = 8;

/// Producer side of the credit window, reset every round.
#[derive(Default)]
pub struct Credit {
    acks: usize,
}

impl Credit {
    /// Blocks until message `i` of this round may be sent.
    pub fn before_send(&mut self, peer: &mut Peer, i: usize) {
        if i == 0 {
            self.acks = 0;
        }
        while i >= WINDOW + self.acks * ACK_EVERY {
            peer.expect(b'A');
            self.acks += 1;
        }
    }
}

/// Consumer side: call after consuming message `i` of the round.
pub fn after_recv(ctl: &mut Ctl, i: usize) {
    if (i + 1).is_multiple_of(ACK_EVERY) {
        ctl.ack();
    }
}

/// Runs `f` `rounds` times on this thread and returns the median time after the first.
pub fn timed_local(rounds: usize, mut f: impl FnMut(usize)) -> Duration {
    let mut times = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let t = Instant::now();
        f(r);
        if r > 0 || rounds == 1 {
            times.push(t.elapsed());
        }
    }
    median(&mut times)
}
