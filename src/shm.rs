//! Memory that another process may write: [`SharedBytes`], and the one routine that copies
//! out of it.
//!
//! The rule of this module: **no reference into shared memory, ever.** A `&[u8]` or `&T`
//! promises the compiler that nobody changes the bytes while it lives, which a peer
//! process can break at any moment (undefined behaviour, not merely stale data). So every
//! read is a copy with volatile loads into memory of ours, each byte read once, where the
//! caller validates a private snapshot. The one exception is the `unsafe`
//! [`SharedBytes::as_slice`], whose caller promises that no process can write the bytes
//! while the slice lives (a region sealed `F_SEAL_WRITE`, or a trusted producer).
//!
//! This is the shape of rust-vmm's `vm-memory` (`VolatileSlice`): a base pointer and a
//! length, made only by an `unsafe fn` that states the mapping's contract, then safe,
//! bounds-checked accessors.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::marker::PhantomData;

use crate::error::{Error, Result};

/// `len` bytes of a mapping that another process may write, valid for `'a`.
///
/// Made only by [`SharedBytes::new`]; read by copy ([`copy_out`](SharedBytes::copy_out),
/// [`read`](SharedBytes::read)); narrowed by [`subslice`](SharedBytes::subslice). It is
/// `Copy`: copies and sub-slices share the lifetime `'a` of the mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedBytes<'a> {
    ptr: *const u8,
    len: usize,
    /// Borrows the mapping for `'a`; `UnsafeCell`: the bytes may change under us.
    _mapping: PhantomData<&'a [UnsafeCell<u8>]>,
}

// SAFETY: a `SharedBytes` is a pointer into process-shared memory that it only reads with
// volatile loads (or through `as_slice`, whose caller rules out writers). Other processes
// already read and write that memory concurrently; a thread of ours doing the same adds
// nothing new, and the mapping outlives `'a` whichever thread holds the value.
unsafe impl Send for SharedBytes<'_> {}
// SAFETY: as for Send: `&SharedBytes` allows only the same volatile reads.
unsafe impl Sync for SharedBytes<'_> {}

