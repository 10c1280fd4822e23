//! What a hostile peer sends: hand-made wire messages, sent with descriptors attached,
//! bypassing every check the library's own sender makes.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use sealpipe::wire;

/// A message header (`PROTOCOL.md` §2) with any version and kind, declaring regions of
/// `lens` bytes, followed by `payload`.
pub fn header(version: u16, kind: u16, lens: &[u64], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&wire::MAGIC);
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(&kind.to_le_bytes());
    m.extend_from_slice(&(lens.len() as u16).to_le_bytes());
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    for l in lens {
        m.extend_from_slice(&l.to_le_bytes());
    }
    m.extend_from_slice(payload);
    m
}

/// A well-formed regions message declaring regions of `lens` bytes, no payload.
pub fn regions_message(lens: &[u64]) -> Vec<u8> {
    header(wire::VERSION, wire::KIND_REGIONS, lens, b"")
}

/// Sends `bytes` as one datagram with `fds` attached; returns the errno on failure.
pub fn try_send_raw(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Errno> {
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(wire::MAX_REGIONS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    sendmsg(
        sock,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map(drop)
}

/// [`try_send_raw`], which must succeed.
pub fn send_raw(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    try_send_raw(sock, bytes, fds).unwrap();
}
