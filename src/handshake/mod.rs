//! The handshake every connection makes before any region is accepted: protocol version and
//! feature bits, the peer's kernel-verified identity checked against a [`PeerPolicy`], and,
//! when a [`Secret`] is configured, mutual proof of the secret over fresh nonces.
//!
//! ```text
//! connecting side (client)                 accepting side (server)
//!   checks the server's SO_PEERCRED          checks the client's SO_PEERCRED
//!   HELLO     features, nonce_c    ──────▶
//!                                  ◀──────   CHALLENGE features, nonce_s, proof_s
//!   checks proof_s
//!   PROOF     proof_c              ──────▶   checks proof_c
//!                                  ◀──────   ACCEPT           (or REJECT reason, close)
//! ```
//!
//! With a secret, `K = BLAKE3-derive_key(CONTEXT, secret)`, `T = HELLO body ‖ CHALLENGE body
//! without the proof ‖ ends` (96 bytes), `proof_s = BLAKE3-keyed(K, "sealpipe server\0" ‖
//! T)` and `proof_c = BLAKE3-keyed(K, "sealpipe client\0" ‖ T)`, compared in constant time.
//! Both nonces are fresh random bytes, so a recorded handshake proves nothing in a new one,
//! and no clock is involved. Without a secret the proofs are all zero. `PROTOCOL.md` has the
//! byte layouts and known-answer vectors.
//!
//! `ends` binds the proofs to the connection: the server's and then the client's pid, uid
//! and gid, each side taking its own from what it was when it called `listen` or `connect`
//! and the other's from `SO_PEERCRED`, which the kernel recorded at that moment. On a direct
//! connection both sides compute the same bytes. A relay (a same-user process that renamed
//! the listener's socket and bound its own at the path, forwarding every message verbatim)
//! holds two connections: the client sees the relay as its server and the server sees it as
//! its client, so the two transcripts differ and the proofs fail on both sides
//! ([`HandshakeFailure::BadProof`]). Both ends must therefore share a pid and user namespace
//! when a secret is used: across namespaces the kernel translates (or hides) pids and ids, so
//! even honest proofs fail.
//!
//! Identity: on a named socket, `SO_PEERCRED` (the peer process as of `connect`/`listen`,
//! recorded by the kernel; `SO_PEERPIDFD` has no rustix wrapper, and the pid is only
//! reported, never relied on later). On a spawned worker's socketpair `SO_PEERCRED` names the
//! *creator* of the pair (the parent itself), so there the child sends its credentials with
//! its `HELLO` as `SCM_CREDENTIALS`, which the kernel checks (a process cannot claim
//! another's pid without `CAP_SYS_ADMIN`), and the parent requires the pid it spawned.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroize;

pub use crate::credentials::PeerCredentials;
use crate::error::{Error, Result};
pub use crate::error::{HandshakeFailure, RefusalReason};
use crate::wire;

mod client;
mod messages;
mod proof;
mod server;

pub(crate) use client::{run_client, ClientHandshake};
pub(crate) use messages::{check_identity, wait_readable};
pub(crate) use proof::Ends;
pub(crate) use server::ServerHandshake;

/// Feature bit: the sender is configured with a shared secret.
#[doc(hidden)] // protocol detail (PROTOCOL.md "Handshake"), not public API; used by tests
pub const FEATURE_SECRET: u32 = 1;

/// Feature bit: the sender's proofs cover both ends' credentials (handshake revision 2).
/// Every handshake sets it, and a peer whose first message lacks it is refused as
/// `HandshakeFailure::Unbound`.
#[doc(hidden)] // protocol detail (PROTOCOL.md "Handshake"), not public API; used by tests
pub const FEATURE_BOUND: u32 = 2;

/// Key-derivation context for the shared secret (BLAKE3 `derive_key`).
#[doc(hidden)] // protocol detail (PROTOCOL.md "Handshake"), not public API; used by tests
pub const KEY_CONTEXT: &str = "sealpipe 2026-11 handshake v1 shared secret";

/// Default time a handshake may take, from connect or accept to the last message.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which peers may connect, judged on their kernel-verified [`PeerCredentials`].
#[derive(Clone)]
pub struct PeerPolicy(Rule);

#[derive(Clone)]
enum Rule {
    SameUser,
    Allow { uids: Vec<u32>, gids: Vec<u32> },
    Predicate(Arc<dyn Fn(&PeerCredentials) -> bool + Send + Sync>),
}

impl PeerPolicy {
    /// Only processes whose effective uid is this process's effective uid (the default).
    pub fn same_user() -> Self {
        PeerPolicy(Rule::SameUser)
    }

    /// Processes whose uid is in `uids` or whose gid is in `gids`.
    pub fn allow(uids: &[u32], gids: &[u32]) -> Self {
        PeerPolicy(Rule::Allow {
            uids: uids.to_vec(),
            gids: gids.to_vec(),
        })
    }

    /// Processes for which `allow` returns `true`.
    pub fn predicate(allow: impl Fn(&PeerCredentials) -> bool + Send + Sync + 'static) -> Self {
        PeerPolicy(Rule::Predicate(Arc::new(allow)))
    }

    /// Whether the policy admits `peer`.
    pub fn allows(&self, peer: &PeerCredentials) -> bool {
        match &self.0 {
            Rule::SameUser => peer.uid == rustix::process::geteuid().as_raw(),
            Rule::Allow { uids, gids } => uids.contains(&peer.uid) || gids.contains(&peer.gid),
            Rule::Predicate(f) => f(peer),
        }
    }
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy::same_user()
    }
}

