//! The few places that need `unsafe`: mapping descriptors and copying out of memory that
//! another process may write.
//!
//! Invariants the safe layers rely on:
//! - a [`ReadMap`] is only created over a file whose size was checked to be at least the
//!   mapping's length and which is sealed against shrinking, so touching it cannot `SIGBUS`;
//! - a mapping is only ever read through [`ReadMap::bytes`], a [`SharedBytes`]: copies with
//!   volatile loads, never a reference to peer-writable memory, except its `unsafe`
//!   `as_slice`, only reached for files sealed `F_SEAL_WRITE` (checked by the caller,
//!   `RegionView`) or by callers who vouch for their producer.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use memmap2::{Advice, Mmap, MmapMut, MmapOptions, MmapRaw};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::shm::SharedBytes;

/// A read-only mapping of a verified region.
#[derive(Debug)]
pub(crate) enum ReadMap {
    /// `PROT_READ, MAP_SHARED`: sees the producer's later writes (FUTURE_WRITE regions).
    Shared(MmapRaw),
    /// `PROT_READ, MAP_PRIVATE`: the fallback for kernels that refuse a shared read-only
    /// mapping of a write-sealed memfd. Only used for write-sealed regions, whose contents
    /// cannot change, so it shows the same bytes.
    Private(Mmap),
}

impl ReadMap {
    /// Maps `len` bytes of `fd` read-only and shared.
    pub(crate) fn shared(fd: impl AsFd, len: usize) -> io::Result<ReadMap> {
        let map = MmapOptions::new()
            .len(len)
            .map_raw_read_only(fd.as_fd().as_raw_fd())?;
        // A hint only, so its failure is ignored. MADV_SEQUENTIAL makes the kernel skip
        // marking every page accessed (an LRU move per page) when the mapping is torn down:
        // measured, it cuts munmap of a read 1 MiB mapping from ~95 to ~40 µs and of 64 MiB
        // from ~8 to ~3.5 ms (BENCHMARKS.md). Faults keep their 64 KiB fault-around.
        let _ = map.advise(Advice::Sequential);
        Ok(ReadMap::Shared(map))
    }

    /// Maps `len` bytes of `fd` read-only and private.
    pub(crate) fn private(fd: impl AsFd, len: usize) -> io::Result<ReadMap> {
        // SAFETY: memmap2's `map_copy_read_only` is unsafe because the file may change
        // underneath the `&[u8]` its `Deref` hands out. That `Deref` is never used: the
        // mapping is read only through `bytes()`, by volatile copies or by the unsafe
        // `SharedBytes::as_slice`, whose caller rules out writers. (Callers use this for
        // files sealed F_SEAL_WRITE and F_SEAL_SHRINK whose size was checked to be `len`.)
        let map = unsafe {
            MmapOptions::new()
                .len(len)
                .map_copy_read_only(fd.as_fd().as_raw_fd())
        }?;
        let _ = map.advise(Advice::Sequential); // a hint, as above
        Ok(ReadMap::Private(map))
    }

    /// The mapped bytes, to read by copy.
    pub(crate) fn bytes(&self) -> SharedBytes<'_> {
        let (ptr, len) = match self {
            ReadMap::Shared(m) => (m.as_ptr(), m.len()),
            ReadMap::Private(m) => (m.as_ptr(), m.len()),
        };
        // SAFETY: ptr..ptr + len is the live mapping owned by self, which memmap2 keeps
        // mapped until drop, so for the borrow of self; this module makes no reference of
        // any kind to it (memmap2's `Deref` of `Private` is never used).
        unsafe { SharedBytes::new(ptr, len) }
    }
}

/// The base page size. From the C library (`sysconf`, which glibc and musl answer from the
/// auxiliary vector they saved at startup: no system call, so it works inside a seccomp
/// sandbox, where reading `/proc/self/auxv` would fail).
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// `cachestat(2)`'s system call number: the same on every Linux architecture (6.5+).
pub(crate) const SYS_CACHESTAT: libc::c_long = 451;

