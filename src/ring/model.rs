//! Fuzz entry points for the ring: both engines of a byte ring and of a typed ring run
//! against reference models of their records, indices and caches, and the control-page
//! header checks against `PROTOCOL.md`, section Ring (compiled for tests and fuzzing only).
//!
//! Each entry point takes arbitrary bytes and must never panic, hang, leak a descriptor or
//! read out of bounds; where a simple model of the correct answer exists, it asserts that
//! the implementation agrees with it (an assertion failure is a finding). The fuzz targets
//! reach these through `crate::fuzz`, whose tests also replay the committed corpora.
//!
//! Unsafe code (only in [`ring_ops`] and [`ring_pod_ops`]): the ring engines run over a `Vec`
//! and local atomics that outlive them; every write to the data area goes through pointers
//! from the one raw pointer the engines were given, within `0..cap`, and nothing else
//! references that memory.
#![allow(unsafe_code)]
#![cfg_attr(not(fuzzing), allow(unreachable_pub))] // public only to the fuzz crate, through `crate::fuzz`

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::Error;
use crate::ring::core::{
    self as ring, ByteConsumer, ByteProducer, Engine, PodConsumer, PodProducer, Words,
};

/// The four control words of a ring in one process, both sides' views of them.
#[derive(Default)]
struct Control {
    p_index: AtomicU32,
    p_wait: AtomicU64,
    c_index: AtomicU32,
    c_wait: AtomicU64,
}

impl Control {
    fn producer_words(&self) -> Words<'_> {
        Words::new(&self.p_index, &self.p_wait, &self.c_index, &self.c_wait)
    }
    fn consumer_words(&self) -> Words<'_> {
        Words::new(&self.c_index, &self.c_wait, &self.p_index, &self.p_wait)
    }
}

/// The most operations one `ring_ops` input performs.
const RING_MAX_OPS: usize = 1024;

