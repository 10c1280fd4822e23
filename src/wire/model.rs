//! Fuzz entry points for the wire format, with the reference model of the receive rules of
//! `PROTOCOL.md` (compiled for tests and fuzzing only).
//!
//! Each entry point takes arbitrary bytes and must never panic, hang, leak a descriptor or
//! read out of bounds; where a simple model of the correct answer exists, it asserts that
//! the implementation agrees with it (an assertion failure is a finding). The fuzz targets
//! reach these through `crate::fuzz`, whose tests also replay the committed corpora.
#![cfg_attr(not(fuzzing), allow(unreachable_pub))] // public only to the fuzz crate, through `crate::fuzz`

use crate::error::Error;
use crate::policy::Policy;
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
    let result = wire::check_received(received, policy.wire_limits(), || {
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
