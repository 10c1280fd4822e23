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
/// against the header, and the limits, in that order. This is the one implementation the transport
/// uses after `recvmsg` (pure, so that it is fuzzed on its own).
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

// ----- region pool messages (kinds 16..=18) -----

/// Pool kind: the producer announces a backing memfd (one descriptor) and its id.
pub const KIND_POOL_ANNOUNCE: u16 = 16;
/// Pool kind: the producer hands the consumer one buffer of an announced memfd.
pub const KIND_POOL_NOTICE: u16 = 17;
/// Pool kind: the consumer gives buffers back to the producer.
pub const KIND_POOL_RELEASE: u16 = 18;
/// Body length of an announcement.
pub const POOL_ANNOUNCE_LEN: usize = 16;
/// Body length of a notice.
pub const POOL_NOTICE_LEN: usize = 32;
/// Length of one entry of a release message.
pub const POOL_RELEASE_ENTRY_LEN: usize = 24;
/// Most entries in one release message (its body is at most [`MAX_PAYLOAD`] bytes).
pub const POOL_MAX_RELEASES: usize = MAX_PAYLOAD / POOL_RELEASE_ENTRY_LEN;
/// Longest pool message: a release message with [`POOL_MAX_RELEASES`] entries.
pub const POOL_MAX_MESSAGE_LEN: usize = HEADER_LEN + POOL_MAX_RELEASES * POOL_RELEASE_ENTRY_LEN;

/// One buffer of a pool, as named on the wire: which memfd, where, and which hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBufferRef {
    /// The memfd's id, as announced.
    pub memfd_id: u32,
    /// Byte offset of the buffer within the memfd.
    pub offset: u64,
    /// The generation of this hand-over: the notice's sequence number on its channel.
    pub generation: u64,
}

/// A decoded pool message. Every field is the peer's claim, checked only for framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMessage<'a> {
    /// `ANNOUNCE` (kind 16, one descriptor): memfd `memfd_id` of `len` bytes.
    Announce {
        /// Id the producer gives the memfd; notices refer to it.
        memfd_id: u32,
        /// The memfd's length (its `st_size`).
        len: u64,
    },
    /// `NOTICE` (kind 17): the buffer `buffer`, `len` bytes long, is the consumer's to read.
    Notice {
        /// Which buffer.
        buffer: PoolBufferRef,
        /// Length of the data in the buffer.
        len: u64,
    },
    /// `RELEASE` (kind 18): one or more buffers given back; decode each with
    /// [`pool_release_entry`].
    Release {
        /// The entries, [`POOL_RELEASE_ENTRY_LEN`] bytes each (at least one).
        entries: &'a [u8],
    },
}

/// Writes the fixed header of a pool message into `out[..16]`.
fn pool_header(out: &mut [u8], kind: u16, fds: u16, body_len: usize) {
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&kind.to_le_bytes());
    out[8..10].copy_from_slice(&fds.to_le_bytes());
    out[10..12].copy_from_slice(&0u16.to_le_bytes());
    out[12..16].copy_from_slice(&(body_len as u32).to_le_bytes());
}

/// Encodes an announcement (to be sent with the memfd as its one descriptor).
pub fn encode_pool_announce(memfd_id: u32, len: u64) -> [u8; HEADER_LEN + POOL_ANNOUNCE_LEN] {
    let mut out = [0u8; HEADER_LEN + POOL_ANNOUNCE_LEN];
    pool_header(&mut out, KIND_POOL_ANNOUNCE, 1, POOL_ANNOUNCE_LEN);
    out[16..20].copy_from_slice(&memfd_id.to_le_bytes());
    out[24..32].copy_from_slice(&len.to_le_bytes());
    out
}

/// Encodes a notice.
pub fn encode_pool_notice(buffer: PoolBufferRef, len: u64) -> [u8; HEADER_LEN + POOL_NOTICE_LEN] {
    let mut out = [0u8; HEADER_LEN + POOL_NOTICE_LEN];
    pool_header(&mut out, KIND_POOL_NOTICE, 0, POOL_NOTICE_LEN);
    out[16..20].copy_from_slice(&buffer.memfd_id.to_le_bytes());
    out[24..32].copy_from_slice(&buffer.offset.to_le_bytes());
    out[32..40].copy_from_slice(&len.to_le_bytes());
    out[40..48].copy_from_slice(&buffer.generation.to_le_bytes());
    out
}

/// Writes the header of a release message of `entries` entries into `out[..16]`.
pub(crate) fn encode_pool_release_header(out: &mut [u8], entries: usize) {
    pool_header(out, KIND_POOL_RELEASE, 0, entries * POOL_RELEASE_ENTRY_LEN);
}

