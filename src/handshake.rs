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
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, UCred,
};

use zeroize::Zeroize;

pub use crate::credentials::PeerCredentials;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
pub use crate::error::{HandshakeFailure, RefusalReason};
use crate::wire::{self, HandshakeMessage, NONCE_LEN, PROOF_LEN};

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

const SERVER_LABEL: &[u8; 16] = b"sealpipe server\0";
const CLIENT_LABEL: &[u8; 16] = b"sealpipe client\0";
const TRANSCRIPT_LEN: usize = 2 * (4 + NONCE_LEN) + ENDS_LEN;
const ENDS_LEN: usize = 2 * 12;

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

    fn proof(&self, label: &[u8; 16], transcript: &[u8; TRANSCRIPT_LEN]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key.0);
        h.update(label);
        h.update(transcript);
        let proof = h.finalize();
        h.zeroize();
        proof
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

fn fail(failure: HandshakeFailure) -> Error {
    Error::Handshake { failure }
}

fn random_nonce() -> Result<[u8; NONCE_LEN]> {
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

fn features(secret: Option<&Secret>) -> u32 {
    if secret.is_some() {
        FEATURE_BOUND | FEATURE_SECRET
    } else {
        FEATURE_BOUND
    }
}

/// Checks the peer's feature bits against ours; on a mismatch tells the peer and fails.
fn check_features(sock: &OwnedFd, secret: Option<&Secret>, theirs: u32) -> Result<()> {
    if theirs & FEATURE_BOUND == 0 {
        return Err(refuse(
            sock,
            RefusalReason::Incompatible,
            HandshakeFailure::Unbound,
        ));
    }
    if (theirs & FEATURE_SECRET != 0) != secret.is_some() {
        return Err(refuse(
            sock,
            RefusalReason::SecretPresence,
            HandshakeFailure::SecretPresence {
                ours: secret.is_some(),
            },
        ));
    }
    Ok(())
}

fn transcript(
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
fn check_proof(
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

fn make_proof(secret: Option<&Secret>, label: &[u8; 16], t: &[u8; TRANSCRIPT_LEN]) -> [u8; 32] {
    secret.map_or([0; PROOF_LEN], |s| *s.proof(label, t).as_bytes())
}

/// Sends one handshake message without waiting (a handshake message always fits the
/// socket buffer of a fresh connection), optionally with our credentials.
fn send_message(sock: &OwnedFd, msg: &HandshakeMessage, with_credentials: bool) -> Result<()> {
    let (buf, n) = wire::encode_handshake(msg);
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if with_credentials {
        control.push(SendAncillaryMessage::ScmCredentials(UCred {
            pid: rustix::process::getpid(),
            uid: rustix::process::geteuid(),
            gid: rustix::process::getegid(),
        }));
    }
    loop {
        match sendmsg(
            sock,
            &[IoSlice::new(&buf[..n])],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN) => return Err(Error::PeerClosed),
            Err(Errno::AGAIN) => {
                return Err(fail(HandshakeFailure::Protocol(
                    "peer does not read its socket",
                )))
            }
            Err(e) => return Err(Error::io("sendmsg", e)),
        }
    }
}

/// Best effort: tells the peer why the handshake fails (it closes next).
fn tell(sock: &OwnedFd, reason: RefusalReason) {
    let _ = send_message(
        sock,
        &HandshakeMessage::Reject {
            reason: reason.code(),
        },
        false,
    );
}

/// Tells the peer why, then fails with `failure`.
fn refuse(sock: &OwnedFd, reason: RefusalReason, failure: HandshakeFailure) -> Error {
    tell(sock, reason);
    fail(failure)
}

/// Checks a received proof; on failure tells the peer.
fn verify_proof(
    sock: &OwnedFd,
    secret: Option<&Secret>,
    label: &[u8; 16],
    t: &[u8; TRANSCRIPT_LEN],
    got: &[u8; PROOF_LEN],
) -> Result<()> {
    check_proof(secret, label, t, got).inspect_err(|e| {
        let bad_proof = matches!(
            e,
            Error::Handshake {
                failure: HandshakeFailure::BadProof
            }
        );
        tell(
            sock,
            if bad_proof {
                RefusalReason::BadProof
            } else {
                RefusalReason::Protocol
            },
        );
    })
}

/// Receives one handshake message without waiting; `None` if none is queued. Any
/// descriptor that arrives fails the handshake and is disposed of without blocking (the
/// control buffer holds the kernel's maximum, so the kernel never drops any in this
/// thread). Descriptors can only arrive where `SO_PASSRIGHTS` is unavailable, or from a
/// peer that has proved itself.
fn recv_message(sock: &OwnedFd) -> Result<Option<(HandshakeMessage, Option<UCred>)>> {
    let mut buf = [0u8; wire::MAX_HANDSHAKE_LEN + 1];
    let mut space = [MaybeUninit::uninit();
        rustix::cmsg_space!(ScmRights(wire::MAX_REGIONS), ScmCredentials(1))];
    let mut creds = None;
    let mut fds = crate::closer::Received::default();
    let mut reset = false;
    let res = loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let res = recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        );
        for msg in control.drain() {
            match msg {
                RecvAncillaryMessage::ScmRights(iter) => fds.0.extend(iter),
                RecvAncillaryMessage::ScmCredentials(c) => creds = Some(c),
                _ => {}
            }
        }
        match res {
            Ok(r) => break r,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(None),
            // Reported once, before any queued message (a REJECT, say): read on.
            Err(Errno::CONNRESET) if !reset => reset = true,
            Err(Errno::CONNRESET) => return Err(Error::PeerClosed),
            Err(e) => return Err(Error::io("recvmsg", e)),
        }
    };
    if !fds.0.is_empty() || res.flags.contains(ReturnFlags::CTRUNC) {
        drop(fds);
        return Err(refuse(
            sock,
            RefusalReason::Protocol,
            HandshakeFailure::Protocol("descriptors sent during the handshake"),
        ));
    }
    if res.bytes == 0 {
        return Err(Error::PeerClosed);
    }
    if res.flags.contains(ReturnFlags::TRUNC) || res.bytes > wire::MAX_HANDSHAKE_LEN {
        return Err(refuse(
            sock,
            RefusalReason::Protocol,
            HandshakeFailure::Protocol("oversized handshake message"),
        ));
    }
    match wire::decode_handshake(&buf[..res.bytes]) {
        Ok(m) => Ok(Some((m, creds))),
        Err(Error::UnsupportedVersion { got, .. }) => Err(refuse(
            sock,
            RefusalReason::Incompatible,
            HandshakeFailure::Incompatible { version: got },
        )),
        Err(Error::Malformed { reason }) => Err(refuse(
            sock,
            RefusalReason::Protocol,
            HandshakeFailure::Protocol(reason),
        )),
        Err(e) => Err(e),
    }
}

