//! The crate's one error type.

use std::fmt;
use std::io;

use crate::credentials::PeerCredentials;
use crate::seals::Seals;

/// Result type of every fallible sealpipe operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in sealpipe.
///
/// Variants are grouped by what a caller can do about them:
///
/// - **the peer misbehaved** ([`Error::is_peer_fault`]): a malformed message, a region that
///   failed verification, descriptors that do not match the header. Every descriptor that
///   arrived with the message has already been closed; the channel is still usable, and the
///   caller decides whether to keep talking to that peer.
/// - **the peer is gone** ([`Error::PeerClosed`]): reconnect or give up.
/// - **try again later** ([`Error::WouldBlock`], [`Error::Timeout`],
///   [`Error::TooManyInFlight`], [`Error::DisposalBacklog`]): nothing was sent or received.
/// - **local misuse or resource exhaustion**: bounds, casts, out of memory, syscalls.
///
/// `Display` never repeats the source error; use [`std::error::Error::source`] for the
/// chain. Messages never contain secrets or payload bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed for a reason not covered by a more specific variant.
    #[error("{op} failed")]
    Io {
        /// The operation that failed, e.g. `"memfd_create"`.
        op: &'static str,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },

    /// Committing memory for a new region failed (`ENOMEM`/`ENOSPC` from `fallocate`, or a
    /// memory cgroup limit). Failing here is what keeps consumers from a later `SIGBUS`.
    #[error("cannot commit {len} bytes of memory for a region")]
    OutOfMemory {
        /// The requested region length.
        len: u64,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },

    /// An access fell outside a region.
    #[error("range {offset}..{offset}+{len} is outside the region of {region_len} bytes")]
    OutOfBounds {
        /// Start of the requested range.
        offset: u64,
        /// Length of the requested range.
        len: u64,
        /// Length of the region.
        region_len: u64,
    },

    /// A typed view (`as_slice_of::<T>`) could not be made: `reason` says whether the
    /// length is not a whole number of `T`s or the memory is not aligned for `T`.
    #[error(
        "cannot view {len} bytes as a slice of a {size}-byte type aligned to {align}: {reason}"
    )]
    Cast {
        /// What does not fit.
        reason: &'static str,
        /// Length of the memory in bytes.
        len: usize,
        /// `size_of::<T>()`.
        size: usize,
        /// `align_of::<T>()`.
        align: usize,
    },

    /// A region of zero bytes was asked for ([`crate::Region::new`], a pool lease or its
    /// truncation): memory of no bytes cannot be mapped, so no region, received or made
    /// here, is ever empty.
    #[error("a {what} cannot be empty")]
    ZeroLength {
        /// What was asked to be empty: `"region"`, `"lease"`.
        what: &'static str,
    },

    /// Direct `&[u8]` access was requested on a region that is not write-sealed: its
    /// producer can still change it, so only copying reads ([`crate::RegionView::read_at`])
    /// are safe.
    #[error("region is not immutable (seals {seals}); use read_at to copy out")]
    NotImmutable {
        /// The seals the region has.
        seals: Seals,
    },

    /// The peer closed the connection (or exited). Nothing was sent or received. Also what
    /// a handshake reports when the peer closes during it (from a [`crate::Listener`]'s
    /// `accept`: one client closed; the listener goes on serving).
    #[error("peer closed the channel")]
    PeerClosed,

    /// A non-blocking call found nothing to do (nothing to receive, no room to send).
    #[error("operation would block")]
    WouldBlock,

    /// The deadline of a blocking call passed. Nothing was sent or received. Also what a
    /// handshake reports when it does not complete within its timeout (from a
    /// [`crate::Listener`]'s `accept`: one connection's handshake; the listener goes on
    /// serving).
    #[error("operation timed out")]
    Timeout,

    /// The kernel refused to queue more descriptors (`ETOOMANYREFS`: the sending user's
    /// in-flight descriptor budget is spent). Back-pressure: retry once the peer has read.
    #[error("too many descriptors in flight for this user; retry after the peer reads")]
    TooManyInFlight,

    /// Descriptors peers sent are still being closed in the background (their close may
    /// block, e.g. a lingering socket or a FUSE file; see `Channel`'s docs on descriptors
    /// whose close blocks), and `pending` of them wait: this receive did not take a message,
    /// so that a flood cannot grow the backlog without bound. The message stays queued;
    /// retry later.
    #[error("{pending} descriptors from peers are waiting to be closed; no message was taken")]
    DisposalBacklog {
        /// Descriptors waiting for the background closer.
        pending: usize,
    },

    /// The message does not fit the socket (`EMSGSIZE`).
    #[error("message of {len} bytes is too large for the socket")]
    MessageTooLarge {
        /// Bytes the message would have taken on the wire.
        len: usize,
    },

    /// The descriptor handed to [`crate::Channel::from_fd`] is not a unix `SOCK_SEQPACKET`
    /// socket.
    #[error("descriptor is not a unix SOCK_SEQPACKET socket")]
    NotSeqpacket,

    /// [`crate::spawn::worker_channel`] found no channel inherited from a parent.
    #[error("no inherited channel: {reason}")]
    NoInheritedChannel {
        /// Why.
        reason: &'static str,
    },

    /// The caller asked for more than a limit allows: more regions or payload than the
    /// protocol carries, or (pools) a lease longer than the pool, a retirement over its
    /// budget.
    #[error("over a limit: {what} is {got}, the limit is {max}")]
    LimitExceeded {
        /// Which limit (`"regions"`, `"payload"`; for pools `"lease length"`,
        /// `"retired bytes"`, `"sender of another pool"`).
        what: &'static str,
        /// What was asked for.
        got: usize,
        /// The limit.
        max: usize,
    },

    // ----- peer faults: the message was rejected and all its descriptors closed -----
    /// The message's control data was truncated (`MSG_CTRUNC`): the peer sent more
    /// descriptors than this receiver accepts, or this process's descriptor table is full.
    /// The descriptors that did arrive (`received`) were closed.
    #[error(
        "peer sent more descriptors than could be received ({received} arrived and were closed)"
    )]
    ControlTruncated {
        /// Descriptors that were installed before truncation (now closed).
        received: usize,
    },

    /// The message was longer than any valid message (`MSG_TRUNC`).
    #[error("peer sent a message longer than {max} bytes")]
    MessageTruncated {
        /// The longest valid message.
        max: usize,
    },

    /// The message is not a valid sealpipe header.
    #[error("malformed message: {reason}")]
    Malformed {
        /// What was wrong, for humans.
        reason: &'static str,
    },

    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    UnsupportedVersion {
        /// Version in the peer's header.
        got: u16,
        /// Version this build speaks.
        supported: u16,
    },

    /// The header declares a different number of regions than descriptors arrived.
    #[error("header declares {declared} regions but {received} descriptors arrived")]
    FdCountMismatch {
        /// Regions the header declares.
        declared: usize,
        /// Descriptors that arrived (now closed).
        received: usize,
    },

    /// The message carries more regions or payload than the receiving policy accepts.
    #[error("peer exceeded this receiver's limit: {what} is {got}, the limit is {max}")]
    PolicyLimit {
        /// Which limit (`"regions"`, `"payload"`; for pools `"pool memfds"`, `"pool bytes"`).
        what: &'static str,
        /// What the peer sent.
        got: u64,
        /// The receiver's limit.
        max: u64,
    },

    /// Region `index` is not a sealable shared-memory file (a pipe, socket, regular file,
    /// eventfd, `O_PATH` descriptor, ...).
    #[error("region {index} is not a memfd: {reason}")]
    NotMemfd {
        /// Index of the region within its message.
        index: usize,
        /// What the descriptor turned out to be.
        reason: &'static str,
    },

    /// Region `index` lacks seals the receiving policy requires.
    #[error("region {index} is missing seals {missing} (has {have})")]
    MissingSeals {
        /// Index of the region within its message.
        index: usize,
        /// Seals the region has.
        have: Seals,
        /// Required seals it lacks. For the read-only-view policy, `WRITE|FUTURE_WRITE`
        /// here means "either one".
        missing: Seals,
    },

    /// Region `index` is empty (declared length 0).
    #[error("region {index} has length zero")]
    EmptyRegion {
        /// Index of the region within its message.
        index: usize,
    },

    /// Region `index` is larger than the receiving policy allows.
    #[error("region {index} declares {len} bytes, over this receiver's limit of {max}")]
    RegionTooLarge {
        /// Index of the region within its message.
        index: usize,
        /// Declared length.
        len: u64,
        /// The receiver's limit.
        max: u64,
    },

    /// Region `index`'s real size differs from the length the header declares.
    #[error("region {index} declares {declared} bytes but its file has {actual}")]
    SizeMismatch {
        /// Index of the region within its message.
        index: usize,
        /// Length in the header.
        declared: u64,
        /// `st_size` of the descriptor.
        actual: u64,
    },

    /// Region `index` has pages that no process has allocated yet (a "sparse" memfd: sized
    /// with `ftruncate` and sealed, never written). Each such page that this receiver touched
    /// would be allocated then, charged to this receiver's memory cgroup (an OOM kill in a
    /// small one, `SIGBUS` under strict overcommit), and kept for as long as the sender
    /// holds its descriptor. A region made by [`crate::Region`] never has such pages.
    #[error("region {index} has {committed} of its {len} bytes allocated; touching the rest would charge memory to this receiver")]
    Uncommitted {
        /// Index of the region within its message.
        index: usize,
        /// The region's length.
        len: u64,
        /// Bytes of it found allocated (whole pages, resident or swapped out).
        committed: u64,
    },

    /// Region `index` is backed by huge pages (hugetlbfs), which the receiving policy does
    /// not accept ([`crate::Policy::huge_pages`]).
    #[error("region {index} is backed by huge pages, which this receiver does not accept")]
    HugePages {
        /// Index of the region within its message.
        index: usize,
    },

    /// Mapping verified region `index` failed: `ENOMEM` for a huge-page region whose pool
    /// is empty, or this process reached `vm.max_map_count` or its address-space limit.
    /// Counted as a peer fault ([`Error::is_peer_fault`]): the peer chose the region's size
    /// and backing, although retaining many views here is what exhausts the map count.
    #[error("cannot map region {index}")]
    Map {
        /// Index of the region within its message.
        index: usize,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },

    // ----- region pools (`crate::pool`) -----
    /// No buffer of a [`crate::pool::Pool`] became free for a lease of `len` bytes before the
    /// deadline (or at once, for `try_lease`): consumers hold the buffers and the pool is at
    /// its limits. Back-pressure: release, retire stalled buffers, or raise the limits.
    #[error("no free pool buffer for {len} bytes: {held} buffers are held by consumers")]
    PoolExhausted {
        /// The lease length asked for.
        len: usize,
        /// Buffers sent and not yet released by every consumer.
        held: usize,
    },

    /// A pool consumer sent a release that does not match a buffer it holds: forged,
    /// duplicated, late (after retirement), for a buffer never sent to it, or with a stale
    /// generation. Nothing was freed for it; the other entries of its message were applied.
    #[error("consumer {consumer} sent a bad release of memfd {memfd_id} offset {offset} generation {generation}: {reason}")]
    BadRelease {
        /// The consumer ([`crate::pool::PoolSender::id`]).
        consumer: usize,
        /// What was wrong, for humans.
        reason: &'static str,
        /// The memfd id in the release.
        memfd_id: u32,
        /// The offset in the release.
        offset: u64,
        /// The generation in the release.
        generation: u64,
    },

    /// A pool producer announced a memfd that this receiver refuses (an id announced
    /// before, or over this receiver's memfd or byte limits; a memfd that fails
    /// verification gets the verification's own error). The descriptor was closed.
    #[error("pool producer announced memfd {memfd_id} badly: {reason}")]
    BadAnnounce {
        /// The memfd id in the announcement.
        memfd_id: u32,
        /// What was wrong, for humans.
        reason: &'static str,
    },

    /// A pool producer sent a notice that names no valid buffer: an unknown memfd id, a
    /// range outside the memfd, an empty buffer, or a generation not above the last one.
    /// Nothing was read.
    #[error("pool producer sent a bad notice for memfd {memfd_id} range {offset}+{len} generation {generation}: {reason}")]
    BadNotice {
        /// What was wrong, for humans.
        reason: &'static str,
        /// The memfd id in the notice.
        memfd_id: u32,
        /// The offset in the notice.
        offset: u64,
        /// The length in the notice.
        len: u64,
        /// The generation in the notice.
        generation: u64,
    },

    // ----- channels (handshake, listener, spawn) -----
    /// The handshake failed and the connection was closed; `failure` says why. From a
    /// [`crate::Listener`]'s `accept` this concerns one connection only: the listener goes
    /// on serving.
    #[error("handshake failed: {failure}")]
    Handshake {
        /// Why the handshake failed.
        failure: HandshakeFailure,
    },

    /// A shared secret must have at least `min` bytes (use 32 random bytes).
    #[error("shared secret is shorter than {min} bytes")]
    SecretTooShort {
        /// The minimum length.
        min: usize,
    },

    /// A listener refuses to use `path` (or its directory): it is a symbolic link, not a
    /// socket, belongs to another user, or is accessible to other users.
    #[error("refusing to use {}: {reason}", path.display())]
    UnsafePath {
        /// The path.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A live listener already serves `path`.
    #[error("a listener is already serving {}", path.display())]
    AddressInUse {
        /// The path.
        path: std::path::PathBuf,
    },

    /// The listener's socket file at `path` was deleted, renamed or replaced. New clients
    /// that use `path` reach whatever is there now: nobody if it was deleted; if someone
    /// bound another socket there, that process (see [`crate::Listener::rebind`]). A
    /// renamed socket file still reaches the listener under its new name.
    #[error("the listening socket at {} was deleted, renamed or replaced", path.display())]
    PathLost {
        /// The path.
        path: std::path::PathBuf,
    },

    // ----- guard (GuardedMap) -----
    /// Another process truncated the file behind a [`crate::GuardedMap`] while it was being
    /// read: the read touched a page past the file's new end (`SIGBUS`, caught). `buf`
    /// holds unspecified bytes; the mapping stays usable for ranges still inside the file.
    #[error("file was truncated while reading {len} bytes at offset {offset} (fault at offset {fault_offset})")]
    Truncated {
        /// Start of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// Offset within the mapping of the first page that was gone.
        fault_offset: u64,
    },

    // ----- ring (`crate::ring`) -----
    /// The ring's peer wrote an impossible value into its shared memory (an index beyond
    /// the capacity or moving backwards, a record length over the limit or beyond the
    /// published data, an unknown record kind). The ring is unusable from now on: every
    /// later call returns this error again.
    #[error("ring peer wrote an impossible value: {what}")]
    PeerCorrupt {
        /// Which value, for humans.
        what: &'static str,
    },

    /// The peer's ring does not match this side's (magic, version, kind, item size or
    /// layout), or the setup messages were not what the ring protocol sends.
    #[error("peer's ring does not match: {what}")]
    RingMismatch {
        /// What differs, for humans.
        what: &'static str,
    },

    /// A record is longer than the ring carries (half its capacity, less an 8-byte header).
    #[error("record of {len} bytes exceeds the ring's limit of {max}")]
    RecordTooLarge {
        /// Length of the record.
        len: usize,
        /// The ring's limit.
        max: usize,
    },

    /// A ring capacity must be a power of two from 16 to 2^31 units.
    #[error("invalid ring capacity {capacity}: must be a power of two from 16 to 2^31")]
    InvalidCapacity {
        /// The capacity asked for.
        capacity: u64,
    },

    /// The running kernel cannot enforce a sandbox layer at the level the
    /// [`crate::sandbox::Sandbox`] requires (a Landlock ABI, user namespaces, Landlock for
    /// listed paths). Nothing was applied.
    #[error("the kernel cannot enforce {layer} at level {required} (it offers {available})")]
    SandboxUnavailable {
        /// The layer, e.g. `"Landlock"` or `"user namespaces"`.
        layer: &'static str,
        /// The level required (a Landlock ABI version; 1 for a layer that is on or off).
        required: u32,
        /// The level the kernel offers (0: not at all).
        available: u32,
    },

    /// [`crate::sandbox::Sandbox::enter`] was called while other threads run: Landlock and
    /// namespaces apply only to the calling thread, so those threads would escape. Nothing
    /// was applied.
    #[error(
        "cannot enter the sandbox with {threads} threads running: enter it before spawning threads"
    )]
    SandboxThreads {
        /// Threads in the process, the caller included.
        threads: usize,
    },

    /// Building a sandbox failed before anything was applied: a listed path cannot be
    /// opened, a Landlock rule or the seccomp filter cannot be built (e.g. an unknown
    /// system call number was added).
    #[error("cannot build the sandbox's {layer} layer")]
    SandboxSetup {
        /// `"Landlock"`, `"seccomp"` or `"spawn"`.
        layer: &'static str,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Whether the error was caused by what the peer sent or did (as opposed to local
    /// conditions or the peer going away). For a rejected message, every descriptor it
    /// carried was closed.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Error::ControlTruncated { .. }
                | Error::MessageTruncated { .. }
                | Error::Malformed { .. }
                | Error::UnsupportedVersion { .. }
                | Error::FdCountMismatch { .. }
                | Error::PolicyLimit { .. }
                | Error::NotMemfd { .. }
                | Error::MissingSeals { .. }
                | Error::EmptyRegion { .. }
                | Error::RegionTooLarge { .. }
                | Error::SizeMismatch { .. }
                | Error::Uncommitted { .. }
                | Error::HugePages { .. }
                | Error::Map { .. }
                | Error::Handshake { .. }
                | Error::Truncated { .. }
                | Error::PeerCorrupt { .. }
                | Error::RingMismatch { .. }
                | Error::BadRelease { .. }
                | Error::BadAnnounce { .. }
                | Error::BadNotice { .. }
        )
    }

    /// [`Error::Cast`] for a failed `bytemuck` slice cast of `len` bytes to `[T]`.
    pub(crate) fn cast<T>(e: bytemuck::PodCastError, len: usize) -> Error {
        let reason = match e {
            bytemuck::PodCastError::TargetAlignmentGreaterAndInputNotAligned => {
                "the memory is not aligned for the type"
            }
            bytemuck::PodCastError::OutputSliceWouldHaveSlop => {
                "the length is not a multiple of the type's size"
            }
            bytemuck::PodCastError::SizeMismatch => "the length is not the type's size",
            bytemuck::PodCastError::AlignmentMismatch => "the alignment is not the type's",
        };
        Error::Cast {
            reason,
            len,
            size: std::mem::size_of::<T>(),
            align: std::mem::align_of::<T>(),
        }
    }

    pub(crate) fn io(op: &'static str, errno: rustix::io::Errno) -> Self {
        Error::Io {
            op,
            source: errno.into(),
        }
    }
}

