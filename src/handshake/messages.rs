//! Handshake messages on the socket: sending, receiving, refusing, waiting.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, UCred,
};

use super::proof::{check_proof, TRANSCRIPT_LEN};

use super::{fail, PeerPolicy, Secret, FEATURE_BOUND, FEATURE_SECRET};
use crate::credentials::PeerCredentials;
use crate::deadline::Deadline;
use crate::error::{Error, HandshakeFailure, RefusalReason, Result};
use crate::wire;
use crate::wire::{HandshakeMessage, PROOF_LEN};

/// Checks the peer's feature bits against ours; on a mismatch tells the peer and fails.
pub(super) fn check_features(sock: &OwnedFd, secret: Option<&Secret>, theirs: u32) -> Result<()> {
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

/// Sends one handshake message without waiting (a handshake message always fits the
/// socket buffer of a fresh connection), optionally with our credentials.
pub(super) fn send_message(
    sock: &OwnedFd,
    msg: &HandshakeMessage,
    with_credentials: bool,
) -> Result<()> {
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
pub(super) fn tell(sock: &OwnedFd, reason: RefusalReason) {
    let _ = send_message(
        sock,
        &HandshakeMessage::Reject {
            reason: reason.code(),
        },
        false,
    );
}

/// Tells the peer why, then fails with `failure`.
pub(super) fn refuse(sock: &OwnedFd, reason: RefusalReason, failure: HandshakeFailure) -> Error {
    tell(sock, reason);
    fail(failure)
}

/// Checks a received proof; on failure tells the peer.
pub(super) fn verify_proof(
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
pub(super) fn recv_message(sock: &OwnedFd) -> Result<Option<(HandshakeMessage, Option<UCred>)>> {
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

pub(super) fn unexpected(sock: &OwnedFd, msg: &HandshakeMessage, what: &'static str) -> Error {
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
pub(super) fn refusal_behind(sock: &OwnedFd, e: Error) -> Error {
    if let Error::PeerClosed = e {
        if let Ok(Some((HandshakeMessage::Reject { reason }, _))) = recv_message(sock) {
            return fail(HandshakeFailure::Refused(RefusalReason::from_code(reason)));
        }
    }
    e
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
