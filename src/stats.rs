//! Counters an operator can read without a debugger: what channels and listeners received,
//! what they rejected and why.
//!
//! Every channel and listener keeps its counters from the start, always: relaxed atomic
//! increments on a channel (it is shared between threads), plain ones on a listener (its
//! calls take `&mut self`); no locks. [`crate::Channel::stats`] and
//! [`crate::Listener::stats`] take a snapshot. Ring counters are
//! [`crate::ring::RingStats`]; pool counters are [`crate::pool::PoolStats`].
//!
//! [`RejectReason::of`] is the one mapping from [`Error`] to the reason a peer's message or
//! connection was refused; counters, and the `tracing` feature's events, use it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::credentials::PeerCredentials;
use crate::error::{Error, HandshakeFailure};

/// Why something a peer sent was refused: one reason per [`Error`] variant that means "the
/// peer sent something we refused" (handshake failures by their [`HandshakeFailure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// [`Error::ControlTruncated`].
    ControlTruncated,
    /// [`Error::MessageTruncated`].
    MessageTruncated,
    /// [`Error::Malformed`].
    Malformed,
    /// [`Error::UnsupportedVersion`].
    UnsupportedVersion,
    /// [`Error::FdCountMismatch`].
    FdCountMismatch,
    /// [`Error::PolicyLimit`].
    PolicyLimit,
    /// [`Error::NotMemfd`].
    NotMemfd,
    /// [`Error::MissingSeals`].
    MissingSeals,
    /// [`Error::EmptyRegion`].
    EmptyRegion,
    /// [`Error::RegionTooLarge`].
    RegionTooLarge,
    /// [`Error::SizeMismatch`].
    SizeMismatch,
    /// [`Error::Uncommitted`].
    Uncommitted,
    /// [`Error::HugePages`].
    HugePages,
    /// [`Error::Map`].
    Map,
    /// [`Error::DisposalBacklog`]: descriptors peers sent wait to be closed, so no message
    /// was taken.
    DisposalBacklog,
    /// [`Error::Truncated`] (a [`crate::GuardedMap`]'s file shrank under a read).
    Truncated,
    /// [`Error::PeerCorrupt`] (a ring's peer wrote an impossible value).
    PeerCorrupt,
    /// [`Error::RingMismatch`].
    RingMismatch,
    /// [`Error::BadRelease`] (a pool consumer's release).
    BadRelease,
    /// [`Error::BadAnnounce`] (a pool producer's announcement).
    BadAnnounce,
    /// [`Error::BadNotice`] (a pool producer's notice).
    BadNotice,
    /// [`HandshakeFailure::PeerNotAllowed`].
    HandshakePeerNotAllowed,
    /// [`HandshakeFailure::NotTheSpawnedChild`].
    HandshakeNotTheSpawnedChild,
    /// [`HandshakeFailure::SecretPresence`].
    HandshakeSecretPresence,
    /// [`HandshakeFailure::BadProof`].
    HandshakeBadProof,
    /// [`HandshakeFailure::Incompatible`].
    HandshakeIncompatible,
    /// [`HandshakeFailure::Unbound`].
    HandshakeUnbound,
    /// [`HandshakeFailure::Protocol`].
    HandshakeProtocol,
}

impl RejectReason {
    /// Number of reasons.
    pub const COUNT: usize = RejectReason::ALL.len();

    /// Every reason, in declaration order.
    pub const ALL: [RejectReason; 28] = [
        RejectReason::ControlTruncated,
        RejectReason::MessageTruncated,
        RejectReason::Malformed,
        RejectReason::UnsupportedVersion,
        RejectReason::FdCountMismatch,
        RejectReason::PolicyLimit,
        RejectReason::NotMemfd,
        RejectReason::MissingSeals,
        RejectReason::EmptyRegion,
        RejectReason::RegionTooLarge,
        RejectReason::SizeMismatch,
        RejectReason::Uncommitted,
        RejectReason::HugePages,
        RejectReason::Map,
        RejectReason::DisposalBacklog,
        RejectReason::Truncated,
        RejectReason::PeerCorrupt,
        RejectReason::RingMismatch,
        RejectReason::BadRelease,
        RejectReason::BadAnnounce,
        RejectReason::BadNotice,
        RejectReason::HandshakePeerNotAllowed,
        RejectReason::HandshakeNotTheSpawnedChild,
        RejectReason::HandshakeSecretPresence,
        RejectReason::HandshakeBadProof,
        RejectReason::HandshakeIncompatible,
        RejectReason::HandshakeUnbound,
        RejectReason::HandshakeProtocol,
    ];