/// The reason code a side sends in `REJECT` before it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// 1: the receiver's policy does not admit the sender's credentials.
    PeerNotAllowed,
    /// 2: incompatible protocol version or features.
    Incompatible,
    /// 3: one side has a shared secret and the other has none.
    SecretPresence,
    /// 4: the proof of the shared secret is wrong.
    BadProof,
    /// 5: an unexpected or malformed handshake message.
    Protocol,
    /// Any other code.
    Other(u16),
}

impl RefusalReason {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            RefusalReason::PeerNotAllowed => 1,
            RefusalReason::Incompatible => 2,
            RefusalReason::SecretPresence => 3,
            RefusalReason::BadProof => 4,
            RefusalReason::Protocol => 5,
            RefusalReason::Other(c) => c,
        }
    }

    /// The reason for a code on the wire.
    pub fn from_code(code: u16) -> Self {
        match code {
            1 => RefusalReason::PeerNotAllowed,
            2 => RefusalReason::Incompatible,
            3 => RefusalReason::SecretPresence,
            4 => RefusalReason::BadProof,
            5 => RefusalReason::Protocol,
            c => RefusalReason::Other(c),
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::PeerNotAllowed => f.write_str("its policy does not admit this side"),
            RefusalReason::Incompatible => f.write_str("incompatible protocol version"),
            RefusalReason::SecretPresence => {
                f.write_str("one side has a shared secret and the other has none")
            }
            RefusalReason::BadProof => f.write_str("wrong proof of the shared secret"),
            RefusalReason::Protocol => f.write_str("protocol violation"),
            RefusalReason::Other(c) => write!(f, "reason code {c}"),
        }
    }
}

