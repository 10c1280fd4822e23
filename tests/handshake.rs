//! The handshake of PROTOCOL.md between real processes: a wrong or missing secret, replayed
//! messages, peers of another user judged by policy, hostile handshake messages; and the
//! same handshake performed by an independent Python 3 peer
//! (`tests/python/handshake_peer.py`, standard library only) against the Rust side, in
//! both directions.
//!
//! `python3` is guaranteed on every machine of this project: a missing interpreter fails
//! these tests, it does not skip them (as in `python_interop.rs`).

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::endpoints::*;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::SendFlags;
use sealpipe::handshake::HandshakeFailure;
use sealpipe::wire::{self, HandshakeMessage};
use sealpipe::{
    Channel, Error, HandshakeConfig, Listener, PeerPolicy, Policy, RefusalReason, Region, Secret,
};

const T: Duration = Duration::from_secs(20);

/// A long secret, so that key derivation spans several BLAKE3 chunks (tree hashing).
fn secret_bytes(seed: u8) -> Vec<u8> {
    (0..3000u32)
        .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The Python interpreter; fails the test where there is none.
fn python() -> &'static str {
    let ok = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`python3 --version` failed: python3 (3.8 or newer) must be installed"
    );
    "python3"
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/handshake_peer.py")
}

fn private_dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sealpipe-py-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    p
}

