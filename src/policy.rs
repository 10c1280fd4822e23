//! The receiver's verification policy: what it demands of every region before mapping it.

use crate::seals::Seals;
use crate::wire;

/// What a receiver demands of every region before it maps it.
///
/// Seals are checked as a **superset**: a region may carry more seals than required.
///
/// ```
/// let policy = sealpipe::Policy::immutable().max_region_len(256 << 20);
/// assert_eq!(policy.required_seals(), sealpipe::Seals::WRITE | sealpipe::Seals::SHRINK | sealpipe::Seals::GROW);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    accept_future_write: bool,
    accept_huge_pages: bool,
    max_region_len: u64,
    max_message_len: u64,
    max_regions: usize,
    max_payload: usize,
    keep_descriptors: bool,
    max_pool_memfds: usize,
    max_pool_bytes: u64,
}

impl Policy {
    /// Default limit on a single region: 1 GiB.
    pub const DEFAULT_MAX_REGION_LEN: u64 = 1 << 30;
    /// Default limit on the memfds one pool producer may make a
    /// [`crate::pool::PoolReceiver`] hold: 64.
    pub const DEFAULT_MAX_POOL_MEMFDS: usize = 64;
    /// Default limit on the bytes of all memfds one pool producer may make a
    /// [`crate::pool::PoolReceiver`] map: 1 GiB.
    pub const DEFAULT_MAX_POOL_BYTES: u64 = 1 << 30;

    /// Default limit on the regions of one message together: 4 GiB.
    pub const DEFAULT_MAX_MESSAGE_LEN: u64 = 4 << 30;

    /// Only immutable regions: `WRITE | SHRINK | GROW` required. Every received region can be
    /// read as `&[u8]`.
    pub const fn immutable() -> Policy {
        Policy {
            accept_future_write: false,
            accept_huge_pages: false,
            max_region_len: Self::DEFAULT_MAX_REGION_LEN,
            max_message_len: Self::DEFAULT_MAX_MESSAGE_LEN,
            max_regions: wire::MAX_REGIONS,
            max_payload: wire::MAX_PAYLOAD,
            keep_descriptors: false,
            max_pool_memfds: Self::DEFAULT_MAX_POOL_MEMFDS,
            max_pool_bytes: Self::DEFAULT_MAX_POOL_BYTES,
        }
    }

    /// Accepts producer-writable regions ([`Seals::PRODUCER_WRITABLE`], made by
    /// [`Region::seal_producer_writable`](crate::Region::seal_producer_writable)) as well as
    /// immutable ones: `SHRINK | GROW` plus either `WRITE` or `FUTURE_WRITE` required. A
    /// producer-writable region can still be changed by its producer, so it can only be
    /// read by copying ([`crate::RegionView::read_at`]).
    pub const fn producer_writable() -> Policy {
        Policy {
            accept_future_write: true,
            ..Policy::immutable()
        }
    }

    /// Largest region accepted, in bytes (default [`Policy::DEFAULT_MAX_REGION_LEN`]).
    pub const fn max_region_len(mut self, len: u64) -> Policy {
        self.max_region_len = len;
        self
    }

    /// Whether regions backed by huge pages (`MFD_HUGETLB` memfds, hugetlbfs) are accepted
    /// (default: no, [`crate::Error::HugePages`]).
    ///
    /// Huge pages come from a pool the administrator sets aside; mapping such a region
    /// fails with `ENOMEM` ([`crate::Error::Map`]) when the pool has no page for it. The
    /// commitment check is weaker for them: the kernel reports their pages by count only
    /// (`st_blocks`), so a peer that allocated huge pages past the end of its file before
    /// sealing it can leave holes inside it, which this receiver would then fill from the
    /// pool, charged to its hugetlb cgroup. Opt in only for peers you trust with that.
    pub const fn huge_pages(mut self, accept: bool) -> Policy {
        self.accept_huge_pages = accept;
        self
    }

    /// Largest total length of the regions of one message, in bytes (default
    /// [`Policy::DEFAULT_MAX_MESSAGE_LEN`]). Checked on the declared lengths, before any
    /// region is verified or mapped: a larger message is rejected with
    /// [`crate::Error::PolicyLimit`] (`what: "total region bytes"`).
    pub const fn max_message_len(mut self, len: u64) -> Policy {
        self.max_message_len = len;
        self
    }

    /// Whether each received [`crate::RegionView`] keeps its region's descriptor (default
    /// `false`: the descriptor is closed as soon as the region is mapped).
    ///
    /// A view needs only its mapping to be read. Keeping the descriptor as well costs one
    /// slot of the process's descriptor table per retained view; an application that keeps
    /// many messages would fill the table (`RLIMIT_NOFILE`), after which every message
    /// arrives with its descriptors dropped ([`crate::Error::ControlTruncated`]). Ask for
    /// it only to use the descriptor: [`crate::RegionView::fd`],
    /// [`crate::RegionView::into_fd`], [`crate::RegionView::into_memfile`], forwarding the
    /// region to another process ([`crate::RegionView::region`]), or turning it into a
    /// [`crate::PositionalFile`].
    pub const fn keep_descriptors(mut self, keep: bool) -> Policy {
        self.keep_descriptors = keep;
        self
    }

