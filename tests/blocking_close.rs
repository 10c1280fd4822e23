//! Descriptors whose last close blocks (issue 12 §1): a hostile peer sends a TCP socket
//! with `SO_LINGER {on, 5 s}` and a full send queue, whose `close` would sleep for the linger
//! time in whichever thread drops the last reference. Every receive (blocking, `try_`,
//! async), every handshake, the ring, and every `Drop` must keep its deadline anyway, close
//! the descriptor without leaking it, and go on serving the honest peer.
//!
//! The peer keeps the accepting end of the TCP connection open and never reads it, so the
//! lingering socket's data stays unsent for as long as the test runs.
//!
//! Not testable here: a file on a FUSE mount (its close waits for the FUSE daemon's answer
//! to `FLUSH`), because this machine has no `fusermount`. sealpipe treats it like the
//! lingering socket (it is not shared memory, so it is closed on the background closer).

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use sealpipe::{wire, Channel, Error, Policy, Region};

/// How long the hostile socket lingers in `close`.
const LINGER: Duration = Duration::from_secs(5);
/// The deadline every receive in these tests is given.
const DEADLINE: Duration = Duration::from_secs(1);
/// Slack allowed past a deadline (scheduling on a loaded 2-core machine); far below the
/// 5 s a blocking close would add.
const MARGIN: Duration = Duration::from_millis(500);
/// Generous timeout for the honest steps.
const T: Duration = Duration::from_secs(20);

// ----- the hostile side -----

/// A loopback TCP connection whose client end lingers `LINGER` in `close` with unsent data
/// queued. Returns the client end (to send away) and the accepting end (keep it open and
/// never read it, or the data drains and the close no longer blocks).
fn lingering_socket() -> (OwnedFd, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    rustix::net::sockopt::set_socket_linger(&client, Some(LINGER)).unwrap();
    client.set_nonblocking(true).unwrap();
    let chunk = [0u8; 64 * 1024];
    loop {
        match client.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the send queue: {e}"),
        }
    }
    (OwnedFd::from(client), server)
}

fn message(lens: &[u64]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&wire::MAGIC);
    m.extend_from_slice(&wire::VERSION.to_le_bytes());
    m.extend_from_slice(&wire::KIND_REGIONS.to_le_bytes());
    m.extend_from_slice(&(lens.len() as u16).to_le_bytes());
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    for l in lens {
        m.extend_from_slice(&l.to_le_bytes());
    }
    m
}

/// Sends `bytes` with `fds` attached; returns the errno on failure.
fn send_raw(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), rustix::io::Errno> {
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
    .map(|_| ())
}

/// Waits until the parent closes its end, so the accepting ends stay open meanwhile.
fn linger_until_parent_closes(ch: &Channel) {
    loop {
        match ch.recv_timeout(&Policy::immutable(), T) {
            Err(Error::PeerClosed) | Err(Error::Timeout) => return,
            _ => {}
        }
    }
}

fn honest(ch: &Channel) {
    let region = Region::new(4096).unwrap().seal().unwrap();
    ch.send_timeout(b"honest", &[&region], T).unwrap();
}

fn hostile_peer(role: &str, ch: Channel) -> i32 {
    match role {
        // One lingering socket as region 0, then an honest message.
        "linger_region" => {
            let (sock, _server) = lingering_socket();
            send_raw(ch.as_fd(), &message(&[4096]), &[sock.as_fd()]).unwrap();
            drop(sock);
            honest(&ch);
            linger_until_parent_closes(&ch);
            0
        }
        // A flood: 20 messages of 10 lingering sockets each (200 descriptors whose close
        // would take 5 s each), then an honest message.
        "linger_flood" => {
            let mut servers = Vec::new();
            for _ in 0..20 {
                let socks: Vec<OwnedFd> = (0..10)
                    .map(|_| {
                        let (s, server) = lingering_socket();
                        servers.push(server);
                        s
                    })
                    .collect();
                let fds: Vec<_> = socks.iter().map(|s| s.as_fd()).collect();
                send_raw(ch.as_fd(), &message(&[4096; 10]), &fds).unwrap();
            }
            honest(&ch);
            linger_until_parent_closes(&ch);
            0
        }
        // More lingering sockets than the receiver's policy accepts (it allows 1).
        "linger_excess" => {
            let (a, _sa) = lingering_socket();
            let (b, _sb) = lingering_socket();
            let (c, _sc) = lingering_socket();
            send_raw(
                ch.as_fd(),
                &message(&[4096; 3]),
                &[a.as_fd(), b.as_fd(), c.as_fd()],
            )
            .unwrap();
            drop((a, b, c));
            honest(&ch);
            linger_until_parent_closes(&ch);
            0
        }
        other => {
            eprintln!("unknown role {other}");
            99
        }
    }
}

// ----- the receiving side -----

/// Waits (at most 5 s) for the descriptor count to come back to `baseline`: descriptors
/// that are not shared memory are closed on sealpipe's background closer.
fn assert_fds_settle(baseline: usize, what: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    while common::fd_count() != baseline && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        common::fd_count(),
        baseline,
        "{what}: descriptors leaked: {:#?}",
        common::fd_table()
    );
}

/// Waits until the hostile message is queued and the peer has dropped its own copies, so
/// that the receiver holds the last reference to every descriptor it receives.
fn wait_until_queued(ch: &Channel) {
    let mut fds = [rustix::event::PollFd::new(ch, rustix::event::PollFlags::IN)];
    rustix::event::poll(&mut fds, None).unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

fn expect_honest(ch: &Channel) {
    let msg = ch
        .recv_timeout(&Policy::immutable(), T)
        .expect("honest message after the hostile one");
    assert_eq!(msg.payload(), b"honest");
}

#[test]
fn recv_timeout_keeps_its_deadline_with_a_lingering_socket() {
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let peer = common::spawn_peer(
        "recv_timeout_keeps_its_deadline_with_a_lingering_socket",
        "linger_region",
    );
    let baseline = common::fd_count();
    wait_until_queued(&peer.channel);
    let start = Instant::now();
    let err = peer
        .channel
        .recv_timeout(&Policy::immutable(), DEADLINE)
        .unwrap_err();
    let took = start.elapsed();
    eprintln!("recv_timeout(1 s), region 0 a socket lingering 5 s: {took:?}, {err}");
    assert!(
        matches!(&err, Error::NotMemfd { index: 0, reason } if reason.contains("socket")),
        "{err:?}"
    );
    assert!(took < DEADLINE + MARGIN, "took {took:?}");
    assert_fds_settle(baseline, "linger_region");
    expect_honest(&peer.channel);
    assert_eq!(peer.wait(), 0);
}
