//! Consumer side: check a received descriptor, then map it read-only.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use crate::checks::check;
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::region::SealedRegion;
use crate::seals::Seals;
use crate::sys::ReadMap;
use memfile::MemFile;

/// Verifies `fd` against `policy` and the length its sender declared, then maps it
/// read-only.
///
/// The checks, in order, all before any page is touched: the descriptor is neither
/// `O_PATH` nor write-only; it is a sealable shared-memory file (`F_GET_SEALS` works); its
/// seals are a superset of what the policy requires; `declared_len` is non-zero and within
/// the policy's limit; `fstat` reports exactly `declared_len` bytes; it is not backed by
/// huge pages unless the policy accepts them; and every page of it is allocated
/// ([committed](#committed-pages)). On any failure `fd` is
/// closed, without blocking: a descriptor whose close may wait (a lingering socket, a file
/// on FUSE) is closed on a background thread.
///
/// Errors that name a region's position within its message say `index: 0`.
///
/// # Committed pages
///
/// A peer can size a memfd with `ftruncate` and seal it without ever allocating a page.
/// Reading such a region would allocate each page touched *in this process's name*
/// (charged to its memory cgroup, or `SIGBUS` under strict overcommit), so it is refused
/// with [`Error::Uncommitted`]. The check compares the file's allocated pages
/// (`st_blocks`, resident or swapped out) with its size, after taking off any pages
/// allocated *past* its end, counted with `cachestat(2)` (Linux 6.5+): a sender could
/// otherwise allocate pages past the end before sealing (`fallocate(FALLOC_FL_KEEP_SIZE)`)
/// so that `st_blocks` looks complete while the region itself is all holes. That count
/// walks only the pages past the end (none, for an honest region), so the whole check
/// costs about a microsecond at any size. Kernels without `cachestat`
/// ([`Capabilities::counts_committed_pages`](crate::Capabilities::counts_committed_pages)
/// is `false`) get the `st_blocks` comparison alone, which that disguise passes. (`mincore(2)` cannot stand in: it reports pages
/// allocated by `fallocate` but never written as absent.)
///
/// The answer stays true after the check because the seals it follows make it so: with
/// `F_SEAL_WRITE` or `F_SEAL_FUTURE_WRITE` the kernel refuses `fallocate(PUNCH_HOLE)` and
/// `madvise(MADV_REMOVE)` (the only ways to free a page of a memfd short of truncating
/// it), and `F_SEAL_SHRINK` refuses truncation; `F_SEAL_GROW` refuses allocating past the
/// end, so the pages taken off cannot change either. Swapping moves pages to swap but keeps them
/// allocated; reading one back is charged to the memory cgroup recorded when it was
/// swapped out (the owner's), unless that cgroup no longer exists.
///
/// # Errors
/// [`Error::NotMemfd`], [`Error::MissingSeals`], [`Error::EmptyRegion`],
/// [`Error::RegionTooLarge`], [`Error::SizeMismatch`], [`Error::HugePages`],
/// [`Error::Uncommitted`], or [`Error::Map`] (all peer faults), or [`Error::Io`].
pub fn verify(fd: OwnedFd, declared_len: u64, policy: &Policy) -> Result<RegionView> {
    verify_or_return(fd, declared_len, policy, 0).map_err(|(e, fd)| {
        crate::closer::dispose(fd);
        e
    })
}

/// [`verify`] of the region at `index` in its message, handing the descriptor back on
/// failure (for the caller to dispose of).
pub(crate) fn verify_or_return(
    fd: OwnedFd,
    declared_len: u64,
    policy: &Policy,
    index: usize,
) -> Result<RegionView, (Error, OwnedFd)> {
    // MemFile::from_fd asks F_GET_SEALS and hands the descriptor back if that fails.
    let file = match MemFile::from_fd(fd) {
        Ok(file) => file,
        Err(refused) => {
            let (source, fd) = refused.into_parts();
            // `check` names the fault (O_PATH, write-only, what kind of file it is).
            let err = match check(fd.as_fd(), declared_len, policy, index) {
                Err(e) => e,
                Ok(_) => Error::Io {
                    op: "fcntl(F_GET_SEALS)",
                    source,
                },
            };
            return Err((err, fd));
        }
    };
    let seals = match check(file.as_fd(), declared_len, policy, index) {
        Ok(seals) => seals,
        Err(e) => return Err((e, file.into_fd())),
    };
    let len = declared_len as usize; // fits: it equals st_size of a file we can map
    let map = match map_read_only(file.as_fd(), len, seals) {
        Ok(map) => map,
        Err(source) => return Err((Error::Map { index, source }, file.into_fd())),
    };
    // The mapping keeps the region alive; the descriptor only costs a table slot.
    let region = policy
        .keeps_descriptors()
        .then(|| SealedRegion::verified(file, len, seals));
    Ok(RegionView { map, seals, region })
}

