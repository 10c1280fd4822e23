//! The wire format, version 1: pure encoding and decoding, no I/O.
//!
//! Every message is one `SOCK_SEQPACKET` datagram:
//!
//! ```text
//! offset  size  field
//! 0       4     magic        b"SPIP"
//! 4       2     version      u16 LE, = 1
//! 6       2     kind         u16 LE, 1 = regions
//! 8       2     region_count u16 LE, 0..=253, = number of SCM_RIGHTS descriptors
//! 10      2     flags        u16 LE, must be 0
//! 12      4     payload_len  u32 LE, 0..=65536
//! 16      8*n   region lengths, u64 LE each, in descriptor order
//! 16+8n   p     payload bytes
//! ```
//!
//! The datagram's length must be exactly `16 + 8 * region_count + payload_len`.
//! See `PROTOCOL.md` for the full rules.

use crate::error::{Error, Result};
use crate::seals::Policy;

/// The four magic bytes that open every message.
pub const MAGIC: [u8; 4] = *b"SPIP";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Message kind: a set of regions plus an application payload.
pub const KIND_REGIONS: u16 = 1;
/// Message kinds reserved for the handshake (see [`HandshakeMessage`]).
pub const HANDSHAKE_KINDS: std::ops::RangeInclusive<u16> = 2..=15;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 16;
/// Size of one region descriptor.
pub const REGION_DESC_LEN: usize = 8;
/// Most regions (descriptors) in one message: the kernel's `SCM_MAX_FD`.
pub const MAX_REGIONS: usize = 253;
/// Largest application payload in one message.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest valid message.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + REGION_DESC_LEN * MAX_REGIONS + MAX_PAYLOAD;

/// A decoded header: what the peer claims, not yet checked against descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Number of regions (and descriptors) in the message.
    pub region_count: usize,
    /// Length of the application payload.
    pub payload_len: usize,
}

/// Writes the header and region descriptors for `region_lens` into `out`, returning the
/// number of bytes written. `out` must hold `HEADER_LEN + 8 * region_lens.len()` bytes.
pub(crate) fn encode(
    out: &mut [u8],
    region_lens: impl ExactSizeIterator<Item = u64>,
    payload_len: usize,
) -> Result<usize> {
    let n = region_lens.len();
    if n > MAX_REGIONS {
        return Err(Error::LimitExceeded {
            what: "regions",
            got: n,
            max: MAX_REGIONS,
        });
    }
    if payload_len > MAX_PAYLOAD {
        return Err(Error::LimitExceeded {
            what: "payload",
            got: payload_len,
            max: MAX_PAYLOAD,
        });
    }
    let total = HEADER_LEN + REGION_DESC_LEN * n;
    let out = &mut out[..total];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&KIND_REGIONS.to_le_bytes());
    out[8..10].copy_from_slice(&(n as u16).to_le_bytes());
    out[10..12].copy_from_slice(&0u16.to_le_bytes());
    out[12..16].copy_from_slice(&(payload_len as u32).to_le_bytes());
    for (i, len) in region_lens.enumerate() {
        let at = HEADER_LEN + REGION_DESC_LEN * i;
        out[at..at + REGION_DESC_LEN].copy_from_slice(&len.to_le_bytes());
    }
    Ok(total)
}

/// Checks the length, magic and version every message starts with; returns its kind.
fn decode_prefix(msg: &[u8]) -> Result<u16> {
    if msg.len() < HEADER_LEN {
        return Err(Error::Malformed {
            reason: "message shorter than the 16-byte header",
        });
    }
    if msg[0..4] != MAGIC {
        return Err(Error::Malformed {
            reason: "bad magic (not a sealpipe message)",
        });
    }
    let version = u16::from_le_bytes([msg[4], msg[5]]);
    if version != VERSION {
        return Err(Error::UnsupportedVersion {
            got: version,
            supported: VERSION,
        });
    }
    Ok(u16::from_le_bytes([msg[6], msg[7]]))
}

/// Decodes and validates a complete message. Returns the header; region lengths are read
/// with [`region_len`] and the payload lies at [`payload_range`].
pub fn decode(msg: &[u8]) -> Result<Header> {
    let kind = decode_prefix(msg)?;
    if kind != KIND_REGIONS {
        return Err(Error::Malformed {
            reason: if HANDSHAKE_KINDS.contains(&kind) {
                "handshake message after the handshake"
            } else {
                "unknown message kind"
            },
        });
    }
    let region_count = usize::from(u16::from_le_bytes([msg[8], msg[9]]));
    if region_count > MAX_REGIONS {
        return Err(Error::Malformed {
            reason: "region count over 253",
        });
    }
    if u16::from_le_bytes([msg[10], msg[11]]) != 0 {
        return Err(Error::Malformed {
            reason: "reserved flags are not zero",
        });
    }
    let payload_len = u32::from_le_bytes([msg[12], msg[13], msg[14], msg[15]]) as usize;
    if payload_len > MAX_PAYLOAD {
        return Err(Error::Malformed {
            reason: "payload length over 65536",
        });
    }
    if msg.len() != HEADER_LEN + REGION_DESC_LEN * region_count + payload_len {
        return Err(Error::Malformed {
            reason: "message length does not match its header",
        });
    }
    Ok(Header {
        region_count,
        payload_len,
    })
}

