//! The one place a timeout becomes a point in time.
//!
//! `Instant::now() + timeout` panics when the sum does not fit (`Duration::MAX`, or any
//! timeout of a few hundred years), so no public call adds a caller's timeout to an
//! `Instant` itself: it asks [`Deadline::after`], which treats a timeout too large to
//! represent as no deadline at all (it could never pass anyway).

use std::time::{Duration, Instant};

use rustix::event::Timespec;

/// When a wait must end; [`Deadline::NEVER`] if it may last forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline.
    pub(crate) const NEVER: Deadline = Deadline(None);

    /// `timeout` from now; [`Deadline::NEVER`] if that instant cannot be represented.
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now().checked_add(timeout))
    }

    /// The instant, or `None` for no deadline.
    pub(crate) fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Time left (zero once passed), or `None` for no deadline.
    pub(crate) fn left(self) -> Option<Duration> {
        self.0.map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed (never, for [`Deadline::NEVER`]).
    pub(crate) fn passed(self) -> bool {
        self.left().is_some_and(|d| d.is_zero())
    }

    /// The earlier of two deadlines.
    pub(crate) fn min(self, other: Deadline) -> Deadline {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Deadline(Some(a.min(b))),
            (a, b) => Deadline(a.or(b)),
        }
    }

    /// Time left as a `poll`/`epoll_wait` timeout (`None`: wait without limit).
    pub(crate) fn poll_timeout(self) -> Option<Timespec> {
        self.left().map(|left| {
            Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeouts_mean_no_deadline() {
        assert_eq!(Deadline::after(Duration::MAX), Deadline::NEVER);
        assert!(!Deadline::after(Duration::MAX).passed());
        assert_eq!(Deadline::after(Duration::MAX).poll_timeout(), None);
        let soon = Deadline::after(Duration::from_secs(1));
        assert!(soon.instant().is_some() && !soon.passed());
        assert_eq!(soon.min(Deadline::NEVER), soon);
        assert_eq!(Deadline::NEVER.min(soon), soon);
        assert!(Deadline::after(Duration::ZERO).passed());
    }
}
