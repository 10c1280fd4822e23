//! Fuzz entry point for descriptor verification, with the specification table of
//! `PROTOCOL.md` as its reference (compiled for tests and fuzzing only).
//!
//! Each entry point takes arbitrary bytes and must never panic, hang, leak a descriptor or
//! read out of bounds; where a simple model of the correct answer exists, it asserts that
//! the implementation agrees with it (an assertion failure is a finding). The fuzz targets
//! reach these through `crate::fuzz`, whose tests also replay the committed corpora.
#![cfg_attr(not(fuzzing), allow(unreachable_pub))] // public only to the fuzz crate, through `crate::fuzz`

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{self, MemfdFlags, OFlags, SealFlags};

use crate::error::Error;
use crate::policy::Policy;
use crate::seals::Seals;

/// Builds a real descriptor from the first bytes of `data` (kind of file, seals, real size),
/// verifies it against a policy and declared length from the rest, and checks the verdict
/// against the specification table in `PROTOCOL.md`.
pub fn seal_policy(data: &[u8]) {
    let mut b = [0u8; 20];
    let n = data.len().min(b.len());
    b[..n].copy_from_slice(&data[..n]);
    let kind = b[0] % 7;
    let seals_to_add = u32::from(b[1] & 0x3f);
    let real = u64::from(u16::from_le_bytes([b[2], b[3]])) * 64; // up to 4 MiB
    let declared = match b[4] % 4 {
        0 => real,
        1 => real.wrapping_add(u64::from(b[5])),
        2 => real.wrapping_sub(u64::from(b[5])),
        _ => u64::from_le_bytes(b[6..14].try_into().unwrap_or_default()),
    };
    let limit = if b[14] & 1 == 0 {
        Policy::DEFAULT_MAX_REGION_LEN
    } else {
        u64::from(u32::from_le_bytes(b[15..19].try_into().unwrap_or_default()))
    };
    let policy = if b[19] & 1 == 0 {
        Policy::immutable()
    } else {
        Policy::producer_writable()
    }
    .max_region_len(limit);

    let commit = b[1] & 0x40 != 0;
    let Some(fd) = make_fd(kind, seals_to_add, real, commit) else {
        return;
    };
    let actual_seals = fs::fcntl_get_seals(&fd)
        .ok()
        .map(|s| Seals::from_bits(s.bits()));
    let result = crate::checks::check(fd.as_fd(), declared, &policy, 0);

    // The specification, in the order PROTOCOL.md lists the checks.
    match (kind, actual_seals) {
        (2..=4 | 6, _) | (_, None) => {
            assert!(matches!(result, Err(Error::NotMemfd { .. })), "{result:?}")
        }
        (_, Some(have)) => {
            let missing = policy.missing_seals(have);
            if !missing.is_empty() {
                assert!(
                    matches!(result, Err(Error::MissingSeals { missing: m, .. }) if m == missing),
                    "{result:?}"
                );
            } else if declared == 0 {
                assert!(
                    matches!(result, Err(Error::EmptyRegion { .. })),
                    "{result:?}"
                );
            } else if declared > limit || declared > isize::MAX as u64 {
                assert!(
                    matches!(result, Err(Error::RegionTooLarge { .. })),
                    "{result:?}"
                );
            } else if declared != real {
                assert!(
                    matches!(result, Err(Error::SizeMismatch { .. })),
                    "{result:?}"
                );
            } else if !commit {
                assert!(
                    matches!(result, Err(Error::Uncommitted { committed: 0, .. })),
                    "{result:?}"
                );
            } else {
                assert!(matches!(result, Ok(s) if s == have), "{result:?}");
            }
        }
    }
}

/// 0: sealable memfd, 1: memfd without sealing, 2: pipe, 3: eventfd, 4: O_PATH memfd,
/// 5: sealable memfd with exec bits (F_SEAL_EXEC then implies write seals), 6: a sealable
/// memfd reopened write-only (cannot be mapped for reading).
fn make_fd(kind: u8, seals: u32, len: u64, commit: bool) -> Option<OwnedFd> {
    let memfd = |flags: MemfdFlags| -> Option<OwnedFd> {
        let fd = fs::memfd_create("fuzz", MemfdFlags::CLOEXEC | flags).ok()?;
        fs::ftruncate(&fd, len).ok()?;
        if commit && len > 0 {
            // Allocated like a Region; without it, the memfd is sparse.
            fs::fallocate(&fd, fs::FallocateFlags::empty(), 0, len).ok()?;
        }
        // Adding seals may legitimately fail (e.g. not sealable); the verdict must still hold.
        let _ = fs::fcntl_add_seals(&fd, SealFlags::from_bits_retain(seals));
        Some(fd)
    };
    match kind {
        0 => memfd(MemfdFlags::ALLOW_SEALING | MemfdFlags::NOEXEC_SEAL)
            .or_else(|| memfd(MemfdFlags::ALLOW_SEALING)),
        1 => memfd(MemfdFlags::empty()),
        2 => rustix::pipe::pipe().ok().map(|(r, _w)| r),
        3 => rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).ok(),
        4 => {
            let m = memfd(MemfdFlags::ALLOW_SEALING)?;
            let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&m));
            fs::open(
                path.as_str(),
                OFlags::PATH | OFlags::CLOEXEC,
                fs::Mode::empty(),
            )
            .ok()
        }
        5 => memfd(MemfdFlags::ALLOW_SEALING),
        _ => {
            let m = memfd(MemfdFlags::ALLOW_SEALING)?;
            let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&m));
            fs::open(
                path.as_str(),
                OFlags::WRONLY | OFlags::CLOEXEC,
                fs::Mode::empty(),
            )
            .ok()
        }
    }
}