/// Declared length of region `i` of a message that [`decode`] accepted.
pub fn region_len(msg: &[u8], i: usize) -> u64 {
    let at = HEADER_LEN + REGION_DESC_LEN * i;
    let mut b = [0u8; 8];
    b.copy_from_slice(&msg[at..at + REGION_DESC_LEN]);
    u64::from_le_bytes(b)
}

/// Byte range of the payload of a message that [`decode`] accepted.
pub fn payload_range(h: &Header) -> std::ops::Range<usize> {
    let start = HEADER_LEN + REGION_DESC_LEN * h.region_count;
    start..start + h.payload_len
}

/// What one `recvmsg` of a regions message reported, as plain values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received<'a> {
    /// The bytes received, at most the receive buffer (one byte longer than
    /// [`MAX_MESSAGE_LEN`], so that an over-long message shows).
    pub(crate) msg: &'a [u8],
    /// Descriptors that arrived with it (already owned by the caller).
    pub(crate) fds: usize,
    /// The kernel set `MSG_CTRUNC`: descriptors were dropped for want of control space.
    pub(crate) ctrunc: bool,
    /// The kernel set `MSG_TRUNC`: the datagram was longer than the buffer.
    pub(crate) trunc: bool,
}

/// Checks the framing of a received regions message against the protocol and `policy`:
/// truncation flags, the empty message, the header, descriptor count against the header,
/// and the policy's limits, in that order. This is the one implementation the transport
/// uses after `recvmsg` (pure, so that it is fuzzed on its own).
///
/// `hung_up` is asked only for an empty message without descriptors, to tell the peer's
/// end of stream ([`Error::PeerClosed`]) from an empty datagram.
///
/// On success, `fds == region_count <= policy.regions_limit()`, `payload_len <=
/// policy.payload_limit()`, and the message is exactly as long as its header says.
pub(crate) fn check_received(
    r: Received<'_>,
    policy: &Policy,
    hung_up: impl FnOnce() -> bool,
) -> Result<Header> {
    if r.ctrunc {
        return Err(Error::ControlTruncated { received: r.fds });
    }
    if r.trunc || r.msg.len() > MAX_MESSAGE_LEN {
        return Err(Error::MessageTruncated {
            max: MAX_MESSAGE_LEN,
        });
    }
    if r.msg.is_empty() {
        if r.fds != 0 {
            return Err(Error::Malformed {
                reason: "descriptors on an empty message (no header)",
            });
        }
        return Err(if hung_up() {
            Error::PeerClosed
        } else {
            Error::Malformed {
                reason: "empty message",
            }
        });
    }
    let header = decode(r.msg)?;
    if header.region_count != r.fds {
        return Err(Error::FdCountMismatch {
            declared: header.region_count,
            received: r.fds,
        });
    }
    if r.fds > policy.regions_limit() {
        return Err(Error::PolicyLimit {
            what: "regions",
            got: r.fds as u64,
            max: policy.regions_limit() as u64,
        });
    }
    if header.payload_len > policy.payload_limit() {
        return Err(Error::PolicyLimit {
            what: "payload",
            got: header.payload_len as u64,
            max: policy.payload_limit() as u64,
        });
    }
    Ok(header)
}

// ----- handshake messages (kinds 2..=15) -----

/// Handshake kind: the connecting side's opening message.
pub const KIND_HELLO: u16 = 2;
/// Handshake kind: the accepting side's answer, with its nonce and proof.
pub const KIND_CHALLENGE: u16 = 3;
/// Handshake kind: the connecting side's proof.
pub const KIND_PROOF: u16 = 4;
/// Handshake kind: the accepting side accepts the connection.
pub const KIND_ACCEPT: u16 = 5;
/// Handshake kind: either side refuses the connection, with a reason code.
pub const KIND_REJECT: u16 = 6;
/// Length of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a handshake proof (a keyed BLAKE3 hash).
pub const PROOF_LEN: usize = 32;
/// Longest handshake message on the wire (a challenge).
pub const MAX_HANDSHAKE_LEN: usize = HEADER_LEN + 4 + NONCE_LEN + PROOF_LEN;

