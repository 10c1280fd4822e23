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
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use sealpipe::{Channel, Error, Policy, Region};

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
    // Small buffers: the queue fills after a few KiB instead of megabytes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    rustix::net::sockopt::set_socket_recv_buffer_size(&listener, 4096).unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    rustix::net::sockopt::set_socket_send_buffer_size(&client, 4096).unwrap();
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
            common::forge::try_send_raw(
                ch.as_fd(),
                &common::forge::regions_message(&[4096]),
                &[sock.as_fd()],
            )
            .unwrap();
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
                common::forge::try_send_raw(
                    ch.as_fd(),
                    &common::forge::regions_message(&[4096; 10]),
                    &fds,
                )
                .unwrap();
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
            common::forge::try_send_raw(
                ch.as_fd(),
                &common::forge::regions_message(&[4096; 3]),
                &[a.as_fd(), b.as_fd(), c.as_fd()],
            )
            .unwrap();
            drop((a, b, c));
            honest(&ch);
            linger_until_parent_closes(&ch);
            0
        }
        // A client of the listener at $PATH_ENV that tries to send a lingering socket
        // before its handshake, then sits there. Exit code 0: the send was refused (EPERM).
        "hostile_client" => {
            let path = std::env::var(PATH_ENV).unwrap();
            let s = raw_seqpacket();
            rustix::net::connect(
                &s,
                &rustix::net::SocketAddrUnix::new(path.as_str()).unwrap(),
            )
            .unwrap();
            let (sock, _server) = lingering_socket();
            let refused = common::forge::try_send_raw(
                s.as_fd(),
                &common::forge::regions_message(&[4096]),
                &[sock.as_fd()],
            );
            disarm(sock);
            linger_until_parent_closes(&ch);
            exit_code(refused)
        }
        // A server at $PATH_ENV that accepts one client, tries to send it a lingering
        // socket at once, then says nothing. Exit code 0: the send was refused (EPERM).
        "hostile_server" => {
            let path = std::env::var(PATH_ENV).unwrap();
            let l = raw_seqpacket();
            rustix::net::bind(
                &l,
                &rustix::net::SocketAddrUnix::new(path.as_str()).unwrap(),
            )
            .unwrap();
            rustix::net::listen(&l, 4).unwrap();
            ch.send_timeout(b"listening", &[], T).unwrap();
            let (c, _) = rustix::net::acceptfrom(&l).unwrap();
            let (sock, _server) = lingering_socket();
            let refused = common::forge::try_send_raw(
                c.as_fd(),
                &common::forge::regions_message(&[4096]),
                &[sock.as_fd()],
            );
            disarm(sock);
            linger_until_parent_closes(&ch);
            exit_code(refused)
        }
        // A ring producer whose offer (the ring's data region) is a lingering socket.
        "ring_offer_linger" => {
            let (sock, _server) = lingering_socket();
            let mut m = common::forge::regions_message(&[4096]);
            m[12..16].copy_from_slice(&16u32.to_le_bytes());
            m.extend_from_slice(b"sealpipe ring v1");
            common::forge::try_send_raw(ch.as_fd(), &m, &[sock.as_fd()]).unwrap();
            drop(sock);
            linger_until_parent_closes(&ch);
            0
        }
        // A ring producer that, after setup, sends a lingering socket on its ring channel.
        // Exit code 0: refused (EPERM), and the honest record was sent.
        "ring_producer" => {
            use sealpipe::ring::{Producer, RingOptions};
            let dup = rustix::io::fcntl_dupfd_cloexec(&ch, 0).unwrap();
            let mut tx = Producer::setup(ch, &RingOptions::new(1024).timeout(T)).unwrap();
            let (sock, _server) = lingering_socket();
            let refused = common::forge::try_send_raw(dup.as_fd(), b"x", &[sock.as_fd()]);
            disarm(sock);
            tx.send_timeout(b"honest", T).unwrap();
            // Until the consumer goes.
            let _ = rustix::event::poll(
                &mut [rustix::event::PollFd::new(
                    &dup,
                    rustix::event::PollFlags::RDHUP,
                )],
                Some(&rustix::event::Timespec {
                    tv_sec: 20,
                    tv_nsec: 0,
                }),
            );
            exit_code(refused)
        }
        other => {
            eprintln!("unknown role {other}");
            99
        }
    }
}

