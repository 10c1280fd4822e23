//! Named endpoints between real processes: unsafe and lost socket paths, slow and many
//! clients, a listener in the caller's event loop. Every test checks that no descriptor
//! leaked.
//!
//! Knob: `SEALPIPE_TEST_CLIENTS` (default 64) sets how many clients connect at once in
//! `many_clients_connect_at_once`.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::endpoints::*;
use sealpipe::{Channel, Error, HandshakeConfig, Listener, Policy, Region};

const T: Duration = Duration::from_secs(20);

// ----- paths -----

#[test]
fn unsafe_paths_are_refused_and_stale_sockets_replaced() {
    let _serial = common::serial();
    let dir = TempDir::new("paths");
    let before = common::fds();
    let unsafe_path = |p: &Path| match Listener::bind(p, &HandshakeConfig::new()) {
        Err(Error::UnsafePath { reason, .. }) => reason,
        other => panic!("{}: {other:?}", p.display()),
    };
    {
        // A symbolic link (to a file we must not touch).
        let victim = dir.join("victim");
        fs::write(&victim, b"keep me").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(unsafe_path(&link).contains("symbolic link"));
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());

        // A dangling symbolic link: bind would create the socket where it points.
        let dangling = dir.join("dangling");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &dangling).unwrap();
        assert!(unsafe_path(&dangling).contains("symbolic link"));
        assert!(!dir.join("elsewhere").exists());

        // A regular file and a directory.
        let file = dir.join("file");
        fs::write(&file, b"data").unwrap();
        assert!(unsafe_path(&file).contains("not a socket"));
        assert_eq!(fs::read(&file).unwrap(), b"data");
        fs::create_dir(dir.join("subdir")).unwrap();
        assert!(unsafe_path(&dir.join("subdir")).contains("not a socket"));

        // Our own stale socket (nobody listening) is replaced.
        let stale = dir.join("stale");
        drop(raw_listen(&stale));
        let l = Listener::bind(&stale, &HandshakeConfig::new()).unwrap();
        let meta = fs::symlink_metadata(&stale).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        // A live listener is not.
        match Listener::bind(&stale, &HandshakeConfig::new()) {
            Err(Error::AddressInUse { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::symlink_metadata(&stale).unwrap().ino(), meta.ino());
        drop(l);
        assert!(!stale.exists(), "socket removed on drop");

        // The default directory: private, owned, never a symbolic link.
        let old = std::env::var_os("XDG_RUNTIME_DIR");
        std::env::set_var("XDG_RUNTIME_DIR", &dir.0);
        let p = sealpipe::default_path("ep").unwrap();
        assert_eq!(p, dir.join("sealpipe").join("ep"));
        let m = fs::metadata(dir.join("sealpipe")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        assert!(sealpipe::default_path("../x").is_err());
        assert!(sealpipe::default_path("").is_err());
        let l = Listener::bind(
            sealpipe::default_path("ep").unwrap(),
            &HandshakeConfig::new(),
        )
        .unwrap();
        assert_eq!(l.path(), p);
        drop(l);
        fs::set_permissions(dir.join("sealpipe"), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            sealpipe::default_path("ep"),
            Err(Error::UnsafePath { .. })
        ));
        fs::remove_dir(dir.join("sealpipe")).unwrap();
        std::os::unix::fs::symlink(dir.join("subdir"), dir.join("sealpipe")).unwrap();
        assert!(matches!(
            sealpipe::default_path("ep"),
            Err(Error::UnsafePath { .. })
        ));
        match old {
            Some(v) => std::env::set_var("XDG_RUNTIME_DIR", v),
            None => std::env::remove_var("XDG_RUNTIME_DIR"),
        }
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
#[ignore = "needs root: creates a socket owned by another user (.ci/run runs it as root)"]
fn socket_of_another_user_is_refused() {
    let _serial = common::serial();
    common::require_root("to create a socket owned by another user");
    let dir = TempDir::new("foreign");
    let before = common::fds();
    {
        let foreign = dir.join("foreign");
        drop(raw_listen(&foreign));
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        match Listener::bind(&foreign, &HandshakeConfig::new()) {
            Err(Error::UnsafePath { reason, .. }) => assert!(reason.contains("another user")),
            other => panic!("{}: {other:?}", foreign.display()),
        }
        assert!(foreign.exists());
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn deleted_or_replaced_socket_path_is_reported_and_rebound() {
    common::peer_main(
        |_, _| match Channel::connect(path_env(), &HandshakeConfig::new()) {
            Ok(ch) => {
                ch.send_timeout(b"after rebind", &[], T).unwrap();
                0
            }
            Err(e) => {
                eprintln!("{e:?}");
                1
            }
        },
    );
    let _serial = common::serial();
    let dir = TempDir::new("deleted");
    let path = dir.join("ep");
    let before = common::fds();
    {
        let mut l = Listener::bind(&path, &HandshakeConfig::new()).unwrap();
        fs::remove_file(&path).unwrap();
        // inotify wakes the listener: PathLost, not Timeout.
        match l.accept_timeout(T) {
            Err(Error::PathLost { path: p }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
        // Reported once; afterwards the listener keeps serving what it can.
        assert!(matches!(l.try_accept(), Err(Error::WouldBlock)));

        // Someone puts a file there: rebind refuses it, and drop leaves it alone.
        fs::write(&path, b"not yours").unwrap();
        assert!(matches!(l.rebind(), Err(Error::UnsafePath { .. })));
        fs::remove_file(&path).unwrap();
        l.rebind().unwrap();
        let peer = spawn_at(
            "deleted_or_replaced_socket_path_is_reported_and_rebound",
            "client",
            &path,
        );
        let ch = l.accept_timeout(T).unwrap();
        assert_eq!(
            ch.recv_timeout(&Policy::immutable(), T).unwrap().payload(),
            b"after rebind"
        );
        assert_eq!(peer.wait(), 0);

        // Replaced by another socket: reported too, and not removed on drop.
        fs::remove_file(&path).unwrap();
        let other = raw_listen(&path);
        assert!(matches!(l.accept_timeout(T), Err(Error::PathLost { .. })));
        drop(l);
        assert!(path.exists(), "another's socket must survive our drop");
        drop(other);
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

// ----- many and hostile clients -----

#[test]
fn slowloris_clients_do_not_hold_up_others() {
    common::peer_main(|role, ctl| match role {
        "slow" => {
            // Five connections that say nothing, one that stops after HELLO.
            let path = path_env();
            let silent: Vec<_> = (0..5).map(|_| raw_connect(&path)).collect();
            let half = raw_connect(&path);
            raw_send(&half, &hello());
            report(&ctl, "connected");
            // The listener drops every one of them at its deadline.
            for s in silent.iter().chain([&half]) {
                while raw_recv(s).is_some() {}
            }
            report(&ctl, "all dropped");
            wait_for_parent(&ctl);
            0
        }
        _ => {
            let ch = Channel::connect(path_env(), &HandshakeConfig::new()).unwrap();
            ch.send_timeout(b"fast", &[], T).unwrap();
            0
        }
    });
    let _serial = common::serial();
    let dir = TempDir::new("slowloris");
    let path = dir.join("ep");
    let test = "slowloris_clients_do_not_hold_up_others";
    let before = common::fds();
    {
        let config = HandshakeConfig::new().timeout(Duration::from_secs(5));
        let mut l = Listener::bind(&path, &config).unwrap();
        let slow = spawn_at(test, "slow", &path);
        assert_eq!(read_report(&slow.channel), "connected");
        let fast = spawn_at(test, "fast", &path);
        // The honest client completes while all six slow ones are still pending.
        let ch = l.accept_timeout(T).unwrap();
        assert_eq!(ch.peer_credentials().unwrap().pid, fast.pid());
        assert_eq!(
            ch.recv_timeout(&Policy::immutable(), T).unwrap().payload(),
            b"fast"
        );
        assert!(l.next_deadline().is_some());
        for _ in 0..6 {
            let e = l.accept_timeout(T).unwrap_err();
            assert!(matches!(e, Error::Timeout), "{e}");
        }
        assert!(l.next_deadline().is_none());
        assert_eq!(read_report(&slow.channel), "all dropped");
        assert_eq!(fast.wait(), 0);
        assert_eq!(slow.wait(), 0);
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn many_clients_connect_at_once() {
    common::peer_main(|role, _| {
        // Each peer process runs `per_process` clients on threads, all connecting at once.
        let per_process: usize = role.parse().unwrap();
        let path = path_env();
        let threads: Vec<_> = (0..per_process)
            .map(|i| {
                let path = path.clone();
                thread::spawn(move || {
                    let ch = Channel::connect(&path, &HandshakeConfig::new()).unwrap();
                    let mut r = Region::new(4096).unwrap();
                    r.write_at(0, &(i as u32).to_le_bytes()).unwrap();
                    ch.send_timeout(&(i as u32).to_le_bytes(), &[&r.seal().unwrap()], T)
                        .unwrap();
                    // Stay connected until the server has read the message.
                    let _ = ch.recv_timeout(&Policy::immutable(), T);
                })
            })
            .collect();
        threads.into_iter().all(|t| t.join().is_ok()) as i32 ^ 1
    });
    let _serial = common::serial();
    let clients: usize = std::env::var("SEALPIPE_TEST_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let processes = 8.min(clients);
    let per_process = clients / processes;
    let dir = TempDir::new("many");
    let path = dir.join("ep");
    let before = common::fds();
    {
        let mut l = Listener::bind(&path, &HandshakeConfig::new()).unwrap();
        let peers: Vec<_> = (0..processes)
            .map(|_| {
                spawn_at(
                    "many_clients_connect_at_once",
                    &per_process.to_string(),
                    &path,
                )
            })
            .collect();
        let mut channels = Vec::new();
        let mut seen = Vec::new();
        while channels.len() < processes * per_process {
            let ch = l.accept_timeout(T).unwrap();
            let msg = ch.recv_timeout(&Policy::immutable(), T).unwrap();
            let id = u32::from_le_bytes(msg.payload().try_into().unwrap());
            assert_eq!(msg.regions()[0].as_bytes().unwrap()[..4], id.to_le_bytes());
            let pid = ch.peer_credentials().unwrap().pid;
            seen.push((pid, id));
            channels.push(ch);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            processes * per_process,
            "every client exactly once"
        );
        drop(channels);
        for p in peers {
            assert_eq!(p.wait(), 0);
        }
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

// ----- in the caller's event loop -----

#[test]
fn listener_fits_a_callers_event_loop() {
    common::peer_main(|_, _| {
        let ch = Channel::connect(path_env(), &HandshakeConfig::new()).unwrap();
        ch.send_timeout(b"polled", &[], T).unwrap();
        0
    });
    let _serial = common::serial();
    let dir = TempDir::new("eventloop");
    let path = dir.join("ep");
    let before = common::fds();
    {
        let mut l = Listener::bind(&path, &HandshakeConfig::new()).unwrap();
        assert!(matches!(l.try_accept(), Err(Error::WouldBlock)));
        assert!(
            !readable(&l, Duration::ZERO),
            "idle listener is not readable"
        );
        let peer = spawn_at("listener_fits_a_callers_event_loop", "client", &path);
        // The caller's loop: poll the listener's descriptor, then do the ready work.
        let ch = loop {
            assert!(readable(&l, T), "listener never became readable");
            match l.try_accept() {
                Ok(ch) => break ch,
                Err(Error::WouldBlock) => {} // a handshake step was done; wait for more
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(
            ch.recv_timeout(&Policy::immutable(), T).unwrap().payload(),
            b"polled"
        );
        assert!(l.next_deadline().is_none());
        assert_eq!(peer.wait(), 0);
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}