/// One handshake message. Every handshake message has the standard header with
/// `region_count = 0`, `flags = 0` and carries no descriptors; the body layouts are in
/// `PROTOCOL.md` (`## Handshake`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeMessage {
    /// `HELLO` (kind 2), connecting side: its feature bits and a fresh nonce.
    Hello {
        /// Feature bits (see `PROTOCOL.md`); unknown bits are ignored by the receiver.
        features: u32,
        /// 32 fresh random bytes.
        nonce: [u8; NONCE_LEN],
    },
    /// `CHALLENGE` (kind 3), accepting side: its feature bits, a fresh nonce, and its proof
    /// of the shared secret over both nonces (all zero when no secret is configured).
    Challenge {
        /// Feature bits.
        features: u32,
        /// 32 fresh random bytes.
        nonce: [u8; NONCE_LEN],
        /// The accepting side's proof.
        proof: [u8; PROOF_LEN],
    },
    /// `PROOF` (kind 4), connecting side: its proof (all zero when no secret is configured).
    Proof {
        /// The connecting side's proof.
        proof: [u8; PROOF_LEN],
    },
    /// `ACCEPT` (kind 5), accepting side: the handshake succeeded.
    Accept,
    /// `REJECT` (kind 6), either side: the handshake failed; the sender closes next.
    Reject {
        /// Why (see [`crate::RefusalReason`]).
        reason: u16,
    },
}

/// Encodes a handshake message; returns the buffer and the length used.
pub fn encode_handshake(msg: &HandshakeMessage) -> ([u8; MAX_HANDSHAKE_LEN], usize) {
    let mut out = [0u8; MAX_HANDSHAKE_LEN];
    let (kind, body_len) = {
        let body = &mut out[HEADER_LEN..];
        match msg {
            HandshakeMessage::Hello { features, nonce } => {
                body[0..4].copy_from_slice(&features.to_le_bytes());
                body[4..4 + NONCE_LEN].copy_from_slice(nonce);
                (KIND_HELLO, 4 + NONCE_LEN)
            }
            HandshakeMessage::Challenge {
                features,
                nonce,
                proof,
            } => {
                body[0..4].copy_from_slice(&features.to_le_bytes());
                body[4..4 + NONCE_LEN].copy_from_slice(nonce);
                body[4 + NONCE_LEN..4 + NONCE_LEN + PROOF_LEN].copy_from_slice(proof);
                (KIND_CHALLENGE, 4 + NONCE_LEN + PROOF_LEN)
            }
            HandshakeMessage::Proof { proof } => {
                body[..PROOF_LEN].copy_from_slice(proof);
                (KIND_PROOF, PROOF_LEN)
            }
            HandshakeMessage::Accept => (KIND_ACCEPT, 0),
            HandshakeMessage::Reject { reason } => {
                body[0..2].copy_from_slice(&reason.to_le_bytes());
                (KIND_REJECT, 2)
            }
        }
    };
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&kind.to_le_bytes());
    // region_count and flags stay zero.
    out[12..16].copy_from_slice(&(body_len as u32).to_le_bytes());
    (out, HEADER_LEN + body_len)
}

