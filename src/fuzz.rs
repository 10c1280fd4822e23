//! Entry points for fuzzers (built with `cfg(fuzzing)` by cargo-fuzz) and for replaying the
//! committed corpora on stable in `cargo test`.
//!
//! Each entry point takes arbitrary bytes and must never panic, hang, leak a descriptor or
//! read out of bounds; where a simple model of the correct answer exists, it asserts that
//! the implementation agrees with it (an assertion failure is a finding).
//!
//! Unsafe code (only in [`ring_ops`] and [`ring_pod_ops`]): the ring engines run over a `Vec` and local atomics
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
use crate::ring::core::{
    self as ring, ByteConsumer, ByteProducer, PodConsumer, PodProducer, Words,
};
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

/// Checks the framing of one received message (`wire::check_received`, what the transport
/// does after `recvmsg`) against a reference model written from `PROTOCOL.md`.
///
/// Bytes 0..8 describe what the kernel reported and the receiver's policy; the rest is the
/// datagram:
///
/// | byte | meaning |
/// |------|---------|
/// | 0 | bit 0 `MSG_CTRUNC`, bit 1 `MSG_TRUNC`, bit 2 the peer hung up, bit 3 resize the datagram to byte 5..8 |
/// | 1 | descriptors received (0..=255; the kernel never sends more than 253) |
/// | 2 | the policy's region limit (`max_regions`, clamped to 253) |
/// | 3..5 | the policy's payload limit, `u16` × 2 (clamped to 64 KiB) |
/// | 5..8 | with bit 3: the datagram's length (`u24` mod `MAX_MESSAGE_LEN + 2`), zero-padded or cut |
///
/// Properties: never panics; the result is exactly the model's (same variant, same fields);
/// an accepted message has as many descriptors as its header declares, within the policy,
/// and is exactly as long as its header says; the hang-up probe (a syscall in the
/// transport) is consulted only for an empty message without descriptors.
pub fn recv_framing(data: &[u8]) {
    let mut b = [0u8; 8];
    let n = data.len().min(b.len());
    b[..n].copy_from_slice(&data[..n]);
    let mut msg = data[n..].to_vec();
    let (ctrunc, trunc, hung_up) = (b[0] & 1 != 0, b[0] & 2 != 0, b[0] & 4 != 0);
    if b[0] & 8 != 0 {
        let len = u32::from_le_bytes([b[5], b[6], b[7], 0]) as usize % (wire::MAX_MESSAGE_LEN + 2);
        msg.resize(len, 0);
    }
    let fds = usize::from(b[1]);
    let policy = Policy::immutable()
        .max_regions(usize::from(b[2]))
        .max_payload(usize::from(u16::from_le_bytes([b[3], b[4]])) * 2);

    let mut asked = false;
    let received = wire::Received {
        msg: &msg,
        fds,
        ctrunc,
        trunc,
    };
    let result = wire::check_received(received, &policy, || {
        asked = true;
        hung_up
    });
    let expected = framing_model(&msg, fds, ctrunc, trunc, hung_up, &policy);
    assert_eq!(
        format!("{result:?}"),
        format!("{expected:?}"),
        "framing verdict for {fds} fds, {} bytes",
        msg.len()
    );
    assert_eq!(
        asked,
        !ctrunc && !trunc && msg.is_empty() && fds == 0,
        "hang-up probe"
    );
    if let Ok(h) = result {
        assert!(h.region_count == fds && fds <= policy.regions_limit());
        assert!(h.payload_len <= policy.payload_limit() && h.payload_len <= wire::MAX_PAYLOAD);
        assert_eq!(
            msg.len(),
            wire::HEADER_LEN + wire::REGION_DESC_LEN * fds + h.payload_len
        );
        assert_eq!(wire::payload_range(&h).end, msg.len());
    }
}

