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

/// The four magic bytes that open every message.
pub const MAGIC: [u8; 4] = *b"SPIP";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Message kind: a set of regions plus an application payload.
pub const KIND_REGIONS: u16 = 1;
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

/// Decodes and validates a complete message. Returns the header; region lengths are read
/// with [`region_len`] and the payload lies at [`payload_range`].
pub fn decode(msg: &[u8]) -> Result<Header> {
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
    let kind = u16::from_le_bytes([msg[6], msg[7]]);
    if kind != KIND_REGIONS {
        return Err(Error::Malformed {
            reason: "unknown message kind",
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
            encode(&mut buf, std::iter::repeat(1).take(254), 0),
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