    /// The reason `error` means a peer's message or connection was refused; `None` for
    /// errors that say nothing about what a peer sent (local misuse, system calls, time
    /// outs of this side's calls, the peer going away, back-pressure, a handshake that the
    /// peer refused or abandoned).
    ///
    /// ```
    /// use sealpipe::{Error, RejectReason};
    /// let e = Error::EmptyRegion { index: 0 };
    /// assert_eq!(RejectReason::of(&e), Some(RejectReason::EmptyRegion));
    /// assert_eq!(RejectReason::of(&Error::Timeout), None);
    /// ```
    pub fn of(error: &Error) -> Option<RejectReason> {
        // No wildcard: a new variant must be decided here.
        Some(match error {
            Error::ControlTruncated { .. } => RejectReason::ControlTruncated,
            Error::MessageTruncated { .. } => RejectReason::MessageTruncated,
            Error::Malformed { .. } => RejectReason::Malformed,
            Error::UnsupportedVersion { .. } => RejectReason::UnsupportedVersion,
            Error::FdCountMismatch { .. } => RejectReason::FdCountMismatch,
            Error::PolicyLimit { .. } => RejectReason::PolicyLimit,
            Error::NotMemfd { .. } => RejectReason::NotMemfd,
            Error::MissingSeals { .. } => RejectReason::MissingSeals,
            Error::EmptyRegion { .. } => RejectReason::EmptyRegion,
            Error::RegionTooLarge { .. } => RejectReason::RegionTooLarge,
            Error::SizeMismatch { .. } => RejectReason::SizeMismatch,
            Error::Uncommitted { .. } => RejectReason::Uncommitted,
            Error::HugePages { .. } => RejectReason::HugePages,
            Error::Map { .. } => RejectReason::Map,
            Error::DisposalBacklog { .. } => RejectReason::DisposalBacklog,
            Error::Truncated { .. } => RejectReason::Truncated,
            Error::PeerCorrupt { .. } => RejectReason::PeerCorrupt,
            Error::RingMismatch { .. } => RejectReason::RingMismatch,
            Error::BadRelease { .. } => RejectReason::BadRelease,
            Error::BadAnnounce { .. } => RejectReason::BadAnnounce,
            Error::BadNotice { .. } => RejectReason::BadNotice,
            Error::Handshake { failure } => match failure {
                HandshakeFailure::PeerNotAllowed(_) => RejectReason::HandshakePeerNotAllowed,
                HandshakeFailure::NotTheSpawnedChild { .. } => {
                    RejectReason::HandshakeNotTheSpawnedChild
                }
                HandshakeFailure::SecretPresence { .. } => RejectReason::HandshakeSecretPresence,
                HandshakeFailure::BadProof => RejectReason::HandshakeBadProof,
                HandshakeFailure::Incompatible { .. } => RejectReason::HandshakeIncompatible,
                HandshakeFailure::Unbound => RejectReason::HandshakeUnbound,
                HandshakeFailure::Protocol(_) => RejectReason::HandshakeProtocol,
                HandshakeFailure::Refused(_) => return None,
            },
            Error::Io { .. }
            | Error::OutOfMemory { .. }
            | Error::OutOfBounds { .. }
            | Error::Cast { .. }
            | Error::ZeroLength { .. }
            | Error::NotImmutable { .. }
            | Error::PeerClosed
            | Error::WouldBlock
            | Error::Timeout
            | Error::TooManyInFlight
            | Error::MessageTooLarge { .. }
            | Error::NotSeqpacket
            | Error::NoInheritedChannel { .. }
            | Error::LimitExceeded { .. }
            | Error::PoolExhausted { .. }
            | Error::SecretTooShort { .. }
            | Error::UnsafePath { .. }
            | Error::AddressInUse { .. }
            | Error::PathLost { .. }
            | Error::RecordTooLarge { .. }
            | Error::InvalidCapacity { .. }
            | Error::SandboxUnavailable { .. }
            | Error::SandboxThreads { .. }
            | Error::SandboxSetup { .. } => return None,
        })
    }