impl<'a> SharedBytes<'a> {
    /// The `len` bytes at `ptr`.
    ///
    /// # Safety
    /// For all of `'a`:
    /// - `ptr .. ptr + len` lies inside one mapping of this process that is neither
    ///   unmapped nor remapped, so every load from it either reads a byte (whatever another
    ///   process last wrote) or, if the file behind it was truncated, raises `SIGBUS`. That
    ///   kills the process unless the caller catches it ([`crate::GuardedMap`]); callers that
    ///   must not crash map only files sealed against shrinking whose size they checked.
    /// - no `&mut` reference to any of these bytes exists in this process (writes of ours,
    ///   if any, go through raw pointers).
    pub(crate) unsafe fn new(ptr: *const u8, len: usize) -> SharedBytes<'a> {
        SharedBytes {
            ptr,
            len,
            _mapping: PhantomData,
        }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first byte's address (for atomics on control words; never dereference it as a
    /// reference).
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The `len` bytes starting at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit.
    pub(crate) fn subslice(&self, offset: usize, len: usize) -> Result<SharedBytes<'a>> {
        self.check(offset, len)?;
        Ok(SharedBytes {
            // In bounds (checked), so `add` stays inside the mapping.
            ptr: self.ptr.wrapping_add(offset),
            len,
            _mapping: PhantomData,
        })
    }

    /// Copies `dst.len()` bytes starting at `offset` into `dst`, each byte read once with
    /// volatile loads.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] (copying nothing) if the range does not fit.
    #[inline]
    pub(crate) fn copy_out(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check(offset, dst.len())?;
        // SAFETY: offset + dst.len() <= self.len (checked above), so the source range lies
        // inside the mapping, which stays mapped for 'a (the constructor's contract).
        unsafe { volatile_copy(self.ptr.add(offset), dst) };
        Ok(())
    }

    /// Replaces the contents of `out` by the `len` bytes of a ring record at `offset`,
    /// without zero-filling `out` first; returns whether it did. It leaves `out` empty and
    /// returns `false` unless `offset` and the base are 8-aligned and the length rounded up
    /// to 8 bytes (the record's padding) lies in bounds.
    #[inline]
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn copy_record_into(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> bool {
        let fits = offset
            .checked_add(len.next_multiple_of(8))
            .is_some_and(|end| end <= self.len);
        if !fits || offset % 8 != 0 || self.ptr.addr() % 8 != 0 {
            out.clear();
            return false;
        }
        // SAFETY: the conditions were checked just above.
        unsafe { self.copy_record_into_unchecked(offset, len, out) };
        true
    }

    /// [`copy_record_into`](Self::copy_record_into) without its checks: whole aligned
    /// words, the last one read in full and stored in part, no per-byte steps. This is the
    /// byte ring's per-record copy, whose record the ring has just validated; at 8 to 64
    /// bytes a record, repeating the checks costs a third of the throughput (measured: 64 B
    /// batched, 2-vCPU AMD EPYC).
    ///
    /// # Safety
    /// `offset` and the base are 8-aligned, and `offset + len` rounded up to 8 is at most
    /// [`len`](Self::len).
    #[inline]
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) unsafe fn copy_record_into_unchecked(
        &self,
        offset: usize,
        len: usize,
        out: &mut Vec<u8>,
    ) {
        debug_assert!(offset % 8 == 0 && self.ptr.addr() % 8 == 0);
        debug_assert!(offset + len.next_multiple_of(8) <= self.len);
        out.clear();
        out.reserve(len);
        // SAFETY: `offset .. offset + len` rounded up to 8 lies inside the mapping and the
        // source is 8-aligned (the caller's contract); `out` has capacity for `len` bytes
        // (reserved above), all of which the copy writes before `set_len` exposes them.
        unsafe {
            copy_words_raw(self.ptr.add(offset), out.as_mut_ptr(), len);
            out.set_len(len);
        }
    }

    /// Reads one `T` at byte `offset` by copy (any alignment). Where the address is aligned
    /// for `T`, that is one volatile load of a `T` (a single 8-byte load for a `u64`);
    /// elsewhere the general copy.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if `offset + size_of::<T>()` exceeds the length.
    #[inline]
    pub(crate) fn read<T: bytemuck::Pod>(&self, offset: usize) -> Result<T> {
        if let Some(v) = self.read_aligned(offset) {
            return Ok(v);
        }
        let mut v = T::zeroed();
        self.copy_out(offset, bytemuck::bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Reads one `T` at byte `offset` with a single volatile load, if the range fits and
    /// the address is aligned for `T`; `None` otherwise. The ring's per-record header and
    /// slot loads: no fallback copy, so nothing but two compares joins the load.
    #[inline]
    pub(crate) fn read_aligned<T: bytemuck::Pod>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(std::mem::size_of::<T>())?;
        if end > self.len || !self.ptr.wrapping_add(offset).cast::<T>().is_aligned() {
            return None;
        }
        // SAFETY: the conditions were checked just above.
        Some(unsafe { self.read_aligned_unchecked(offset) })
    }

    /// [`read_aligned`](Self::read_aligned) without its checks: one volatile load. The
    /// byte ring's header load, at a position the ring keeps in bounds and aligned.
    ///
    /// # Safety
    /// `offset + size_of::<T>()` is at most [`len`](Self::len) and the base plus `offset`
    /// is aligned for `T`.
    #[inline]
    pub(crate) unsafe fn read_aligned_unchecked<T: bytemuck::Pod>(&self, offset: usize) -> T {
        let src = self.ptr.wrapping_add(offset).cast::<T>();
        debug_assert!(offset + std::mem::size_of::<T>() <= self.len && src.is_aligned());
        // SAFETY: the `size_of::<T>()` bytes at `src` lie inside the mapping and `src` is
        // aligned for `T` (the caller's contract); one volatile load reads each byte once,
        // and any bit pattern is a valid `T` (Pod).
        unsafe { src.read_volatile() }
    }

    /// Asks the CPU to start loading the cache line that holds byte `offset` (nothing if
    /// `offset` is out of bounds, or off x86_64). A hint: no load of the program, no fault.
    #[inline]
    pub(crate) fn prefetch(&self, offset: usize) {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        if offset < self.len {
            // SAFETY: `offset` lies inside the mapping (checked above), so the address is
            // in bounds; a prefetch never faults and reads nothing the program sees.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.ptr.add(offset).cast());
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        let _ = offset;
    }

    /// The bytes as a slice: the one reference into shared memory.
    ///
    /// # Safety
    /// No process may write these bytes while the slice lives: the file is sealed
    /// `F_SEAL_WRITE`, or the caller knows its producer's protocol rules writes out.
    pub(crate) unsafe fn as_slice(&self) -> &'a [u8] {
        // SAFETY: ptr..ptr + len stays mapped for 'a (the constructor's contract) and no
        // `&mut` to it exists in this process; the caller guarantees no process writes it
        // while the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset: offset as u64,
                len: len as u64,
                region_len: self.len as u64,
            }),
        }
    }
}

