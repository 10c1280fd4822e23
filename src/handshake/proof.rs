//! The proofs of the shared secret: nonces, feature bits, the transcript and its keyed hashes.

use rustix::io::Errno;
use zeroize::Zeroize;

use super::{fail, Secret, FEATURE_BOUND, FEATURE_SECRET};
use crate::credentials::PeerCredentials;
use crate::error::{Error, HandshakeFailure, Result};
use crate::wire::{NONCE_LEN, PROOF_LEN};

pub(super) const SERVER_LABEL: &[u8; 16] = b"sealpipe server\0";
pub(super) const CLIENT_LABEL: &[u8; 16] = b"sealpipe client\0";
pub(super) const TRANSCRIPT_LEN: usize = 2 * (4 + NONCE_LEN) + ENDS_LEN;
pub(super) const ENDS_LEN: usize = 2 * 12;

/// Both ends of one connection, as one side sees them: what the proofs of the shared
/// secret are bound to. Honest sides of a direct connection see the same two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ends {
    /// The accepting side (the listener, or a spawned worker's parent).
    pub(crate) server: PeerCredentials,
    /// The connecting side (or the spawned worker).
    pub(crate) client: PeerCredentials,
}

impl Ends {
    fn to_bytes(self) -> [u8; ENDS_LEN] {
        let mut b = [0u8; ENDS_LEN];
        let words = [
            self.server.pid,
            self.server.uid,
            self.server.gid,
            self.client.pid,
            self.client.uid,
            self.client.gid,
        ];
        for (chunk, w) in b.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        b
    }
}

impl Secret {
    pub(super) fn proof(
        &self,
        label: &[u8; 16],
        transcript: &[u8; TRANSCRIPT_LEN],
    ) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key.0);
        h.update(label);
        h.update(transcript);
        let proof = h.finalize();
        h.zeroize();
        proof
    }
}

pub(super) fn random_nonce() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    let mut filled = 0;
    while filled < NONCE_LEN {
        match rustix::rand::getrandom(&mut nonce[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::io("getrandom", e)),
        }
    }
    Ok(nonce)
}

pub(super) fn features(secret: Option<&Secret>) -> u32 {
    if secret.is_some() {
        FEATURE_BOUND | FEATURE_SECRET
    } else {
        FEATURE_BOUND
    }
}

pub(super) fn transcript(
    client_features: u32,
    client_nonce: &[u8; NONCE_LEN],
    server_features: u32,
    server_nonce: &[u8; NONCE_LEN],
    ends: Ends,
) -> [u8; TRANSCRIPT_LEN] {
    let mut t = [0u8; TRANSCRIPT_LEN];
    t[0..4].copy_from_slice(&client_features.to_le_bytes());
    t[4..36].copy_from_slice(client_nonce);
    t[36..40].copy_from_slice(&server_features.to_le_bytes());
    t[40..72].copy_from_slice(server_nonce);
    t[72..].copy_from_slice(&ends.to_bytes());
    t
}

/// Checks a received proof: with a secret, against the expected keyed hash (constant time);
/// without one, it must be all zero.
pub(super) fn check_proof(
    secret: Option<&Secret>,
    label: &[u8; 16],
    t: &[u8; TRANSCRIPT_LEN],
    got: &[u8; PROOF_LEN],
) -> Result<()> {
    match secret {
        // blake3::Hash's equality with a byte array is constant-time.
        Some(s) if s.proof(label, t) == *got => Ok(()),
        Some(_) => Err(fail(HandshakeFailure::BadProof)),
        None if *got == [0; PROOF_LEN] => Ok(()),
        None => Err(fail(HandshakeFailure::Protocol(
            "proof without a shared secret",
        ))),
    }
}

