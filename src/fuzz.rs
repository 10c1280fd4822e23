//! Entry points for fuzzers (built with `cfg(fuzzing)` by cargo-fuzz) and for replaying the
//! committed corpora on stable in `cargo test`.
//!
//! Each entry point takes arbitrary bytes and must never panic, hang, leak a descriptor or
//! read out of bounds; where a simple model of the correct answer exists, it asserts that
//! the implementation agrees with it (an assertion failure is a finding).
//!
//! Unsafe code (only in [`ring_ops`]): the ring engines run over a `Vec` and local atomics
//! that outlive them; every write to the data area goes through the one raw pointer the
//! engines were given, within `0..cap`, and nothing else references that memory.
#![allow(unsafe_code)]
#![cfg_attr(not(fuzzing), allow(unreachable_pub))] // public only to the fuzz crate

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rustix::fs::{self, MemfdFlags, OFlags, SealFlags};

use crate::error::Error;
use crate::ring::core::{self as ring, ByteConsumer, ByteProducer, Words};
use crate::seals::{Policy, Seals};
use crate::wire;

/// Decodes `data` as a wire message. If it is accepted, re-encoding its header and region
/// lengths must reproduce the input exactly, and every field must be within protocol limits.
pub fn wire_decode(data: &[u8]) {
    let Ok(h) = wire::decode(data) else { return };
    assert!(h.region_count <= wire::MAX_REGIONS);
    assert!(h.payload_len <= wire::MAX_PAYLOAD);
    let range = wire::payload_range(&h);
    assert_eq!(range.end, data.len());
    let lens: Vec<u64> = (0..h.region_count)
        .map(|i| wire::region_len(data, i))
        .collect();
    let mut buf = vec![0u8; wire::HEADER_LEN + wire::REGION_DESC_LEN * lens.len()];
    let n = wire::encode(&mut buf, lens.iter().copied(), h.payload_len).expect("re-encode");
    assert_eq!(&buf[..n], &data[..range.start]);
}

/// Decodes `data` as a handshake message. If it is accepted, re-encoding it must reproduce
/// the input exactly, and the regions decoder must reject the same bytes (a handshake
/// message is never mistaken for regions, or the other way round).
pub fn handshake_decode(data: &[u8]) {
    let Ok(m) = wire::decode_handshake(data) else {
        return;
    };
    let (buf, n) = wire::encode_handshake(&m);
    assert_eq!(&buf[..n], data);
    assert!(wire::decode(data).is_err());
}

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
        Policy::read_only_view()
    }
    .max_region_len(limit);

    let Some(fd) = make_fd(kind, seals_to_add, real) else {
        return;
    };
    let actual_seals = fs::fcntl_get_seals(&fd)
        .ok()
        .map(|s| Seals::from_bits(s.bits()));
    let result = crate::verify::check(fd.as_fd(), declared, &policy, 0);

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
            } else {
                assert!(matches!(result, Ok(s) if s == have), "{result:?}");
            }
        }
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
/// or `Corrupt`, and never panics or touches memory outside the `Vec` (ASan/Miri). The
/// engines are kept in use after a `Corrupt` (the public API stops calling them then,
/// see `Link::check_failed` in `ring/mod.rs`), which asks more of them.
pub fn ring_ops(data: &[u8]) {
    let mut input = Input(data);
    let Some(b) = input.byte() else { return };
    let cap: u32 = 16 << (b % 9);
    let max_len = ring::max_record_len(cap);

    let mut area = vec![0u64; cap as usize / 8];
    let base = NonNull::new(area.as_mut_ptr().cast::<u8>()).expect("Vec pointer is non-null");
    let (p_index, p_wait, c_index, c_wait) = (
        AtomicU32::new(0),
        AtomicU64::new(0),
        AtomicU32::new(0),
        AtomicU64::new(0),
    );
    // SAFETY: `area` and the four atomics are declared before the engines, so they outlive
    // them; `base` is 8-aligned (a Vec<u64>) and valid for `cap` bytes; the data area is
    // written only through `base` (by the producer engine and by the hostile writes below,
    // all in this thread), and the consumer reads it by volatile copies.
    let (mut p, mut c) = unsafe {
        (
            ByteProducer::new(
                base,
                cap,
                Words::new(&p_index, &p_wait, &c_index, &c_wait).expect("non-null"),
                true,
            ),
            ByteConsumer::new(
                base,
                cap,
                Words::new(&c_index, &c_wait, &p_index, &p_wait).expect("non-null"),
                true,
            ),
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
                let result = p.reserve(len);
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
                        // SAFETY: the placement holds `len` payload bytes inside the ring
                        // (asserted above), and `msg` is a separate allocation.
                        unsafe {
                            std::ptr::copy_nonoverlapping(msg.as_ptr(), p.payload_ptr(place), len)
                        };
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
                    Err(corrupt) => assert!(model.is_none(), "honest peer: {corrupt:?}"),
                }
                if op & 0x10 != 0 {
                    p.publish();
                    if let Some(m) = model.as_mut() {
                        m.publish();
                    }
                }
            }
            1 | 13..=15 | 8 => {
                let between = op % 16 == 8;
                match c.next() {
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
                    Err(corrupt) => assert!(model.is_none(), "honest peer: {corrupt:?}"),
                }
                if between {
                    model = None;
                }
                if op & 0x10 != 0 {
                    c.publish();
                    if let Some(m) = model.as_mut() {
                        m.read_published = m.read;
                    }
                }
            }
            2 => {
                p.publish();
                if let Some(m) = model.as_mut() {
                    m.publish();
                }
            }
            3 => {
                c.publish();
                if let Some(m) = model.as_mut() {
                    m.read_published = m.read;
                }
            }
            4 | 5 => {
                let word = if op % 16 == 4 { &p_index } else { &c_index };
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
                let word = if op & 0x10 != 0 { &p_wait } else { &c_wait };
                word.store(input.u64(), Ordering::Relaxed);
                model = None;
            }
        }
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

/// 0: sealable memfd, 1: memfd without sealing, 2: pipe, 3: eventfd, 4: O_PATH memfd,
/// 5: sealable memfd with exec bits (F_SEAL_EXEC then implies write seals), 6: a sealable
/// memfd reopened write-only (cannot be mapped for reading).
fn make_fd(kind: u8, seals: u32, len: u64) -> Option<OwnedFd> {
    let memfd = |flags: MemfdFlags| -> Option<OwnedFd> {
        let fd = fs::memfd_create("fuzz", MemfdFlags::CLOEXEC | flags).ok()?;
        fs::ftruncate(&fd, len).ok()?;
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

#[cfg(test)]
mod replay {
    //! Feeds every committed corpus and regression file through its entry point.

    fn replay(target: &str, entry: fn(&[u8])) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                entry(&std::fs::read(&path).unwrap());
                n += 1;
            }
        }
        assert!(n > 0, "no corpus committed for {target}");
    }

    #[test]
    fn wire_decode_corpus() {
        replay("wire_decode", super::wire_decode);
    }

    #[test]
    fn handshake_decode_corpus() {
        replay("handshake_decode", super::handshake_decode);
    }

    #[test]
    fn seal_policy_corpus() {
        replay("seal_policy", super::seal_policy);
    }

    #[test]
    fn ring_ops_corpus() {
        replay("ring_ops", super::ring_ops);
    }

    #[test]
    fn ring_header_corpus() {
        replay("ring_header", super::ring_header);
    }
}