    /// Most regions accepted in one message (default and upper bound: 253, the kernel's
    /// limit). Surplus descriptors are rejected ([`crate::Error::PolicyLimit`]): they are
    /// received (the kernel would otherwise drop them in the receiving thread, where their
    /// close may block) and closed without blocking.
    pub const fn max_regions(mut self, n: usize) -> Policy {
        self.max_regions = if n > wire::MAX_REGIONS {
            wire::MAX_REGIONS
        } else {
            n
        };
        self
    }

    /// Largest application payload accepted, in bytes (default and upper bound:
    /// [`Channel::MAX_PAYLOAD`](crate::Channel::MAX_PAYLOAD)).
    pub const fn max_payload(mut self, n: usize) -> Policy {
        self.max_payload = if n > wire::MAX_PAYLOAD {
            wire::MAX_PAYLOAD
        } else {
            n
        };
        self
    }

    /// Most memfds a pool producer may make a [`crate::pool::PoolReceiver`] hold (default
    /// [`Policy::DEFAULT_MAX_POOL_MEMFDS`]). Each one costs a descriptor and a mapping for
    /// the receiver's life.
    pub const fn max_pool_memfds(mut self, n: usize) -> Policy {
        self.max_pool_memfds = n;
        self
    }

    /// Most bytes, over all its memfds, a pool producer may make a
    /// [`crate::pool::PoolReceiver`] map (default [`Policy::DEFAULT_MAX_POOL_BYTES`]).
    pub const fn max_pool_bytes(mut self, n: u64) -> Policy {
        self.max_pool_bytes = n;
        self
    }

    /// The pool memfd count limit.
    pub const fn pool_memfds_limit(&self) -> usize {
        self.max_pool_memfds
    }

    /// The pool byte limit.
    pub const fn pool_bytes_limit(&self) -> u64 {
        self.max_pool_bytes
    }

    /// Seals every region must have. For [`Policy::producer_writable`] this is `SHRINK | GROW`,
    /// and additionally one of `WRITE` or `FUTURE_WRITE`.
    pub const fn required_seals(&self) -> Seals {
        if self.accept_future_write {
            Seals::SHRINK.union(Seals::GROW)
        } else {
            Seals::WRITE.union(Seals::SHRINK).union(Seals::GROW)
        }
    }

    /// Whether regions sealed `FUTURE_WRITE` (not `WRITE`) are accepted.
    pub const fn accepts_future_write(&self) -> bool {
        self.accept_future_write
    }

    /// Whether huge-page regions are accepted ([`Policy::huge_pages`]).
    pub const fn accepts_huge_pages(&self) -> bool {
        self.accept_huge_pages
    }

    /// The region length limit.
    pub const fn region_len_limit(&self) -> u64 {
        self.max_region_len
    }

    /// The limit on the regions of one message together, in bytes.
    pub const fn message_len_limit(&self) -> u64 {
        self.max_message_len
    }

    /// Whether received views keep their descriptors.
    pub const fn keeps_descriptors(&self) -> bool {
        self.keep_descriptors
    }

    /// The per-message region count limit.
    pub const fn regions_limit(&self) -> usize {
        self.max_regions
    }

    /// The payload length limit.
    pub const fn payload_limit(&self) -> usize {
        self.max_payload
    }

    /// Seals `have` lacks for this policy; empty if `have` satisfies it.
    pub const fn missing_seals(&self, have: Seals) -> Seals {
        let mut missing = self.required_seals().difference(have);
        if self.accept_future_write && !have.intersects(Seals::WRITE.union(Seals::FUTURE_WRITE)) {
            missing = missing.union(Seals::WRITE.union(Seals::FUTURE_WRITE));
        }
        missing
    }

    /// The limits the wire format checks a received message against.
    pub(crate) const fn wire_limits(&self) -> wire::Limits {
        wire::Limits {
            regions: self.regions_limit(),
            payload: self.payload_limit(),
        }
    }
}

impl Default for Policy {
    /// [`Policy::immutable`].
    fn default() -> Policy {
        Policy::immutable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_check_supersets() {
        let imm = Policy::immutable();
        assert!(imm.missing_seals(Seals::IMMUTABLE).is_empty());
        assert!(imm
            .missing_seals(Seals::IMMUTABLE | Seals::EXEC | Seals::from_bits(0x400))
            .is_empty());
        assert_eq!(imm.missing_seals(Seals::PRODUCER_WRITABLE), Seals::WRITE);
        let view = Policy::producer_writable();
        assert!(view.missing_seals(Seals::PRODUCER_WRITABLE).is_empty());
        assert!(view.missing_seals(Seals::IMMUTABLE).is_empty());
        assert_eq!(
            view.missing_seals(Seals::SHRINK | Seals::GROW),
            Seals::WRITE | Seals::FUTURE_WRITE
        );
        assert_eq!(
            view.missing_seals(Seals::WRITE),
            Seals::SHRINK | Seals::GROW
        );
    }

    #[test]
    fn limits_are_clamped_to_protocol() {
        let p = Policy::immutable()
            .max_regions(1000)
            .max_payload(usize::MAX);
        assert_eq!(p.regions_limit(), wire::MAX_REGIONS);
        assert_eq!(p.payload_limit(), wire::MAX_PAYLOAD);
    }
}
