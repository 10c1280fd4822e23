//! The few places that need `unsafe`: mapping descriptors and copying out of memory that
//! another process may write.
//!
//! Invariants the safe layers rely on:
//! - a [`ReadMap`] is only created over a file whose size was checked to be at least the
//!   mapping's length and which is sealed against shrinking, so touching it cannot `SIGBUS`;
//! - [`ReadMap::as_slice`] is only reached for files sealed `F_SEAL_WRITE` (checked by the
//!   caller, `RegionView`), so no process can write the bytes behind the slice;
//! - everything else reads through [`volatile_copy`], which never creates a reference to
//!   peer-writable memory.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use memmap2::{Advice, Mmap, MmapMut, MmapOptions, MmapRaw};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

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
        // underneath the mapping. Callers only use this for files sealed F_SEAL_WRITE and
        // F_SEAL_SHRINK whose size was checked to be `len`: nobody can change or truncate
        // them.
        let map = unsafe {
            MmapOptions::new()
                .len(len)
                .map_copy_read_only(fd.as_fd().as_raw_fd())
        }?;
        let _ = map.advise(Advice::Sequential); // a hint, as above
        Ok(ReadMap::Private(map))
    }

    pub(crate) fn ptr(&self) -> *const u8 {
        match self {
            ReadMap::Shared(m) => m.as_ptr(),
            ReadMap::Private(m) => m.as_ptr(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            ReadMap::Shared(m) => m.len(),
            ReadMap::Private(m) => m.len(),
        }
    }

    /// The mapped bytes as a slice.
    ///
    /// # Safety
    /// No process may be able to write the mapped file while the slice lives: the file must
    /// be sealed `F_SEAL_WRITE` (which also means no writable shared mapping exists).
    pub(crate) unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr/len describe a live mapping owned by self (memmap2 keeps it until
        // drop); the caller guarantees the bytes are immutable for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len()) }
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the mapping without creating a
    /// reference to it. Returns `false` (copying nothing) if the range is out of bounds.
    pub(crate) fn copy_out(&self, offset: usize, dst: &mut [u8]) -> bool {
        match offset.checked_add(dst.len()) {
            Some(end) if end <= self.len() => {
                // SAFETY: offset..end lies inside the live mapping (checked just above).
                unsafe { volatile_copy(self.ptr().add(offset), dst) };
                true
            }
            _ => false,
        }
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

/// Copies `dst.len()` bytes from `src` with volatile loads: 64 bytes per step (four 16-byte
/// SSE2 loads) on x86_64, then 8 bytes, then single bytes, each load aligned.
///
/// Volatile loads are what the unsafe-code guidelines recommend for memory that another
/// process may write concurrently: the compiler may neither elide, repeat nor tear-assume
/// them, and every byte is read exactly once, so the caller validates a private snapshot.
/// (The wide loads matter: out of memory, 8-byte volatile loads copy at ~8 GB/s on the
/// project's VMs, 16-byte ones at ~20 GB/s, close to `memcpy`.)
///
/// # Safety
/// `src..src + dst.len()` must be readable (mapped) for the duration of the call.
pub(crate) unsafe fn volatile_copy(src: *const u8, dst: &mut [u8]) {
    let len = dst.len();
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_storeu_si128};
        let head = src.align_offset(16).min(len);
        while i < head {
            // SAFETY: i < len, so src + i is inside the readable range (caller's contract).
            dst[i] = unsafe { src.add(i).read_volatile() };
            i += 1;
        }
        while i + 64 <= len {
            // SAFETY: src + i is 16-aligned (advanced to the boundary, then by 64s) and
            // src + i + 64 <= src + len lies in the readable range; `__m128i` has no
            // invalid bit patterns. SSE2 is part of the x86_64 baseline, so the loads and
            // the unaligned stores into `dst[i..i + 64]` (in bounds: i + 64 <= len) exist
            // on every x86_64 CPU.
            unsafe {
                let s = src.add(i).cast::<__m128i>();
                let a = s.read_volatile();
                let b = s.add(1).read_volatile();
                let c = s.add(2).read_volatile();
                let d = s.add(3).read_volatile();
                let out = dst.as_mut_ptr().add(i).cast::<__m128i>();
                _mm_storeu_si128(out, a);
                _mm_storeu_si128(out.add(1), b);
                _mm_storeu_si128(out.add(2), c);
                _mm_storeu_si128(out.add(3), d);
            }
            i += 64;
        }
    }
    let head = (i + src.wrapping_add(i).align_offset(8)).min(len);
    while i < head {
        // SAFETY: i < len, so src + i is inside the readable range (caller's contract).
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
    }
    while i + 8 <= len {
        // SAFETY: src + i is 8-aligned (we advanced to the alignment boundary, then by 8s)
        // and src + i + 8 <= src + len is inside the readable range.
        let word = unsafe { src.add(i).cast::<u64>().read_volatile() };
        dst[i..i + 8].copy_from_slice(&word.to_ne_bytes());
        i += 8;
    }
    while i < len {
        // SAFETY: i < len, inside the readable range.
        dst[i] = unsafe { src.add(i).read_volatile() };
        i += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_copy_handles_every_alignment_and_length() {
        let src: Vec<u8> = (0..=255u8).collect();
        for start in 0..17 {
            for len in 0..200 {
                let mut dst = vec![0u8; len];
                // SAFETY: start + len <= 216 <= 256, inside `src`.
                unsafe { volatile_copy(src.as_ptr().add(start), &mut dst) };
                assert_eq!(&dst[..], &src[start..start + len]);
            }
        }
    }
}