/// Counts the pages of shared-memory file `fd` from byte `from` (page-aligned) to the end
/// of its page cache, *past* its size included, that exist (resident or swapped out), with
/// `cachestat(2)` (Linux 6.5+). The walk costs one step per page found, so for the pages
/// past the end of an honest file (none) it is cheap.
///
/// Returns `Ok(None)` where the kernel cannot answer: no `cachestat` (`ENOSYS`, or `EPERM`
/// from a seccomp filter), or a file it does not support (`EOPNOTSUPP`: hugetlbfs).
pub(crate) fn pages_from(fd: impl AsFd, from: u64) -> io::Result<Option<u64>> {
    #[repr(C)]
    struct CachestatRange {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Cachestat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // len 0: up to the highest page index, not just to the file's size.
    let range = CachestatRange { off: from, len: 0 };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat(fd, range, cstat, flags) reads `range` and writes `stat`, both live
    // #[repr(C)] values laid out as the kernel's `struct cachestat_range` and
    // `struct cachestat`; it touches no other memory, and the descriptor is borrowed for
    // the call.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_fd().as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    if rc == 0 {
        // For shared memory, "evicted" entries are pages in swap: still allocated.
        return Ok(Some(stat.nr_cache.saturating_add(stat.nr_evicted)));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP) => Ok(None),
        _ => Err(err),
    }
}

/// Maps `len` bytes of `fd` read-write and shared: the producer's own view of a region it
/// created and has not shared with anyone yet.
pub(crate) fn map_writable(fd: impl AsFd, len: usize) -> io::Result<MmapMut> {
    // SAFETY: memmap2's `map_mut` is unsafe because others could modify or truncate the
    // file. The caller owns a fresh memfd that no other process holds yet, whose size is
    // `len` and whose pages are allocated; once shared, it is sealed against shrinking and
    // against every new writer, so the only writer is this mapping.
    unsafe { MmapOptions::new().len(len).map_mut(fd.as_fd().as_raw_fd()) }
}

/// Polls `fd` for `events` without waiting: the events it reports now (empty if none, or
/// if `poll` fails).
pub(crate) fn poll_now(fd: impl AsFd, events: PollFlags) -> PollFlags {
    let mut fds = [PollFd::new(&fd, events)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(n) if n > 0 => fds[0].revents(),
        _ => PollFlags::empty(),
    }
}

/// Whether the peer's end of socket `sock` is closed or in error (`POLLRDHUP`, `POLLHUP`,
/// `POLLERR`); a pending message (`POLLIN` alone) does not count.
pub(crate) fn peer_hung_up(sock: impl AsFd) -> bool {
    poll_now(sock, PollFlags::RDHUP).intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
}

/// `SO_PASSRIGHTS` (Linux 6.16+): whether a unix socket accepts `SCM_RIGHTS`. With it off,
/// a peer's `sendmsg` with descriptors fails with `EPERM` and nothing is queued.
pub(crate) const SO_PASSRIGHTS: libc::c_int = 83;

/// Sets `SO_PASSRIGHTS` on a unix socket. `ENOPROTOOPT` means the kernel predates it.
///
/// # References
///  - [`socket(7)`](https://man7.org/linux/man-pages/man7/socket.7.html), commit
///    77cbe1a6d873 "af_unix: Introduce SO_PASSRIGHTS" (Linux 6.16)
pub(crate) fn set_pass_rights(fd: impl AsFd, on: bool) -> io::Result<()> {
    let value: libc::c_int = on.into();
    // SAFETY: setsockopt reads `optlen` bytes from `optval`, which points to a live c_int
    // of exactly that size; the descriptor is borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes this socket has sent that its peer has not yet read (`SIOCOUTQ`; for a unix
/// datagram socket, the memory of its queued datagrams, `sk_wmem_alloc`).
///
/// # References
///  - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html), `SIOCOUTQ`
pub(crate) fn unsent_bytes(fd: impl AsFd) -> io::Result<usize> {
    // SIOCOUTQ = TIOCOUTQ.
    const SIOCOUTQ: rustix::ioctl::Opcode = 0x5411;
    // SAFETY: SIOCOUTQ writes one c_int through its argument, which `Getter` provides.
    let n = unsafe {
        rustix::ioctl::ioctl(
            fd.as_fd(),
            rustix::ioctl::Getter::<SIOCOUTQ, libc::c_int>::new(),
        )
    }?;
    Ok(usize::try_from(n).unwrap_or(0))
}