/// The reference for [`recv_framing`]: the receive rules of `PROTOCOL.md`, in its order,
/// reading the header fields at their documented offsets.
fn framing_model(
    msg: &[u8],
    fds: usize,
    ctrunc: bool,
    trunc: bool,
    hung_up: bool,
    policy: &Policy,
) -> Result<wire::Header, Error> {
    let malformed = |reason| Err(Error::Malformed { reason });
    if ctrunc {
        return Err(Error::ControlTruncated { received: fds });
    }
    if trunc || msg.len() > 16 + 8 * 253 + 65536 {
        return Err(Error::MessageTruncated {
            max: wire::MAX_MESSAGE_LEN,
        });
    }
    match (msg.len(), fds, hung_up) {
        (0, 0, true) => return Err(Error::PeerClosed),
        (0, 0, false) => return malformed("empty message"),
        (0, _, _) => return malformed("descriptors on an empty message (no header)"),
        (1..16, _, _) => return malformed("message shorter than the 16-byte header"),
        _ => {}
    }
    let field = |at: usize, len: usize| {
        msg[at..at + len]
            .iter()
            .rev()
            .fold(0usize, |v, &byte| v << 8 | usize::from(byte))
    };
    if &msg[..4] != b"SPIP" {
        return malformed("bad magic (not a sealpipe message)");
    }
    if field(4, 2) != 1 {
        return Err(Error::UnsupportedVersion {
            got: field(4, 2) as u16,
            supported: 1,
        });
    }
    match field(6, 2) {
        1 => {}
        2..=15 => return malformed("handshake message after the handshake"),
        16..=18 => return malformed("pool message on a regions channel"),
        _ => return malformed("unknown message kind"),
    }
    let (count, payload) = (field(8, 2), field(12, 4));
    if count > 253 {
        return malformed("region count over 253");
    }
    if field(10, 2) != 0 {
        return malformed("reserved flags are not zero");
    }
    if payload > 65536 {
        return malformed("payload length over 65536");
    }
    if msg.len() != 16 + 8 * count + payload {
        return malformed("message length does not match its header");
    }
    if count != fds {
        return Err(Error::FdCountMismatch {
            declared: count,
            received: fds,
        });
    }
    if fds > policy.regions_limit() {
        return Err(Error::PolicyLimit {
            what: "regions",
            got: fds as u64,
            max: policy.regions_limit() as u64,
        });
    }
    if payload > policy.payload_limit() {
        return Err(Error::PolicyLimit {
            what: "payload",
            got: payload as u64,
            max: policy.payload_limit() as u64,
        });
    }
    Ok(wire::Header {
        region_count: count,
        payload_len: payload,
    })
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
        Policy::producer_writable()
    }
    .max_region_len(limit);

    let commit = b[1] & 0x40 != 0;
    let Some(fd) = make_fd(kind, seals_to_add, real, commit) else {
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
            } else if !commit {
                assert!(
                    matches!(result, Err(Error::Uncommitted { committed: 0, .. })),
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
/// part, tested in `tests/ring.rs`).
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
    let (p_index, p_wait, c_index, c_wait) = (
        AtomicU32::new(0),
        AtomicU64::new(0),
        AtomicU32::new(0),
        AtomicU64::new(0),
    );
    // SAFETY: `area` and the four atomics are declared before the engines, so they outlive
    // them; `base` is aligned for T (a Vec<T>) and valid for `cap` items; the slots are
    // written only through `base` (by the producer engine and the hostile writes below, all
    // in this thread), and the consumer reads them by volatile copies.
    let (mut p, mut c) = unsafe {
        (
            PodProducer::new(
                base,
                cap,
                Words::new(&p_index, &p_wait, &c_index, &c_wait).expect("non-null"),
                true,
            ),
            PodConsumer::new(
                base,
                cap,
                Words::new(&c_index, &c_wait, &p_index, &p_wait).expect("non-null"),
                true,
            ),
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
                        // the end of the ring, written through the engine's pointer.
                        let (slots, k) = p.contiguous(free.min(n));
                        assert!(k <= free.min(n), "{k} contiguous of {free}");
                        items.truncate(k as usize);
                        for (i, item) in items.iter().enumerate() {
                            // SAFETY: slot i < k lies inside the free run `contiguous`
                            // returned, in `area`.
                            unsafe { slots.add(i).write(*item) };
                        }
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
                let word = if op % 16 == 6 { &p_index } else { &c_index };
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
                let word = if publish { &p_wait } else { &c_wait };
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

/// 0: sealable memfd, 1: memfd without sealing, 2: pipe, 3: eventfd, 4: O_PATH memfd,
/// 5: sealable memfd with exec bits (F_SEAL_EXEC then implies write seals), 6: a sealable
/// memfd reopened write-only (cannot be mapped for reading).
fn make_fd(kind: u8, seals: u32, len: u64, commit: bool) -> Option<OwnedFd> {
    let memfd = |flags: MemfdFlags| -> Option<OwnedFd> {
        let fd = fs::memfd_create("fuzz", MemfdFlags::CLOEXEC | flags).ok()?;
        fs::ftruncate(&fd, len).ok()?;
        if commit && len > 0 {
            // Allocated like a Region; without it, the memfd is sparse.
            fs::fallocate(&fd, fs::FallocateFlags::empty(), 0, len).ok()?;
        }
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

/// Checks the framing of a pool message: byte 0 chooses the descriptors that "arrived"
/// (bits 0-1: 0..=3), the kernel flags (bit 2 `MSG_CTRUNC`, bit 3 `MSG_TRUNC`) and which side
/// receives (bit 4: the producer, which accepts only releases); the rest is the datagram. An
/// accepted message must re-encode to exactly the input, with the descriptor count its kind
/// requires and every release entry decodable.
pub fn pool_framing(data: &[u8]) {
    let Some((&ctl, msg)) = data.split_first() else {
        return;
    };
    let fds = usize::from(ctl & 3);
    let producer = ctl & 16 != 0;
    let accept: &[u16] = if producer {
        &[wire::KIND_POOL_RELEASE]
    } else {
        &[wire::KIND_POOL_ANNOUNCE, wire::KIND_POOL_NOTICE]
    };
    let r = wire::Received {
        msg,
        fds,
        ctrunc: ctl & 4 != 0,
        trunc: ctl & 8 != 0,
    };
    let Ok(m) = wire::check_pool_received(r, accept, || false) else {
        return;
    };
    assert!(ctl & 12 == 0, "accepted a truncated message");
    match m {
        wire::PoolMessage::Announce { memfd_id, len } => {
            assert!(!producer && fds == 1);
            assert_eq!(wire::encode_pool_announce(memfd_id, len)[..], msg[..]);
        }
        wire::PoolMessage::Notice { buffer, len } => {
            assert!(!producer && fds == 0);
            assert_eq!(wire::encode_pool_notice(buffer, len)[..], msg[..]);
        }
        wire::PoolMessage::Release { entries } => {
            assert!(producer && fds == 0);
            let n = entries.len() / wire::POOL_RELEASE_ENTRY_LEN;
            assert!((1..=wire::POOL_MAX_RELEASES).contains(&n));
            assert_eq!(n * wire::POOL_RELEASE_ENTRY_LEN, entries.len());
            let mut out = vec![0u8; wire::HEADER_LEN + entries.len()];
            wire::encode_pool_release_header(&mut out, n);
            for i in 0..n {
                // A reserved word that is not zero shows as `None` (the producer reports it).
                if let Some(b) = wire::pool_release_entry(entries, i) {
                    let at = wire::HEADER_LEN + i * wire::POOL_RELEASE_ENTRY_LEN;
                    wire::encode_pool_release_entry(&mut out[at..], b);
                } else {
                    return;
                }
            }
            assert_eq!(out[..], msg[..]);
        }
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
    fn recv_framing_corpus() {
        replay("recv_framing", super::recv_framing);
    }

    #[test]
    fn ring_pod_ops_corpus() {
        replay("ring_pod_ops", super::ring_pod_ops);
    }

    #[test]
    fn ring_ops_corpus() {
        replay("ring_ops", super::ring_ops);
    }

    #[test]
    fn pool_framing_corpus() {
        replay("pool_framing", super::pool_framing);
    }

    #[test]
    fn ring_header_corpus() {
        replay("ring_header", super::ring_header);
    }
}
