//! Region pool messages (kinds 16..=18).

use super::{
    decode_prefix, le_u32, le_u64, Received, HEADER_LEN, MAGIC, MAX_PAYLOAD, POOL_KINDS, VERSION,
};
use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode;
    use crate::wire::tests::message;

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