/// Runs the operations encoded in `data` on a byte ring over a `Vec` (both engines in this
/// thread; the fuzzer also plays a hostile peer that scribbles on the other side's memory).
///
/// Byte 0 picks the capacity (16 << (b % 9): 16 B to 4 KiB). Then each operation is one
/// byte `op` (kind `op % 16`, flags in the high bits) followed by its arguments; the input
/// ends at the first missing byte, or after [`RING_MAX_OPS`] operations.
///
/// | kind | operation |
/// |------|-----------|
/// | 0, 10–12 | producer sends a record (`u16` length mod the limit + 1, fill byte); publishes if `op & 0x10` |
/// | 1, 13–15 | consumer takes the next record and copies it out; publishes if `op & 0x10` |
/// | 2 | producer publishes |
/// | 3 | consumer publishes |
/// | 4 | hostile: overwrite the producer's write index (`u32` if `op & 0x10`, else current + `i8` × 8) |
/// | 5 | hostile: overwrite the consumer's read index (same encoding) |
/// | 6 | hostile: overwrite a header word of the data area (slot `u16`; value by `op >> 4 & 3`) |
/// | 7 | hostile: overwrite up to 16 payload bytes (offset `u16`, count, bytes) |
/// | 8 | consumer takes a record, a hostile write (6 or 7 by `op & 0x10`) lands, then copies out |
/// | 9 | hostile: overwrite a wait word (`u64`; the producer's if `op & 0x10`) |
///
/// Until the first hostile operation, every result is checked exactly against a model
/// (records in a `VecDeque`, ring occupancy computed independently in `u64`): same records
/// in the same order, a record is refused exactly when the model says it does not fit, the
/// consumer is blocked exactly when nothing is published, no `Corrupt` ever. After it, the
/// property is only that every call returns a record or placement inside the ring, blocked,
/// or `Corrupt`, and never panics or touches memory outside the `Vec` (ASan/Miri). A
/// `Corrupt` verdict is repeated when asked again at once (the engine adopts nothing it
/// rejected). The engines are kept in use after a `Corrupt` (the public API stops calling
/// them then, see `Link::check_failed` in `ring/mod.rs`), which asks more of them.
pub fn ring_ops(data: &[u8]) {
    let mut input = Input(data);
    let Some(b) = input.byte() else { return };
    let cap: u32 = 16 << (b % 9);
    let max_len = ring::max_record_len(cap);

    let mut area = vec![0u64; cap as usize / 8];
    let base = NonNull::new(area.as_mut_ptr().cast::<u8>()).expect("Vec pointer is non-null");
    let control = Control::default();
    let Control {
        p_index,
        p_wait,
        c_index,
        c_wait,
    } = &control;
    // SAFETY: `area` and the control words are declared before the engines, so they outlive
    // them; `base` is 8-aligned (a Vec<u64>) and valid for `cap` bytes; the data area is
    // written only through pointers from `base` (the producer engine's slices, and the
    // hostile writes below between engine calls, all in this thread), and the consumer
    // reads it by volatile copies.
    let (mut p, mut c) = unsafe {
        (
            ByteProducer::new(
                crate::shm::SharedBytesMut::new(base.as_ptr(), cap as usize),
                control.producer_words(),
                true,
            )
            .expect("a valid capacity"),
            ByteConsumer::new(
                crate::shm::SharedBytes::new(base.as_ptr(), cap as usize),
                control.consumer_words(),
                true,
            )
            .expect("a valid capacity, 8-aligned"),
        )
    };
    // The model is authoritative until the first hostile operation.
    let mut model = Some(RingModel::new(cap));
    let hostile_data = |input: &mut Input, op: u8, header: bool| {
        if header {
            let slot = usize::from(input.u16()) % (cap as usize / 8);
            let word = match op >> 4 & 3 {
                0 => ring::record_header(u32::from(input.u16())),
                1 => ring::pad_header(),
                2 => input.u64(),
                _ => u64::from(input.byte().unwrap_or(0)) << 32 | u64::from(input.u32()),
            };
            // SAFETY: slot * 8 + 8 <= cap, 8-aligned, inside the Vec.
            unsafe {
                base.as_ptr()
                    .add(slot * 8)
                    .cast::<u64>()
                    .write_volatile(word.to_le())
            };
        } else {
            let at = usize::from(input.u16()) % cap as usize;
            let n = usize::from(input.byte().unwrap_or(0) % 17).min(cap as usize - at);
            for i in 0..n {
                let v = input.byte().unwrap_or(0);
                // SAFETY: at + i < cap, inside the Vec.
                unsafe { base.as_ptr().add(at + i).write_volatile(v) };
            }
        }
    };

    for _ in 0..RING_MAX_OPS {
        let Some(op) = input.byte() else { break };
        match op % 16 {
            0 | 10..=12 => {
                let len = usize::from(input.u16()) % (max_len + 1);
                let fill = input.byte().unwrap_or(0);
                let msg: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                // The fast path (cached read index only) may decline, never disagree.
                let cached = p.reserve_cached(len);
                let result = p.reserve(len);
                if let Some(place) = cached {
                    assert_eq!(result, Ok(Ok(place)), "fast path of reserve({len})");
                }
                let expect = model.as_ref().map(|m| m.place(len));
                match result {
                    Ok(Ok(place)) => {
                        let (pad, offset, span) = (place.pad, place.offset, place.span);
                        assert!(
                            offset % 8 == 0
                                && u64::from(offset) + u64::from(span) <= u64::from(cap)
                        );
                        assert!(u64::from(span) >= u64::from(ring::RECORD_HEADER) + len as u64);
                        if let Some(e) = expect {
                            assert_eq!(e, Some((pad, offset, span)), "placement of {len} bytes");
                        }
                        p.payload_mut(place, len)
                            .expect("the placement holds `len` bytes")
                            .copy_from_slice(&msg);
                        p.commit(place, len);
                        if let Some(m) = model.as_mut() {
                            m.commit(msg, pad, span);
                        }
                    }
                    Ok(Err(_blocked)) => {
                        if let Some(e) = expect {
                            assert_eq!(e, None, "ring refused {len} bytes the model places");
                        }
                    }
                    Err(corrupt) => {
                        assert!(model.is_none(), "honest peer: {corrupt:?}");
                        assert_eq!(p.reserve(len), Err(corrupt), "rejected, then adopted");
                    }
                }
                if op & 0x10 != 0 {
                    let _ = p.publish();
                    if let Some(m) = model.as_mut() {
                        m.publish();
                    }
                }
            }
            1 | 13..=15 | 8 => {
                let between = op % 16 == 8;
                // The fast path (cached write index, ordinary record) may decline, never
                // accept what the full parser rejects or read it differently.
                let cached = c.next_cached();
                let next = c.next();
                if let Some(rec) = cached {
                    assert_eq!(next, Ok(Ok(rec)), "fast path of next()");
                }
                match next {
                    Ok(Ok(rec)) => {
                        let (offset, len) = (rec.offset as usize, rec.len as usize);
                        assert!(offset % 8 == 0 && offset >= ring::RECORD_HEADER as usize);
                        assert!(len <= max_len && offset + len.div_ceil(8) * 8 <= cap as usize);
                        if between {
                            hostile_data(&mut input, op, op & 0x10 != 0);
                        }
                        let mut out = vec![0u8; len];
                        c.copy_out(rec, &mut out);
                        c.consume(rec);
                        if let Some(m) = model.as_mut() {
                            let expected = m.take().expect("consumer got a record the model lacks");
                            // A write between validation and copy may change the bytes,
                            // not the length validated before it.
                            assert_eq!(len, expected.len(), "record length");
                            if !between {
                                assert_eq!(out, expected, "record content");
                            }
                        }
                    }
                    Ok(Err(_blocked)) => {
                        if let Some(m) = &model {
                            assert!(
                                m.ready.is_empty(),
                                "consumer blocked with records published"
                            );
                        }
                    }
                    Err(corrupt) => {
                        assert!(model.is_none(), "honest peer: {corrupt:?}");
                        assert_eq!(c.next(), Err(corrupt), "rejected, then adopted");
                    }
                }
                if between {
                    model = None;
                }
                if op & 0x10 != 0 {
                    let _ = c.publish();
                    if let Some(m) = model.as_mut() {
                        m.read_published = m.read;
                    }
                }
            }
            2 => {
                let _ = p.publish();
                if let Some(m) = model.as_mut() {
                    m.publish();
                }
            }
            3 => {
                let _ = c.publish();
                if let Some(m) = model.as_mut() {
                    m.read_published = m.read;
                }
            }
            4 | 5 => {
                let word = if op % 16 == 4 { p_index } else { c_index };
                let v = if op & 0x10 != 0 {
                    input.u32()
                } else {
                    let delta = i32::from(input.byte().unwrap_or(0) as i8) * 8;
                    word.load(Ordering::Relaxed).wrapping_add_signed(delta)
                };
                word.store(v, Ordering::Relaxed);
                model = None;
            }
            6 => {
                hostile_data(&mut input, op, true);
                model = None;
            }
            7 => {
                hostile_data(&mut input, op, false);
                model = None;
            }
            _ => {
                let word = if op & 0x10 != 0 { p_wait } else { c_wait };
                word.store(input.u64(), Ordering::Relaxed);
                model = None;
            }
        }
    }
}