fn map_read_only(fd: BorrowedFd<'_>, len: usize, seals: Seals) -> std::io::Result<ReadMap> {
    // No MAP_POPULATE: it fills the page table one 4 KiB page at a time (get_user_pages),
    // measured slower than the 64 KiB fault-around of plain faults at 1 MiB and 64 MiB, and
    // it costs the whole region even when the consumer reads a part of it.
    if seals.contains(Seals::WRITE) && !shared_map_of_write_sealed() {
        return ReadMap::private(fd, len);
    }
    ReadMap::shared(fd, len)
}

/// A verified region, mapped read-only.
///
/// If the region is sealed `F_SEAL_WRITE` ([`is_immutable`](RegionView::is_immutable)), its
/// bytes can never change and [`as_bytes`](RegionView::as_bytes) hands them out as
/// `&[u8]`. Otherwise (`F_SEAL_FUTURE_WRITE`) its producer can still write at any moment:
/// read it with [`read_at`](RegionView::read_at) or [`read_value`](RegionView::read_value),
/// which copy each byte exactly once into your memory, and validate the copy.
///
/// # What a retained view costs
///
/// A view holds a read-only mapping for as long as it lives: the region's length in
/// address space and one entry of the process's mappings (`vm.max_map_count`, 65 530 by
/// default; when it is reached, mapping fails with [`Error::Map`]). It holds the region's
/// descriptor too only if the receiving [`Policy`] asked to
/// ([`Policy::keep_descriptors`]); by default the descriptor is closed once the region is
/// mapped, so keeping messages does not fill the descriptor table. The pages are the
/// sender's memfd's: they stay allocated while any process maps or holds the region.
/// Bound what you keep with [`Policy::max_region_len`] and [`Policy::max_message_len`], and
/// drop views (or copy out what you need) rather than keeping them indefinitely.
#[derive(Debug)]
pub struct RegionView {
    map: ReadMap,
    seals: Seals,
    /// The memfd, kept only where the policy said so ([`Policy::keep_descriptors`]).
    region: Option<SealedRegion>,
}