    /// A short stable name (`"missing_seals"`, `"handshake_bad_proof"`, ...), for logs and
    /// metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::ControlTruncated => "control_truncated",
            RejectReason::MessageTruncated => "message_truncated",
            RejectReason::Malformed => "malformed",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::FdCountMismatch => "fd_count_mismatch",
            RejectReason::PolicyLimit => "policy_limit",
            RejectReason::NotMemfd => "not_memfd",
            RejectReason::MissingSeals => "missing_seals",
            RejectReason::EmptyRegion => "empty_region",
            RejectReason::RegionTooLarge => "region_too_large",
            RejectReason::SizeMismatch => "size_mismatch",
            RejectReason::Uncommitted => "uncommitted",
            RejectReason::HugePages => "huge_pages",
            RejectReason::Map => "map",
            RejectReason::DisposalBacklog => "disposal_backlog",
            RejectReason::Truncated => "truncated",
            RejectReason::PeerCorrupt => "peer_corrupt",
            RejectReason::RingMismatch => "ring_mismatch",
            RejectReason::BadRelease => "bad_release",
            RejectReason::BadAnnounce => "bad_announce",
            RejectReason::BadNotice => "bad_notice",
            RejectReason::HandshakePeerNotAllowed => "handshake_peer_not_allowed",
            RejectReason::HandshakeNotTheSpawnedChild => "handshake_not_the_spawned_child",
            RejectReason::HandshakeSecretPresence => "handshake_secret_presence",
            RejectReason::HandshakeBadProof => "handshake_bad_proof",
            RejectReason::HandshakeIncompatible => "handshake_incompatible",
            RejectReason::HandshakeUnbound => "handshake_unbound",
            RejectReason::HandshakeProtocol => "handshake_protocol",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of refusals by [`RejectReason`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rejections {
    counts: [u64; RejectReason::COUNT],
}

impl Default for Rejections {
    fn default() -> Self {
        Rejections {
            counts: [0; RejectReason::COUNT],
        }
    }
}

impl Rejections {
    /// Refusals for `reason`.
    pub fn get(&self, reason: RejectReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Refusals for every reason together.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The reasons with a non-zero count, with their counts.
    pub fn iter(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, n)| n > 0)
    }
}

impl fmt::Debug for Rejections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(r, n)| (r.as_str(), n)))
            .finish()
    }
}

/// A snapshot of a channel's counters ([`crate::Channel::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Messages received, verified and returned.
    pub messages_received: u64,
    /// Regions in those messages.
    pub regions_received: u64,
    /// Bytes of those regions (mapped read-only into this process).
    pub bytes_mapped: u64,
    /// Messages refused, by reason (receives that returned an error
    /// [`RejectReason::of`] names).
    pub rejected: Rejections,
    /// Descriptors of refused messages closed at once in the receiving thread (shared
    /// memory, pipes, `O_PATH`: their close cannot wait).
    pub descriptors_closed_inline: u64,
    /// Descriptors of refused messages handed to the background closer (sockets and
    /// anything whose close may block; see [`crate::Channel`]'s docs).
    pub descriptors_closed_background: u64,
}

impl fmt::Display for ChannelStats {
    /// One line: `received 3 messages (3 regions, 12288 bytes); rejected 1 {...}; ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {} messages ({} regions, {} bytes); rejected {} {:?}; closed {} descriptors inline, {} in the background",
            self.messages_received,
            self.regions_received,
            self.bytes_mapped,
            self.rejected.total(),
            self.rejected,
            self.descriptors_closed_inline,
            self.descriptors_closed_background,
        )
    }
}

/// A snapshot of a listener's counters ([`crate::Listener::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Handshakes completed: connections returned by `accept`.
    pub handshakes_accepted: u64,
    /// Handshakes this side refused, by reason.
    pub handshakes_refused: Rejections,
    /// Handshakes that failed for another reason: the client closed the connection,
    /// refused this side, or did not finish within the handshake timeout.
    pub handshakes_abandoned: u64,
}

impl fmt::Display for ListenerStats {
    /// One line: `accepted 2 handshakes; refused 1 {...}; abandoned 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted {} handshakes; refused {} {:?}; abandoned {}",
            self.handshakes_accepted,
            self.handshakes_refused.total(),
            self.handshakes_refused,
            self.handshakes_abandoned,
        )
    }
}

/// How a refused message's descriptors were closed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Disposed {
    pub(crate) inline: u64,
    pub(crate) background: u64,
}

/// A channel's live counters (relaxed atomics: a channel is shared between threads).
#[derive(Debug, Default)]
pub(crate) struct ChannelCounters {
    messages: AtomicU64,
    regions: AtomicU64,
    bytes: AtomicU64,
    rejected: [AtomicU64; RejectReason::COUNT],
    closed_inline: AtomicU64,
    closed_background: AtomicU64,
    /// Whether a rejection was logged at WARN already (later ones go to DEBUG).
    warned: AtomicBool,
}

