//! [`GuardedMap`]: reading a mapping that another process may truncate, with the `SIGBUS`
//! turned into an error.
//!
//! Invariants this module relies on:
//! - the mapping is only ever read through [`GuardedMap::read_at`], which copies with
//!   [`SharedBytes::copy_out`] inside `hw_exception::catch`; no reference to the mapped
//!   bytes exists;
//! - the thread-local [`ACTIVE`] range is non-empty only while this thread is inside that
//!   `catch`, copying exactly that range;
//! - the `SIGBUS` hook throws only for a `BUS_ADRERR` fault whose address lies in this
//!   thread's [`ACTIVE`] range, so the `longjmp` always lands in our own `catch`, on the
//!   same thread, above frames that own nothing. Every other fault goes on to the
//!   disposition that was installed before the hook (for a Rust program, std's handler,
//!   which reports stack overflows and otherwise lets the default action kill the process).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use hw_exception::{ExceptionInfo, SigbusCode, Signal, Signo};
use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::shm::SharedBytes;

thread_local! {
    /// `[start, end)` addresses this thread is copying from inside `catch` right now, or
    /// `(0, 0)`. Const-initialised with no destructor, so the signal hook can read it at any
    /// time without allocating.
    static ACTIVE: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// A read-only mapping of a file that is **not** sealed against shrinking, read only by
/// copy, with a truncation during a read reported as [`Error::Truncated`] instead of
/// killing the process with `SIGBUS`.
///
/// Use it for files you must map but cannot get shrink-sealed (a legacy producer, a
/// `/dev/shm` file, a memfd created without `MFD_ALLOW_SEALING`). For sealed regions use
/// [`crate::verify()`], which needs no signal handling at all; to avoid mapping altogether,
/// read with [`crate::PositionalFile`].
///
/// - No `&[u8]` is ever handed out: the other process can change or remove the bytes at
///   any moment. [`read_at`](GuardedMap::read_at) copies each byte once into your buffer.
/// - The first `GuardedMap` of a process registers, once and for good, an
///   [`hw_exception`] hook for `SIGBUS`. It acts only on faults inside a range a
///   `GuardedMap` read is copying *on the faulting thread at that moment*; every other
///   `SIGBUS` is passed to the previously installed disposition, so a real crash elsewhere
///   still crashes. See the [caveats](#caveats).
/// - A truncation is final for a `GuardedMap`: once a read has hit it, every later read
///   returns [`Error::Truncated`] at once, without touching the mapping, even if the file
///   grows back (its old contents are gone anyway). A hostile peer that truncates and
///   regrows in a loop thus costs you one caught fault per map, not one per read. If you
///   expect the file to come back, map it again: `GuardedMap::new(map.into_fd())`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use sealpipe::{Error, GuardedMap};
///
/// let fd = rustix::fs::memfd_create("doc", rustix::fs::MemfdFlags::CLOEXEC)?;
/// rustix::fs::ftruncate(&fd, 8192)?;
/// rustix::io::pwrite(&fd, b"hello", 0)?;
/// let peer = rustix::io::fcntl_dupfd_cloexec(&fd, 0)?; // "another process"
/// let map = GuardedMap::new(fd)?;
///
/// let mut buf = [0u8; 5];
/// map.read_at(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
///
/// rustix::fs::ftruncate(&peer, 100)?; // the peer shrinks the file under us
/// let err = map.read_at(4096, &mut buf).unwrap_err();
/// assert!(matches!(err, Error::Truncated { offset: 4096, fault_offset: 4096, .. }));
/// assert!(map.read_at(0, &mut buf).is_err()); // the map stays truncated
/// let map = GuardedMap::new(map.into_fd())?;  // map what is there now
/// assert_eq!(map.len(), 100);
/// map.read_at(0, &mut buf)?;
/// # Ok(()) }
/// ```
///
/// # Caveats
///
/// These come from `hw-exception` 0.1.0, which does the signal handling:
///
/// - Its handler, for **every** synchronous `SIGBUS` (not only ours), locks a mutex and
///   allocates before it asks our hook. A `SIGBUS` raised *inside the allocator* elsewhere
///   in the process (heap corruption) may therefore hang instead of crashing. A plain bad
///   access elsewhere still crashes, as the tests check.
/// - Each caught fault leaks that handler's small hook list (one `Vec` of one pointer
///   per registered hook, 16 bytes with only ours) because the `longjmp` skips its
///   destructor. Since a truncated map stays truncated, that is at most one fault per map
///   (per thread reading it at that moment).
/// - Its `throw`, given the handler's own fault description, looks up the faulting
///   function through the unwinder, which overflowed the small alternate signal stack in
///   our tests (a crash instead of an error). sealpipe's hook avoids that path (it throws
///   a copy of the fault description without the machine context), so what runs in the
///   handler is small; it still runs on the alternate signal stack std gives each thread.
/// - If the disposition before the hook was `SIG_IGN` for `SIGBUS`, a fault that is not
///   ours is re-executed forever (hw-exception returns from the handler) instead of
///   killing the process.
/// - The hook is chained through the process-wide `sigaction` for `SIGBUS`. Code that
///   later installs its own `SIGBUS` handler without chaining replaces it: a truncation
///   then kills the process again, as it would without a `GuardedMap` (it fails closed:
///   never wrong data, never a silent continue).
#[derive(Debug)]
pub struct GuardedMap {
    map: MmapRaw,
    fd: OwnedFd,
    /// Offset of the first fault a read hit, or [`NOT_TRUNCATED`].
    truncated_at: AtomicU64,
}

const NOT_TRUNCATED: u64 = u64::MAX;

/// What [`GuardedMap::with_options`] accepts.
///
/// ```
/// let options = sealpipe::GuardOptions::new().max_len(64 << 20);
/// assert_eq!(options.len_limit(), 64 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardOptions {
    max_len: u64,
    any_file: bool,
}

