//! Interoperability: the handshake of PROTOCOL.md, performed by an independent Python 3
//! peer (`tests/python/handshake_peer.py`, standard library only) against the Rust side,
//! in both directions. Skipped, with a printed reason, where `python3` is missing.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sealpipe::handshake::HandshakeFailure;
use sealpipe::{Channel, Error, HandshakeConfig, Listener, Policy, RefusalReason, Secret};

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

fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: python3 is not installed");
    }
    ok.then_some("python3")
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
    let Some(py) = python() else { return };
    let dir = private_dir("client");
    let path = dir.join("ep");
    let key = secret_bytes(7);
    let before = common::fd_count();
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
    assert_eq!(common::fd_count(), before);
}

#[test]
fn rust_client_handshakes_with_python_listener() {
    let _serial = common::serial();
    let Some(py) = python() else { return };
    let dir = private_dir("server");
    let key = secret_bytes(5);
    let before = common::fd_count();
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
    assert_eq!(common::fd_count(), before);
}

fn failure(e: &Error) -> Option<&HandshakeFailure> {
    match e {
        Error::Handshake { failure } => Some(failure),
        _ => None,
    }
}

// ----- binding the proofs to the connection (PROTOCOL.md, "Binding") -----

#[test]
fn python_peer_computes_the_known_answer_vectors_of_protocol_md() {
    let _serial = common::serial();
    let Some(py) = python() else { return };
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
    let Some(py) = python() else { return };
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
