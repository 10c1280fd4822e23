//! Producer side: create a memfd, fill it, seal it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use memmap2::MmapMut;
use rustix::fs::{self, FallocateFlags, MemfdFlags, SealFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::seals::Seals;
use crate::sys;

/// A writable region that only this process holds: a fresh memfd, committed in memory.
///
/// Fill it through [`Region::write_at`] / [`io::Write`] (copies with `pwrite`, the fastest
/// path for a one-shot buffer: no page faults, no zeroing, no unmap) or in place through
/// [`Region::as_mut_slice`] / [`Region::as_mut_slice_of`] (maps it on first use). Then
/// [`seal`](Region::seal) it immutable, or [`seal_producer_writable`](Region::seal_producer_writable)
/// to keep writing while others read.
///
/// The memfd is close-on-exec, created with `MFD_NOEXEC_SEAL` where the kernel has it,
/// and its pages are allocated up front with `fallocate`, so running out of memory is an
/// error here rather than a `SIGBUS` in a consumer later.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::io::Write;
/// let mut region = sealpipe::Region::new(4096)?;
/// region.write_all(b"header")?;            // io::Write: pwrite at a cursor
/// region.write_at(1000, b"more")?;          // pwrite at an offset
/// region.as_mut_slice()?[100] = 7;          // or in place, through a mapping
/// let sealed = region.seal()?;              // WRITE|SHRINK|GROW|SEAL
/// assert!(sealed.seals().contains(sealpipe::Seals::IMMUTABLE));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Region {
    fd: OwnedFd,
    len: usize,
    map: Option<MmapMut>,
    cursor: usize,
}

impl Region {
    /// Creates a region of `len` bytes (zero-filled), with every page allocated.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if `len` is 0, [`Error::OutOfMemory`] if the memory cannot be
    /// committed, [`Error::Io`] if `memfd_create` or `ftruncate` fails.
    ///
    /// Inside a memory cgroup whose limit is reached and whose OOM killer is on, the kernel
    /// may answer the commit by killing this process instead of failing it (measured with
    /// cgroup v1). Either way it happens here, at creation, never later in a consumer.
    pub fn new(len: usize) -> Result<Region> {
        Region::create(len, capabilities_noexec_seal())
    }

    fn create(len: usize, noexec_seal: bool) -> Result<Region> {
        if len == 0 {
            return Err(Error::OutOfBounds {
                offset: 0,
                len: 0,
                region_len: 0,
            });
        }
        // Refuse what the machine can never hold: fallocate on a memfd is not bounded by any
        // filesystem size, and would otherwise eat all memory before failing.
        let total = rustix::system::sysinfo();
        let limit =
            (total.totalram as u128 + total.totalswap as u128) * u128::from(total.mem_unit.max(1));
        if len as u128 > limit {
            return Err(Error::OutOfMemory {
                len: len as u64,
                source: io::Error::from(io::ErrorKind::OutOfMemory),
            });
        }
        let fd = create_memfd(noexec_seal)?;
        fs::ftruncate(&fd, len as u64).map_err(|e| Error::io("ftruncate", e))?;
        fs::fallocate(&fd, FallocateFlags::empty(), 0, len as u64).map_err(|e| {
            Error::OutOfMemory {
                len: len as u64,
                source: e.into(),
            }
        })?;
        Ok(Region {
            fd,
            len,
            map: None,
            cursor: 0,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: regions are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Copies `data` into the region at `offset` (with `pwrite`, no mapping needed).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit; [`Error::Io`] if `pwrite` fails.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        check_range(offset, data.len(), self.len)?;
        pwrite_all(&self.fd, data, offset as u64)
    }

    /// The whole region as a mutable byte slice, mapping it on first call.
    ///
    /// # Errors
    /// [`Error::Io`] if `mmap` fails.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        if self.map.is_none() {
            let map = sys::map_writable(&self.fd, self.len).map_err(|e| Error::Io {
                op: "mmap",
                source: e,
            })?;
            self.map = Some(map);
        }
        Ok(self.map.as_mut().map(|m| &mut m[..]).unwrap_or_default())
    }

    /// The region as a mutable slice of `T`.
    ///
    /// # Errors
    /// [`Error::Cast`] if the region's length is not a multiple of `size_of::<T>()` (the
    /// mapping is page-aligned, so alignment always fits); [`Error::Io`] if `mmap` fails.
    pub fn as_mut_slice_of<T: bytemuck::Pod>(&mut self) -> Result<&mut [T]> {
        bytemuck::try_cast_slice_mut(self.as_mut_slice()?).map_err(Error::Cast)
    }