impl GuardOptions {
    /// Default limit on the mapped length: 1 GiB.
    pub const DEFAULT_MAX_LEN: u64 = 1 << 30;

    /// Shared memory only (memfd, tmpfs, `/dev/shm`), at most
    /// [`GuardOptions::DEFAULT_MAX_LEN`] bytes.
    pub const fn new() -> GuardOptions {
        GuardOptions {
            max_len: Self::DEFAULT_MAX_LEN,
            any_file: false,
        }
    }

    /// Largest file mapped, in bytes. A file's size is whatever its owner made it (a sparse
    /// file of 100 TiB costs nothing to create and exhausts the address space to map).
    pub const fn max_len(mut self, len: u64) -> GuardOptions {
        self.max_len = len;
        self
    }

    /// Whether files that are not shared memory are mapped too (default `false`). Reading
    /// a mapping of a file on a FUSE or network filesystem runs that filesystem's code on
    /// each page fault, which can block without bound (a FUSE daemon that never answers),
    /// and so can `fstat` here and the final `close`: accept them only from a trusted
    /// source.
    pub const fn any_file(mut self, yes: bool) -> GuardOptions {
        self.any_file = yes;
        self
    }

    /// The length limit.
    pub const fn len_limit(&self) -> u64 {
        self.max_len
    }

    /// Whether files that are not shared memory are accepted.
    pub const fn accepts_any_file(&self) -> bool {
        self.any_file
    }
}

impl Default for GuardOptions {
    /// [`GuardOptions::new`].
    fn default() -> GuardOptions {
        GuardOptions::new()
    }
}

impl GuardedMap {
    /// [`with_options`](GuardedMap::with_options) with [`GuardOptions::new`]: shared memory
    /// only, at most 1 GiB.
    ///
    /// # Errors
    /// As [`with_options`](GuardedMap::with_options).
    pub fn new(fd: OwnedFd) -> Result<GuardedMap> {
        GuardedMap::with_options(fd, &GuardOptions::new())
    }

