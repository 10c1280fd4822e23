//! Handshake messages (kinds 2..=15).

use super::{decode_prefix, HEADER_LEN, KIND_REGIONS, MAGIC, VERSION};
use crate::error::{Error, Result};

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
    use crate::wire::decode;
    use crate::wire::tests::message;

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