/// Writes one release entry into `out[..24]`.
pub(crate) fn encode_pool_release_entry(out: &mut [u8], buffer: PoolBufferRef) {
    out[0..4].copy_from_slice(&buffer.memfd_id.to_le_bytes());
    out[4..8].copy_from_slice(&0u32.to_le_bytes());
    out[8..16].copy_from_slice(&buffer.offset.to_le_bytes());
    out[16..24].copy_from_slice(&buffer.generation.to_le_bytes());
}

/// Entry `i` of a release message's `entries` (as returned in [`PoolMessage::Release`]);
/// `None` past the end or if the entry's reserved word is not zero.
pub fn pool_release_entry(entries: &[u8], i: usize) -> Option<PoolBufferRef> {
    let at = i.checked_mul(POOL_RELEASE_ENTRY_LEN)?;
    let e = entries.get(at..at.checked_add(POOL_RELEASE_ENTRY_LEN)?)?;
    if e[4..8] != [0; 4] {
        return None;
    }
    Some(PoolBufferRef {
        memfd_id: le_u32(&e[0..4]),
        offset: le_u64(&e[8..16]),
        generation: le_u64(&e[16..24]),
    })
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

/// Checks the framing of a received pool message (truncation flags, the empty message,
/// header, kind, descriptor count, body length and reserved fields) and decodes it. The one
/// implementation the pool uses after `recvmsg`; pure, like [`check_received`].
///
/// `accept` lists the kinds this side may receive (a producer takes releases, a consumer
/// announcements and notices); any other kind is [`Error::Malformed`].
pub(crate) fn check_pool_received<'a>(
    r: Received<'a>,
    accept: &[u16],
    hung_up: impl FnOnce() -> bool,
) -> Result<PoolMessage<'a>> {
    let malformed = |reason| Err(Error::Malformed { reason });
    if r.ctrunc {
        return Err(Error::ControlTruncated { received: r.fds });
    }
    if r.trunc || r.msg.len() > POOL_MAX_MESSAGE_LEN {
        return Err(Error::MessageTruncated {
            max: POOL_MAX_MESSAGE_LEN,
        });
    }
    if r.msg.is_empty() {
        if r.fds != 0 {
            return malformed("descriptors on an empty message (no header)");
        }
        return if hung_up() {
            Err(Error::PeerClosed)
        } else {
            malformed("empty message")
        };
    }
    let kind = decode_prefix(r.msg)?;
    if !accept.contains(&kind) {
        return malformed(if POOL_KINDS.contains(&kind) {
            "pool message of a kind this side never receives"
        } else {
            "not a pool message"
        });
    }
    let declared_fds = usize::from(u16::from_le_bytes([r.msg[8], r.msg[9]]));
    if declared_fds != r.fds {
        return Err(Error::FdCountMismatch {
            declared: declared_fds,
            received: r.fds,
        });
    }
    if r.msg[10..12] != [0, 0] {
        return malformed("reserved flags are not zero");
    }
    let body_len = le_u32(&r.msg[12..16]) as usize;
    let body = &r.msg[HEADER_LEN..];
    if body.len() != body_len {
        return malformed("message length does not match its header");
    }
    let (expected_fds, ok_len) = match kind {
        KIND_POOL_ANNOUNCE => (1, body_len == POOL_ANNOUNCE_LEN),
        KIND_POOL_NOTICE => (0, body_len == POOL_NOTICE_LEN),
        _ => (0, body_len > 0 && body_len % POOL_RELEASE_ENTRY_LEN == 0),
    };
    if r.fds != expected_fds {
        return malformed("pool message with the wrong number of descriptors");
    }
    if !ok_len {
        return malformed("pool message body has the wrong length");
    }
    if kind != KIND_POOL_RELEASE && body[4..8] != [0; 4] {
        return malformed("reserved pool field is not zero");
    }
    Ok(match kind {
        KIND_POOL_ANNOUNCE => PoolMessage::Announce {
            memfd_id: le_u32(&body[0..4]),
            len: le_u64(&body[8..16]),
        },
        KIND_POOL_NOTICE => PoolMessage::Notice {
            buffer: PoolBufferRef {
                memfd_id: le_u32(&body[0..4]),
                offset: le_u64(&body[8..16]),
                generation: le_u64(&body[24..32]),
            },
            len: le_u64(&body[16..24]),
        },
        _ => PoolMessage::Release { entries: body },
    })
}