    /// Seals the region immutable: `WRITE | SHRINK | GROW | SEAL`. The writable mapping is
    /// released first (the kernel refuses `F_SEAL_WRITE` while one exists).
    ///
    /// # Errors
    /// [`Error::Io`] (`fcntl(F_ADD_SEALS)`) if the kernel refuses, e.g. `EBUSY` while pages
    /// are pinned by in-flight direct I/O.
    pub fn seal(mut self) -> Result<SealedRegion> {
        self.map = None; // munmap before F_SEAL_WRITE
        SealedRegion::seal(self.fd, self.len, Seals::IMMUTABLE)
    }

    /// Seals the region `FUTURE_WRITE | SHRINK | GROW | SEAL` and keeps this process's
    /// writable mapping: the producer goes on writing, nobody else can write, resize or
    /// punch holes. Receivers must treat the contents as changing under them.
    ///
    /// # Errors
    /// [`Error::Io`] if mapping or sealing fails.
    pub fn seal_producer_writable(self) -> Result<ProducerWritableRegion> {
        let map = match self.map {
            Some(map) => map,
            None => sys::map_writable(&self.fd, self.len).map_err(|e| Error::Io {
                op: "mmap",
                source: e,
            })?,
        };
        let region = SealedRegion::seal(self.fd, self.len, Seals::PRODUCER_WRITABLE)?;
        Ok(ProducerWritableRegion { map, region })
    }
}

impl io::Write for Region {
    /// Writes at the region's cursor (starting at 0) with `pwrite`; returns `Ok(0)` once the
    /// region is full.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len - self.cursor);
        pwrite_all(&self.fd, &buf[..n], self.cursor as u64).map_err(io::Error::other)?;
        self.cursor += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for Region {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let new = match pos {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => (self.len as u64).checked_add_signed(d),
            io::SeekFrom::Current(d) => (self.cursor as u64).checked_add_signed(d),
        };
        match new {
            Some(n) if n <= self.len as u64 => {
                self.cursor = n as usize;
                Ok(n)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the region",
            )),
        }
    }
}

/// A sealed region, ready to send: an owned memfd, its length, and its seals.
///
/// Send it any number of times, to any number of receivers ([`crate::Channel::send`]
/// borrows it): fan-out copies nothing.
#[derive(Debug)]
pub struct SealedRegion {
    fd: OwnedFd,
    len: usize,
    seals: Seals,
}

impl SealedRegion {
    fn seal(fd: OwnedFd, len: usize, seals: Seals) -> Result<SealedRegion> {
        // F_SEAL_WRITE fails with EBUSY while any page has an extra reference; the kernel
        // waits ~150 ms for such references to go before giving up. Our own mapping is gone
        // by now, so what remains is transient (reclaim, migration, monitoring): observed
        // once in ~900 seals of 64 MiB under heavy memory churn. Try a few more times.
        let mut attempts = 0;
        loop {
            match fs::fcntl_add_seals(&fd, SealFlags::from_bits_retain(seals.bits())) {
                Ok(()) => break,
                Err(Errno::BUSY) if attempts < 3 => attempts += 1,
                Err(Errno::INTR) => {}
                Err(e) => return Err(Error::io("fcntl(F_ADD_SEALS)", e)),
            }
        }
        let seals = Seals::from_bits(
            fs::fcntl_get_seals(&fd)
                .map_err(|e| Error::io("fcntl(F_GET_SEALS)", e))?
                .bits(),
        );
        Ok(SealedRegion { fd, len, seals })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: regions are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The seals the kernel reports for this region.
    pub fn seals(&self) -> Seals {
        self.seals
    }

    /// A second handle to the same memfd (`F_DUPFD_CLOEXEC`).
    ///
    /// # Errors
    /// [`Error::Io`] if the process is out of descriptors.
    pub fn try_clone(&self) -> Result<SealedRegion> {
        Ok(SealedRegion {
            fd: rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
                .map_err(|e| Error::io("fcntl(F_DUPFD_CLOEXEC)", e))?,
            len: self.len,
            seals: self.seals,
        })
    }

    /// Gives up the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for SealedRegion {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A region sealed `FUTURE_WRITE | SHRINK | GROW | SEAL` whose producer keeps writing it
/// through its own mapping, while receivers can only read.
#[derive(Debug)]
pub struct ProducerWritableRegion {
    map: MmapMut,
    region: SealedRegion,
}

impl ProducerWritableRegion {
    /// The producer's writable view. Readers in other processes see writes at once, without
    /// any ordering guarantee: publish what they may read with your own protocol.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[..]
    }

    /// The producer's view as a mutable slice of `T`.
    ///
    /// # Errors
    /// [`Error::Cast`] if the length is not a multiple of `size_of::<T>()`.
    pub fn as_mut_slice_of<T: bytemuck::Pod>(&mut self) -> Result<&mut [T]> {
        bytemuck::try_cast_slice_mut(&mut self.map[..]).map_err(Error::Cast)
    }

    /// The sealed region to send to readers.
    pub fn region(&self) -> &SealedRegion {
        &self.region
    }

    /// The producer's writable mapping and the sealed region (for `crate::pool`).
    pub(crate) fn into_parts(self) -> (MmapMut, SealedRegion) {
        (self.map, self.region)
    }
}

fn check_range(offset: usize, len: usize, region_len: usize) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= region_len => Ok(()),
        _ => Err(Error::OutOfBounds {
            offset: offset as u64,
            len: len as u64,
            region_len: region_len as u64,
        }),
    }
}