    /// Maps the file behind `fd` read-only and shared, at its current size (`fstat`).
    ///
    /// Unless `options` accept any file, `fd` must be shared memory (`F_GET_SEALS` works:
    /// memfd, tmpfs, `/dev/shm`), which is checked before anything can reach another
    /// filesystem. Registers the process-wide `SIGBUS` hook on first use. On failure `fd`
    /// is closed without blocking (see [`crate::Channel`] on descriptors whose close
    /// blocks).
    ///
    /// # Errors
    /// [`Error::NotMemfd`] (index 0) for a file that is not shared memory;
    /// [`Error::EmptyRegion`] (index 0) if the file is empty; [`Error::RegionTooLarge`] if
    /// it is longer than the options allow or than the address space; [`Error::Map`] if
    /// `mmap` fails (for example a descriptor opened write-only, or one that cannot be
    /// mapped); [`Error::Io`] if `fstat` fails.
    pub fn with_options(fd: OwnedFd, options: &GuardOptions) -> Result<GuardedMap> {
        match Self::check(fd.as_fd(), options) {
            Ok(len) => Self::map(fd, len),
            Err(e) => {
                crate::closer::dispose(fd);
                Err(e)
            }
        }
    }

    /// The length to map, or why not.
    fn check(fd: BorrowedFd<'_>, options: &GuardOptions) -> Result<usize> {
        if !options.any_file {
            let kind = crate::closer::kind(fd);
            if kind != crate::closer::Kind::SharedMemory {
                return Err(Error::NotMemfd {
                    index: 0,
                    reason: kind.describe(),
                });
            }
        }
        let st = rustix::fs::fstat(fd).map_err(|e| Error::io("fstat", e))?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size == 0 {
            return Err(Error::EmptyRegion { index: 0 });
        }
        let max = options.max_len.min(isize::MAX as u64);
        usize::try_from(size)
            .ok()
            .filter(|&l| l as u64 <= max)
            .ok_or(Error::RegionTooLarge {
                index: 0,
                len: size,
                max,
            })
    }

    fn map(fd: OwnedFd, len: usize) -> Result<GuardedMap> {
        install_hook();
        let map = MmapOptions::new()
            .len(len)
            .map_raw_read_only(fd.as_raw_fd())
            .map_err(|source| Error::Map { index: 0, source })?;
        Ok(GuardedMap {
            map,
            fd,
            truncated_at: AtomicU64::new(NOT_TRUNCATED),
        })
    }