pub(super) fn make_proof(
    secret: Option<&Secret>,
    label: &[u8; 16],
    t: &[u8; TRANSCRIPT_LEN],
) -> [u8; 32] {
    secret.map_or([0; PROOF_LEN], |s| *s.proof(label, t).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HandshakeConfig;

    #[test]
    fn secret_is_redacted_and_proofs_depend_on_everything() {
        let s = Secret::new(b"0123456789abcdef").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(!format!("{:?}", HandshakeConfig::new().secret(s.clone())).contains("0123"));
        assert!(matches!(
            Secret::new(b"short"),
            Err(Error::SecretTooShort { min: 16 })
        ));
        let ends = Ends {
            server: PeerCredentials {
                pid: 1,
                uid: 2,
                gid: 3,
            },
            client: PeerCredentials {
                pid: 4,
                uid: 2,
                gid: 3,
            },
        };
        let t = transcript(1, &[1; 32], 1, &[2; 32], ends);
        let p = s.proof(SERVER_LABEL, &t);
        assert_ne!(p, s.proof(CLIENT_LABEL, &t));
        assert_ne!(
            p,
            s.proof(SERVER_LABEL, &transcript(1, &[1; 32], 1, &[3; 32], ends))
        );
        let relayed = Ends {
            server: PeerCredentials {
                pid: 5,
                ..ends.server
            },
            ..ends
        };
        assert_ne!(
            p,
            s.proof(SERVER_LABEL, &transcript(1, &[1; 32], 1, &[2; 32], relayed)),
            "proofs cover the ends"
        );
        let other = Secret::new(b"0123456789abcdeF").unwrap();
        assert_ne!(p, other.proof(SERVER_LABEL, &t));
        assert!(check_proof(Some(&s), SERVER_LABEL, &t, p.as_bytes()).is_ok());
        assert!(check_proof(Some(&other), SERVER_LABEL, &t, p.as_bytes()).is_err());
        assert!(check_proof(None, SERVER_LABEL, &t, &[0; 32]).is_ok());
        assert!(check_proof(None, SERVER_LABEL, &t, &[1; 32]).is_err());
    }

    /// The known-answer vectors of PROTOCOL.md (`### Known-answer vectors`), computed here
    /// and compared with the document's text; the Python peer checks the same text.
    #[test]
    fn protocol_md_known_answer_vectors() {
        let doc = include_str!("../../PROTOCOL.md");
        let block = doc
            .split("<!-- handshake-vectors -->")
            .nth(1)
            .expect("PROTOCOL.md has the handshake vectors");
        let value = |name: &str| -> String {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(name)?.trim().strip_prefix("= "))
                .unwrap_or_else(|| panic!("{name} is in the vectors"))
                .trim()
                .to_owned()
        };
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let secret: Vec<u8> = (0u8..32).collect();
        assert_eq!(value("S "), hex(&secret));
        let s = Secret::new(&secret).unwrap();
        assert_eq!(value("K "), hex(&s.key.0));
        let creds = |pid, uid, gid| PeerCredentials { pid, uid, gid };
        let direct = Ends {
            server: creds(1000, 1001, 1002),
            client: creds(2000, 1001, 1002),
        };
        let nonce_c = [0x11u8; 32];
        let nonce_s = [0x22u8; 32];
        let f = FEATURE_BOUND | FEATURE_SECRET;
        let t = transcript(f, &nonce_c, f, &nonce_s, direct);
        assert_eq!(value("T "), hex(&t));
        assert_eq!(value("proof_s "), hex(s.proof(SERVER_LABEL, &t).as_bytes()));
        assert_eq!(value("proof_c "), hex(s.proof(CLIENT_LABEL, &t).as_bytes()));
        // The client's view through a relay of pid 3000.
        let relayed = Ends {
            server: creds(3000, 1001, 1002),
            ..direct
        };
        let t = transcript(f, &nonce_c, f, &nonce_s, relayed);
        assert_eq!(value("T'"), hex(&t));
        assert_eq!(value("proof_s'"), hex(s.proof(SERVER_LABEL, &t).as_bytes()));
    }
}