/// Decodes and validates one handshake message (a complete datagram).
///
/// # Errors
/// [`Error::UnsupportedVersion`] for another protocol version; [`Error::Malformed`] for
/// anything else that is not exactly one of the handshake messages.
pub fn decode_handshake(msg: &[u8]) -> Result<HandshakeMessage> {
    let malformed = |reason| Err(Error::Malformed { reason });
    let kind = decode_prefix(msg)?;
    if msg[8..12] != [0, 0, 0, 0] {
        return malformed("handshake message with regions or flags");
    }
    let body_len = u32::from_le_bytes([msg[12], msg[13], msg[14], msg[15]]) as usize;
    let body = &msg[HEADER_LEN..];
    if body.len() != body_len {
        return malformed("message length does not match its header");
    }
    let expected = match kind {
        KIND_HELLO => 4 + NONCE_LEN,
        KIND_CHALLENGE => 4 + NONCE_LEN + PROOF_LEN,
        KIND_PROOF => PROOF_LEN,
        KIND_ACCEPT => 0,
        KIND_REJECT => 2,
        KIND_REGIONS => return malformed("regions before the handshake completed"),
        _ => return malformed("unknown handshake message kind"),
    };
    if body_len != expected {
        return malformed("handshake message body has the wrong length");
    }
    let arr32 = |at: usize| {
        let mut a = [0u8; 32];
        a.copy_from_slice(&body[at..at + 32]);
        a
    };
    let features = || u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
    Ok(match kind {
        KIND_HELLO => HandshakeMessage::Hello {
            features: features(),
            nonce: arr32(4),
        },
        KIND_CHALLENGE => HandshakeMessage::Challenge {
            features: features(),
            nonce: arr32(4),
            proof: arr32(4 + NONCE_LEN),
        },
        KIND_PROOF => HandshakeMessage::Proof { proof: arr32(0) },
        KIND_ACCEPT => HandshakeMessage::Accept,
        _ => HandshakeMessage::Reject {
            reason: u16::from_le_bytes([body[0], body[1]]),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(lens: &[u64], payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + REGION_DESC_LEN * lens.len()];
        let n = encode(&mut buf, lens.iter().copied(), payload.len()).unwrap();
        buf.truncate(n);
        buf.extend_from_slice(payload);
        buf
    }

    #[test]
    fn round_trip() {
        let msg = message(&[4096, 1 << 40], b"hello");
        let h = decode(&msg).unwrap();
        assert_eq!(h.region_count, 2);
        assert_eq!(region_len(&msg, 0), 4096);
        assert_eq!(region_len(&msg, 1), 1 << 40);
        assert_eq!(&msg[payload_range(&h)], b"hello");
    }

    #[test]
    fn layout_is_little_endian_and_fixed() {
        let msg = message(&[0x0102], b"");
        assert_eq!(
            msg,
            [b'S', b'P', b'I', b'P', 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn rejects_every_malformation() {
        let good = message(&[1], b"x");
        assert!(matches!(decode(&good[..15]), Err(Error::Malformed { .. })));
        let mut m = good.clone();
        m[0] = b'X';
        assert!(matches!(decode(&m), Err(Error::Malformed { .. })));
        let mut m = good.clone();
        m[4] = 2;
        assert!(matches!(
            decode(&m),
            Err(Error::UnsupportedVersion {
                got: 2,
                supported: 1
            })
        ));
        let mut m = good.clone();
        m[6] = 9;
        assert!(matches!(decode(&m), Err(Error::Malformed { .. })));
        let mut m = good.clone();
        m[10] = 1;
        assert!(matches!(decode(&m), Err(Error::Malformed { .. })));
        let mut m = good.clone();
        m[8] = 254;
        assert!(matches!(decode(&m), Err(Error::Malformed { .. })));
        let mut m = good.clone();
        m.push(0);
        assert!(matches!(decode(&m), Err(Error::Malformed { .. })));
        let mut m = good.clone();
        m[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&m), Err(Error::Malformed { .. })));
    }

    #[test]
    fn encode_enforces_limits() {
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        assert!(matches!(
            encode(&mut buf, std::iter::repeat_n(1, 254), 0),
            Err(Error::LimitExceeded {
                what: "regions",
                ..
            })
        ));
        assert!(matches!(
            encode(&mut buf, std::iter::empty(), MAX_PAYLOAD + 1),
            Err(Error::LimitExceeded {
                what: "payload",
                ..
            })
        ));
    }

    #[test]
    fn handshake_messages_round_trip_and_reject_garbage() {
        let all = [
            HandshakeMessage::Hello {
                features: 1,
                nonce: [7; 32],
            },
            HandshakeMessage::Challenge {
                features: 0x8000_0001,
                nonce: [8; 32],
                proof: [9; 32],
            },
            HandshakeMessage::Proof { proof: [10; 32] },
            HandshakeMessage::Accept,
            HandshakeMessage::Reject { reason: 4 },
        ];
        for m in all {
            let (buf, n) = encode_handshake(&m);
            assert_eq!(decode_handshake(&buf[..n]).unwrap(), m);
            // Every truncation and every extension is rejected.
            for cut in 0..n {
                assert!(decode_handshake(&buf[..cut]).is_err());
            }
            let mut long = buf[..n].to_vec();
            long.push(0);
            assert!(decode_handshake(&long).is_err());
            // A handshake message is never a regions message, and vice versa.
            assert!(matches!(decode(&buf[..n]), Err(Error::Malformed { .. })));
            let mut m2 = buf;
            m2[8] = 1;
            assert!(decode_handshake(&m2[..n]).is_err());
        }
        let (buf, n) = encode_handshake(&HandshakeMessage::Accept);
        assert_eq!(
            &buf[..n],
            b"SPIP\x01\x00\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00"
        );
        assert!(decode_handshake(&message(&[], b"")).is_err());
        let mut v2 = buf;
        v2[4] = 2;
        assert!(matches!(
            decode_handshake(&v2[..n]),
            Err(Error::UnsupportedVersion { got: 2, .. })
        ));
    }
}
