//! The checks a descriptor passes before sealpipe maps or adopts it: access mode, seals,
//! size, huge pages, committed pages ([`verify`](crate::verify()) for a received one,
//! `from_memfile` for one handed in).

use std::os::fd::BorrowedFd;

use rustix::fs::{self, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::seals::Seals;

/// Every check of [`verify`](crate::verify()), without mapping. Returns the region's seals.
pub(crate) fn check(
    fd: BorrowedFd<'_>,
    declared_len: u64,
    policy: &Policy,
    index: usize,
) -> Result<Seals> {
    check_access(fd, index)?;
    // Every bit, with rustix: memfile's `get_seals` drops those it does not know (EXEC),
    // and the seals are reported (`RegionView::seals`, `Error::MissingSeals`).
    let seals = match fs::fcntl_get_seals(fd) {
        Ok(s) => Seals::from_bits(s.bits()),
        // Described without fstat, which a FUSE daemon would answer (or never answer).
        Err(Errno::INVAL) => {
            return Err(Error::NotMemfd {
                index,
                reason: crate::closer::kind(fd).describe(),
            })
        }
        Err(Errno::BADF) => {
            return Err(Error::NotMemfd {
                index,
                reason: "descriptor cannot be inspected",
            })
        }
        Err(e) => return Err(Error::io("fcntl(F_GET_SEALS)", e)),
    };
    let missing = policy.missing_seals(seals);
    if !missing.is_empty() {
        return Err(Error::MissingSeals {
            index,
            have: seals,
            missing,
        });
    }
    check_contents(fd, declared_len, policy, index)?;
    Ok(seals)
}

/// The descriptor gives access to the file's contents for reading: neither `O_PATH` nor
/// write-only.
pub(crate) fn check_access(fd: BorrowedFd<'_>, index: usize) -> Result<()> {
    let flags = fs::fcntl_getfl(fd).map_err(|e| Error::io("fcntl(F_GETFL)", e))?;
    if flags.contains(OFlags::PATH) {
        return Err(Error::NotMemfd {
            index,
            reason: "O_PATH descriptor (no access to contents)",
        });
    }
    if flags & OFlags::ACCMODE == OFlags::WRONLY {
        return Err(Error::NotMemfd {
            index,
            reason: "write-only descriptor (cannot be mapped for reading)",
        });
    }
    Ok(())
}

/// The checks of [`verify`](crate::verify()) after the seals, on a sealable file (`F_GET_SEALS` answered):
/// length, size, huge pages, committed pages.
pub(crate) fn check_contents(
    fd: BorrowedFd<'_>,
    declared_len: u64,
    policy: &Policy,
    index: usize,
) -> Result<()> {
    if declared_len == 0 {
        return Err(Error::EmptyRegion { index });
    }
    if declared_len > policy.region_len_limit() || declared_len > isize::MAX as u64 {
        return Err(Error::RegionTooLarge {
            index,
            len: declared_len,
            max: policy.region_len_limit(),
        });
    }
    let st = fs::fstat(fd).map_err(|e| Error::io("fstat", e))?;
    let actual = st.st_size as u64;
    if actual != declared_len {
        return Err(Error::SizeMismatch {
            index,
            declared: declared_len,
            actual,
        });
    }
    // F_GET_SEALS answered, so this is shmem or hugetlbfs: fstatfs cannot block here.
    let huge =
        fs::fstatfs(fd).map_err(|e| Error::io("fstatfs", e))?.f_type as u64 == HUGETLBFS_MAGIC;
    if huge && !policy.accepts_huge_pages() {
        return Err(Error::HugePages { index });
    }
    // The page size of the file: st_blksize is the huge page size on hugetlbfs; shmem
    // reports a larger one when transparent huge pages are on, but allocates base pages.
    let page = if huge {
        (st.st_blksize as u64).max(4096)
    } else {
        crate::sys::page_size()
    };
    // st_blocks counts every allocated page (shmem recounts it for fstat), in the file
    // and past its end; only those in 0..st_size count. A sender can allocate pages past
    // the end before sealing (fallocate KEEP_SIZE) to make st_blocks look complete while
    // the region is all holes: cachestat counts them, so they are taken off.
    let needed = actual.div_ceil(page);
    let allocated = (st.st_blocks as u64).saturating_mul(512) / page;
    let past_end = if huge {
        None // hugetlbfs (opted in): st_blocks is all the kernel reports
    } else {
        crate::sys::pages_from(fd, needed.saturating_mul(page)).map_err(|e| Error::Io {
            op: "cachestat",
            source: e,
        })?
    };
    // Without cachestat, st_blocks alone (Capabilities::counts_committed_pages).
    let inside = allocated.saturating_sub(past_end.unwrap_or(0));
    if inside < needed {
        return Err(Error::Uncommitted {
            index,
            len: actual,
            committed: inside.saturating_mul(page).min(actual),
        });
    }
    Ok(())
}

/// `f_type` of hugetlbfs (`statfs(2)`).
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;