impl RegionView {
    /// Length in bytes.
    #[allow(
        clippy::len_without_is_empty,
        reason = "a verified region is never empty: empty regions are refused"
    )]
    pub fn len(&self) -> usize {
        self.map.bytes().len()
    }

    /// The region's seals, as verified.
    pub fn seals(&self) -> Seals {
        self.seals
    }

    /// Whether the region is write-sealed, so its contents can never change.
    pub fn is_immutable(&self) -> bool {
        self.seals.contains(Seals::WRITE)
    }

    /// The region's bytes.
    ///
    /// # Errors
    /// [`Error::NotImmutable`] if the region is not write-sealed.
    #[allow(unsafe_code)] // the one place a verified immutable mapping becomes a slice
    pub fn as_bytes(&self) -> Result<&[u8]> {
        if !self.is_immutable() {
            return Err(Error::NotImmutable { seals: self.seals });
        }
        // SAFETY: the region is sealed F_SEAL_WRITE (checked above; seals can never be
        // removed), so no process can write it while the slice lives.
        Ok(unsafe { self.map.bytes().as_slice() })
    }

    /// The region as `&[T]`.
    ///
    /// # Errors
    /// [`Error::NotImmutable`] if the region is not write-sealed; [`Error::Cast`] if its
    /// length is not a multiple of `size_of::<T>()`.
    pub fn as_slice_of<T: bytemuck::Pod>(&self) -> Result<&[T]> {
        let bytes = self.as_bytes()?;
        bytemuck::try_cast_slice(bytes).map_err(|e| Error::cast::<T>(e, bytes.len()))
    }

    /// The region's bytes, whether or not it is immutable.
    ///
    /// # Safety
    /// For a region that is not write-sealed, the caller must know that its producer does
    /// not write the region while the returned slice lives (a trusted producer with a
    /// protocol that says so). Concurrent writes would be a data race: undefined behaviour,
    /// not merely stale data.
    #[allow(unsafe_code)]
    pub unsafe fn as_bytes_unchecked(&self) -> &[u8] {
        // SAFETY: forwarded to the caller, see above.
        unsafe { self.map.bytes().as_slice() }
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`, each byte read exactly once.
    /// Safe for every region, including ones the producer is writing right now (you may then
    /// see a mix of old and new bytes: validate what you read).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit the region.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.map.bytes().copy_out(offset, buf)
    }

    /// Reads one `T` at byte `offset` by copy (any alignment).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if `offset + size_of::<T>()` exceeds the region.
    pub fn read_value<T: bytemuck::Pod>(&self, offset: usize) -> Result<T> {
        self.map.bytes().read(offset)
    }

    /// Copies the whole region into a new `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        // In bounds: the whole mapping.
        let _ = self.map.bytes().copy_out(0, &mut v);
        v
    }

    /// The mapped bytes, to read by copy (pool buffers are sub-slices of it).
    pub(crate) fn bytes(&self) -> crate::shm::SharedBytes<'_> {
        self.map.bytes()
    }

    /// The region's descriptor, if the receiving policy kept it
    /// ([`Policy::keep_descriptors`]); `None` by default.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.region.as_ref().map(|r| r.as_fd())
    }

    /// The verified region, to send on as it is, if the receiving policy kept its
    /// descriptor ([`Policy::keep_descriptors`]); `None` by default.
    ///
    /// Forwarding copies nothing and needs no descriptor handling: a broker receives a
    /// frame from one process and fans it out to its workers with
    /// [`Channel::send`](crate::Channel::send), as it would a region of its own. Each
    /// receiver verifies it again, as always. The region keeps its seals: a
    /// producer-writable one stays writable by its producer, and its receivers read it by
    /// copying.
    ///
    /// ```
    /// # fn main() -> sealpipe::Result<()> {
    /// use sealpipe::{Channel, Policy, Region};
    /// let (producer, broker_in) = Channel::pair()?;
    /// let (broker_out, worker) = Channel::pair()?;
    ///
    /// let mut frame = Region::new(4096)?;
    /// frame.write_at(0, b"frame")?;
    /// producer.send(b"", &[&frame.seal()?])?;
    ///
    /// // The broker keeps descriptors so that it can forward what it receives.
    /// let msg = broker_in.recv(&Policy::immutable().keep_descriptors(true))?;
    /// let view = &msg.regions()[0];
    /// if let Some(region) = view.region() {
    ///     broker_out.send(msg.payload(), &[region])?;
    /// }
    ///
    /// let forwarded = worker.recv(&Policy::immutable())?;
    /// assert_eq!(&forwarded.regions()[0].as_bytes()?[..5], b"frame");
    /// # Ok(()) }
    /// ```
    pub fn region(&self) -> Option<&SealedRegion> {
        self.region.as_ref()
    }

    /// Gives up the mapping and returns the memfd as a [`MemFile`], for code that wants
    /// one, if the receiving policy kept the descriptor ([`Policy::keep_descriptors`]);
    /// hands the view back otherwise.
    ///
    /// The file keeps its seals: a write-sealed one refuses writes, resizing and writable
    /// mappings, whoever holds it.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::io::Read;
    /// use sealpipe::{Channel, Policy, Region};
    /// let (a, b) = Channel::pair()?;
    /// let mut region = Region::new(4096)?;
    /// region.write_at(0, b"hello")?;
    /// a.send(b"", &[&region.seal()?])?;
    /// let (_, mut views) = b.recv(&Policy::immutable().keep_descriptors(true))?.into_parts();
    ///
    /// let Ok(mut file) = views.remove(0).into_memfile() else { unreachable!() };
    /// assert!(file.get_seals()?.contains(memfile::Seal::Write));
    /// let mut start = [0u8; 5];
    /// file.read_exact(&mut start)?;
    /// assert_eq!(&start, b"hello");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The view itself, if the policy did not keep its descriptor.
    pub fn into_memfile(self) -> std::result::Result<MemFile, RegionView> {
        match self.region {
            Some(region) => Ok(region.into_memfile()),
            None => Err(self),
        }
    }

    /// Gives up the mapping and returns the descriptor, if the receiving policy kept it
    /// ([`Policy::keep_descriptors`]); hands the view back otherwise.
    ///
    /// # Errors
    /// The view itself, if the policy did not keep its descriptor.
    pub fn into_fd(self) -> std::result::Result<OwnedFd, RegionView> {
        self.into_memfile().map(MemFile::into_fd)
    }
}

