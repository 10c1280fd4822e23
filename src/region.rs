//! Producer side: create a memfd, fill it, seal it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use memfile::{CreateOptions, MemFile};
use memmap2::MmapMut;
use rustix::fs::{self, FallocateFlags, MemfdFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::policy::Policy;
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
/// The memfd (a [`MemFile`]) is close-on-exec, created with `MFD_NOEXEC_SEAL` where the
/// kernel has it, and its pages are allocated up front with `fallocate`, so running out of
/// memory is an error here rather than a `SIGBUS` in a consumer later. To start from a
/// memfd you made yourself, see [`SealedRegion::from_memfile`] and
/// [`ProducerWritableRegion::from_memfile`].
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
    file: MemFile,
    len: usize,
    map: Option<MmapMut>,
    cursor: usize,
}

impl Region {
    /// Creates a region of `len` bytes (zero-filled), with every page allocated.
    ///
    /// # Errors
    /// [`Error::ZeroLength`] if `len` is 0, [`Error::OutOfMemory`] if the memory cannot be
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
            return Err(Error::ZeroLength { what: "region" });
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
        let file = create_memfd(noexec_seal)?;
        file.set_len(len as u64).map_err(|source| Error::Io {
            op: "ftruncate",
            source,
        })?;
        // memfile has no fallocate.
        fs::fallocate(&file, FallocateFlags::empty(), 0, len as u64).map_err(|e| {
            Error::OutOfMemory {
                len: len as u64,
                source: e.into(),
            }
        })?;
        Ok(Region {
            file,
            len,
            map: None,
            cursor: 0,
        })
    }

    /// Length in bytes.
    #[allow(
        clippy::len_without_is_empty,
        reason = "a region is never empty: `Region::new(0)` is refused"
    )]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Copies `data` into the region at `offset` (with `pwrite`, no mapping needed).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit; [`Error::Io`] if `pwrite` fails.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        check_range(offset, data.len(), self.len)?;
        pwrite_all(&self.file, data, offset as u64)
    }

    /// The whole region as a mutable byte slice, mapping it on first call.
    ///
    /// # Errors
    /// [`Error::Io`] if `mmap` fails.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        if self.map.is_none() {
            let map = sys::map_writable(&self.file, self.len).map_err(|e| Error::Io {
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
        let bytes = self.as_mut_slice()?;
        let len = bytes.len();
        bytemuck::try_cast_slice_mut(bytes).map_err(|e| Error::cast::<T>(e, len))
    }

    /// Seals the region immutable: `WRITE | SHRINK | GROW | SEAL`. The writable mapping is
    /// released first (the kernel refuses `F_SEAL_WRITE` while one exists).
    ///
    /// # Errors
    /// [`Error::Io`] (`fcntl(F_ADD_SEALS)`) if the kernel refuses, e.g. `EBUSY` while pages
    /// are pinned by in-flight direct I/O.
    pub fn seal(mut self) -> Result<SealedRegion> {
        self.map = None; // munmap before F_SEAL_WRITE
        SealedRegion::seal(self.file, self.len, Seals::IMMUTABLE).map_err(|(e, _)| e)
    }

    /// Seals the region producer-writable ([`Seals::PRODUCER_WRITABLE`]:
    /// `FUTURE_WRITE | SHRINK | GROW | SEAL`) and keeps this process's writable mapping: the
    /// producer goes on writing, nobody else can write, resize or punch holes. Receivers
    /// must treat the contents as changing under them.
    ///
    /// # Errors
    /// [`Error::Io`] if mapping or sealing fails.
    pub fn seal_producer_writable(self) -> Result<ProducerWritableRegion> {
        let map = match self.map {
            Some(map) => map,
            None => sys::map_writable(&self.file, self.len).map_err(|e| Error::Io {
                op: "mmap",
                source: e,
            })?,
        };
        let region = SealedRegion::seal(self.file, self.len, Seals::PRODUCER_WRITABLE)
            .map_err(|(e, _)| e)?;
        Ok(ProducerWritableRegion { map, region })
    }
}

