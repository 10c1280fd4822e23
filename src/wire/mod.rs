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
//!
//! **Not part of sealpipe's public API.** This module is hidden from the documentation and
//! exempt from semver: it may change in any release. It is public only so that this
//! crate's own integration tests can build hostile messages byte by byte. Implementers in
//! other languages: `PROTOCOL.md` is the reference, not this module.

use crate::error::{Error, Result};

mod handshake;
mod pool;

// The module is one namespace for the tests and fuzz targets that use it.
pub use handshake::*;
pub use pool::*;

/// The four magic bytes that open every message.
pub const MAGIC: [u8; 4] = *b"SPIP";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Message kind: a set of regions plus an application payload.
pub const KIND_REGIONS: u16 = 1;
/// Message kinds reserved for the handshake (see [`HandshakeMessage`]).
pub const HANDSHAKE_KINDS: std::ops::RangeInclusive<u16> = 2..=15;
/// Message kinds of a region pool (see [`PoolMessage`]).
pub const POOL_KINDS: std::ops::RangeInclusive<u16> = 16..=18;
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
            } else if POOL_KINDS.contains(&kind) {
                "pool message on a regions channel"
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

/// The receiver's limits on one message (from its `Policy`), at most the protocol's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most descriptors a message may carry.
    pub(crate) regions: usize,
    /// Most payload bytes a message may carry.
    pub(crate) payload: usize,
}

/// Checks the framing of a received regions message against the protocol and the
/// receiver's `limits`: truncation flags, the empty message, the header, descriptor count
/// against the header, and the limits, in that order. This is the one implementation the
/// transport uses after `recvmsg` (pure, so that it is fuzzed on its own).
///
/// `hung_up` is asked only for an empty message without descriptors, to tell the peer's
/// end of stream ([`Error::PeerClosed`]) from an empty datagram.
///
/// On success, `fds == region_count <= limits.regions`, `payload_len <= limits.payload`,
/// and the message is exactly as long as its header says.
pub(crate) fn check_received(
    r: Received<'_>,
    limits: Limits,
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
    if r.fds > limits.regions {
        return Err(Error::PolicyLimit {
            what: "regions",
            got: r.fds as u64,
            max: limits.regions as u64,
        });
    }
    if header.payload_len > limits.payload {
        return Err(Error::PolicyLimit {
            what: "payload",
            got: header.payload_len as u64,
            max: limits.payload as u64,
        });
    }
    Ok(header)
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

#[cfg(any(test, fuzzing))]
pub(crate) mod model;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn message(lens: &[u64], payload: &[u8]) -> Vec<u8> {
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
}
