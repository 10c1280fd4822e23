//! The accepting side of the handshake.

use std::os::fd::OwnedFd;

use rustix::net::UCred;

use super::messages::{
    check_features, recv_message, refuse, send_message, unexpected, verify_proof, wait_readable,
};
use super::proof::{
    features, make_proof, random_nonce, transcript, Ends, CLIENT_LABEL, SERVER_LABEL,
    TRANSCRIPT_LEN,
};

use super::Secret;
use crate::credentials::PeerCredentials;
use crate::deadline::Deadline;
use crate::error::{Error, HandshakeFailure, RefusalReason, Result};
use crate::wire::{HandshakeMessage, NONCE_LEN};

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