impl io::Write for Region {
    /// Writes at the region's cursor (starting at 0) with `pwrite`; returns `Ok(0)` once the
    /// region is full.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len - self.cursor);
        pwrite_all(&self.file, &buf[..n], self.cursor as u64).map_err(io::Error::other)?;
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

/// A sealed region, ready to send: an owned memfd ([`MemFile`]), its length, and its seals.
///
/// Send it any number of times, to any number of receivers ([`crate::Channel::send`]
/// borrows it): fan-out copies nothing. Made by [`Region::seal`], from a memfd made
/// elsewhere by [`SealedRegion::from_memfile`], or borrowed from a received view to
/// forward it ([`crate::RegionView::region`]).
#[derive(Debug)]
pub struct SealedRegion {
    file: MemFile,
    len: usize,
    seals: Seals,
}

impl SealedRegion {
    /// Adds `seals` to `file` (with memfile's `add_seals`) and reads back what the kernel
    /// reports; hands `file` back on failure.
    fn seal(
        file: MemFile,
        len: usize,
        seals: Seals,
    ) -> std::result::Result<SealedRegion, (Error, MemFile)> {
        // F_SEAL_WRITE fails with EBUSY while any page has an extra reference; the kernel
        // waits ~150 ms for such references to go before giving up. Our own mapping is gone
        // by now, so what remains is transient (reclaim, migration, monitoring): observed
        // once in ~900 seals of 64 MiB under heavy memory churn. Try a few more times.
        // (Every bit sealpipe adds is one memfile knows, so nothing is truncated here.)
        let add = memfile::Seals::from_bits_truncate(seals.bits());
        let mut attempts = 0;
        loop {
            match file.add_seals(add) {
                Ok(()) => break,
                Err(e) if Errno::from_io_error(&e) == Some(Errno::BUSY) && attempts < 3 => {
                    attempts += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    let op = "fcntl(F_ADD_SEALS)";
                    return Err((Error::Io { op, source }, file));
                }
            }
        }
        match exact_seals(file.as_fd()) {
            Ok(seals) => Ok(SealedRegion { file, len, seals }),
            Err(e) => Err((e, file)),
        }
    }

    /// A region [`crate::verify()`] has checked (`seals` as it read them).
    pub(crate) fn verified(file: MemFile, len: usize, seals: Seals) -> SealedRegion {
        SealedRegion { file, len, seals }
    }

    /// Takes a sealed memfd made elsewhere (with [`memfile`], or received from another
    /// process) as a region to send, without copying it, after the checks a receiver with
    /// `policy` makes ([`crate::verify()`]): it is a sealable shared-memory file readable
    /// by its descriptor, carries the seals `policy` requires, is not empty, within the
    /// policy's size limit, not backed by huge pages unless the policy accepts them, and
    /// every page of it is allocated. Its length is its size now (the seals keep it so).
    ///
    /// Use [`Policy::immutable`] for a write-sealed file; [`Policy::producer_writable`] also
    /// accepts one sealed `FUTURE_WRITE` (its writers, wherever they are, can change it
    /// under every receiver).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::io::Write;
    /// use memfile::{CreateOptions, MemFile, Seal};
    /// use sealpipe::{Channel, Policy, SealedRegion};
    ///
    /// let mut file = MemFile::create("frame", CreateOptions::new().allow_sealing(true))?;
    /// file.write_all(b"made with memfile")?; // writing allocates every page
    /// file.add_seals(Seal::Write | Seal::Shrink | Seal::Grow | Seal::Seal)?;
    /// let region = SealedRegion::from_memfile(file, &Policy::immutable()).map_err(|(e, _)| e)?;
    ///
    /// let (a, b) = Channel::pair()?;
    /// a.send(b"", &[&region])?;
    /// let msg = b.recv(&Policy::immutable())?;
    /// assert_eq!(msg.regions()[0].as_bytes()?, b"made with memfile");
    ///
    /// // A file that fails a check comes back with the error.
    /// let file = MemFile::create("unsealed", CreateOptions::new().allow_sealing(true))?;
    /// file.set_len(4096)?;
    /// let (err, file) = SealedRegion::from_memfile(file, &Policy::immutable()).unwrap_err();
    /// assert!(matches!(err, sealpipe::Error::MissingSeals { .. }));
    /// # drop(file);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The file is handed back with [`Error::NotMemfd`], [`Error::MissingSeals`],
    /// [`Error::EmptyRegion`], [`Error::RegionTooLarge`], [`Error::HugePages`],
    /// [`Error::Uncommitted`] or [`Error::Io`].
    pub fn from_memfile(
        file: MemFile,
        policy: &Policy,
    ) -> std::result::Result<SealedRegion, (Error, MemFile)> {
        let len = match file_len(&file) {
            Ok(len) => len,
            Err(e) => return Err((e, file)),
        };
        match crate::checks::check(file.as_fd(), len, policy, 0) {
            // Fits: check refuses lengths over isize::MAX.
            Ok(seals) => Ok(SealedRegion {
                file,
                len: len as usize,
                seals,
            }),
            Err(e) => Err((e, file)),
        }
    }

