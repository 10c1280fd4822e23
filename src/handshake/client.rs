//! The connecting side of the handshake.

use std::os::fd::OwnedFd;

use super::messages::{
    check_features, recv_message, refusal_behind, send_message, unexpected, verify_proof,
    wait_readable,
};
use super::proof::{
    features, make_proof, random_nonce, transcript, Ends, CLIENT_LABEL, SERVER_LABEL,
};

use super::Secret;
use crate::deadline::Deadline;
use crate::error::Result;
use crate::wire::{HandshakeMessage, NONCE_LEN};

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