/// Waits until `sock` is readable (or hung up), at most until `deadline`.
pub(crate) fn wait_readable(sock: &OwnedFd, deadline: Deadline) -> Result<()> {
    loop {
        if deadline.passed() {
            return Err(Error::Timeout);
        }
        let mut fds = [PollFd::new(sock, PollFlags::IN)];
        match poll(&mut fds, deadline.poll_timeout().as_ref()) {
            Ok(0) | Err(Errno::INTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(Error::io("poll", e)),
        }
    }
}

fn unexpected(sock: &OwnedFd, msg: &HandshakeMessage, what: &'static str) -> Error {
    match msg {
        HandshakeMessage::Reject { reason } => {
            fail(HandshakeFailure::Refused(RefusalReason::from_code(*reason)))
        }
        _ => refuse(
            sock,
            RefusalReason::Protocol,
            HandshakeFailure::Protocol(what),
        ),
    }
}

/// A send failed because the peer closed: if it left a `REJECT` behind, that says why.
fn refusal_behind(sock: &OwnedFd, e: Error) -> Error {
    if let Error::PeerClosed = e {
        if let Ok(Some((HandshakeMessage::Reject { reason }, _))) = recv_message(sock) {
            return fail(HandshakeFailure::Refused(RefusalReason::from_code(reason)));
        }
    }
    e
}

/// Runs the connecting side of the handshake to completion (blocking until `deadline`).
/// The caller has already checked the peer's identity. With `send_credentials`, `HELLO`
/// carries `SCM_CREDENTIALS` (spawned workers).
pub(crate) fn run_client(
    sock: &OwnedFd,
    secret: Option<&Secret>,
    send_credentials: bool,
    ends: Ends,
    deadline: Deadline,
) -> Result<()> {
    let mut client = ClientHandshake::start(sock, secret.cloned(), send_credentials, ends)?;
    while !client.step(sock)? {
        wait_readable(sock, deadline)?;
    }
    Ok(())
}

/// The connecting side of the handshake, one non-blocking step at a time (so that an
/// event loop, e.g. tokio's, can drive it). The caller has already checked the peer's
/// identity.
#[derive(Debug)]
pub(crate) struct ClientHandshake {
    secret: Option<Secret>,
    ends: Ends,
    state: ClientState,
}

#[derive(Debug)]
enum ClientState {
    AwaitChallenge {
        features: u32,
        nonce: [u8; NONCE_LEN],
    },
    AwaitAccept,
    Done,
}

impl ClientHandshake {
    /// Sends `HELLO`. With `send_credentials`, it carries `SCM_CREDENTIALS`. `ends`: the
    /// server as `SO_PEERCRED` reports it, and this process as it was at `connect`.
    pub(crate) fn start(
        sock: &OwnedFd,
        secret: Option<Secret>,
        send_credentials: bool,
        ends: Ends,
    ) -> Result<Self> {
        let features = features(secret.as_ref());
        let nonce = random_nonce()?;
        send_message(
            sock,
            &HandshakeMessage::Hello { features, nonce },
            send_credentials,
        )
        .map_err(|e| refusal_behind(sock, e))?;
        Ok(ClientHandshake {
            secret,
            ends,
            state: ClientState::AwaitChallenge { features, nonce },
        })
    }

    /// Handles every message queued on `sock`; `Ok(true)` once `ACCEPT` has arrived.
    pub(crate) fn step(&mut self, sock: &OwnedFd) -> Result<bool> {
        while !matches!(self.state, ClientState::Done) {
            let Some((msg, _)) = recv_message(sock)? else {
                return Ok(false);
            };
            // A failure is final, so the state may stay `Done` on every error path.
            let state = std::mem::replace(&mut self.state, ClientState::Done);
            self.state = match (state, msg) {
                (
                    ClientState::AwaitChallenge {
                        features: ours,
                        nonce: nonce_c,
                    },
                    HandshakeMessage::Challenge {
                        features: theirs,
                        nonce: nonce_s,
                        proof,
                    },
                ) => {
                    let secret = self.secret.as_ref();
                    check_features(sock, secret, theirs)?;
                    let t = transcript(ours, &nonce_c, theirs, &nonce_s, self.ends);
                    verify_proof(sock, secret, SERVER_LABEL, &t, &proof)?;
                    // The server has proved itself: from here it may send regions (right
                    // after its ACCEPT), so accept descriptors before it can.
                    crate::closer::accept_descriptors(sock);
                    send_message(
                        sock,
                        &HandshakeMessage::Proof {
                            proof: make_proof(secret, CLIENT_LABEL, &t),
                        },
                        false,
                    )
                    .map_err(|e| refusal_behind(sock, e))?;
                    ClientState::AwaitAccept
                }
                (ClientState::AwaitChallenge { .. }, msg) => {
                    return Err(unexpected(sock, &msg, "expected CHALLENGE"))
                }
                (_, HandshakeMessage::Accept) => ClientState::Done,
                (_, msg) => return Err(unexpected(sock, &msg, "expected ACCEPT")),
            };
        }
        Ok(true)
    }
}

/// The accepting side of the handshake, one non-blocking step at a time (a listener runs
/// many at once). The caller has already checked the peer's identity.
#[derive(Debug)]
pub(crate) struct ServerHandshake {
    secret: Option<Secret>,
    /// This process as it was at `listen` (or `socketpair`).
    own: PeerCredentials,
    /// The client as `SO_PEERCRED` reports it; `None` for a spawned worker, whose
    /// `SCM_CREDENTIALS` stand in.
    peer: Option<PeerCredentials>,
    /// For a spawned worker: the pid whose `SCM_CREDENTIALS` must come with `HELLO` (the
    /// caller set `SO_PASSCRED`, which is cleared once `HELLO` is in).
    expect_pid: Option<u32>,
    state: ServerState,
    /// The credentials that came with `HELLO` (`SCM_CREDENTIALS`), if any.
    hello_credentials: Option<PeerCredentials>,
}

#[derive(Debug)]
enum ServerState {
    AwaitHello,
    AwaitProof { transcript: [u8; TRANSCRIPT_LEN] },
    Done,
}

impl ServerHandshake {
    pub(crate) fn new(
        secret: Option<Secret>,
        expect_pid: Option<u32>,
        own: PeerCredentials,
        peer: Option<PeerCredentials>,
    ) -> Self {
        ServerHandshake {
            secret,
            own,
            peer,
            expect_pid,
            state: ServerState::AwaitHello,
            hello_credentials: None,
        }
    }

    /// Handles every message queued on `sock`; `Ok(true)` once `ACCEPT` has been sent.
    pub(crate) fn step(&mut self, sock: &OwnedFd) -> Result<bool> {
        while !matches!(self.state, ServerState::Done) {
            let Some((msg, creds)) = recv_message(sock)? else {
                return Ok(false);
            };
            // A failure is final, so the state may stay `Done` on every error path.
            let state = std::mem::replace(&mut self.state, ServerState::Done);
            self.state = match (state, msg) {
                (ServerState::AwaitHello, HandshakeMessage::Hello { features, nonce }) => {
                    self.on_hello(sock, features, &nonce, creds)?
                }
                (ServerState::AwaitProof { transcript }, HandshakeMessage::Proof { proof }) => {
                    let secret = self.secret.as_ref();
                    verify_proof(sock, secret, CLIENT_LABEL, &transcript, &proof)?;
                    // The client may send regions as soon as it reads ACCEPT.
                    crate::closer::accept_descriptors(sock);
                    send_message(sock, &HandshakeMessage::Accept, false)?;
                    ServerState::Done
                }
                (ServerState::AwaitHello, msg) => {
                    return Err(unexpected(sock, &msg, "expected HELLO"))
                }
                (_, msg) => return Err(unexpected(sock, &msg, "expected PROOF")),
            };
        }
        Ok(true)
    }

    /// The kernel-checked credentials sent with `HELLO` (spawned workers send them).
    pub(crate) fn hello_credentials(&self) -> Option<PeerCredentials> {
        self.hello_credentials
    }

    fn on_hello(
        &mut self,
        sock: &OwnedFd,
        theirs: u32,
        nonce_c: &[u8; NONCE_LEN],
        creds: Option<UCred>,
    ) -> Result<ServerState> {
        self.hello_credentials = creds.map(PeerCredentials::from_ucred);
        if let Some(expected) = self.expect_pid {
            // Credentials were needed for HELLO only. Stop receiving them now, before the
            // child can send anything after ACCEPT: the transport accepts only SCM_RIGHTS.
            rustix::net::sockopt::set_socket_passcred(sock, false)
                .map_err(|e| Error::io("setsockopt(SO_PASSCRED)", e))?;
            let got = self.hello_credentials.map(|c| c.pid);
            if got != Some(expected) {
                return Err(refuse(
                    sock,
                    RefusalReason::PeerNotAllowed,
                    HandshakeFailure::NotTheSpawnedChild { expected, got },
                ));
            }
        }
        let secret = self.secret.as_ref();
        check_features(sock, secret, theirs)?;
        let ours = features(secret);
        let nonce_s = random_nonce()?;
        let client = match self.peer.or(self.hello_credentials) {
            Some(c) => c,
            None => {
                return Err(refuse(
                    sock,
                    RefusalReason::Protocol,
                    HandshakeFailure::Protocol("no credentials for the client"),
                ))
            }
        };
        let ends = Ends {
            server: self.own,
            client,
        };
        let t = transcript(theirs, nonce_c, ours, &nonce_s, ends);
        send_message(
            sock,
            &HandshakeMessage::Challenge {
                features: ours,
                nonce: nonce_s,
                proof: make_proof(secret, SERVER_LABEL, &t),
            },
            false,
        )?;
        Ok(ServerState::AwaitProof { transcript: t })
    }

    /// Runs the handshake to completion, blocking until `deadline`.
    pub(crate) fn run(&mut self, sock: &OwnedFd, deadline: Deadline) -> Result<()> {
        while !self.step(sock)? {
            wait_readable(sock, deadline)?;
        }
        Ok(())
    }
}

/// Checks `peer` against `policy`; on refusal tells the peer and fails.
pub(crate) fn check_identity(
    sock: &OwnedFd,
    policy: &PeerPolicy,
    peer: PeerCredentials,
) -> Result<()> {
    if policy.allows(&peer) {
        Ok(())
    } else {
        Err(refuse(
            sock,
            RefusalReason::PeerNotAllowed,
            HandshakeFailure::PeerNotAllowed(peer),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let doc = include_str!("../PROTOCOL.md");
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
