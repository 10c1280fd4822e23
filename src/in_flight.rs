//! Per-channel budget of descriptors in flight (sent, not yet read by the peer).
//!
//! The kernel limits descriptors in flight **per sending user** (`RLIMIT_NOFILE` of the
//! sender; root with `CAP_SYS_RESOURCE` is exempt): a peer that stops reading lets one
//! channel spend the whole budget, and then every channel of that user fails with
//! `ETOOMANYREFS`. So each channel bounds its own share.
//!
//! The kernel does not say how many of our descriptors a peer has read, but it does say
//! how many bytes of our datagrams are still queued: `SIOCOUTQ` on a unix socket is the
//! memory of our datagrams the peer has not read yet. Datagrams are read in order, so the
//! unread ones are always a suffix of what we sent. The ledger records, for every datagram
//! sent while the budget is in use, its descriptors and its size (the growth of
//! `SIOCOUTQ` across the `sendmsg`), and pops datagrams off its front while the recorded
//! total exceeds what is still queued. A size can only be under-measured (a peer reading
//! during the send shrinks the growth), never over-measured, and under-measuring only
//! keeps entries longer: the ledger may overcount descriptors in flight, never undercount.
//! When `SIOCOUTQ` reaches 0, everything was read and the ledger empties.

use std::collections::VecDeque;

/// What a channel has sent that its peer may not have read.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// `(bytes, descriptors)` of each datagram sent while the budget was in use, oldest
    /// first.
    sent: VecDeque<(usize, usize)>,
    /// Sum of the bytes in `sent`.
    bytes: usize,
    /// Sum of the descriptors in `sent`.
    fds: usize,
    /// Most descriptors in flight.
    pub(crate) limit: usize,
}

/// Longest ledger: beyond it (a peer that reads at exactly the pace of a sender, keeping
/// `SIOCOUTQ` above 0 for ever, with under-measured sizes) the budget counts as spent
/// until the peer has read everything.
const MAX_ENTRIES: usize = 4096;

impl Ledger {
    pub(crate) fn new(limit: usize) -> Ledger {
        Ledger {
            sent: VecDeque::new(),
            bytes: 0,
            fds: 0,
            limit,
        }
    }

    /// Whether sends must be measured: the budget is on, and descriptors are sent or some
    /// may be in flight.
    pub(crate) fn tracking(&self, fds: usize) -> bool {
        self.limit != usize::MAX && (fds > 0 || !self.sent.is_empty())
    }

    /// Forgets the datagrams the peer has read, given the bytes still queued.
    pub(crate) fn settle(&mut self, unread: usize) {
        if unread == 0 {
            self.sent.clear();
            self.bytes = 0;
            self.fds = 0;
            return;
        }
        while self.bytes > unread {
            let Some((bytes, fds)) = self.sent.pop_front() else {
                break;
            };
            self.bytes -= bytes;
            self.fds -= fds;
        }
    }

    /// Whether a datagram with `fds` descriptors fits the budget now. One always fits when
    /// nothing is in flight, so a message of more descriptors than the limit can be sent.
    pub(crate) fn has_room(&self, fds: usize) -> bool {
        fds == 0
            || self.fds == 0
            || (self.fds.saturating_add(fds) <= self.limit && self.sent.len() < MAX_ENTRIES)
    }

    /// Records a datagram sent with `fds` descriptors, `bytes` its measured size.
    pub(crate) fn push(&mut self, bytes: usize, fds: usize) {
        self.sent.push_back((bytes, fds));
        self.bytes += bytes;
        self.fds += fds;
    }

    /// Descriptors possibly in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.fds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_datagrams_leave_the_ledger_in_order() {
        let mut l = Ledger::new(25);
        assert!(!l.tracking(0) && l.tracking(1));
        l.push(100, 10);
        l.push(100, 10);
        assert!(l.has_room(5) && !l.has_room(6));
        l.push(50, 0);
        assert!(l.tracking(0));
        // The peer read the first datagram: 150 bytes remain queued.
        l.settle(150);
        assert_eq!(l.in_flight(), 10);
        // An under-measured size keeps its entry longer (overcount, never undercount).
        l.push(10, 10); // really 100 bytes
        l.settle(250); // nothing read since
        assert_eq!(l.in_flight(), 20);
        l.settle(0);
        assert_eq!(l.in_flight(), 0);
        assert!(l.has_room(253), "one message always fits an empty ledger");
    }
}