/// `len` bytes of a mapping that this process writes and other processes may only read: a
/// ring producer's data area, or a pool buffer being filled, in a memfd sealed against
/// every other writer.
///
/// Ordinary memory from this process's point of view (nobody else changes it), so it
/// lends plain `&mut [u8]`, bounds-checked and only for the borrow of `&mut self`; it is
/// a pointer rather than a `&'a mut [u8]` because a test may run the consumer over the
/// same bytes in this process, reading ranges the producer is not writing.
#[derive(Debug)]
pub(crate) struct SharedBytesMut<'a> {
    ptr: *mut u8,
    len: usize,
    _mapping: PhantomData<&'a mut [u8]>,
}

// SAFETY: the value lends its bytes only as `&mut [u8]` for the borrow of `&mut self` or
// `&[u8]` for the borrow of `&self`, and nothing else touches a lent range (the
// constructor's contract): like a `&mut [u8]`, which is Send and Sync.
unsafe impl Send for SharedBytesMut<'_> {}
// SAFETY: as for Send: through `&SharedBytesMut` only shared slices are lent, and nothing
// writes while they live.
unsafe impl Sync for SharedBytesMut<'_> {}

impl<'a> SharedBytesMut<'a> {
    /// The `len` bytes at `ptr`.
    ///
    /// # Safety
    /// For all of `'a`: `ptr .. ptr + len` lies inside one writable mapping of this process
    /// that stays mapped; no other process writes it; in this process no reference to
    /// these bytes exists other than the slices this value lends, and nothing else touches
    /// a range while it is lent (readers use raw pointers, as [`SharedBytes`] does).
    pub(crate) unsafe fn new(ptr: *mut u8, len: usize) -> SharedBytesMut<'a> {
        SharedBytesMut {
            ptr,
            len,
            _mapping: PhantomData,
        }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first byte's address (for alignment checks, and for a reader over the same
    /// bytes in tests).
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The `len` bytes at `offset`, to write; `None` if they do not fit.
    #[inline]
    pub(crate) fn range_mut(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset .. offset + len` lies inside the mapping (checked above), which
        // only this value writes (the constructor's contract); the `&mut self` borrow keeps
        // any other slice of it from being made while this one lives.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) })
    }

    /// The `len` bytes at `offset`, to read; `None` if they do not fit.
    #[inline]
    pub(crate) fn range(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset .. offset + len` lies inside the mapping (checked above), which
        // only this value writes (the constructor's contract), and not while the `&self`
        // borrow lasts.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(offset), len) })
    }

    /// Writes `value` at `offset` (any alignment); `false` if it does not fit.
    #[inline]
    pub(crate) fn write<T: bytemuck::Pod>(&mut self, offset: usize, value: T) -> bool {
        match self.range_mut(offset, std::mem::size_of::<T>()) {
            Some(bytes) => {
                bytes.copy_from_slice(bytemuck::bytes_of(&value));
                true
            }
            None => false,
        }
    }
}