/// The exit code a hostile peer reports for descriptors sent where sealpipe expects none:
/// 0 (refused) where the kernel has `SO_PASSRIGHTS`, else 1 (queued, and disposed of by the
/// receiver without blocking).
fn refused_code() -> i32 {
    if sealpipe::capabilities().pass_rights {
        0
    } else {
        1
    }
}

/// Closes a lingering socket that was refused (still ours) without waiting for it.
fn disarm(sock: OwnedFd) {
    rustix::net::sockopt::set_socket_linger(&sock, None).unwrap();
}

/// Where a test puts a socket path for its peer.
const PATH_ENV: &str = "SEALPIPE_TEST_PATH";

/// 0 if the kernel refused the descriptors with `EPERM` (`SO_PASSRIGHTS`), 1 if it
/// accepted them, 2 on any other error.
fn exit_code(sent: Result<(), rustix::io::Errno>) -> i32 {
    match sent {
        Err(rustix::io::Errno::PERM) => 0,
        Ok(()) => 1,
        Err(e) => {
            eprintln!("unexpected send error {e}");
            2
        }
    }
}

fn raw_seqpacket() -> OwnedFd {
    rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

/// A private socket path, its directory removed on drop.
struct TempPath(std::path::PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        let dir = std::env::temp_dir().join(format!("sealpipe-bc-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        TempPath(dir)
    }
    fn path(&self) -> std::path::PathBuf {
        self.0.join("ep")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ----- the receiving side -----

/// Waits (at most 5 s) for the descriptor count to come back to `baseline`: descriptors
/// that are not shared memory are closed on sealpipe's background closer.
/// Waits up to 5 s (the background closer finishes disposals at its own pace) until
/// exactly `new` of the descriptors open now were not open at `baseline`, then asserts it.
fn assert_fds_settle(baseline: &common::Fds, new: usize, what: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    while baseline.opened_since().len() != new && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let opened = baseline.opened_since();
    assert_eq!(
        opened.len(),
        new,
        "{what}: descriptors left open: {opened:#?}"
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
    let baseline = common::fds();
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
    assert_fds_settle(&baseline, 0, "linger_region");
    expect_honest(&peer.channel);
    assert_eq!(peer.wait(), 0);
}

#[test]
fn try_recv_returns_at_once_with_a_lingering_socket() {
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let peer = common::spawn_peer(
        "try_recv_returns_at_once_with_a_lingering_socket",
        "linger_region",
    );
    let baseline = common::fds();
    wait_until_queued(&peer.channel);
    let start = Instant::now();
    let err = peer.channel.try_recv(&Policy::immutable()).unwrap_err();
    let took = start.elapsed();
    eprintln!("try_recv, region 0 a socket lingering 5 s: {took:?}");
    assert!(matches!(err, Error::NotMemfd { index: 0, .. }), "{err:?}");
    assert!(took < MARGIN, "took {took:?}");
    assert_fds_settle(&baseline, 0, "try_recv");
    expect_honest(&peer.channel);
    assert_eq!(peer.wait(), 0);
}

#[test]
fn a_flood_of_lingering_sockets_keeps_every_deadline() {
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let peer = common::spawn_peer(
        "a_flood_of_lingering_sockets_keeps_every_deadline",
        "linger_flood",
    );
    let baseline = common::fds();
    let start = Instant::now();
    for i in 0..20 {
        let t = Instant::now();
        let err = peer
            .channel
            .recv_timeout(&Policy::immutable(), T)
            .unwrap_err();
        assert!(
            matches!(err, Error::NotMemfd { index: 0, .. }),
            "{i}: {err:?}"
        );
        assert!(
            t.elapsed() < DEADLINE + MARGIN,
            "{i}: took {:?}",
            t.elapsed()
        );
    }
    // 200 descriptors, each of which would have taken 5 s to close in this thread.
    eprintln!("20 messages of 10 lingering sockets: {:?}", start.elapsed());
    assert_fds_settle(&baseline, 0, "flood");
    expect_honest(&peer.channel);
    assert_eq!(peer.wait(), 0);
}

#[test]
fn surplus_descriptors_beyond_the_policy_do_not_block() {
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let peer = common::spawn_peer(
        "surplus_descriptors_beyond_the_policy_do_not_block",
        "linger_excess",
    );
    let baseline = common::fds();
    wait_until_queued(&peer.channel);
    let start = Instant::now();
    let err = peer
        .channel
        .recv_timeout(&Policy::immutable().max_regions(1), DEADLINE)
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(
            err,
            Error::PolicyLimit {
                what: "regions",
                got: 3,
                max: 1
            }
        ),
        "{err:?}"
    );
    assert!(took < DEADLINE + MARGIN, "took {took:?}");
    assert_fds_settle(&baseline, 0, "surplus");
    expect_honest(&peer.channel);
    assert_eq!(peer.wait(), 0);
}

#[test]
fn dropping_a_channel_with_lingering_sockets_queued_does_not_block() {
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let mut peer = common::spawn_peer(
        "dropping_a_channel_with_lingering_sockets_queued_does_not_block",
        "linger_flood",
    );
    let baseline = common::fds();
    // Wait for the honest message at the end of the flood: everything is queued (20
    // messages of 16 + 8 * 10 bytes, then 16 + 8 + 6).
    let end = Instant::now() + T;
    while rustix::io::ioctl_fionread(&peer.channel).unwrap_or(0) < 20 * 96 + 30
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (_spare, other) = Channel::pair().unwrap();
    let channel = std::mem::replace(&mut peer.channel, other);
    let start = Instant::now();
    drop(channel);
    let took = start.elapsed();
    eprintln!("drop of a channel with 200 lingering sockets queued: {took:?}");
    assert!(took < MARGIN, "took {took:?}");
    drop(_spare);
    assert_fds_settle(&baseline, 1, "drop"); // the replacement channel in `peer`
    assert_eq!(peer.wait(), 0);
}

#[test]
fn one_hostile_client_does_not_stall_accept_for_the_others() {
    use sealpipe::{HandshakeConfig, Listener};
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let dir = TempPath::new("accept");
    let path = dir.path();
    let mut listener = Listener::bind(&path, &HandshakeConfig::new().timeout(T)).unwrap();
    let peer = common::spawn_peer_with(
        "one_hostile_client_does_not_stall_accept_for_the_others",
        "hostile_client",
        |c| {
            c.env(PATH_ENV, &path);
        },
    );
    std::thread::sleep(Duration::from_millis(300)); // the hostile client is in first
    let honest_path = path.clone();
    let honest = std::thread::spawn(move || {
        let ch = Channel::connect(&honest_path, &HandshakeConfig::new().timeout(T)).unwrap();
        let region = Region::new(4096).unwrap().seal().unwrap();
        ch.send_timeout(b"honest", &[&region], T).unwrap();
        ch
    });
    let start = Instant::now();
    let accepted = listener.accept_timeout(DEADLINE).unwrap();
    let took = start.elapsed();
    eprintln!("accept with a hostile client pending: {took:?}");
    assert!(took < DEADLINE + MARGIN, "took {took:?}");
    expect_honest(&accepted);
    let _client = honest.join().unwrap();
    // Dropping the listener with the hostile connection still pending.
    let start = Instant::now();
    drop(listener);
    assert!(
        start.elapsed() < MARGIN,
        "listener drop took {:?}",
        start.elapsed()
    );
    assert_eq!(
        peer.wait(),
        refused_code(),
        "the hostile client's descriptors were not refused"
    );
}

#[test]
fn connect_to_a_hostile_server_keeps_its_deadline() {
    use sealpipe::HandshakeConfig;
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let dir = TempPath::new("connect");
    let path = dir.path();
    let peer = common::spawn_peer_with(
        "connect_to_a_hostile_server_keeps_its_deadline",
        "hostile_server",
        |c| {
            c.env(PATH_ENV, &path);
        },
    );
    let ready = peer.channel.recv_timeout(&Policy::immutable(), T).unwrap();
    assert_eq!(ready.payload(), b"listening");
    let baseline = common::fds();
    let start = Instant::now();
    let err = Channel::connect(&path, &HandshakeConfig::new().timeout(DEADLINE)).unwrap_err();
    let took = start.elapsed();
    eprintln!("connect(1 s) to a server sending a lingering socket: {took:?}, {err}");
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(took < DEADLINE + MARGIN, "took {took:?}");
    assert_fds_settle(&baseline, 0, "connect");
    assert_eq!(
        peer.wait(),
        refused_code(),
        "the server's descriptors were not refused"
    );
}

#[test]
fn ring_channel_refuses_descriptors_after_setup() {
    use sealpipe::ring::{Consumer, RingOptions};
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let peer = common::spawn_peer(
        "ring_channel_refuses_descriptors_after_setup",
        "ring_producer",
    );
    let common::Peer { mut child, channel } = peer;
    let mut rx = Consumer::setup(channel, &RingOptions::new(1024).timeout(T)).unwrap();
    let mut out = Vec::new();
    rx.recv_timeout(&mut out, T).unwrap();
    assert_eq!(out, b"honest");
    let start = Instant::now();
    drop(rx);
    assert!(
        start.elapsed() < MARGIN,
        "ring drop took {:?}",
        start.elapsed()
    );
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(refused_code()),
        "the producer's descriptor was not refused"
    );
}

#[cfg(feature = "tokio")]
#[test]
fn async_recv_keeps_its_deadline_with_a_lingering_socket() {
    use sealpipe::asyncio::AsyncChannel;
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let mut peer = common::spawn_peer(
        "async_recv_keeps_its_deadline_with_a_lingering_socket",
        "linger_region",
    );
    let baseline = common::fds();
    wait_until_queued(&peer.channel);
    let (_spare, other) = Channel::pair().unwrap();
    let channel = std::mem::replace(&mut peer.channel, other);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let channel = rt.block_on(async move {
        let ch = AsyncChannel::new(channel).unwrap();
        let start = Instant::now();
        let res = tokio::time::timeout(DEADLINE, ch.recv(&Policy::immutable())).await;
        let took = start.elapsed();
        eprintln!("async recv (1 s), region 0 a socket lingering 5 s: {took:?}");
        let err = res.expect("deadline missed").unwrap_err();
        assert!(matches!(err, Error::NotMemfd { index: 0, .. }), "{err:?}");
        assert!(took < DEADLINE + MARGIN, "took {took:?}");
        ch.into_inner()
    });
    drop(rt);
    drop(_spare);
    assert_fds_settle(&baseline, 1, "async"); // the replacement channel in `peer`
    expect_honest(&channel);
    drop(channel);
    assert_eq!(peer.wait(), 0);
}

/// In a child started by the test below, in place of `worker_channel`: before any
/// handshake, sends a lingering socket on the inherited channel; if that is refused, sends
/// 7 bytes of garbage instead. Then exits.
#[allow(unsafe_code)]
fn hostile_spawn_child() -> ! {
    use std::os::fd::FromRawFd;
    // SAFETY: `spawn` put the child's end of the pair on this number for this process
    // (named in SEALPIPE_FD), and nothing else in this process owns it.
    let ch = unsafe { OwnedFd::from_raw_fd(sealpipe::spawn::CHILD_FD) };
    let (sock, _server) = lingering_socket();
    let sent = common::forge::try_send_raw(
        ch.as_fd(),
        &common::forge::regions_message(&[4096]),
        &[sock.as_fd()],
    );
    disarm(sock);
    if sent.is_err() {
        let _ = common::forge::try_send_raw(ch.as_fd(), b"refused", &[]);
    }
    std::process::exit(0)
}

#[test]
fn spawn_handshake_with_a_hostile_child_keeps_its_deadline() {
    use sealpipe::handshake::HandshakeFailure;
    const NAME: &str = "spawn_handshake_with_a_hostile_child_keeps_its_deadline";
    if std::env::var(common::ROLE_ENV).as_deref() == Ok("hostile_spawn_child") {
        hostile_spawn_child();
    }
    let _serial = common::serial();
    let baseline = common::fds();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([NAME, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(common::ROLE_ENV, "hostile_spawn_child")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let start = Instant::now();
    let err = sealpipe::spawn::spawn(&mut cmd).unwrap_err();
    let took = start.elapsed();
    eprintln!("spawn with a child sending a lingering socket first: {took:?}, {err}");
    let Error::Handshake {
        failure: HandshakeFailure::Protocol(reason),
    } = &err
    else {
        panic!("{err:?}");
    };
    if sealpipe::capabilities().pass_rights {
        // Refused at the socket: what arrived is the garbage sent instead.
        assert_ne!(*reason, "descriptors sent during the handshake");
    } else {
        assert_eq!(*reason, "descriptors sent during the handshake");
    }
    // The child starts (a test binary) and exits at once; no 5 s linger in between.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_fds_settle(&baseline, 0, "spawn");
}

#[cfg(feature = "tokio")]
#[test]
fn async_connect_to_a_hostile_server_keeps_its_deadline() {
    use sealpipe::asyncio::AsyncChannel;
    use sealpipe::HandshakeConfig;
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let dir = TempPath::new("aconnect");
    let path = dir.path();
    let peer = common::spawn_peer_with(
        "async_connect_to_a_hostile_server_keeps_its_deadline",
        "hostile_server",
        |c| {
            c.env(PATH_ENV, &path);
        },
    );
    let ready = peer.channel.recv_timeout(&Policy::immutable(), T).unwrap();
    assert_eq!(ready.payload(), b"listening");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let err = rt
        .block_on(AsyncChannel::connect(
            &path,
            &HandshakeConfig::new().timeout(DEADLINE),
        ))
        .unwrap_err();
    let took = start.elapsed();
    eprintln!("async connect(1 s) to a server sending a lingering socket: {took:?}");
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(took < DEADLINE + MARGIN, "took {took:?}");
    drop(rt);
    assert_eq!(
        peer.wait(),
        refused_code(),
        "the server's descriptors were not refused"
    );
}

#[test]
fn ring_setup_keeps_its_deadline_with_a_lingering_socket() {
    use sealpipe::ring::{Consumer, RingOptions};
    common::peer_main(hostile_peer);
    let _serial = common::serial();
    let mut peer = common::spawn_peer(
        "ring_setup_keeps_its_deadline_with_a_lingering_socket",
        "ring_offer_linger",
    );
    wait_until_queued(&peer.channel);
    let (_spare, other) = Channel::pair().unwrap();
    let channel = std::mem::replace(&mut peer.channel, other);
    let start = Instant::now();
    let err = Consumer::setup(channel, &RingOptions::new(1024).timeout(DEADLINE)).unwrap_err();
    let took = start.elapsed();
    eprintln!("ring setup (1 s), offer a socket lingering 5 s: {took:?}, {err}");
    assert!(matches!(err, Error::NotMemfd { index: 0, .. }), "{err:?}");
    assert!(took < DEADLINE + MARGIN, "took {took:?}");
    drop(_spare);
    assert_eq!(peer.wait(), 0);
}
