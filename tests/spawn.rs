//! Spawned workers: a child inherits exactly its channel, and a handshake made by any
//! other process than the spawned child is refused. Every test checks that no descriptor
//! leaked.

mod common;

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::thread;

use common::endpoints::*;
use sealpipe::handshake::HandshakeFailure;
use sealpipe::{Channel, Error, HandshakeConfig, Listener, RefusalReason, Region};

/// Descriptors open in this process (other than the one listing them).
fn open_fds() -> Vec<i32> {
    let dir = fs::read_dir("/proc/self/fd").unwrap();
    let mut fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    // The last one is read_dir's own (the highest only if no gaps; check it is a dir).
    fds.retain(|&fd| {
        fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| !p.starts_with("/proc"))
            .unwrap_or(false)
    });
    fds
}

/// Whether `fd` has close-on-exec (`flags:` in fdinfo is octal; O_CLOEXEC is 0o2000000).
/// A descriptor closed meanwhile counts as close-on-exec (it cannot be inherited).
fn is_cloexec(fd: i32) -> bool {
    let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
        return true;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .is_none_or(|f| f & 0o2000000 != 0)
}

#[test]
fn spawned_child_inherits_exactly_one_descriptor() {
    if std::env::var_os(common::ROLE_ENV).is_some() {
        // Before claiming the channel: what did we inherit?
        let inherited = open_fds();
        common::peer_main(move |_, ch| {
            let cloexec = rustix::io::fcntl_getfd(&ch)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC);
            let s = format!(
                "{inherited:?} fd {} cloexec {cloexec}",
                ch.as_fd().as_raw_fd()
            );
            report(&ch, &s);
            wait_for_parent(&ch);
            0
        });
    }
    let _serial = common::serial();
    let dir = TempDir::new("inherit");
    let before = common::fds();
    {
        // Measured before the spawns start. Whatever started this test may have leaked
        // descriptors without close-on-exec to us; those reach the child too, and are not
        // sealpipe's.
        let mut expected = vec![0, 1, 2, 3];
        expected.extend(
            open_fds()
                .into_iter()
                .filter(|&fd| fd > 3 && !is_cloexec(fd)),
        );
        // Plenty of sealpipe descriptors open in the parent, and spawns racing on 4 threads.
        let _listener = Listener::bind(dir.join("ep"), &HandshakeConfig::new()).unwrap();
        let _region = Region::new(4096).unwrap().seal().unwrap();
        let _pair = Channel::pair().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                thread::spawn(|| {
                    let peer =
                        common::spawn_peer("spawned_child_inherits_exactly_one_descriptor", "fds");
                    let pidfd = peer.channel.peer_pidfd().is_some();
                    let creds = peer.channel.peer_credentials().unwrap();
                    assert_eq!(creds.pid, peer.pid());
                    let r = read_report(&peer.channel);
                    assert_eq!(peer.wait(), 0);
                    (r, pidfd)
                })
            })
            .collect();
        for t in threads {
            let (r, pidfd) = t.join().unwrap();
            // stdin, stdout, stderr, and the channel on fd 3, made close-on-exec once claimed.
            assert_eq!(r, format!("{expected:?} fd 3 cloexec true"));
            assert!(pidfd, "parent holds the child's pidfd");
        }
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}

#[test]
fn spawn_refuses_a_handshake_from_another_process_than_the_child() {
    if std::env::var_os("SEALPIPE_TEST_DELEGATE").is_some() {
        // The child hands its inherited descriptor (fd 3, still inheritable) to a process of
        // its own, which then makes the handshake in the child's place.
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env_remove("SEALPIPE_TEST_DELEGATE")
            .env(common::ROLE_ENV, "grandchild")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    if std::env::var_os(common::ROLE_ENV).is_some() {
        // The grandchild: its handshake must be refused.
        match sealpipe::spawn::worker_channel() {
            Err(e)
                if failure(&e)
                    == Some(&HandshakeFailure::Refused(RefusalReason::PeerNotAllowed)) =>
            {
                std::process::exit(0)
            }
            other => {
                eprintln!("grandchild: {other:?}");
                std::process::exit(1)
            }
        }
    }
    let _serial = common::serial();
    let before = common::fds();
    {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "spawn_refuses_a_handshake_from_another_process_than_the_child",
            "--exact",
        ])
        .env("SEALPIPE_TEST_DELEGATE", "1")
        .stdout(std::process::Stdio::null());
        match sealpipe::spawn::spawn(&mut cmd) {
            Err(Error::Handshake {
                failure: HandshakeFailure::NotTheSpawnedChild { expected, got },
            }) => {
                assert_ne!(got, Some(expected));
                assert!(
                    got.is_some(),
                    "the grandchild's credentials came with HELLO"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    common::assert_no_new_fds(&before, "descriptors leaked");
}