impl ChannelCounters {
    pub(crate) fn received(&self, regions: usize, bytes: u64) {
        self.messages.fetch_add(1, Relaxed);
        self.regions.fetch_add(regions as u64, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn disposed(&self, d: Disposed) {
        if d.inline != 0 {
            self.closed_inline.fetch_add(d.inline, Relaxed);
        }
        if d.background != 0 {
            self.closed_background.fetch_add(d.background, Relaxed);
        }
    }

    /// Counts `error` if it refuses something the peer sent (and traces it).
    pub(crate) fn failed(&self, error: &Error, peer: Option<PeerCredentials>) {
        let Some(reason) = RejectReason::of(error) else {
            return;
        };
        self.rejected[reason.index()].fetch_add(1, Relaxed);
        let first = !self.warned.swap(true, Relaxed);
        trace_rejection(first, reason, error, peer);
    }

    pub(crate) fn snapshot(&self) -> ChannelStats {
        let mut rejected = Rejections::default();
        for (n, c) in rejected.counts.iter_mut().zip(&self.rejected) {
            *n = c.load(Relaxed);
        }
        ChannelStats {
            messages_received: self.messages.load(Relaxed),
            regions_received: self.regions.load(Relaxed),
            bytes_mapped: self.bytes.load(Relaxed),
            rejected,
            descriptors_closed_inline: self.closed_inline.load(Relaxed),
            descriptors_closed_background: self.closed_background.load(Relaxed),
        }
    }
}

/// A listener's counters (plain: its calls take `&mut self`).
#[derive(Debug, Default)]
pub(crate) struct ListenerCounters {
    pub(crate) stats: ListenerStats,
}

impl ListenerCounters {
    /// A handshake completed.
    pub(crate) fn accepted(&mut self) {
        self.stats.handshakes_accepted += 1;
    }

    /// A handshake failed with `error` (an [`Error::Handshake`]).
    #[allow(unused_variables)]
    pub(crate) fn failed(&mut self, error: &Error, peer: Option<PeerCredentials>) {
        match RejectReason::of(error) {
            Some(reason) => {
                self.stats.handshakes_refused.counts[reason.index()] += 1;
                #[cfg(feature = "tracing")]
                {
                    let (pid, uid, gid) = split(peer);
                    tracing::warn!(reason = reason.as_str(), error = %error, pid, uid, gid, "sealpipe refused a handshake");
                }
            }
            None => {
                self.stats.handshakes_abandoned += 1;
                #[cfg(feature = "tracing")]
                {
                    let (pid, uid, gid) = split(peer);
                    tracing::debug!(error = %error, pid, uid, gid, "sealpipe handshake abandoned");
                }
            }
        }
    }
}

#[cfg(feature = "tracing")]
fn split(peer: Option<PeerCredentials>) -> (Option<u32>, Option<u32>, Option<u32>) {
    match peer {
        Some(c) => (Some(c.pid), Some(c.uid), Some(c.gid)),
        None => (None, None, None),
    }
}

/// The `tracing` event of one rejection: WARN for a channel's first, DEBUG after, so that a
/// flooding peer cannot flood the log.
#[allow(unused_variables)]
pub(crate) fn trace_rejection(
    first: bool,
    reason: RejectReason,
    error: &Error,
    peer: Option<PeerCredentials>,
) {
    #[cfg(feature = "tracing")]
    {
        let (pid, uid, gid) = split(peer);
        if first {
            tracing::warn!(reason = reason.as_str(), error = %error, pid, uid, gid, "sealpipe rejected a peer's message");
        } else {
            tracing::debug!(reason = reason.as_str(), error = %error, pid, uid, gid, "sealpipe rejected a peer's message");
        }
    }
}

/// Traces the outcome of a setup step (`what`: "handshake", "ring setup") inside its span:
/// INFO when it succeeded, WARN when this side refused what the peer sent
/// ([`RejectReason::of`]), DEBUG for other failures (time outs, a peer that went away).
#[allow(unused_variables)]
pub(crate) fn traced<T>(what: &'static str, r: crate::Result<T>) -> crate::Result<T> {
    #[cfg(feature = "tracing")]
    match &r {
        Ok(_) => tracing::info!("sealpipe {what} done"),
        Err(e) => match RejectReason::of(e) {
            Some(reason) => {
                tracing::warn!(reason = reason.as_str(), error = %e, "sealpipe {what} refused")
            }
            None => tracing::debug!(error = %e, "sealpipe {what} failed"),
        },
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::RefusalReason;
    use crate::seals::Seals;
    use std::io;

    /// One value of every `Error` variant. `variant` (an exhaustive match, no wildcard)
    /// makes adding a variant fail to compile until it is listed here too.
    fn every_error() -> Vec<Error> {
        let io = || io::Error::from_raw_os_error(libc::EIO);
        let creds = PeerCredentials {
            pid: 1,
            uid: 2,
            gid: 3,
        };
        let h = |failure| Error::Handshake { failure };
        vec![
            Error::Io {
                op: "x",
                source: io(),
            },
            Error::OutOfMemory {
                len: 1,
                source: io(),
            },
            Error::OutOfBounds {
                offset: 0,
                len: 1,
                region_len: 0,
            },
            Error::Cast {
                reason: "x",
                len: 1,
                size: 2,
                align: 1,
            },
            Error::ZeroLength { what: "x" },
            Error::NotImmutable {
                seals: Seals::empty(),
            },
            Error::PeerClosed,
            Error::WouldBlock,
            Error::Timeout,
            Error::TooManyInFlight,
            Error::DisposalBacklog { pending: 300 },
            Error::MessageTooLarge { len: 1 },
            Error::NotSeqpacket,
            Error::NoInheritedChannel { reason: "x" },
            Error::LimitExceeded {
                what: "x",
                got: 2,
                max: 1,
            },
            Error::ControlTruncated { received: 1 },
            Error::MessageTruncated { max: 1 },
            Error::Malformed { reason: "x" },
            Error::UnsupportedVersion {
                got: 9,
                supported: 1,
            },
            Error::FdCountMismatch {
                declared: 1,
                received: 0,
            },
            Error::PolicyLimit {
                what: "x",
                got: 2,
                max: 1,
            },
            Error::NotMemfd {
                index: 0,
                reason: "x",
            },
            Error::MissingSeals {
                index: 0,
                have: Seals::empty(),
                missing: Seals::empty(),
            },
            Error::EmptyRegion { index: 0 },
            Error::RegionTooLarge {
                index: 0,
                len: 2,
                max: 1,
            },
            Error::SizeMismatch {
                index: 0,
                declared: 1,
                actual: 2,
            },
            Error::Uncommitted {
                index: 0,
                len: 2,
                committed: 1,
            },
            Error::HugePages { index: 0 },
            Error::Map {
                index: 0,
                source: io(),
            },
            Error::PoolExhausted { len: 1, held: 1 },
            Error::BadRelease {
                consumer: 0,
                reason: "x",
                memfd_id: 0,
                offset: 0,
                generation: 0,
            },
            Error::BadAnnounce {
                memfd_id: 0,
                reason: "x",
            },
            Error::BadNotice {
                reason: "x",
                memfd_id: 0,
                offset: 0,
                len: 0,
                generation: 0,
            },
            h(HandshakeFailure::PeerNotAllowed(creds)),
            Error::SecretTooShort { min: 32 },
            Error::UnsafePath {
                path: "/x".into(),
                reason: "x",
            },
            Error::AddressInUse { path: "/x".into() },
            Error::PathLost { path: "/x".into() },
            Error::Truncated {
                offset: 0,
                len: 1,
                fault_offset: 0,
            },
            Error::PeerCorrupt { what: "x" },
            Error::RingMismatch { what: "x" },
            Error::RecordTooLarge { len: 2, max: 1 },
            Error::InvalidCapacity { capacity: 3 },
            Error::SandboxUnavailable {
                layer: "x",
                required: 1,
                available: 0,
            },
            Error::SandboxThreads { threads: 2 },
            Error::SandboxSetup {
                layer: "x",
                source: "x".into(),
            },
            // The other handshake failures.
            h(HandshakeFailure::NotTheSpawnedChild {
                expected: 1,
                got: None,
            }),
            h(HandshakeFailure::SecretPresence { ours: true }),
            h(HandshakeFailure::BadProof),
            h(HandshakeFailure::Incompatible { version: 9 }),
            h(HandshakeFailure::Unbound),
            h(HandshakeFailure::Protocol("x")),
            h(HandshakeFailure::Refused(RefusalReason::Protocol)),
        ]
    }

    /// Index of `e`'s variant (handshake failures by their own variant).
    fn variant(e: &Error) -> usize {
        match e {
            Error::Io { .. } => 0,
            Error::OutOfMemory { .. } => 1,
            Error::OutOfBounds { .. } => 2,
            Error::Cast { .. } => 3,
            Error::NotImmutable { .. } => 4,
            Error::PeerClosed => 5,
            Error::WouldBlock => 6,
            Error::Timeout => 7,
            Error::TooManyInFlight => 8,
            Error::DisposalBacklog { .. } => 9,
            Error::MessageTooLarge { .. } => 10,
            Error::NotSeqpacket => 11,
            Error::NoInheritedChannel { .. } => 12,
            Error::LimitExceeded { .. } => 13,
            Error::ControlTruncated { .. } => 14,
            Error::MessageTruncated { .. } => 15,
            Error::Malformed { .. } => 16,
            Error::UnsupportedVersion { .. } => 17,
            Error::FdCountMismatch { .. } => 18,
            Error::PolicyLimit { .. } => 19,
            Error::NotMemfd { .. } => 20,
            Error::MissingSeals { .. } => 21,
            Error::EmptyRegion { .. } => 22,
            Error::RegionTooLarge { .. } => 23,
            Error::SizeMismatch { .. } => 24,
            Error::Uncommitted { .. } => 25,
            Error::HugePages { .. } => 26,
            Error::Map { .. } => 27,
            Error::PoolExhausted { .. } => 28,
            Error::BadRelease { .. } => 29,
            Error::BadAnnounce { .. } => 30,
            Error::BadNotice { .. } => 31,
            Error::SecretTooShort { .. } => 32,
            Error::UnsafePath { .. } => 33,
            Error::AddressInUse { .. } => 34,
            Error::PathLost { .. } => 35,
            Error::Truncated { .. } => 36,
            Error::PeerCorrupt { .. } => 37,
            Error::RingMismatch { .. } => 38,
            Error::RecordTooLarge { .. } => 39,
            Error::InvalidCapacity { .. } => 40,
            Error::SandboxUnavailable { .. } => 41,
            Error::SandboxThreads { .. } => 42,
            Error::SandboxSetup { .. } => 43,
            Error::Handshake { failure } => match failure {
                HandshakeFailure::PeerNotAllowed(_) => 44,
                HandshakeFailure::NotTheSpawnedChild { .. } => 45,
                HandshakeFailure::SecretPresence { .. } => 46,
                HandshakeFailure::BadProof => 47,
                HandshakeFailure::Incompatible { .. } => 48,
                HandshakeFailure::Unbound => 49,
                HandshakeFailure::Protocol(_) => 50,
                HandshakeFailure::Refused(_) => 51,
            },
            Error::ZeroLength { .. } => 52,
        }
    }

    #[test]
    fn every_error_variant_is_decided() {
        let errors = every_error();
        let mut seen: Vec<usize> = errors.iter().map(variant).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen,
            (0..53).collect::<Vec<_>>(),
            "every_error lists each variant once"
        );

        let mut reasons = Vec::new();
        for e in &errors {
            let reason = RejectReason::of(e);
            // A reason exactly for the peer's faults (less a handshake the peer refused or
            // left), plus the backlog of descriptors peers sent.
            let expected = match e {
                Error::DisposalBacklog { .. } => true,
                Error::Handshake {
                    failure: HandshakeFailure::Refused(_),
                } => false,
                e => e.is_peer_fault(),
            };
            assert_eq!(reason.is_some(), expected, "{e:?}");
            reasons.extend(reason);
        }
        // Every reason is some variant's, and no two variants share one.
        assert_eq!(reasons.len(), RejectReason::COUNT);
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(reasons.iter().filter(|&x| x == r).count(), 1, "{r}");
        }
    }

    #[test]
    fn counters_count_by_reason() {
        let c = ChannelCounters::default();
        c.failed(&Error::EmptyRegion { index: 0 }, None);
        c.failed(&Error::EmptyRegion { index: 1 }, None);
        c.failed(&Error::Timeout, None);
        c.received(2, 8192);
        let s = c.snapshot();
        assert_eq!(s.rejected.get(RejectReason::EmptyRegion), 2);
        assert_eq!(s.rejected.total(), 2);
        assert_eq!(s.messages_received, 1);
        assert_eq!(s.bytes_mapped, 8192);
        assert!(s.to_string().contains("empty_region"));
    }
}