    /// Length in bytes.
    #[allow(
        clippy::len_without_is_empty,
        reason = "a region is never empty: `Region::new(0)` is refused"
    )]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The seals the kernel reports for this region (every bit, `EXEC` included).
    pub fn seals(&self) -> Seals {
        self.seals
    }

    /// A second handle to the same memfd (`F_DUPFD_CLOEXEC`).
    ///
    /// # Errors
    /// [`Error::Io`] if the process is out of descriptors.
    pub fn try_clone(&self) -> Result<SealedRegion> {
        Ok(SealedRegion {
            file: self.file.try_clone().map_err(|source| Error::Io {
                op: "fcntl(F_DUPFD_CLOEXEC)",
                source,
            })?,
            len: self.len,
            seals: self.seals,
        })
    }

    /// Gives up the memfd, as a [`MemFile`]: read it with `std::io::Read` or
    /// `FileExt::read_at`, query its seals with `get_seals`. Its seals still hold (a
    /// write-sealed file refuses writes, resizing and writable mappings).
    pub fn into_memfile(self) -> MemFile {
        self.file
    }

    /// Gives up the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.file.into_fd()
    }
}

impl AsFd for SealedRegion {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A producer-writable region ([`Seals::PRODUCER_WRITABLE`]: `FUTURE_WRITE | SHRINK | GROW |
/// SEAL`) whose producer keeps writing it through its own mapping, while receivers can only
/// read, by copying (they accept it with [`Policy::producer_writable`](crate::Policy::producer_writable)).
#[derive(Debug)]
pub struct ProducerWritableRegion {
    map: MmapMut,
    region: SealedRegion,
}

impl ProducerWritableRegion {
    /// Takes a memfd made elsewhere (with [`memfile`]) as a producer-writable region,
    /// without copying it: maps it writable for this process, then seals it
    /// `FUTURE_WRITE | SHRINK | GROW | SEAL` (memfile's `add_seals`), as
    /// [`Region::seal_producer_writable`] does. First come the checks a receiver with `policy`
    /// makes ([`crate::verify()`]): a sealable shared-memory file, not empty, within the
    /// policy's size limit, not backed by huge pages unless the policy accepts them,
    /// every page allocated, and the seals it will have satisfy `policy` (so `policy`
    /// must accept producer-writable regions: [`Policy::producer_writable`]).
    ///
    /// The file must not be sealed `WRITE`, `FUTURE_WRITE` or `SEAL` yet (the kernel then
    /// refuses the writable mapping or the new seals). Other processes or mappings that
    /// can already write it keep that power: seal only files no one else holds.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::io::Write;
    /// use memfile::{CreateOptions, MemFile};
    /// use sealpipe::{Channel, Policy, ProducerWritableRegion};
    ///
    /// let mut file = MemFile::create("live", CreateOptions::new().allow_sealing(true))?;
    /// file.write_all(&[0u8; 4096])?; // writing allocates every page
    /// let mut shared =
    ///     ProducerWritableRegion::from_memfile(file, &Policy::producer_writable()).map_err(|(e, _)| e)?;
    ///
    /// let (a, b) = Channel::pair()?;
    /// a.send(b"", &[shared.region()])?;
    /// let msg = b.recv(&Policy::producer_writable())?;
    /// shared.as_mut_slice()[0] = 7; // the producer keeps writing
    /// assert_eq!(msg.regions()[0].read_value::<u8>(0)?, 7); // readers copy out
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The file is handed back, unchanged, with [`Error::NotMemfd`],
    /// [`Error::MissingSeals`] (`policy` refuses producer-writable regions),
    /// [`Error::EmptyRegion`], [`Error::RegionTooLarge`], [`Error::HugePages`],
    /// [`Error::Uncommitted`], or [`Error::Io`] (`mmap`, `fcntl(F_ADD_SEALS)`) where the
    /// kernel refuses the mapping or the seals.
    pub fn from_memfile(
        file: MemFile,
        policy: &Policy,
    ) -> std::result::Result<ProducerWritableRegion, (Error, MemFile)> {
        let checked = file_len(&file).and_then(|len| {
            let have = crate::checks::check_access(file.as_fd(), 0)
                .and_then(|()| exact_seals(file.as_fd()))?;
            let will_have = have.union(Seals::PRODUCER_WRITABLE);
            let missing = policy.missing_seals(will_have);
            if !missing.is_empty() {
                return Err(Error::MissingSeals {
                    index: 0,
                    have: will_have,
                    missing,
                });
            }
            crate::checks::check_contents(file.as_fd(), len, policy, 0)?;
            let map = sys::map_writable(&file, len as usize)
                .map_err(|source| Error::Io { op: "mmap", source })?;
            Ok((len as usize, map))
        });
        let (len, map) = match checked {
            Ok(ok) => ok,
            Err(e) => return Err((e, file)),
        };
        match SealedRegion::seal(file, len, Seals::PRODUCER_WRITABLE) {
            Ok(region) => Ok(ProducerWritableRegion { map, region }),
            Err((e, file)) => {
                drop(map);
                Err((e, file))
            }
        }
    }

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
        let len = self.map.len();
        bytemuck::try_cast_slice_mut(&mut self.map[..]).map_err(|e| Error::cast::<T>(e, len))
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

fn pwrite_all(file: &MemFile, data: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(data, offset).map_err(|source| Error::Io {
        op: "pwrite",
        source,
    })
}

/// The file's size, with rustix's `fstat` (std's `metadata`, under memfile's, tries
/// `statx` first, which sealpipe's sandbox does not allow).
fn file_len(file: &MemFile) -> Result<u64> {
    Ok(fs::fstat(file).map_err(|e| Error::io("fstat", e))?.st_size as u64)
}

/// Every seal the kernel reports, with rustix: memfile's `get_seals` drops the bits it does
/// not know (`F_SEAL_EXEC`, and any newer one), and sealpipe reports them all.
pub(crate) fn exact_seals(fd: BorrowedFd<'_>) -> Result<Seals> {
    fs::fcntl_get_seals(fd)
        .map(|s| Seals::from_bits(s.bits()))
        .map_err(|e| Error::io("fcntl(F_GET_SEALS)", e))
}

/// Creates an empty sealable memfd: close-on-exec, and `MFD_NOEXEC_SEAL` if `noexec_seal`.
fn create_memfd(noexec_seal: bool) -> Result<MemFile> {
    if noexec_seal {
        // memfile 0.3 cannot ask for MFD_NOEXEC_SEAL: create with rustix, then wrap.
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::NOEXEC_SEAL;
        let fd = fs::memfd_create("sealpipe", flags).map_err(|e| Error::io("memfd_create", e))?;
        MemFile::from_fd(fd).map_err(|e| Error::Io {
            op: "fcntl(F_GET_SEALS)",
            source: e.into_error(),
        })
    } else {
        let file = CreateOptions::new()
            .allow_sealing(true)
            .create("sealpipe")
            .map_err(|source| Error::Io {
                op: "memfd_create",
                source,
            })?;
        // Without MFD_NOEXEC_SEAL the memfd is created 0777; drop the exec bits ourselves
        // (memfile has no fchmod).
        fs::fchmod(&file, fs::Mode::from_raw_mode(0o600)).map_err(|e| Error::io("fchmod", e))?;
        Ok(file)
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

    /// Creates a region by one of the two paths and checks what both must give.
    fn check_creation_path(noexec: bool) {
        let mut r = Region::create(8192, noexec).unwrap();
        r.write_at(0, b"abc").unwrap();
        let st = fs::fstat(&r.file).unwrap();
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
        let cloexec = rustix::io::fcntl_getfd(&s).unwrap();
        assert!(cloexec.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn fallback_creation_gives_sealable_non_exec_memfds() {
        check_creation_path(false);
    }

    #[test]
    fn noexec_seal_creation_gives_sealable_non_exec_memfds() {
        // `#[ignore]` cannot depend on the kernel, so this test says what it needs instead of
        // passing without running: on a kernel before 6.3, skip it by name.
        assert!(
            capabilities_noexec_seal(),
            "needs MFD_NOEXEC_SEAL (Linux 6.3+), which this kernel lacks: \
             skip this test by name here"
        );
        check_creation_path(true);
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
        assert!(matches!(
            Region::new(0),
            Err(Error::ZeroLength { what: "region" })
        ));
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
    fn producer_writable_region_stays_writable_for_its_producer() {
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