/// Copies `dst.len()` bytes from `src` with volatile loads, each as wide as the source's
/// alignment allows: at most one 1-, 2-, 4- and 8-byte load to reach a 16-byte boundary,
/// then four 16-byte SSE2 loads per 64 bytes and 16 at a time (x86_64; elsewhere 8 bytes
/// at a time), then at most one 8-, 4-, 2- and 1-byte load for the tail. Every load is
/// aligned to its width; the stores into `dst` need no alignment. No loops at the ends:
/// short and unaligned copies cost a few predictable branches.
///
/// Its middle repeats [`copy_words_raw`]'s (the record copy, which starts 8-aligned and may
/// read its padding): measured, either one written in terms of the other costs 10–35 % on
/// the ring row that uses it (typed slices through this one, 8-byte records through that
/// one; 2-vCPU AMD EPYC, aligned-layout builds, many child processes per build).
///
/// Volatile loads are what the unsafe-code guidelines recommend for memory that another
/// process may write concurrently: the compiler may neither elide, repeat nor tear-assume
/// them, and every byte is read exactly once, so the caller validates a private snapshot.
/// (The wide loads matter: out of memory, 8-byte volatile loads copy at ~8 GB/s on the
/// project's VMs, 16-byte ones at ~20 GB/s, close to `memcpy`.)
///
/// It keeps only integers and pointers in its frame (no value with a destructor), which
/// [`crate::GuardedMap`] relies on when a fault here longjmps out of it.
///
/// [`SharedBytes::copy_out`] is its safe, bounds-checked form; prefer that.
///
/// # Safety
/// `src .. src + dst.len()` must lie inside a mapping as [`SharedBytes::new`] describes,
/// for the duration of the call.
#[inline]
pub(crate) unsafe fn volatile_copy(src: *const u8, dst: &mut [u8]) {
    // SAFETY: the caller's contract for the source; `dst` is writable for its length.
    unsafe { volatile_copy_raw(src, dst.as_mut_ptr(), dst.len()) }
}