/// Runs the operations encoded in `data` on a typed ring (`core::PodProducer` and
/// `core::PodConsumer`, both in this thread) over a `Vec`, with the fuzzer also playing a
/// hostile peer that rewrites the other side's index, wait word or slots.
///
/// Byte 0 picks the item type (bit 7: `[u8; 3]`, else `u64`) and the capacity
/// (16 << (b % 7): 16 to 1024 slots). Then each operation is one byte `op` (kind `op % 16`,
/// flags in the high bits) followed by its arguments; the input ends at the first missing
/// byte, or after [`RING_MAX_OPS`] operations.
///
/// | kind | operation |
/// |------|-----------|
/// | 0, 10 | producer asks for `want` free slots (`u16` mod capacity + 2), writes up to `n` (byte) of them; publishes if `op & 0x10` |
/// | 1, 11 | producer pushes `n % 8 + 1` items through the cached path; publishes if `op & 0x10` |
/// | 2 | producer publishes |
/// | 3, 12, 13 | consumer asks what is available, reads up to `n` (byte) items; publishes if `op & 0x10` |
/// | 4, 14 | consumer pops `n % 8 + 1` items through the cached path; publishes if `op & 0x10` |
/// | 5 | consumer publishes |
/// | 6 | hostile: overwrite the producer's write index (`u32` if `op & 0x10`, else current + `i8`) |
/// | 7 | hostile: overwrite the consumer's read index (same encoding) |
/// | 8 | hostile producer: rewrite a slot (`u16` slot, `u64` value), published or not |
/// | 9 | hostile: overwrite a wait word (`u64`; the producer's if `op & 0x10`) |
/// | 15 | both sides publish |
///
/// Until the first hostile index write (kinds 6, 7), every result is checked exactly
/// against a model ([`PodModel`]: items in a `VecDeque`, positions in `u64` that never
/// wrap, and the caching rules the engines document): same free and available counts,
/// same `Blocked` values, same items in the same order. Slot rewrites (8) only end the
/// check of item values, and wait words (9) change nothing the model sees. After an index
/// write, the property is that counts stay within the capacity, and never a panic or an
/// access outside the `Vec`. Throughout: a `Corrupt` verdict leaves the engine as it was,
/// so asking again with the peer's memory unchanged gives the same verdict (the engine
/// never adopts an index it rejected; that `Link` then stays failed is `ring/mod.rs`'s
/// part, tested in `tests/ring_hostile.rs`).
pub fn ring_pod_ops(data: &[u8]) {
    let mut input = Input(data);
    let Some(b) = input.byte() else { return };
    let cap: u32 = 16 << (b % 7);
    if b & 0x80 != 0 {
        pod_ops(input, cap, |v| {
            let b = v.to_le_bytes();
            [b[0], b[1], b[2]]
        });
    } else {
        pod_ops(input, cap, |v| v);
    }
}