    /// Length of the mapping in bytes (the file's size when it was mapped).
    #[allow(
        clippy::len_without_is_empty,
        reason = "a guarded map is never empty: empty files are refused"
    )]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`, each byte read once.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit the mapping;
    /// [`Error::Truncated`] if the file no longer covers the range (another process
    /// truncated it), or if an earlier read of this map hit a truncation: `buf` then holds
    /// unspecified bytes.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let bytes = self.bytes().subslice(offset, len)?;
        let first_fault = self.truncated_at.load(Ordering::Relaxed);
        if first_fault != NOT_TRUNCATED {
            return Err(Error::Truncated {
                offset: offset as u64,
                len: len as u64,
                fault_offset: first_fault,
            });
        }
        if len == 0 {
            return Ok(());
        }
        let base = self.map.as_ptr() as usize;
        let start = bytes.as_ptr() as usize;
        let previous = ACTIVE.with(|a| a.replace((start, start + len)));
        // The range lies inside our live mapping, which is PROT_READ, so every load there
        // either reads a byte or, if another process has truncated the file, raises SIGBUS
        // BUS_ADRERR at that address. That is exactly the ACTIVE range, so our hook throws
        // and `catch` returns Err; the volatile loads cannot be elided or moved out of the
        // guarded block.
        //
        // Nothing leaks when the longjmp skips the frames of this closure and of the copy:
        // the closure captures a `SharedBytes` (a pointer and a length) and a *borrowed*
        // `&mut [u8]`, and the copy keeps only integers and pointers (`copy_out` has checked
        // its bounds, the only step that could build an error, before the first load). No
        // value with a destructor, no allocation, lock, descriptor or guard lives between
        // the setjmp in `catch` and the faulting load, so no destructor is skipped (`catch`
        // does not unwind). The frames hw-exception itself puts in between (its C callback
        // and `catch_unwind`) own nothing by then either; its signal-handler frames are the
        // one exception, see the type's Caveats. ACTIVE is restored below on both paths.
        let outcome = hw_exception::catch(AssertUnwindSafe(|| bytes.copy_out(0, buf)));
        ACTIVE.with(|a| a.set(previous));
        match outcome {
            Ok(copied) => copied, // Ok: the range was checked above
            Err(exception) => {
                let fault = exception.info().addr() as usize;
                let fault_offset = fault.saturating_sub(base) as u64;
                // Keep the first fault if another thread recorded one meanwhile.
                let _ = self.truncated_at.compare_exchange(
                    NOT_TRUNCATED,
                    fault_offset,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                Err(Error::Truncated {
                    offset: offset as u64,
                    len: len as u64,
                    fault_offset,
                })
            }
        }
    }

    /// The mapped bytes.
    fn bytes(&self) -> SharedBytes<'_> {
        // SAFETY: the mapping is owned by self and stays mapped for the borrow; no reference
        // to it is ever made. The file is not sealed against shrinking, so a load may raise
        // SIGBUS: it is only read inside `read_at`'s `catch`, which turns that into an error.
        unsafe { SharedBytes::new(self.map.as_ptr(), self.map.len()) }
    }

    /// Reads one `T` at byte `offset` by copy (any alignment).
    ///
    /// # Errors
    /// As [`read_at`](Self::read_at).
    pub fn read_value<T: bytemuck::Pod>(&self, offset: usize) -> Result<T> {
        let mut v = T::zeroed();
        self.read_at(offset, bytemuck::bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Unmaps the file and returns the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for GuardedMap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Registers the `SIGBUS` hook, once per process. It is never unregistered: a `GuardedMap`
/// may live as long as the process.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: `register_hook` is unsafe only so that code relying on a particular
        // fault behaviour knows who installed hooks; it has no precondition of its own. Our
        // hook throws only for faults inside a range this very thread is copying inside
        // our `catch` (see `on_sigbus`), so it cannot disturb any other code's faults.
        unsafe {
            hw_exception::register_hook(&[Signo::SIGBUS], on_sigbus);
        }
    });
}

/// The `SIGBUS` hook: throw (back into [`GuardedMap::read_at`]'s `catch`) if and only if
/// the fault is an access past the end of a file (`BUS_ADRERR`) at an address this thread
/// is copying from right now. Returning `false` passes the fault on.
fn on_sigbus(info: ExceptionInfo<'_>) -> bool {
    if !matches!(info.signal(), Ok(Signal::Bus(SigbusCode::ADDERR))) {
        return false;
    }
    let addr = info.addr() as usize;
    let (start, end) = ACTIVE.try_with(Cell::get).unwrap_or((0, 0));
    if !(start <= addr && addr < end) {
        return false;
    }
    // `throw` converts its argument with `into_owned`, which for the handler's own
    // `ExceptionInfo` looks up the faulting function with `_Unwind_FindEnclosingFunction`:
    // on the small alternate signal stack that overflows (lazy symbol binding alone saves
    // the whole extended CPU state), and it takes the unwinder's locks. So we throw a copy
    // of the real `siginfo` (all the catcher reads: the fault address) paired with an
    // all-zero stand-in context: its instruction pointer reads as 0, so no lookup is made.
    let siginfo = std::ptr::from_ref(info.signinfo_raw()).cast_mut();
    let context = std::ptr::addr_of!(ZERO_CONTEXT)
        .cast_mut()
        .cast::<std::ffi::c_void>();
    // SAFETY: `ExceptionInfo::new` needs a valid siginfo and a valid `ucontext_t` (or null)
    // for as long as the value lives. `siginfo` is the kernel's siginfo for this signal,
    // valid for the whole handler, and is only read. `context` points to ZERO_CONTEXT: it is
    // larger than `ucontext_t` on every target hw-exception supports and 16-byte aligned,
    // and all-zero bytes are a valid value of that plain C struct. hw-exception only reads
    // it (its stack and instruction pointer slots: 0) or keeps it as an opaque pointer; it
    // is never written through, so the `cast_mut` is sound. Both outlive the value, which
    // `throw` consumes right here.
    let exception = unsafe { ExceptionInfo::new(info.signo_raw(), siginfo, context) };
    hw_exception::throw(exception)
}

/// All-zero stand-in for a `ucontext_t` (968 bytes on x86_64 glibc, 4560 on aarch64): read
/// by hw-exception as "instruction pointer 0", never written.
static ZERO_CONTEXT: [u128; 512] = [0; 512];

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{ftruncate, memfd_create, MemfdFlags};

    fn file(len: u64) -> (OwnedFd, OwnedFd) {
        let fd = memfd_create("guard-test", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, len).unwrap();
        let other = rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap();
        (fd, other)
    }

    #[test]
    fn truncation_becomes_a_final_error_and_a_new_map_reads_again() {
        let (fd, other) = file(4 * 4096);
        rustix::io::pwrite(&other, &[7u8; 4 * 4096], 0).unwrap();
        let map = GuardedMap::new(fd).unwrap();
        assert_eq!(map.read_value::<[u8; 4]>(3 * 4096).unwrap(), [7; 4]);
        ftruncate(&other, 4096 + 10).unwrap();
        let mut buf = [0u8; 3 * 4096];
        match map.read_at(100, &mut buf) {
            Err(Error::Truncated {
                offset: 100,
                len,
                fault_offset,
            }) => {
                assert_eq!(len, 3 * 4096);
                assert_eq!(fault_offset, 2 * 4096, "first page past the new end");
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
        // Final: even a range still inside the file, even after the file grows back.
        ftruncate(&other, 4 * 4096).unwrap();
        assert!(matches!(
            map.read_value::<u8>(0),
            Err(Error::Truncated { offset: 0, len: 1, fault_offset }) if fault_offset == 2 * 4096
        ));
        let map = GuardedMap::new(map.into_fd()).unwrap();
        assert_eq!(map.read_value::<[u8; 2]>(0).unwrap(), [7, 7]);
        assert_eq!(
            map.read_value::<u8>(4 * 4096 - 1).unwrap(),
            0,
            "regrown: zeros"
        );
    }

    #[test]
    fn bounds_and_empty_files_are_checked() {
        let (fd, _other) = file(100);
        let map = GuardedMap::new(fd).unwrap();
        assert!(matches!(
            map.read_at(90, &mut [0u8; 11]),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            map.read_at(usize::MAX, &mut [0u8; 2]),
            Err(Error::OutOfBounds { .. })
        ));
        map.read_at(100, &mut []).unwrap();
        let (empty, _o) = file(0);
        assert!(matches!(
            GuardedMap::new(empty),
            Err(Error::EmptyRegion { .. })
        ));
    }

    #[test]
    fn concurrent_faults_on_many_threads_are_each_caught() {
        let (fd, other) = file(8 * 4096);
        let maps: Vec<GuardedMap> = (0..4)
            .map(|_| GuardedMap::new(rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap()).unwrap())
            .collect();
        ftruncate(&other, 4096).unwrap();
        std::thread::scope(|s| {
            for (i, map) in maps.iter().enumerate() {
                s.spawn(move || {
                    let mut b = [0u8; 8];
                    let at = (i + 2) * 4096 + 8;
                    assert!(matches!(
                        map.read_at(at, &mut b),
                        Err(Error::Truncated { fault_offset, .. }) if fault_offset == at as u64
                    ));
                });
            }
        });
    }
}