/// [`volatile_copy`] into `len` bytes at `d`, which need not be initialised.
///
/// # Safety
/// As [`volatile_copy`] for the source; `d` must be valid for writes of `len` bytes and not
/// overlap the source.
#[inline]
unsafe fn volatile_copy_raw(src: *const u8, d: *mut u8, len: usize) {
    let addr = src.addr();
    let mut i = 0;
    // Head: the source's low address bits, smallest first. Each step leaves `src + i`
    // aligned to twice its width; a step skipped for want of room skips every wider one,
    // and then the tail's steps, all narrower, are aligned too.
    // SAFETY: (every step below) the step's `w` bytes at `i` fit in `len` (checked), so
    // the load stays in the readable source and the store in `dst`; the load is aligned
    // to `w` (the bits below `w` of `src + i` are clear, see above).
    unsafe {
        if (addr + i) & 1 != 0 && len - i >= 1 {
            copy_one::<u8>(src.add(i), d.add(i));
            i += 1;
        }
        if (addr + i) & 2 != 0 && len - i >= 2 {
            copy_one::<u16>(src.add(i), d.add(i));
            i += 2;
        }
        if (addr + i) & 4 != 0 && len - i >= 4 {
            copy_one::<u32>(src.add(i), d.add(i));
            i += 4;
        }
        if WIDE > 8 && (addr + i) & 8 != 0 && len - i >= 8 {
            copy_one::<u64>(src.add(i), d.add(i));
            i += 8;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__m128i;
        while i + 64 <= len {
            // SAFETY: src + i is 16-aligned (the head brought it there, then 64s) and
            // src + i + 64 <= src + len lies in the readable range; `__m128i` has no
            // invalid bit patterns; the unaligned stores stay inside dst[..len].
            unsafe {
                let s = src.add(i).cast::<__m128i>();
                let o = d.add(i).cast::<__m128i>();
                let (a, b) = (s.read_volatile(), s.add(1).read_volatile());
                let (c, e) = (s.add(2).read_volatile(), s.add(3).read_volatile());
                o.write_unaligned(a);
                o.add(1).write_unaligned(b);
                o.add(2).write_unaligned(c);
                o.add(3).write_unaligned(e);
            }
            i += 64;
        }
        while i + 16 <= len {
            // SAFETY: as above, for 16 bytes.
            unsafe { copy_one::<__m128i>(src.add(i), d.add(i)) };
            i += 16;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    while i + 8 <= len {
        // SAFETY: src + i is 8-aligned (the head brought it there, then 8s) and the 8
        // bytes lie in the readable range; dst has room for them.
        unsafe { copy_one::<u64>(src.add(i), d.add(i)) };
        i += 8;
    }
    // Tail: fewer than WIDE bytes left, from an address aligned to WIDE (or, after a short
    // head, to more than what is left).
    let rem = len - i;
    // SAFETY: as for the head: each step's bytes fit in what is left, and the address is
    // aligned to the step's width (only narrower steps than the alignment remain).
    unsafe {
        if rem & 8 != 0 {
            copy_one::<u64>(src.add(i), d.add(i));
            i += 8;
        }
        if rem & 4 != 0 {
            copy_one::<u32>(src.add(i), d.add(i));
            i += 4;
        }
        if rem & 2 != 0 {
            copy_one::<u16>(src.add(i), d.add(i));
            i += 2;
        }
        if rem & 1 != 0 {
            copy_one::<u8>(src.add(i), d.add(i));
        }
    }
}

/// The widest load the copy makes, and the alignment it first brings the source to.
#[cfg(target_arch = "x86_64")]
const WIDE: usize = 16;
#[cfg(not(target_arch = "x86_64"))]
const WIDE: usize = 8;

/// Copies `len` bytes from an 8-aligned `src` whose `len` rounded up to 8 bytes is
/// readable: 16-byte loads where the source allows, then whole words, the last word read
/// in full and stored in part.
///
/// # Safety
/// `src` is 8-aligned and readable for `len.next_multiple_of(8)` bytes (the mapping's
/// contract of [`SharedBytes::new`]); `d` is valid for writes of `len` bytes and does not
/// overlap the source.
#[inline]
unsafe fn copy_words_raw(src: *const u8, d: *mut u8, len: usize) {
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if len >= 16 {
        use std::arch::x86_64::__m128i;
        if src.addr() % 16 != 0 {
            // SAFETY: the first word is readable and aligned (len >= 16); dst has room.
            unsafe { copy_one::<u64>(src, d) };
            i = 8;
        }
        while i + 64 <= len {
            // SAFETY: src + i is 16-aligned and its 64 bytes are readable; `__m128i` has no
            // invalid bit patterns; the unaligned stores stay inside dst[..len].
            unsafe {
                let s = src.add(i).cast::<__m128i>();
                let o = d.add(i).cast::<__m128i>();
                let (a, b) = (s.read_volatile(), s.add(1).read_volatile());
                let (c, e) = (s.add(2).read_volatile(), s.add(3).read_volatile());
                o.write_unaligned(a);
                o.add(1).write_unaligned(b);
                o.add(2).write_unaligned(c);
                o.add(3).write_unaligned(e);
            }
            i += 64;
        }
        while i + 16 <= len {
            // SAFETY: as above, for 16 bytes.
            unsafe { copy_one::<__m128i>(src.add(i), d.add(i)) };
            i += 16;
        }
    }
    while i + 8 <= len {
        // SAFETY: the word at i is 8-aligned and readable; dst has room for it.
        unsafe { copy_one::<u64>(src.add(i), d.add(i)) };
        i += 8;
    }
    if i < len {
        // SAFETY: the last, partial word is readable in full (the caller's padded length)
        // and aligned; dst has `len - i` bytes left.
        unsafe {
            let w = src.add(i).cast::<u64>().read_volatile().to_ne_bytes();
            std::ptr::copy_nonoverlapping(w.as_ptr(), d.add(i), len - i);
        }
    }
}

/// Copies one `T` with one volatile load.
///
/// # Safety
/// `src` must be readable for `size_of::<T>()` bytes and aligned for `T`, `dst` writable
/// for as many; any bit pattern must be a valid `T`.
#[inline(always)]
unsafe fn copy_one<T: Copy>(src: *const u8, dst: *mut u8) {
    // SAFETY: the caller's contract, word for word.
    unsafe {
        dst.cast::<T>()
            .write_unaligned(src.cast::<T>().read_volatile())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `SharedBytes` over a buffer of ours (not shared, but the copy cannot tell).
    fn over(buf: &[u8]) -> SharedBytes<'_> {
        // SAFETY: `buf` is borrowed for the result's lifetime, and only shared.
        unsafe { SharedBytes::new(buf.as_ptr(), buf.len()) }
    }

    #[test]
    fn copies_every_alignment_and_length() {
        /// A source whose base is 64-aligned, so `start` sets the low address bits.
        #[repr(C, align(64))]
        struct Aligned([u8; 320]);
        let mut src = Aligned([0; 320]);
        for (i, b) in src.0.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let src = &src.0;
        let bytes = over(src);
        // Miri is slow: fewer lengths there, still every head, loop and tail step.
        let lens: Vec<usize> = if cfg!(miri) {
            vec![
                0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 100, 129,
            ]
        } else {
            (0..250).collect()
        };
        for start in 0..33 {
            for &len in &lens {
                let mut dst = vec![0u8; len + 3];
                // An unaligned destination too.
                let out = &mut dst[start % 3..start % 3 + len];
                bytes.copy_out(start, out).unwrap();
                assert_eq!(out, &src[start..start + len], "start {start} len {len}");
            }
        }
    }

    #[test]
    fn copies_records_into_uninitialised_memory_and_reads_at_any_alignment() {
        #[repr(C, align(16))]
        struct Aligned([u8; 128]);
        let mut src = Aligned([0; 128]);
        for (i, b) in src.0.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31);
        }
        let src = &src.0;
        let bytes = over(src);
        for start in (0..96).step_by(8) {
            for len in [0usize, 1, 7, 8, 9, 16, 17, 33, 64, 65, 79] {
                if start + len.next_multiple_of(8) > src.len() {
                    continue;
                }
                let mut v = vec![0xAA; 3];
                assert!(bytes.copy_record_into(start, len, &mut v));
                assert_eq!(v, &src[start..start + len], "start {start} len {len}");
            }
        }
        let mut v = vec![1, 2, 3];
        // Not 8-aligned; padded past the end (121 + 16 > 128, 120 + 16 > 128).
        assert!(!bytes.copy_record_into(4, 9, &mut v));
        assert!(v.is_empty());
        assert!(!bytes.copy_record_into(120, 9, &mut v));
        for start in 0..20 {
            // Aligned or not, `read` gives the same bytes as a copy.
            let want = u64::from_ne_bytes(src[start..start + 8].try_into().unwrap());
            assert_eq!(bytes.read::<u64>(start).unwrap(), want, "start {start}");
        }
    }

    #[test]
    fn writable_bytes_lend_only_ranges_in_bounds() {
        let mut buf = [0u8; 32];
        // SAFETY: `buf` outlives `w`, and nothing else refers to it while `w` lives.
        let mut w = unsafe { SharedBytesMut::new(buf.as_mut_ptr(), buf.len()) };
        assert!(w.write(3, 0x0102_0304_0506_0708u64.to_le()));
        assert!(w.write(24, u64::MAX));
        assert!(!w.write(25, 0u64), "past the end");
        w.range_mut(12, 4).unwrap().copy_from_slice(b"abcd");
        assert!(w.range_mut(30, 3).is_none());
        assert!(w.range_mut(usize::MAX, 2).is_none(), "overflow");
        assert_eq!(w.range(3, 8).unwrap(), &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(w.range(12, 4).unwrap(), b"abcd");
        assert!(w.range(0, 33).is_none());
        assert_eq!(w.range(32, 0).unwrap(), b"");
        assert_eq!(&buf[24..], &[0xff; 8]);
    }

    #[test]
    fn refuses_ranges_out_of_bounds() {
        let src = [7u8; 32];
        let bytes = over(&src);
        let mut buf = [0u8; 8];
        assert!(bytes.copy_out(24, &mut buf).is_ok());
        assert!(matches!(
            bytes.copy_out(25, &mut buf),
            Err(Error::OutOfBounds {
                offset: 25,
                len: 8,
                region_len: 32
            })
        ));
        assert!(bytes.copy_out(usize::MAX, &mut buf).is_err());
        assert!(bytes.subslice(30, 3).is_err());
        assert!(bytes.subslice(usize::MAX, 2).is_err());
        assert!(bytes.read::<u64>(25).is_err());
    }

    #[test]
    fn subslices_and_values_read_their_own_bytes() {
        let src: Vec<u8> = (0..64u8).collect();
        let bytes = over(&src);
        let sub = bytes.subslice(10, 20).unwrap();
        assert_eq!(sub.len(), 20);
        assert_eq!(sub.read::<u8>(0).unwrap(), 10);
        assert_eq!(
            sub.read::<u32>(1).unwrap(),
            u32::from_ne_bytes([11, 12, 13, 14])
        );
        assert_eq!(
            sub.read::<u64>(12).unwrap(),
            u64::from_ne_bytes([22, 23, 24, 25, 26, 27, 28, 29])
        );
        assert!(sub.read::<u64>(13).is_err()); // would run past the sub-slice
        let mut buf = [0u8; 4];
        assert!(sub.copy_out(17, &mut buf).is_err());
        // SAFETY: nobody writes `src` while the slice lives.
        assert_eq!(unsafe { sub.as_slice() }, &src[10..30]);
    }
}