/// Why a handshake failed (carried by [`Error::Handshake`]).
// Its `Display` is written in the handshake module, which knows the protocol version it
// names: this module imports nothing from the layers above it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// This side's [`PeerPolicy`](crate::PeerPolicy) does not admit the peer.
    PeerNotAllowed(PeerCredentials),
    /// A spawned worker's handshake came from another process than the child spawned
    /// (`got` is `None` when no credentials came with it).
    NotTheSpawnedChild {
        /// The pid that was spawned.
        expected: u32,
        /// The pid the kernel vouched for.
        got: Option<u32>,
    },
    /// One side has a shared secret and the other has none.
    SecretPresence {
        /// Whether this side has one.
        ours: bool,
    },
    /// The peer's proof of the shared secret is wrong (wrong secret, or replayed bytes).
    BadProof,
    /// The peer speaks another protocol version.
    Incompatible {
        /// The version it speaks.
        version: u16,
    },
    /// The peer's proofs do not cover the connection's two ends (it lacks
    /// feature bit 2, `FEATURE_BOUND` in `PROTOCOL.md`: an older handshake revision).
    Unbound,
    /// An unexpected or malformed handshake message.
    Protocol(&'static str),
    /// The peer refused this side and said why.
    Refused(RefusalReason),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn ok<E: std::error::Error + Send + Sync + 'static>() {}
        ok::<Error>();
    }

    #[test]
    fn display_does_not_repeat_source() {
        let e = Error::io("sendmsg", rustix::io::Errno::PIPE);
        assert_eq!(e.to_string(), "sendmsg failed");
        assert!(std::error::Error::source(&e).is_some());
    }
}
