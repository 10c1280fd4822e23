//! Peers that die: killed while we block in `recv` or `send`, killed mid-handshake on
//! either side, a producer killed mid-stream and restarted, a peer exiting with our
//! messages unread. Every test checks that no descriptor leaked.

mod common;

use std::fs;
use std::thread;
use std::time::Duration;

use common::endpoints::*;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{kill_process, Pid, Signal};
use sealpipe::{Channel, Error, HandshakeConfig, Listener, Policy, Region};

const T: Duration = Duration::from_secs(20);

fn kill_after(pid: u32, delay: Duration) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(delay);
        let pid = Pid::from_raw(pid as i32).unwrap();
        kill_process(pid, Signal::KILL).unwrap();
    })
}

#[test]
fn sigkill_while_blocked_in_recv_gives_peer_closed() {
    common::peer_main(|_, ctl| {
        wait_for_parent(&ctl);
        0
    });
    let _serial = common::serial();
    let before = common::fds();
    {
        let peer = common::spawn_peer("sigkill_while_blocked_in_recv_gives_peer_closed", "idle");
        let killer = kill_after(peer.pid(), Duration::from_millis(200));
        let r = peer.channel.recv_timeout(&Policy::immutable(), T);
        assert!(matches!(r, Err(Error::PeerClosed)), "{r:?}");
        killer.join().unwrap();
        assert_eq!(peer.wait(), 128 + 9);
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn peer_pidfd_ends_recv_when_the_socket_outlives_the_peer() {
    common::peer_main(|_, ctl| {
        // Leak our end into a grandchild, so the socket stays open after we die.
        rustix::io::fcntl_setfd(&ctl, rustix::io::FdFlags::empty()).unwrap();
        #[allow(clippy::zombie_processes)] // we are killed; init reaps the grandchild
        let grandchild = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        report(&ctl, &grandchild.id().to_string());
        thread::sleep(T);
        0
    });
    let _serial = common::serial();
    let before = common::fds();
    {
        let peer = common::spawn_peer(
            "peer_pidfd_ends_recv_when_the_socket_outlives_the_peer",
            "leaker",
        );
        assert!(peer.channel.peer_pidfd().is_some());
        let grandchild: u32 = read_report(&peer.channel).parse().unwrap();
        let killer = kill_after(peer.pid(), Duration::from_millis(200));
        let r = peer.channel.recv_timeout(&Policy::immutable(), T);
        assert!(matches!(r, Err(Error::PeerClosed)), "{r:?}");
        // The socket itself is still open at the other end: only the pidfd told us.
        let mut fds = [PollFd::new(&peer.channel, PollFlags::RDHUP)];
        let zero = Timespec::try_from(Duration::ZERO).unwrap();
        assert_eq!(poll(&mut fds, Some(&zero)).unwrap(), 0);
        assert!(matches!(
            peer.channel.try_recv(&Policy::immutable()),
            Err(Error::PeerClosed)
        ));
        killer.join().unwrap();
        kill_process(Pid::from_raw(grandchild as i32).unwrap(), Signal::KILL).unwrap();
        assert_eq!(peer.wait(), 128 + 9);
    }
    // No leak: every descriptor this test opened is closed (one open before it may have
    // been closed meanwhile by the library's background work: see `assert_no_new_fds`).
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn sigkill_while_blocked_in_send_gives_peer_closed() {
    common::peer_main(|_, _ctl| {
        // Never reads.
        thread::sleep(T);
        0
    });
    let _serial = common::serial();
    let before = common::fds();
    {
        let peer = common::spawn_peer("sigkill_while_blocked_in_send_gives_peer_closed", "idle");
        let mut sent = 0;
        loop {
            match peer.channel.try_send(&[0u8; 1024], &[]) {
                Ok(()) => sent += 1,
                Err(Error::WouldBlock) => break,
                Err(e) => panic!("{e:?}"),
            }
            assert!(sent < 1_000_000, "socket never filled");
        }
        let killer = kill_after(peer.pid(), Duration::from_millis(200));
        let r = peer.channel.send_timeout(&[0u8; 1024], &[], T);
        assert!(matches!(r, Err(Error::PeerClosed)), "{r:?}");
        killer.join().unwrap();
        assert_eq!(peer.wait(), 128 + 9);
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn sigkill_mid_handshake_fails_that_connection_only() {
    if std::env::var_os("SEALPIPE_TEST_EXIT_EARLY").is_some() {
        std::process::exit(3); // a "worker" that dies before its handshake
    }
    common::peer_main(|role, ctl| match role {
        // A client that sends HELLO and then hangs, waiting to be killed.
        "client" => {
            let s = raw_connect(&path_env());
            raw_send(&s, &hello());
            assert!(raw_recv(&s).is_some(), "expected CHALLENGE");
            report(&ctl, "mid-handshake");
            thread::sleep(T);
            0
        }
        // A server that accepts, reads HELLO and then hangs, waiting to be killed.
        "server" => {
            let l = raw_listen(&path_env());
            report(&ctl, "listening");
            let s = raw_accept(&l);
            assert!(raw_recv(&s).is_some(), "expected HELLO");
            report(&ctl, "mid-handshake");
            thread::sleep(T);
            0
        }
        _ => {
            Channel::connect(path_env(), &HandshakeConfig::new()).unwrap();
            0
        }
    });
    let _serial = common::serial();
    let dir = TempDir::new("midhandshake");
    let test = "sigkill_mid_handshake_fails_that_connection_only";
    let before = common::fds();
    {
        // The client dies mid-handshake: accept reports it, then serves the next one.
        let path = dir.join("ep");
        let mut l = Listener::bind(&path, &HandshakeConfig::new().timeout(T)).unwrap();
        let client = spawn_at(test, "client", &path);
        let pid = client.pid();
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = thread::spawn(move || {
            assert_eq!(read_report(&client.channel), "mid-handshake");
            kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
            tx.send(client.wait()).unwrap();
        });
        let e = l.accept_timeout(T).unwrap_err();
        assert!(matches!(e, Error::PeerClosed), "{e}");
        watcher.join().unwrap();
        assert_eq!(rx.recv().unwrap(), 128 + 9);
        let good = spawn_at(test, "good", &path);
        l.accept_timeout(T).unwrap();
        assert_eq!(good.wait(), 0);

        // The server dies mid-handshake: connect reports it.
        let spath = dir.join("server");
        let server = spawn_at(test, "server", &spath);
        assert_eq!(read_report(&server.channel), "listening");
        let connector = thread::spawn(move || Channel::connect(&spath, &HandshakeConfig::new()));
        assert_eq!(read_report(&server.channel), "mid-handshake");
        kill_process(Pid::from_raw(server.pid() as i32).unwrap(), Signal::KILL).unwrap();
        let e = connector.join().unwrap().unwrap_err();
        assert!(matches!(e, Error::PeerClosed), "{e}");
        assert_eq!(server.wait(), 128 + 9);

        // A spawned worker that dies before its handshake: spawn fails, child reaped.
        let exe = std::env::current_exe().unwrap();
        let mut cmd = std::process::Command::new(exe);
        cmd.args([test, "--exact"])
            .env("SEALPIPE_TEST_EXIT_EARLY", "1")
            .stdout(std::process::Stdio::null());
        let e = sealpipe::spawn::spawn(&mut cmd).unwrap_err();
        assert!(matches!(e, Error::PeerClosed), "{e}");
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn restarted_producer_reconnects_without_loss_or_duplication() {
    common::peer_main(|_, _ctl| {
        // Producer: connects, learns where to resume, then sends numbered regions as fast
        // as the socket takes them, until killed (first run) or `end` (second run).
        let ch = Channel::connect(path_env(), &HandshakeConfig::new()).unwrap();
        let start = ch.recv_timeout(&Policy::immutable(), T).unwrap();
        let bounds: Vec<u64> = start
            .payload()
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        for seq in bounds[0]..bounds[1] {
            let mut r = Region::new(4096).unwrap();
            r.write_at(0, &seq.to_le_bytes()).unwrap();
            ch.send_timeout(&seq.to_le_bytes(), &[&r.seal().unwrap()], T)
                .unwrap();
        }
        0
    });
    let _serial = common::serial();
    let dir = TempDir::new("restart");
    let path = dir.join("ep");
    let test = "restarted_producer_reconnects_without_loss_or_duplication";
    let before = common::fds();
    {
        let mut l = Listener::bind(&path, &HandshakeConfig::new()).unwrap();
        let mut received: Vec<u64> = Vec::new();
        let mut next = 0u64;
        let receive = |ch: &Channel, received: &mut Vec<u64>, next: &mut u64| loop {
            match ch.recv_timeout(&Policy::immutable(), T) {
                Ok(msg) => {
                    let seq = u64::from_le_bytes(msg.payload().try_into().unwrap());
                    let in_region = msg.regions()[0].read_value::<u64>(0).unwrap();
                    assert_eq!(seq, in_region);
                    received.push(seq);
                    *next = seq + 1;
                    if received.len() == 20 {
                        return true; // time to kill the producer
                    }
                }
                Err(Error::PeerClosed) => return false,
                Err(e) => panic!("{e:?}"),
            }
        };

        // First run: killed mid-stream, with messages still queued in the socket.
        let first = spawn_at(test, "producer", &path);
        let ch = l.accept_timeout(T).unwrap();
        let start: Vec<u8> = [0u64, u64::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        ch.send_timeout(&start, &[], T).unwrap();
        assert!(receive(&ch, &mut received, &mut next));
        kill_process(Pid::from_raw(first.pid() as i32).unwrap(), Signal::KILL).unwrap();
        // Everything the producer's send() accepted before it died is still delivered, in
        // order, then PeerClosed.
        assert!(!receive(&ch, &mut received, &mut next));
        assert_eq!(first.wait(), 128 + 9);
        drop(ch);
        let at_restart = next;
        assert!(at_restart >= 20);

        // Second run: resumes exactly where the consumer stands.
        let second = spawn_at(test, "producer", &path);
        let ch = l.accept_timeout(T).unwrap();
        let end = at_restart + 50;
        let start: Vec<u8> = [at_restart, end]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        ch.send_timeout(&start, &[], T).unwrap();
        assert!(!receive(&ch, &mut received, &mut next));
        assert_eq!(second.wait(), 0);
        drop(ch);

        let expected: Vec<u64> = (0..end).collect();
        assert_eq!(received, expected, "no message lost or duplicated");
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn messages_sent_before_exit_survive_a_reset() {
    common::peer_main(|_, ch| {
        // Send ten messages, read none of the parent's, exit once it says "go".
        for i in 0..10u8 {
            ch.send_timeout(&[i], &[], T).unwrap();
        }
        while !std::path::Path::new(&path_env()).exists() {
            thread::sleep(Duration::from_millis(1));
        }
        0
    });
    let _serial = common::serial();
    let dir = TempDir::new("reset");
    let go = dir.join("go");
    let before = common::fds();
    {
        let peer = spawn_at("messages_sent_before_exit_survive_a_reset", "sender", &go);
        // Leave unread data in the peer's queue: its exit then resets the connection
        // (ECONNRESET), which must not hide the messages it sent first.
        peer.channel.send_timeout(b"never read", &[], T).unwrap();
        fs::write(&go, b"").unwrap();
        let mut child = peer.child;
        assert!(child.wait().unwrap().success());
        let mut got = Vec::new();
        loop {
            match peer.channel.recv_timeout(&Policy::immutable(), T) {
                Ok(m) => got.push(m.payload()[0]),
                Err(Error::PeerClosed) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}
