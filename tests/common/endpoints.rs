//! Helpers for tests of named endpoints between real processes: a private directory, the
//! socket path handed to a peer, short reports over the peer's channel, and raw
//! `SOCK_SEQPACKET` sockets speaking (or breaking) the handshake by hand.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{
    accept_with, bind, connect, listen, recv, send, socket_with, AddressFamily, RecvFlags,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use sealpipe::handshake::HandshakeFailure;
use sealpipe::wire::{self, HandshakeMessage};
use sealpipe::{Channel, Error, Policy};

const T: Duration = Duration::from_secs(20);

/// Environment variable carrying the socket path (or another path) to a peer.
pub const PATH_ENV: &str = "SEALPIPE_TEST_PATH";

/// A private temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sealpipe-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// In a peer: the path its parent passed in [`PATH_ENV`].
pub fn path_env() -> PathBuf {
    PathBuf::from(std::env::var_os(PATH_ENV).expect("peer: no path"))
}

/// The handshake failure inside `e`, if it is one.
pub fn failure(e: &Error) -> Option<&HandshakeFailure> {
    match e {
        Error::Handshake { failure } => Some(failure),
        _ => None,
    }
}

/// [`super::spawn_peer`], passing `path` to the peer in [`PATH_ENV`].
pub fn spawn_at(test: &str, role: &str, path: &Path) -> super::Peer {
    super::spawn_peer_with(test, role, |c| {
        c.env(PATH_ENV, path);
    })
}

/// Sends `s` as a message without regions (a peer telling its parent how far it got).
pub fn report(ch: &Channel, s: &str) {
    ch.send_timeout(s.as_bytes(), &[], T).unwrap();
}

/// Receives a message sent by [`report`].
pub fn read_report(ch: &Channel) -> String {
    let msg = ch.recv_timeout(&Policy::immutable(), T).unwrap();
    String::from_utf8(msg.payload().to_vec()).unwrap()
}

/// In a peer: blocks until the parent closes the control channel.
pub fn wait_for_parent(ctl: &Channel) {
    while ctl.recv_timeout(&Policy::immutable(), T).is_ok() {}
}

/// A bare `SOCK_SEQPACKET` socket, outside sealpipe.
pub fn raw_socket() -> OwnedFd {
    socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

/// A bare listening socket at `path` (no handshake).
pub fn raw_listen(path: &Path) -> OwnedFd {
    let s = raw_socket();
    bind(&s, &SocketAddrUnix::new(path).unwrap()).unwrap();
    listen(&s, 16).unwrap();
    s
}

/// A bare connection to `path` (no handshake).
pub fn raw_connect(path: &Path) -> OwnedFd {
    let s = raw_socket();
    connect(&s, &SocketAddrUnix::new(path).unwrap()).unwrap();
    s
}

/// Whether `fd` becomes readable within `timeout`.
pub fn readable(fd: impl AsFd, timeout: Duration) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let t = Timespec::try_from(timeout).unwrap();
    poll(&mut fds, Some(&t)).unwrap() > 0
}

/// Accepts one connection on a bare listening socket.
pub fn raw_accept(l: &OwnedFd) -> OwnedFd {
    assert!(readable(l, T), "no connection within {T:?}");
    accept_with(l, SocketFlags::CLOEXEC).unwrap()
}

/// Sends one datagram on a bare socket.
pub fn raw_send(fd: &OwnedFd, bytes: &[u8]) {
    send(fd, bytes, SendFlags::NOSIGNAL).unwrap();
}

/// One datagram, or `None` at EOF.
pub fn raw_recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    assert!(readable(fd, T), "nothing to read within {T:?}");
    let mut buf = vec![0u8; 70_000];
    let n = recv(fd, &mut buf, RecvFlags::empty()).unwrap().0;
    (n > 0).then(|| buf[..n].to_vec())
}

/// The bytes of handshake message `m`.
pub fn encode(m: &HandshakeMessage) -> Vec<u8> {
    let (buf, n) = wire::encode_handshake(m);
    buf[..n].to_vec()
}

/// An honest HELLO (bound proofs, no secret).
pub fn hello() -> Vec<u8> {
    encode(&HandshakeMessage::Hello {
        features: sealpipe::handshake::FEATURE_BOUND,
        nonce: [1; 32],
    })
}