/// Starts the Python peer; collect its result with [`finish`].
fn start(py: &str, mode: &str, path: &Path, secret: &str) -> std::process::Child {
    Command::new(py)
        .arg(script())
        .args([mode, path.to_str().unwrap(), secret])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (at most 60 s) for the Python peer and returns its output.
fn finish(mut child: std::process::Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("python peer did not exit");
        }
        thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn python_client_handshakes_with_rust_listener() {
    let _serial = common::serial();
    let py = python();
    let dir = private_dir("client");
    let path = dir.join("ep");
    let key = secret_bytes(7);
    let before = common::fds();
    {
        let config = HandshakeConfig::new().secret(Secret::new(&key).unwrap());
        let mut l = Listener::bind(&path, &config).unwrap();

        // Right secret: handshake, then a sealed memfd region made by Python.
        let child = start(py, "client", &path, &hex(&key));
        let ch = l.accept_timeout(T).unwrap();
        assert_eq!(ch.peer_credentials().unwrap().pid, child.id());
        let msg = ch.recv_timeout(&Policy::immutable(), T).unwrap();
        assert_eq!(msg.payload(), b"hello from python");
        assert_eq!(msg.regions()[0].as_bytes().unwrap(), b"python region");
        ch.send_timeout(b"hello from rust", &[], T).unwrap();
        let out = finish(child);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "hello from rust"
        );
        drop((msg, ch));

        // Wrong secret: Python refuses our proof and tells us so.
        let child = start(py, "client", &path, &hex(&secret_bytes(9)));
        let e = l.accept_timeout(T).unwrap_err();
        assert_eq!(
            failure(&e),
            Some(&HandshakeFailure::Refused(RefusalReason::BadProof))
        );
        let out = finish(child);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bad proof");

        // No secret: we refuse, and Python hears the reason code.
        let child = start(py, "client", &path, "-");
        let e = l.accept_timeout(T).unwrap_err();
        assert_eq!(
            failure(&e),
            Some(&HandshakeFailure::SecretPresence { ours: true })
        );
        let out = finish(child);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused 3");
    }
    let _ = fs::remove_dir_all(&dir);
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn rust_client_handshakes_with_python_listener() {
    let _serial = common::serial();
    let py = python();
    let dir = private_dir("server");
    let key = secret_bytes(5);
    let before = common::fds();
    {
        for (i, (theirs, expect_ok)) in [(hex(&key), true), (hex(&secret_bytes(6)), false)]
            .into_iter()
            .enumerate()
        {
            let path = dir.join(format!("ep{i}"));
            let child = start(py, "server", &path, &theirs);
            let deadline = Instant::now() + T;
            while !path.exists() {
                assert!(Instant::now() < deadline, "python never bound");
                thread::sleep(Duration::from_millis(5));
            }
            let config = HandshakeConfig::new().secret(Secret::new(&key).unwrap());
            match Channel::connect(&path, &config) {
                Ok(ch) if expect_ok => {
                    ch.send_timeout(b"ping", &[], T).unwrap();
                    let reply = ch.recv_timeout(&Policy::immutable(), T).unwrap();
                    assert_eq!(reply.payload(), b"pong:ping");
                    let out = finish(child);
                    assert!(out.status.success(), "{out:?}");
                }
                Err(e) if !expect_ok => {
                    // Python's proof fails our check first; we tell it why.
                    assert_eq!(failure(&e), Some(&HandshakeFailure::BadProof), "{e}");
                    let out = finish(child);
                    assert_eq!(out.status.code(), Some(2), "{out:?}");
                    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused 4");
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let _ = fs::remove_dir_all(&dir);
    common::assert_no_new_fds(&before, "descriptors leaked");
}

// ----- binding the proofs to the connection (PROTOCOL.md, "Binding") -----

#[test]
fn python_peer_computes_the_known_answer_vectors_of_protocol_md() {
    let _serial = common::serial();
    let py = python();
    let out = Command::new(py)
        .arg(script())
        .arg("vectors")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md")).unwrap();
    let block = doc.split("<!-- handshake-vectors -->").nth(1).unwrap();
    let documented: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(" = "))
        .collect();
    let computed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    assert_eq!(documented.len(), 7);
    assert_eq!(documented, computed);
}

/// Starts the relay of `handshake_peer.py` on the listener at `path` and waits until it
/// has taken the path.
fn start_relay(py: &str, path: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut relay = Command::new(py)
        .arg(script())
        .args(["relay", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(relay.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening", "the relay did not start");
    relay
}

/// Accepts until a handshake fails, skipping the one `PathLost` the relay's rename causes.
fn accept_failure(l: &mut Listener) -> HandshakeFailure {
    let mut lost = 0;
    loop {
        match l.accept_timeout(T) {
            Err(Error::PathLost { .. }) => lost += 1,
            Err(Error::Handshake { failure }) => {
                assert!(lost <= 1, "PathLost is reported once");
                return failure;
            }
            other => panic!("the relayed connection must fail its handshake: {other:?}"),
        }
    }
}

#[test]
fn a_relay_between_client_and_listener_fails_on_both_sides() {
    let _serial = common::serial();
    let py = python();
    let dir = private_dir("relay");
    let path = dir.join("ep");
    let key = secret_bytes(3);
    let config = HandshakeConfig::new().secret(Secret::new(&key).unwrap());
    let mut l = Listener::bind(&path, &config).unwrap();

    // A Rust client: it finds the server's proof wrong (the relay's pid is in its view of
    // the server), refuses, and the listener hears why.
    let relay = start_relay(py, &path);
    let client = {
        let (path, config) = (path.clone(), config.clone());
        thread::spawn(move || Channel::connect(&path, &config))
    };
    assert_eq!(
        accept_failure(&mut l),
        HandshakeFailure::Refused(RefusalReason::BadProof)
    );
    let err = client.join().unwrap().unwrap_err();
    assert_eq!(failure(&err), Some(&HandshakeFailure::BadProof), "{err}");
    let out = finish(relay);
    assert!(out.status.success(), "{out:?}");

    // A client that accepts any server proof, to show the server's own check: the
    // client's proof, made for its half of the relay, fails at the listener.
    fs::remove_file(&path).unwrap(); // the first relay's socket
    fs::rename(dir.join("ep.real"), &path).unwrap(); // ours, back in place
    let relay = start_relay(py, &path);
    let child = start(py, "lenient-client", &path, &hex(&key));
    assert_eq!(accept_failure(&mut l), HandshakeFailure::BadProof);
    let out = finish(child);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused 4");
    let out = finish(relay);
    assert!(out.status.success(), "{out:?}");

    // Directly, under its new name, the listener still works for both.
    let real = dir.join("ep.real");
    let child = start(py, "client", &real, &hex(&key));
    let ch = l.accept_timeout(T).unwrap();
    ch.recv_timeout(&Policy::immutable(), T).unwrap();
    ch.send_timeout(b"direct", &[], T).unwrap();
    let out = finish(child);
    assert!(out.status.success(), "{out:?}");
    drop(l);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn rebind_refuses_a_path_someone_else_holds() {
    use rustix::net::{bind, listen, socket, AddressFamily, SocketAddrUnix, SocketType};
    let _serial = common::serial();
    let dir = private_dir("rebind");
    let path = dir.join("ep");
    let mut l = Listener::bind(&path, &HandshakeConfig::new()).unwrap();
    fs::rename(&path, dir.join("moved")).unwrap();
    let squatter = socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    bind(&squatter, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    listen(&squatter, 1).unwrap();
    assert!(matches!(l.try_accept(), Err(Error::PathLost { .. })));
    assert!(
        matches!(l.rebind(), Err(Error::AddressInUse { .. })),
        "a live socket at the path is never taken over"
    );
    // Once the squatter has gone, its stale socket file is replaced.
    drop(squatter);
    l.rebind().unwrap();
    let ch = thread::spawn({
        let path = path.clone();
        move || Channel::connect(&path, &HandshakeConfig::new())
    });
    l.accept_timeout(T).unwrap();
    ch.join().unwrap().unwrap();
    drop(l);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_peer_without_bound_proofs_is_refused_as_unbound() {
    use rustix::net::{connect, socket, AddressFamily, SocketAddrUnix, SocketType};
    let _serial = common::serial();
    let dir = private_dir("unbound");
    let path = dir.join("ep");
    let mut l = Listener::bind(&path, &HandshakeConfig::new()).unwrap();
    let sock = socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    connect(&sock, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    // An older revision's HELLO: features without BOUND.
    let (buf, n) = sealpipe::wire::encode_handshake(&sealpipe::wire::HandshakeMessage::Hello {
        features: 0,
        nonce: [7; 32],
    });
    rustix::net::send(&sock, &buf[..n], rustix::net::SendFlags::NOSIGNAL).unwrap();
    let e = l.accept_timeout(T).unwrap_err();
    assert_eq!(failure(&e), Some(&HandshakeFailure::Unbound), "{e}");
    let mut reply = [0u8; 64];
    let (n, _) = rustix::net::recv(&sock, &mut reply, rustix::net::RecvFlags::empty()).unwrap();
    assert_eq!(
        &reply[n - 2..n],
        &2u16.to_le_bytes(),
        "REJECT 2 (incompatible)"
    );
    drop(l);
    let _ = fs::remove_dir_all(&dir);
}

// ----- between Rust processes: secrets, replays, credentials, hostile messages -----

const RIGHT: &str = "correct horse battery staple 0123";
const WRONG: &str = "incorrect horse battery staple 99";

fn secret(s: &str) -> Secret {
    Secret::new(s.as_bytes()).unwrap()
}

#[test]
fn wrong_secret_is_refused_on_both_sides() {
    common::peer_main(|role, _ctl| {
        let config = match role {
            "right" => HandshakeConfig::new().secret(secret(RIGHT)),
            "wrong" => HandshakeConfig::new().secret(secret(WRONG)),
            _ => HandshakeConfig::new(),
        };
        match (role, Channel::connect(path_env(), &config)) {
            ("right", Ok(ch)) => {
                ch.send_timeout(b"hi", &[], T).unwrap();
                0
            }
            (_, Err(e)) => {
                let text = format!("{e} {e:?}");
                assert!(!text.contains("horse"), "secret leaked: {text}");
                match (role, failure(&e)) {
                    ("wrong", Some(HandshakeFailure::BadProof)) => 0,
                    ("none", Some(HandshakeFailure::Refused(RefusalReason::SecretPresence))) => 0,
                    _ => {
                        eprintln!("{role}: unexpected {e:?}");
                        1
                    }
                }
            }
            (_, Ok(_)) => 2,
        }
    });
    let _serial = common::serial();
    let dir = TempDir::new("wrong_secret");
    let path = dir.join("ep");
    let before = common::fds();
    {
        let mut l = Listener::bind(&path, &HandshakeConfig::new().secret(secret(RIGHT))).unwrap();
        let test = "wrong_secret_is_refused_on_both_sides";

        let wrong = spawn_at(test, "wrong", &path);
        let e = l.accept_timeout(T).unwrap_err();
        assert_eq!(
            failure(&e),
            Some(&HandshakeFailure::Refused(RefusalReason::BadProof)),
            "{e}"
        );
        assert!(!format!("{e} {e:?} {l:?}").contains("horse"));
        assert_eq!(wrong.wait(), 0);

        let none = spawn_at(test, "none", &path);
        let e = l.accept_timeout(T).unwrap_err();
        assert_eq!(
            failure(&e),
            Some(&HandshakeFailure::SecretPresence { ours: true })
        );
        assert_eq!(none.wait(), 0);

        // The listener still serves, and the right secret gets through.
        let right = spawn_at(test, "right", &path);
        let ch = l.accept_timeout(T).unwrap();
        assert_eq!(ch.peer_credentials().unwrap().pid, right.pid());
        assert_eq!(
            ch.recv_timeout(&Policy::immutable(), T).unwrap().payload(),
            b"hi"
        );
        assert_eq!(right.wait(), 0);
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn replayed_handshake_is_refused() {
    common::peer_main(|role, ctl| {
        let config = HandshakeConfig::new().secret(secret(RIGHT));
        match role {
            // An honest client, talking through the parent's recording proxy. The proxy is a
            // relay, so the server's proof (bound to the proxy's connection) is wrong here.
            "honest" => match Channel::connect(path_env(), &config) {
                Err(e) if failure(&e) == Some(&HandshakeFailure::BadProof) => 0,
                other => {
                    eprintln!("honest client through the relay: {other:?}");
                    1
                }
            },
            // Replays an honest client's HELLO to the real listener: the CHALLENGE it gets
            // carries a fresh nonce, so any recorded proof is worthless.
            "replay_client" => {
                let hello = ctl.recv_timeout(&Policy::immutable(), T).unwrap();
                let recorded = ctl.recv_timeout(&Policy::immutable(), T).unwrap();
                let s = raw_connect(&path_env());
                raw_send(&s, hello.payload());
                let challenge = raw_recv(&s).unwrap();
                assert_eq!(challenge[6], wire::KIND_CHALLENGE as u8);
                assert_ne!(
                    challenge[20..52],
                    recorded.payload()[20..52],
                    "a fresh server nonce"
                );
                raw_send(&s, &encode(&HandshakeMessage::Proof { proof: [9; 32] }));
                let reply = wire::decode_handshake(&raw_recv(&s).unwrap()).unwrap();
                assert_eq!(
                    reply,
                    HandshakeMessage::Reject {
                        reason: RefusalReason::BadProof.code()
                    }
                );
                assert!(raw_recv(&s).is_none(), "listener must close");
                0
            }
            // An honest client facing a listener that replays recorded server messages.
            "victim" => match Channel::connect(path_env(), &config) {
                Err(e) if failure(&e) == Some(&HandshakeFailure::BadProof) => 0,
                other => {
                    eprintln!("victim: {other:?}");
                    1
                }
            },
            _ => 99,
        }
    });
    let _serial = common::serial();
    let dir = TempDir::new("replay");
    let (real, proxy, fake) = (dir.join("real"), dir.join("proxy"), dir.join("fake"));
    let test = "replayed_handshake_is_refused";
    let before = common::fds();
    {
        let mut l = Listener::bind(&real, &HandshakeConfig::new().secret(secret(RIGHT))).unwrap();
        let server = thread::spawn(move || {
            let relayed = l.accept_timeout(T).unwrap_err();
            assert_eq!(
                failure(&relayed),
                Some(&HandshakeFailure::Refused(RefusalReason::BadProof))
            );
            let replayed = l.accept_timeout(T).unwrap_err();
            assert_eq!(failure(&replayed), Some(&HandshakeFailure::BadProof));
        });

        // 1. Record an honest client's attempt through a relay (which the binding defeats).
        let proxy_l = raw_listen(&proxy);
        let honest = spawn_at(test, "honest", &proxy);
        let c = raw_accept(&proxy_l);
        let s = raw_connect(&real);
        let (mut from_client, mut from_server) = (Vec::new(), Vec::new());
        loop {
            let mut fds = [
                PollFd::new(&c, PollFlags::IN),
                PollFd::new(&s, PollFlags::IN),
            ];
            assert!(poll(&mut fds, Some(&Timespec::try_from(T).unwrap())).unwrap() > 0);
            let (c_ready, s_ready) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
            if c_ready {
                let Some(m) = raw_recv(&c) else { break };
                raw_send(&s, &m);
                from_client.push(m);
            }
            if s_ready {
                let Some(m) = raw_recv(&s) else { break };
                raw_send(&c, &m);
                from_server.push(m);
            }
        }
        drop((c, s, proxy_l));
        assert_eq!(honest.wait(), 0);
        assert!(!from_client.is_empty() && !from_server.is_empty());
        assert_eq!(from_client[0][6], wire::KIND_HELLO as u8);
        assert_eq!(from_server[0][6], wire::KIND_CHALLENGE as u8);

        // 2. Replay the client's HELLO to the listener: the fresh server nonce makes any
        // recorded proof worthless.
        let replayer = spawn_at(test, "replay_client", &real);
        replayer.channel.send(&from_client[0], &[]).unwrap();
        replayer.channel.send(&from_server[0], &[]).unwrap();
        assert_eq!(replayer.wait(), 0);
        server.join().unwrap();

        // 3. Replay the server's CHALLENGE to a new client: its fresh nonce defeats it.
        let fake_l = raw_listen(&fake);
        let victim = spawn_at(test, "victim", &fake);
        let v = raw_accept(&fake_l);
        assert_eq!(raw_recv(&v).unwrap()[6], wire::KIND_HELLO as u8);
        raw_send(&v, &from_server[0]);
        let reply = wire::decode_handshake(&raw_recv(&v).unwrap()).unwrap();
        assert_eq!(
            reply,
            HandshakeMessage::Reject {
                reason: RefusalReason::BadProof.code()
            }
        );
        assert_eq!(victim.wait(), 0);
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
#[ignore = "needs root: runs a peer as uid 65534 (.ci/run runs it as root)"]
fn peer_of_another_uid_is_judged_by_policy() {
    common::peer_main(|_role, ctl| {
        // Runs as uid 65534 and listens; admits root only where its policy says so.
        let dir = path_env();
        let mut admits_root = Listener::bind(
            dir.join("admits-root"),
            &HandshakeConfig::new().policy(PeerPolicy::allow(&[0], &[])),
        )
        .unwrap();
        let mut same_user = Listener::bind(dir.join("same-user"), &HandshakeConfig::new()).unwrap();
        report(&ctl, "ready");
        let mut out = Vec::new();
        // Root refuses us (its default policy): we hear why.
        out.push(format!(
            "{:?}",
            failure(&admits_root.accept_timeout(T).unwrap_err())
        ));
        // Root admits us: both sides know who the other is.
        let ch = admits_root.accept_timeout(T).unwrap();
        out.push(format!("uid {}", ch.peer_credentials().unwrap().uid));
        // Our default policy refuses root.
        match same_user.accept_timeout(T) {
            Err(Error::Handshake {
                failure: HandshakeFailure::PeerNotAllowed(c),
            }) => out.push(format!("refused uid {}", c.uid)),
            other => out.push(format!("{other:?}")),
        }
        report(&ctl, &out.join("; "));
        wait_for_parent(&ctl);
        0
    });
    let _serial = common::serial();
    common::require_root("to run a peer as uid 65534");
    let dir = TempDir::new("uid");
    std::os::unix::fs::chown(&dir.0, Some(65534), Some(65534)).unwrap();
    let before = common::fds();
    {
        let peer = common::spawn_peer_with("peer_of_another_uid_is_judged_by_policy", "", |c| {
            c.env(PATH_ENV, &dir.0).uid(65534).gid(65534);
        });
        assert_eq!(peer.channel.peer_credentials().unwrap().uid, 65534);
        assert_eq!(read_report(&peer.channel), "ready");
        let sock = dir.join("admits-root");
        let e = Channel::connect(&sock, &HandshakeConfig::new()).unwrap_err();
        match failure(&e) {
            Some(HandshakeFailure::PeerNotAllowed(c)) => assert_eq!(c.uid, 65534),
            _ => panic!("{e:?}"),
        }
        let ch = Channel::connect(
            &sock,
            &HandshakeConfig::new().policy(PeerPolicy::allow(&[65534], &[])),
        )
        .unwrap();
        assert_eq!(ch.peer_credentials().unwrap().uid, 65534);
        let e = Channel::connect(
            dir.join("same-user"),
            &HandshakeConfig::new().policy(PeerPolicy::allow(&[65534], &[])),
        )
        .unwrap_err();
        assert_eq!(
            failure(&e),
            Some(&HandshakeFailure::Refused(RefusalReason::PeerNotAllowed))
        );
        assert_eq!(
            read_report(&peer.channel),
            "Some(Refused(PeerNotAllowed)); uid 0; refused uid 0"
        );
        drop(ch);
        assert_eq!(peer.wait(), 0);
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn hostile_handshake_messages_are_refused_with_a_reason() {
    common::peer_main(|_, ctl| {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage};
        let path = path_env();
        let regions: Vec<_> = (0..3)
            .map(|_| Region::new(4096).unwrap().seal().unwrap())
            .collect();
        let hello_secret = encode(&HandshakeMessage::Hello {
            features: sealpipe::handshake::FEATURE_SECRET | sealpipe::handshake::FEATURE_BOUND,
            nonce: [2; 32],
        });
        let mut v2 = hello();
        v2[4] = 2;
        let regions_msg = {
            let mut m = vec![0u8; 16];
            m[..4].copy_from_slice(b"SPIP");
            m[4] = 1;
            m[6] = 1;
            m
        };
        let mut codes = Vec::new();
        for case in 0..8 {
            let s = raw_connect(&path);
            match case {
                0 => {
                    // HELLO carrying descriptors. Where the kernel has SO_PASSRIGHTS (6.16+)
                    // the listener refuses descriptors until the handshake succeeds, so the
                    // send itself fails; the client then breaks the protocol another way.
                    let fds: Vec<_> = regions.iter().map(|r| r.as_fd()).collect();
                    let mut space = [std::mem::MaybeUninit::uninit(); 64];
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
                    let h = hello();
                    match sendmsg(
                        &s,
                        &[std::io::IoSlice::new(&h)],
                        &mut control,
                        SendFlags::NOSIGNAL,
                    ) {
                        Ok(_) => {}
                        Err(rustix::io::Errno::PERM) => raw_send(&s, &regions_msg),
                        Err(e) => panic!("HELLO with descriptors: {e}"),
                    }
                }
                1 => raw_send(&s, &regions_msg),
                2 => raw_send(&s, &v2),
                3 => raw_send(&s, b"GET / HTTP/1.1\r\n\r\n"),
                4 => raw_send(&s, &[0u8; 1000]),
                5 => raw_send(&s, &hello_secret),
                6 | 7 => {
                    raw_send(&s, &hello());
                    assert_eq!(raw_recv(&s).unwrap()[6], wire::KIND_CHALLENGE as u8);
                    if case == 6 {
                        raw_send(&s, &encode(&HandshakeMessage::Proof { proof: [1; 32] }));
                    } else {
                        raw_send(&s, &hello());
                    }
                }
                _ => unreachable!(),
            }
            match wire::decode_handshake(&raw_recv(&s).unwrap()) {
                Ok(HandshakeMessage::Reject { reason }) => codes.push(reason),
                other => panic!("case {case}: {other:?}"),
            }
            assert!(raw_recv(&s).is_none(), "case {case}: listener must close");
        }
        report(&ctl, &format!("{codes:?}"));
        wait_for_parent(&ctl);
        0
    });
    let _serial = common::serial();
    let dir = TempDir::new("hostile");
    let path = dir.join("ep");
    let before = common::fds();
    {
        let mut l = Listener::bind(&path, &HandshakeConfig::new()).unwrap();
        let peer = spawn_at(
            "hostile_handshake_messages_are_refused_with_a_reason",
            "hostile",
            &path,
        );
        let mut failures = Vec::new();
        for _ in 0..8 {
            let e = l.accept_timeout(T).unwrap_err();
            failures.push(failure(&e).cloned().unwrap_or_else(|| panic!("{e:?}")));
        }
        assert_eq!(read_report(&peer.channel), "[5, 5, 2, 5, 5, 3, 5, 5]");
        assert!(matches!(failures[0], HandshakeFailure::Protocol(_)));
        assert_eq!(failures[2], HandshakeFailure::Incompatible { version: 2 });
        assert_eq!(
            failures[5],
            HandshakeFailure::SecretPresence { ours: false }
        );
        assert_eq!(
            failures[6],
            HandshakeFailure::Protocol("proof without a shared secret")
        );
        assert_eq!(peer.wait(), 0);
    }
    // The three descriptors that came with the first HELLO were closed.
    common::assert_no_new_fds(&before, "descriptors leaked");
}