fn pod_ops<T>(mut input: Input<'_>, cap: u32, make: fn(u64) -> T)
where
    T: bytemuck::Pod + PartialEq + std::fmt::Debug,
{
    let mut area = vec![T::zeroed(); cap as usize];
    let base = NonNull::new(area.as_mut_ptr()).expect("Vec pointer is non-null");
    let control = Control::default();
    let Control {
        p_index,
        p_wait,
        c_index,
        c_wait,
    } = &control;
    // SAFETY: `area` and the control words are declared before the engines, so they outlive
    // them; `base` is aligned for T (a Vec<T>) and valid for `cap` items; the slots are
    // written only through pointers from `base` (the producer engine's slices, and the
    // hostile writes below between engine calls, all in this thread), and the consumer
    // reads them by volatile copies.
    let (mut p, mut c) = unsafe {
        (
            PodProducer::new(
                crate::shm::SharedBytesMut::new(
                    base.as_ptr().cast::<u8>(),
                    cap as usize * std::mem::size_of::<T>(),
                ),
                cap,
                control.producer_words(),
                true,
            )
            .expect("a valid capacity, aligned"),
            PodConsumer::new(
                crate::shm::SharedBytes::new(
                    base.as_ptr().cast::<u8>(),
                    cap as usize * std::mem::size_of::<T>(),
                ),
                cap,
                control.consumer_words(),
                true,
            )
            .expect("a valid capacity, aligned"),
        )
    };
    let mut model = Some(PodModel::new(cap));
    let mut values_exact = true;
    let mut next = 0u64;

    for _ in 0..RING_MAX_OPS {
        let Some(op) = input.byte() else { break };
        let publish = op & 0x10 != 0;
        match op % 16 {
            0 | 10 => {
                let want = u32::from(input.u16()) % (cap + 2);
                let n = u32::from(input.byte().unwrap_or(0));
                let result = p.free(want);
                if let Some(m) = model.as_mut() {
                    assert_eq!(result, Ok(m.free(want)), "free({want})");
                }
                if let Err(corrupt) = result {
                    assert!(model.is_none(), "honest peer: {corrupt:?}");
                    assert_eq!(p.free(want), result, "a rejected index is not adopted");
                }
                if let Ok(Ok(free)) = result {
                    assert!(free <= cap, "free {free} of {cap}");
                    let mut items: Vec<T> =
                        (next..next + u64::from(free.min(n))).map(make).collect();
                    if op % 16 == 10 {
                        // In place (`PodProducer::try_reserve_slice`): the free slots up to
                        // the end of the ring, written through the engine's slice.
                        let k = p.contiguous(free.min(n));
                        assert!(k <= free.min(n), "{k} contiguous of {free}");
                        items.truncate(k as usize);
                        p.slots_mut(k).copy_from_slice(&items);
                        p.advance(k);
                    } else {
                        p.write(&items);
                    }
                    next += items.len() as u64;
                    if let Some(m) = model.as_mut() {
                        m.write += items.len() as u64;
                        m.items.extend(items);
                    }
                }
            }
            1 | 11 => {
                for _ in 0..input.byte().unwrap_or(0) % 8 + 1 {
                    let item = make(next);
                    let pushed = p.push_cached(item);
                    if pushed {
                        next += 1;
                    }
                    if let Some(m) = model.as_mut() {
                        assert_eq!(pushed, m.push_cached(item), "push_cached");
                    }
                }
            }
            2 => {}
            3 | 12 | 13 => {
                let n = u32::from(input.byte().unwrap_or(0));
                let result = c.available();
                if let Some(m) = model.as_mut() {
                    assert_eq!(result, Ok(m.available()), "available");
                }
                if let Err(corrupt) = result {
                    assert!(model.is_none(), "honest peer: {corrupt:?}");
                    assert_eq!(c.available(), result, "a rejected index is not adopted");
                }
                if let Ok(Ok(avail)) = result {
                    assert!(avail != 0 && avail <= cap, "available {avail} of {cap}");
                    let mut out = vec![T::zeroed(); avail.min(n) as usize];
                    c.read(&mut out);
                    if let Some(m) = model.as_mut() {
                        for got in out {
                            let expected = m.take();
                            if values_exact {
                                assert_eq!(Some(got), expected, "item");
                            }
                        }
                    }
                }
            }
            4 | 14 => {
                for _ in 0..input.byte().unwrap_or(0) % 8 + 1 {
                    let got = c.pop_cached();
                    if let Some(m) = model.as_mut() {
                        let expected = m.pop_cached();
                        if values_exact {
                            assert_eq!(got, expected, "pop_cached");
                        } else {
                            assert_eq!(got.is_some(), expected.is_some(), "pop_cached");
                        }
                    }
                }
            }
            5 => {}
            6 | 7 => {
                let word = if op % 16 == 6 { p_index } else { c_index };
                let v = if publish {
                    input.u32()
                } else {
                    let delta = i32::from(input.byte().unwrap_or(0) as i8);
                    word.load(Ordering::Relaxed).wrapping_add_signed(delta)
                };
                word.store(v, Ordering::Relaxed);
                model = None;
                continue;
            }
            8 => {
                let slot = usize::from(input.u16()) % cap as usize;
                let value = make(input.u64());
                // SAFETY: slot < cap, inside the Vec, aligned for T.
                unsafe { base.as_ptr().add(slot).write_volatile(value) };
                values_exact = false;
                continue;
            }
            9 => {
                let word = if publish { p_wait } else { c_wait };
                word.store(input.u64(), Ordering::Relaxed);
                continue;
            }
            _ => {
                let _ = p.publish();
                let _ = c.publish();
                if let Some(m) = model.as_mut() {
                    m.published = m.write;
                    m.read_published = m.read;
                }
                continue;
            }
        }
        let kind = op % 16;
        if kind == 2 || (publish && matches!(kind, 0 | 1 | 10 | 11)) {
            let _ = p.publish();
            if let Some(m) = model.as_mut() {
                m.published = m.write;
            }
        }
        if kind == 5 || (publish && matches!(kind, 3 | 4 | 12 | 13 | 14)) {
            let _ = c.publish();
            if let Some(m) = model.as_mut() {
                m.read_published = m.read;
            }
        }
    }
}

/// The reference for [`ring_pod_ops`]: items in order and every index in `u64` positions
/// that never wrap, with each engine's cached copy of the other's index.
struct PodModel<T> {
    cap: u64,
    /// Items written by the producer and not yet read, oldest first.
    items: VecDeque<T>,
    write: u64,
    published: u64,
    read: u64,
    read_published: u64,
    /// The read index as the producer last loaded it.
    producer_cached_read: u64,
    /// The write index as the consumer last loaded it.
    consumer_cached_write: u64,
}

impl<T> PodModel<T> {
    fn new(cap: u32) -> PodModel<T> {
        PodModel {
            cap: u64::from(cap),
            items: VecDeque::new(),
            write: 0,
            published: 0,
            read: 0,
            read_published: 0,
            producer_cached_read: 0,
            consumer_cached_write: 0,
        }
    }

    /// `free(want)`: the cached count if it is at least `want`, else a fresh one.
    fn free(&mut self, want: u32) -> Result<u32, ring::Blocked> {
        let cached = self.cap - (self.write - self.producer_cached_read);
        if cached >= u64::from(want) {
            return Ok(cached as u32);
        }
        self.producer_cached_read = self.read_published;
        match self.cap - (self.write - self.read_published) {
            0 => Err(ring::Blocked {
                seen: self.read_published as u32,
            }),
            free => Ok(free as u32),
        }
    }

    fn push_cached(&mut self, item: T) -> bool {
        if self.write - self.producer_cached_read >= self.cap {
            return false;
        }
        self.items.push_back(item);
        self.write += 1;
        true
    }

    /// `available()`: the cached count if it is not zero, else a fresh one.
    fn available(&mut self) -> Result<u32, ring::Blocked> {
        if self.consumer_cached_write != self.read {
            return Ok((self.consumer_cached_write - self.read) as u32);
        }
        self.consumer_cached_write = self.published;
        match self.published - self.read {
            0 => Err(ring::Blocked {
                seen: self.published as u32,
            }),
            avail => Ok(avail as u32),
        }
    }

    fn pop_cached(&mut self) -> Option<T> {
        if self.consumer_cached_write == self.read {
            return None;
        }
        self.take()
    }

    fn take(&mut self) -> Option<T> {
        self.read += 1;
        self.items.pop_front()
    }
}

/// The reference for [`ring_ops`]: records in order, and the ring's occupancy in `u64`
/// positions that never wrap.
struct RingModel {
    cap: u64,
    /// Bytes committed by the producer (records, headers and padding).
    write: u64,
    /// Bytes consumed.
    read: u64,
    /// Bytes consumed as last published by the consumer.
    read_published: u64,
    /// Committed, not yet published: (payload, bytes the consumer advances over it).
    committed: VecDeque<(Vec<u8>, u64)>,
    /// Published, not yet consumed.
    ready: VecDeque<(Vec<u8>, u64)>,
}

impl RingModel {
    fn new(cap: u32) -> RingModel {
        RingModel {
            cap: u64::from(cap),
            write: 0,
            read: 0,
            read_published: 0,
            committed: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// (pad, offset, span) of a record of `len` bytes, or `None` if it does not fit now.
    fn place(&self, len: usize) -> Option<(u32, u32, u32)> {
        let span = 8 + (len as u64).div_ceil(8) * 8;
        let pos = self.write % self.cap;
        let pad = if pos + span > self.cap {
            self.cap - pos
        } else {
            0
        };
        let free = self.cap - (self.write - self.read_published);
        if self.write == self.read_published {
            // Documented: a record of at most half the ring always fits an empty ring.
            assert!(pad + span <= free);
        }
        (pad + span <= free).then(|| (pad as u32, ((pos + pad) % self.cap) as u32, span as u32))
    }

    fn commit(&mut self, msg: Vec<u8>, pad: u32, span: u32) {
        let advance = u64::from(pad) + u64::from(span);
        self.write += advance;
        self.committed.push_back((msg, advance));
    }

    fn publish(&mut self) {
        self.ready.append(&mut self.committed);
    }

    fn take(&mut self) -> Option<Vec<u8>> {
        let (msg, advance) = self.ready.pop_front()?;
        self.read += advance;
        Some(msg)
    }
}

/// Reads arguments off a fuzz input; missing bytes read as 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(0)])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

/// Validates a ring control-page header taken from `data` both as a producer's header (for
/// a ring kind and memfd size also taken from `data`) and as a consumer's, and checks each
/// verdict against a reference written from `PROTOCOL.md`, section Ring.
///
/// Layout of `data`: byte 0 bit 0 = typed ring, bytes 1..5 its item size; bytes 5..13 a
/// memfd size, used as is if byte 13 bit 0 is clear, otherwise replaced by the size the
/// header's capacity implies plus the signed byte 14 (so that mutations reach the size
/// check); bytes 16..80 the header.
pub fn ring_header(data: &[u8]) {
    use crate::ring::layout::*;
    let mut b = [0u8; 16 + HEADER_LEN];
    let n = data.len().min(b.len());
    b[..n].copy_from_slice(&data[..n]);
    let u32_at = |h: &[u8], at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap());
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&b[16..]);
    let pod_unit = (b[0] & 1 == 1).then(|| u32_at(&b, 1).max(1));
    let unit = u64::from(pod_unit.unwrap_or(1));
    let cap = u32_at(&header, CAPACITY_AT);
    let memfd_len = if b[13] & 1 == 0 {
        u64::from_le_bytes(b[5..13].try_into().unwrap())
    } else {
        (u64::from(cap) * unit + CONTROL_LEN as u64).wrapping_add_signed(i64::from(b[14] as i8))
    };
    let (producer, consumer) = crate::ring::check_headers(&header, pod_unit, memfd_len);

    let common = header[..8] != [0; 8]
        && u32_at(&header, VERSION_AT) == VERSION
        && u32_at(&header, INDEX_AT_AT) == INDEX_AT as u32
        && u32_at(&header, WAIT_AT_AT) == WAIT_AT as u32;
    let producer_ok = common
        && header[..8] == PRODUCER_MAGIC
        && u32_at(&header, KIND_AT)
            == if pod_unit.is_some() {
                KIND_POD
            } else {
                KIND_BYTES
            }
        && u64::from(u32_at(&header, UNIT_AT)) == unit
        && u32_at(&header, DATA_AT_AT) == CONTROL_LEN as u32
        && cap.is_power_of_two()
        && (16..=1 << 31).contains(&cap)
        && memfd_len == u64::from(cap) * unit + CONTROL_LEN as u64;
    match producer {
        Ok((c, flags)) => {
            assert!(
                producer_ok,
                "accepted a producer header the reference rejects"
            );
            assert_eq!((c, flags), (cap, u32_at(&header, FLAGS_AT)));
        }
        Err(Error::RingMismatch { .. } | Error::PeerCorrupt { .. }) => {
            assert!(!producer_ok, "rejected a valid producer header")
        }
        Err(e) => panic!("unexpected error for a producer header: {e:?}"),
    }
    let consumer_ok = common && header[..8] == CONSUMER_MAGIC;
    match consumer {
        Ok(flags) => {
            assert!(
                consumer_ok,
                "accepted a consumer header the reference rejects"
            );
            assert_eq!(flags, u32_at(&header, FLAGS_AT));
        }
        Err(Error::RingMismatch { .. }) => {
            assert!(!consumer_ok, "rejected a valid consumer header")
        }
        Err(e) => panic!("unexpected error for a consumer header: {e:?}"),
    }
}