/// Whether `mmap(PROT_READ, MAP_SHARED)` of a write-sealed memfd works (Linux 6.7+ and
/// fixed stable kernels), probed once ([`crate::Capabilities::shared_map_of_write_sealed`]).
pub(crate) fn shared_map_of_write_sealed() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let Ok(region) = crate::Region::new(4096).and_then(crate::Region::seal) else {
            return false;
        };
        ReadMap::shared(region.as_fd(), 4096).is_ok()
    })
}

#[cfg(any(test, fuzzing))]
pub(crate) mod model;

#[cfg(test)]
mod tests {
    use rustix::fs::{self, OFlags};

    use super::*;
    use crate::{capabilities, Region};

    fn sealed(len: usize) -> crate::SealedRegion {
        let mut r = Region::new(len).unwrap();
        r.write_at(0, b"sealed!").unwrap();
        r.seal().unwrap()
    }

    #[test]
    fn private_fallback_shows_the_same_bytes() {
        let s = sealed(4096);
        let m = ReadMap::private(s.as_fd(), 4096).unwrap();
        let mut buf = [0u8; 7];
        assert!(m.bytes().copy_out(0, &mut buf).is_ok());
        assert_eq!(&buf, b"sealed!");
        assert!(m.bytes().copy_out(4090, &mut buf).is_err());
    }

    #[test]
    fn consumer_mappings_are_advised_sequential() {
        // MADV_SEQUENTIAL (VmFlags "sr", VM_SEQ_READ) is what keeps munmap from marking every page
        // accessed; see BENCHMARKS.md.
        let v = verify(sealed(1 << 20).into_fd(), 1 << 20, &Policy::immutable()).unwrap();
        let start = format!("{:x}-", v.as_bytes().unwrap().as_ptr() as usize);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let flags = smaps
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(&start))
            .find(|l| l.starts_with("VmFlags:"))
            .expect("the mapping is in smaps");
        assert!(flags.split_whitespace().any(|f| f == "sr"), "{flags}");
        assert!(!flags.split_whitespace().any(|f| f == "wr"), "{flags}");
    }

    #[test]
    fn this_kernel_counts_committed_pages() {
        // kernel-facts: 6.18 has cachestat.
        assert!(capabilities().counts_committed_pages);
    }

    #[test]
    fn this_kernel_maps_write_sealed_memfds_shared() {
        // kernel-facts: 6.18 allows it; the fallback is covered above.
        assert!(capabilities().shared_map_of_write_sealed);
        // 6.18 has SO_PASSRIGHTS (6.16+); the fallback is covered in `closer`.
        assert!(capabilities().pass_rights);
    }

    #[test]
    fn write_only_descriptor_is_rejected_as_a_peer_fault() {
        // A hostile peer can reopen a sealed memfd write-only through /proc and send that:
        // seals and size check out, but it can never be mapped for reading.
        let s = sealed(4096);
        let path = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&s.as_fd())
        );
        let fd = fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, fs::Mode::empty()).unwrap();
        let err = verify(fd, 4096, &Policy::immutable()).unwrap_err();
        assert!(
            matches!(err, Error::NotMemfd { index: 0, .. }) && err.is_peer_fault(),
            "{err:?}"
        );
    }

    #[test]
    fn read_api_enforces_immutability_and_bounds() {
        let v = verify(sealed(4096).into_fd(), 4096, &Policy::immutable()).unwrap();
        assert_eq!(&v.as_bytes().unwrap()[..7], b"sealed!");
        assert_eq!(v.as_slice_of::<u64>().unwrap().len(), 512);
        assert!(matches!(
            v.as_slice_of::<[u8; 3]>(),
            Err(Error::Cast {
                reason: "the length is not a multiple of the type's size",
                len: 4096,
                size: 3,
                align: 1,
            })
        ));
        assert!(matches!(
            v.read_value::<u64>(4090),
            Err(Error::OutOfBounds { .. })
        ));
        assert_eq!(v.read_value::<[u8; 2]>(1).unwrap(), *b"ea");

        let mut shared = Region::new(4096).unwrap().seal_producer_writable().unwrap();
        let fd = shared.region().try_clone().unwrap().into_fd();
        assert!(matches!(
            verify(fd, 4096, &Policy::immutable()),
            Err(Error::MissingSeals { index: 0, missing, .. }) if missing == Seals::WRITE
        ));
        let fd = shared.region().try_clone().unwrap().into_fd();
        let v = verify(fd, 4096, &Policy::producer_writable()).unwrap();
        assert!(matches!(v.as_bytes(), Err(Error::NotImmutable { .. })));
        shared.as_mut_slice()[10] = 99;
        assert_eq!(
            v.read_value::<u8>(10).unwrap(),
            99,
            "producer writes are visible"
        );
    }
}