#[cfg(any(test, fuzzing))]
pub(crate) mod model;

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

    fn pool_received(msg: &[u8], fds: usize) -> Result<PoolMessage<'_>> {
        check_pool_received(
            Received {
                msg,
                fds,
                ctrunc: false,
                trunc: false,
            },
            &[KIND_POOL_ANNOUNCE, KIND_POOL_NOTICE, KIND_POOL_RELEASE],
            || false,
        )
    }

    #[test]
    fn pool_messages_round_trip_and_reject_garbage() {
        let a = encode_pool_announce(7, 1 << 22);
        assert_eq!(
            pool_received(&a, 1).unwrap(),
            PoolMessage::Announce {
                memfd_id: 7,
                len: 1 << 22
            }
        );
        assert!(matches!(
            pool_received(&a, 0),
            Err(Error::FdCountMismatch { .. })
        ));
        let b = PoolBufferRef {
            memfd_id: 3,
            offset: 4096,
            generation: 9,
        };
        let n = encode_pool_notice(b, 100);
        assert_eq!(
            pool_received(&n, 0).unwrap(),
            PoolMessage::Notice {
                buffer: b,
                len: 100
            }
        );
        let mut r = vec![0u8; HEADER_LEN + 2 * POOL_RELEASE_ENTRY_LEN];
        encode_pool_release_header(&mut r, 2);
        encode_pool_release_entry(&mut r[16..], b);
        encode_pool_release_entry(
            &mut r[40..],
            PoolBufferRef {
                generation: 10,
                ..b
            },
        );
        let PoolMessage::Release { entries } = pool_received(&r, 0).unwrap() else {
            panic!("not a release");
        };
        assert_eq!(pool_release_entry(entries, 0), Some(b));
        assert_eq!(pool_release_entry(entries, 1).unwrap().generation, 10);
        assert_eq!(pool_release_entry(entries, 2), None);
        for m in [&a[..], &n[..], &r[..]] {
            let fds = usize::from(m[8]);
            for cut in 0..m.len() {
                assert!(pool_received(&m[..cut], fds).is_err());
            }
            let mut long = m.to_vec();
            long.push(0);
            assert!(pool_received(&long, fds).is_err());
            let mut flags = m.to_vec();
            flags[10] = 1;
            assert!(pool_received(&flags, fds).is_err());
            let mut reserved = m.to_vec();
            reserved[20] = 1;
            assert!(pool_received(&reserved, fds).is_err() || m[6] == 18);
            // A pool message is never a regions message.
            assert!(matches!(decode(m), Err(Error::Malformed { .. })));
        }
        // An empty release and a notice with a descriptor are refused.
        let mut empty = vec![0u8; HEADER_LEN];
        encode_pool_release_header(&mut empty, 0);
        assert!(pool_received(&empty, 0).is_err());
        let mut n1 = n;
        n1[8] = 1;
        assert!(pool_received(&n1, 1).is_err());
        // Kinds a side does not accept are refused.
        assert!(check_pool_received(
            Received {
                msg: &n,
                fds: 0,
                ctrunc: false,
                trunc: false
            },
            &[KIND_POOL_RELEASE],
            || false
        )
        .is_err());
        assert!(pool_received(&message(&[], b""), 0).is_err());
    }

    #[test]
    fn pool_example_of_protocol_md_is_byte_exact() {
        let hex = |s: &str| -> Vec<u8> {
            s.split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect()
        };
        assert_eq!(
            encode_pool_announce(0, 0x40_0000).to_vec(),
            hex("53 50 49 50 01 00 10 00 01 00 00 00 10 00 00 00
                 00 00 00 00 00 00 00 00 00 00 40 00 00 00 00 00")
        );
        let b = PoolBufferRef {
            memfd_id: 0,
            offset: 0,
            generation: 1,
        };
        assert_eq!(
            encode_pool_notice(b, 0x10_0000).to_vec(),
            hex("53 50 49 50 01 00 11 00 00 00 00 00 20 00 00 00
                 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
                 00 00 10 00 00 00 00 00 01 00 00 00 00 00 00 00")
        );
        let mut r = [0u8; HEADER_LEN + POOL_RELEASE_ENTRY_LEN];
        encode_pool_release_header(&mut r, 1);
        encode_pool_release_entry(&mut r[HEADER_LEN..], b);
        assert_eq!(
            r.to_vec(),
            hex("53 50 49 50 01 00 12 00 00 00 00 00 18 00 00 00
                 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
                 01 00 00 00 00 00 00 00")
        );
    }
}