impl fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Rule::SameUser => f.write_str("PeerPolicy::SameUser"),
            Rule::Allow { uids, gids } => f
                .debug_struct("PeerPolicy::Allow")
                .field("uids", uids)
                .field("gids", gids)
                .finish(),
            Rule::Predicate(_) => f.write_str("PeerPolicy::Predicate(..)"),
        }
    }
}

/// A shared secret both sides must prove they know. Only a key derived from it is kept, in
/// one heap allocation that clones share; it never appears in `Debug` output or errors, and
/// it is zeroed (with `zeroize`) when the last clone is dropped, as is the hashing state of
/// every proof made with it. (Copies the caller made of the secret itself, and whatever
/// the stack or registers held during hashing, are beyond its reach.)
///
/// The handshake lets anyone the [`PeerPolicy`] admits obtain a proof over nonces of their
/// choosing, so a guessable secret can be attacked offline: use 32 random bytes.
#[derive(Clone)]
pub struct Secret {
    key: Arc<Key>,
}

/// The derived key, zeroed on drop.
struct Key([u8; 32]);

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Secret {
    /// Shortest secret accepted.
    pub const MIN_LEN: usize = 16;

    /// Derives the handshake key from `secret`.
    ///
    /// # Errors
    /// [`Error::SecretTooShort`] for fewer than [`Secret::MIN_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Secret> {
        if secret.len() < Self::MIN_LEN {
            return Err(Error::SecretTooShort { min: Self::MIN_LEN });
        }
        // Derive straight into the shared allocation, so no copy of the key is left behind.
        let mut key = Arc::new(Key([0; 32]));
        let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
        h.update(secret);
        let mut out = h.finalize_xof();
        if let Some(k) = Arc::get_mut(&mut key) {
            out.fill(&mut k.0);
        }
        out.zeroize();
        h.zeroize();
        Ok(Secret { key })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a connection is authenticated: who may be the peer, an optional shared secret, and
/// how long the handshake may take.
///
/// ```
/// # fn main() -> sealpipe::Result<()> {
/// use std::time::Duration;
/// use sealpipe::{HandshakeConfig, PeerPolicy, Secret};
/// let config = HandshakeConfig::new()
///     .policy(PeerPolicy::allow(&[1000], &[]))
///     .secret(Secret::new(b"32 random bytes from a key file!")?)
///     .timeout(Duration::from_secs(2));
/// # let _ = config; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    pub(crate) policy: PeerPolicy,
    pub(crate) secret: Option<Secret>,
    pub(crate) timeout: Duration,
}

impl HandshakeConfig {
    /// Same user only, no secret, [`DEFAULT_TIMEOUT`].
    pub fn new() -> Self {
        HandshakeConfig {
            policy: PeerPolicy::same_user(),
            secret: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Which peers are admitted.
    pub fn policy(mut self, policy: PeerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Requires the peer to prove knowledge of `secret` (and proves it to the peer).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// How long the whole handshake (and, for a client, the connect) may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self::new()
    }
}

// `HandshakeFailure` and `RefusalReason` live with the error type (crate::error), which
// carries them; the message of a failure names the protocol version, so it is written here.
impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::PeerNotAllowed(c) => write!(
                f,
                "peer (pid {}, uid {}, gid {}) is not allowed by this side's policy",
                c.pid, c.uid, c.gid
            ),
            HandshakeFailure::NotTheSpawnedChild { expected, got } => match got {
                Some(p) => write!(
                    f,
                    "handshake came from pid {p}, not the spawned child {expected}"
                ),
                None => write!(
                    f,
                    "handshake from the spawned child {expected} carried no credentials"
                ),
            },
            HandshakeFailure::SecretPresence { ours: true } => {
                f.write_str("this side requires a shared secret and the peer has none")
            }
            HandshakeFailure::SecretPresence { ours: false } => {
                f.write_str("the peer requires a shared secret and this side has none")
            }
            HandshakeFailure::BadProof => {
                f.write_str("the peer did not prove knowledge of the shared secret")
            }
            HandshakeFailure::Incompatible { version } => write!(
                f,
                "the peer speaks protocol version {version}, this build speaks {}",
                wire::VERSION
            ),
            HandshakeFailure::Unbound => f.write_str(
                "the peer's proofs are not bound to the connection (older handshake revision)",
            ),
            HandshakeFailure::Protocol(what) => write!(f, "protocol violation: {what}"),
            HandshakeFailure::Refused(r) => write!(f, "the peer refused the connection: {r}"),
        }
    }
}

pub(super) fn fail(failure: HandshakeFailure) -> Error {
    Error::Handshake { failure }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_round_trip() {
        for code in 0..8 {
            assert_eq!(RefusalReason::from_code(code).code(), code);
        }
    }

    #[test]
    fn policies() {
        let me = rustix::process::geteuid().as_raw();
        let c = |uid, gid| PeerCredentials { pid: 1, uid, gid };
        assert!(PeerPolicy::same_user().allows(&c(me, 5)));
        assert!(!PeerPolicy::same_user().allows(&c(me.wrapping_add(1), 5)));
        let allow = PeerPolicy::allow(&[7], &[9]);
        assert!(allow.allows(&c(7, 0)) && allow.allows(&c(1, 9)) && !allow.allows(&c(1, 1)));
        assert!(PeerPolicy::predicate(|p| p.gid == 3).allows(&c(0, 3)));
    }
}