fn pwrite_all(fd: &OwnedFd, mut data: &[u8], mut offset: u64) -> Result<()> {
    while !data.is_empty() {
        match rustix::io::pwrite(fd, data, offset) {
            Ok(0) => return Err(Error::io("pwrite", Errno::IO)),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::io("pwrite", e)),
        }
    }
    Ok(())
}

/// Creates an empty sealable memfd: close-on-exec, and `MFD_NOEXEC_SEAL` if `noexec_seal`.
fn create_memfd(noexec_seal: bool) -> Result<OwnedFd> {
    let base = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    if noexec_seal {
        fs::memfd_create("sealpipe", base | MemfdFlags::NOEXEC_SEAL)
            .map_err(|e| Error::io("memfd_create", e))
    } else {
        let fd = fs::memfd_create("sealpipe", base).map_err(|e| Error::io("memfd_create", e))?;
        // Without MFD_NOEXEC_SEAL the memfd is created 0777; drop the exec bits ourselves.
        fs::fchmod(&fd, fs::Mode::from_raw_mode(0o600)).map_err(|e| Error::io("fchmod", e))?;
        Ok(fd)
    }
}

/// Whether this kernel accepts `MFD_NOEXEC_SEAL` (Linux 6.3+), probed once.
pub(crate) fn capabilities_noexec_seal() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| create_memfd(true).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn both_creation_paths_give_sealable_non_exec_memfds() {
        for noexec in [true, false] {
            if noexec && !capabilities_noexec_seal() {
                continue;
            }
            let mut r = Region::create(8192, noexec).unwrap();
            r.write_at(0, b"abc").unwrap();
            let st = fs::fstat(&r.fd).unwrap();
            assert_eq!(
                st.st_mode & 0o111,
                0,
                "exec bits must be off (noexec={noexec})"
            );
            assert_eq!(st.st_size, 8192);
            assert_eq!(r.as_mut_slice().unwrap()[..3], *b"abc");
            let s = r.seal().unwrap();
            assert!(s.seals().contains(Seals::IMMUTABLE));
            // The 0x3e surprise (EXEC implying FUTURE_WRITE) must not happen.
            assert!(!s.seals().contains(Seals::FUTURE_WRITE));
            assert_eq!(s.seals().contains(Seals::EXEC), noexec);
            let cloexec = rustix::io::fcntl_getfd(&s.fd).unwrap();
            assert!(cloexec.contains(rustix::io::FdFlags::CLOEXEC));
        }
    }

    #[test]
    fn writes_are_bounds_checked() {
        let mut r = Region::new(10).unwrap();
        assert!(matches!(
            r.write_at(8, b"abc"),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            r.write_at(usize::MAX, b"a"),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(Region::new(0), Err(Error::OutOfBounds { .. })));
        r.seek(SeekFrom::Start(8)).unwrap();
        assert!(
            r.write_all(b"abc").is_err(),
            "writing past the end must fail"
        );
        assert!(r.seek(SeekFrom::End(1)).is_err());
    }

    #[test]
    fn huge_region_fails_at_creation_not_later() {
        // More than the machine's RAM and swap: refused before anything is allocated.
        let err = Region::new(1 << 50).unwrap_err();
        assert!(
            matches!(err, Error::OutOfMemory { len, .. } if len == 1 << 50),
            "{err:?}"
        );
    }

    #[test]
    fn shared_region_keeps_producer_writable() {
        let mut r = Region::new(4096).unwrap().seal_producer_writable().unwrap();
        r.as_mut_slice()[0] = 42;
        assert!(r.region().seals().contains(Seals::PRODUCER_WRITABLE));
        assert!(!r.region().seals().contains(Seals::WRITE));
        // No new writer can appear: pwrite through the descriptor is refused.
        assert_eq!(
            rustix::io::pwrite(r.region(), b"x", 0).unwrap_err(),
            Errno::PERM
        );
        let typed = r.as_mut_slice_of::<u64>().unwrap();
        assert_eq!(typed.len(), 512);
    }
}
