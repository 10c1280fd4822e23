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
    /// An upper bound of the bytes queued now (`SIOCOUTQ`), while known: the value after our
    /// last measured send. Only our own sends make the queue grow, and they all go through
    /// the ledger; a read makes it shrink, so the bound stays an upper bound. Taken as a
    /// send's "before", it can only make the send's size come out smaller, which is the
    /// safe direction (see the module docs). `None` after a send that was not measured.
    last_unread: Option<usize>,
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
            last_unread: None,
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

    /// Before a measured send of `fds` descriptors: an upper bound of the bytes queued now,
    /// or `None` if the budget is spent. Calls `measure` (`SIOCOUTQ`), and forgets what the
    /// peer has read, only when the bound is unknown or the budget looks spent.
    pub(crate) fn prepare(&mut self, fds: usize, measure: impl Fn() -> usize) -> Option<usize> {
        if self.last_unread.is_none() || !self.has_room(fds) {
            let unread = measure();
            self.settle(unread);
            self.last_unread = Some(unread);
            if !self.has_room(fds) {
                return None;
            }
        }
        self.last_unread
    }

    /// After a measured send: `before` from [`prepare`](Ledger::prepare), `after` the
    /// bytes queued right after the send.
    pub(crate) fn sent(&mut self, before: usize, after: usize, fds: usize) {
        self.push(after.saturating_sub(before), fds);
        self.last_unread = Some(after);
    }

    /// After a send that was not measured: the bound is lost.
    pub(crate) fn sent_untracked(&mut self) {
        self.last_unread = None;
    }

    /// Records a datagram sent with `fds` descriptors, `bytes` its measured size.
    fn push(&mut self, bytes: usize, fds: usize) {
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
        l.sent(0, 100, 10);
        l.sent(100, 200, 10);
        assert!(l.has_room(5) && !l.has_room(6));
        l.sent(200, 250, 0);
        assert!(l.tracking(0));
        // The peer read the first datagram: 150 bytes remain queued.
        l.settle(150);
        assert_eq!(l.in_flight(), 10);
        // An under-measured size keeps its entry longer (overcount, never undercount).
        l.sent(240, 250, 10); // really 100 bytes (the peer read 90 meanwhile)
        l.settle(250); // nothing read since
        assert_eq!(l.in_flight(), 20);
        l.settle(0);
        assert_eq!(l.in_flight(), 0);
        assert!(l.has_room(253), "one message always fits an empty ledger");
    }
}

#[cfg(test)]
mod prepare_tests {
    use super::*;

    #[test]
    fn measures_only_when_the_bound_is_unknown_or_the_budget_looks_spent() {
        let mut l = Ledger::new(20);
        let calls = std::cell::Cell::new(0);
        let measure = |v: usize| {
            let calls = &calls;
            move || {
                calls.set(calls.get() + 1);
                v
            }
        };
        assert_eq!(l.prepare(10, measure(0)), Some(0));
        l.sent(0, 100, 10);
        assert_eq!(l.prepare(10, measure(999)), Some(100), "the bound is known");
        assert_eq!(calls.get(), 1);
        l.sent(100, 200, 10);
        // 20 in flight: looks spent; the peer has read the first message.
        assert_eq!(l.prepare(10, measure(100)), Some(100));
        assert_eq!(calls.get(), 2);
        l.sent(100, 200, 10);
        assert_eq!(l.prepare(10, measure(200)), None, "nothing read: spent");
        l.sent_untracked();
        assert_eq!(l.prepare(0, measure(0)), Some(0), "unknown bound: measured");
    }
}
