//! Async channels on tokio, against blocking peers in other processes, under both runtime
//! flavours, with cancellation at every await point.
#![cfg(feature = "tokio")]

mod common;

use std::time::Duration;

use sealpipe::asyncio::AsyncChannel;
use sealpipe::{Channel, Error, Policy, Region};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

fn seq_region(seq: u64) -> sealpipe::SealedRegion {
    let mut r = Region::new(4096).unwrap();
    r.write_at(0, &seq.to_le_bytes()).unwrap();
    r.seal().unwrap()
}

/// Blocking peer parts.
fn peer(role: &str, ch: Channel) -> i32 {
    match role {
        // Sends `n` regions numbered 0..n at irregular intervals, then closes.
        "sender" => {
            for seq in 0..300u64 {
                ch.send_timeout(&seq.to_le_bytes(), &[&seq_region(seq)], T)
                    .unwrap();
                if seq % 7 == 0 {
                    std::thread::sleep(Duration::from_micros(300 * (seq % 5)));
                }
            }
            0
        }
        // Reads slowly until "end", then reports how many it got and a hash of the order.
        "slow_reader" => {
            let (mut count, mut hash) = (0u64, 0u64);
            loop {
                let msg = ch.recv_timeout(&Policy::immutable(), T).unwrap();
                if msg.payload() == b"end" {
                    break;
                }
                let seq = u64::from_le_bytes(msg.payload()[..8].try_into().unwrap());
                let in_region: u64 = msg.regions()[0].read_value(0).unwrap();
                assert_eq!(seq, in_region, "payload and region disagree");
                hash = hash.wrapping_mul(31).wrapping_add(seq + 1);
                count += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            ch.send_timeout(bytemuck::bytes_of(&[count, hash]), &[], T)
                .unwrap();
            0
        }
        "silent" => {
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        _ => 99,
    }
}

async fn receive_all_in_order(ch: &AsyncChannel, cancel_often: bool) -> u64 {
    let policy = Policy::immutable();
    let mut next = 0u64;
    let mut cancelled = 0u64;
    loop {
        let attempt = if cancel_often {
            // A tiny, varying deadline: the recv future is dropped at its await point again
            // and again. Cancel safety means no message is lost or duplicated by that.
            let tiny = Duration::from_micros(1 + (next * 37 + cancelled) % 400);
            match timeout(tiny, ch.recv(&policy)).await {
                Ok(r) => r,
                Err(_elapsed) => {
                    cancelled += 1;
                    continue;
                }
            }
        } else {
            timeout(T, ch.recv(&policy)).await.expect("recv timed out")
        };
        match attempt {
            Ok(msg) => {
                let seq = u64::from_le_bytes(msg.payload().try_into().unwrap());
                assert_eq!(seq, next, "lost, duplicated or reordered message");
                assert_eq!(msg.regions()[0].read_value::<u64>(0).unwrap(), seq);
                next += 1;
            }
            Err(Error::PeerClosed) => return next,
            Err(e) => panic!("recv: {e:?}"),
        }
    }
}

#[test]
fn async_receiver_blocking_sender_multi_thread() {
    common::peer_main(peer);
    let _serial = common::serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p = common::spawn_peer("async_receiver_blocking_sender_multi_thread", "sender");
    let baseline = common::fds();
    let got = rt.block_on(async {
        let ch = AsyncChannel::new(p.channel).unwrap();
        receive_all_in_order(&ch, false).await
    });
    assert_eq!(got, 300);
    assert!(
        common::fd_count() < baseline.count(),
        "channel closed, nothing else left open"
    );
    assert_eq!(p_wait(p.child), 0);
}

#[test]
fn recv_cancelled_at_every_await_point_loses_nothing_current_thread() {
    common::peer_main(peer);
    let _serial = common::serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = common::spawn_peer(
        "recv_cancelled_at_every_await_point_loses_nothing_current_thread",
        "sender",
    );
    let (baseline, ch) = rt.block_on(async {
        // Registered first: the channel holds a duplicate of the peer's pidfd.
        let ch = AsyncChannel::new(p.channel).unwrap();
        let baseline = common::fds();
        assert_eq!(receive_all_in_order(&ch, true).await, 300);
        (baseline, ch)
    });
    common::assert_no_new_fds(&baseline, "no descriptor leaked by cancelled receives");
    drop(ch);
    assert_eq!(p_wait(p.child), 0);
}

#[test]
fn send_cancelled_sends_whole_messages_or_nothing() {
    common::peer_main(peer);
    let _serial = common::serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p = common::spawn_peer(
        "send_cancelled_sends_whole_messages_or_nothing",
        "slow_reader",
    );
    let (count, hash) = rt.block_on(async {
        let ch = AsyncChannel::new(p.channel).unwrap();
        let payload = vec![0u8; 60 * 1024]; // fills the socket buffer after a few messages
        let (mut count, mut hash) = (0u64, 0u64);
        for seq in 0..400u64 {
            let region = seq_region(seq);
            let mut msg = payload.clone();
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            let tiny = Duration::from_micros(50 + (seq * 13) % 900);
            if let Ok(result) = timeout(tiny, ch.send(&msg, &[&region])).await {
                result.unwrap();
                count += 1;
                hash = hash.wrapping_mul(31).wrapping_add(seq + 1);
            }
        }
        timeout(T, ch.send(b"end", &[])).await.unwrap().unwrap();
        let reply = timeout(T, ch.recv(&Policy::immutable()))
            .await
            .unwrap()
            .unwrap();
        let mut got = [0u64; 2];
        bytemuck::bytes_of_mut(&mut got).copy_from_slice(reply.payload());
        assert_eq!(
            got,
            [count, hash],
            "receiver saw exactly the sends that completed, in order"
        );
        (count, hash)
    });
    assert!(
        count > 0 && count < 400,
        "the test must exercise both outcomes (sent {count}, hash {hash})"
    );
    assert_eq!(p_wait(p.child), 0);
}

#[test]
fn many_concurrent_connections() {
    common::peer_main(peer);
    let _serial = common::serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let peers: Vec<_> = (0..6)
        .map(|_| common::spawn_peer("many_concurrent_connections", "sender"))
        .collect();
    let (children, channels): (Vec<_>, Vec<_>) =
        peers.into_iter().map(|p| (p.child, p.channel)).unzip();
    let totals = rt.block_on(async {
        let tasks: Vec<_> = channels
            .into_iter()
            .map(|c| {
                tokio::spawn(async move {
                    let ch = AsyncChannel::new(c).unwrap();
                    receive_all_in_order(&ch, false).await
                })
            })
            .collect();
        let mut totals = Vec::new();
        for t in tasks {
            totals.push(t.await.unwrap());
        }
        totals
    });
    assert_eq!(totals, vec![300; 6]);
    for c in children {
        assert_eq!(p_wait(c), 0);
    }
}

#[test]
fn peer_death_while_awaiting() {
    common::peer_main(peer);
    let _serial = common::serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = common::spawn_peer("peer_death_while_awaiting", "silent");
    let pid = rustix::process::Pid::from_raw(p.pid() as i32).unwrap();
    let err = rt.block_on(async {
        let ch = AsyncChannel::new(p.channel).unwrap();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        });
        let r = timeout(T, ch.recv(&Policy::immutable()))
            .await
            .expect("no wake on peer death");
        killer.await.unwrap();
        r.unwrap_err()
    });
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    assert_eq!(p_wait(p.child), 128 + 9);
}

#[test]
fn peer_exit_ends_an_async_recv_when_the_socket_outlives_the_peer() {
    common::peer_main(|_, ch| {
        // Leak our end into a grandchild, so the socket stays open after we die.
        rustix::io::fcntl_setfd(&ch, rustix::io::FdFlags::empty()).unwrap();
        #[allow(clippy::zombie_processes)] // we are killed; init reaps the grandchild
        let grandchild = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = u64::from(grandchild.id());
        ch.send_timeout(&id.to_le_bytes(), &[], T).unwrap();
        std::thread::sleep(T);
        0
    });
    let _serial = common::serial();
    let p = common::spawn_peer(
        "peer_exit_ends_an_async_recv_when_the_socket_outlives_the_peer",
        "leaker",
    );
    let pid = rustix::process::Pid::from_raw(p.pid() as i32).unwrap();
    let (first, err) = current_thread().block_on(async {
        let ch = AsyncChannel::new(p.channel).unwrap();
        // Sent before the peer dies: still delivered after its exit is known.
        tokio::time::sleep(Duration::from_millis(100)).await;
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        let first = timeout(T, ch.recv(&Policy::immutable()))
            .await
            .unwrap()
            .unwrap();
        // Nothing else will come, and the grandchild keeps the socket open: only the
        // pidfd can tell.
        let err = timeout(T, ch.recv(&Policy::immutable()))
            .await
            .expect("recv not ended by the peer's exit")
            .unwrap_err();
        (first, err)
    });
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    let grandchild = u64::from_le_bytes(first.payload().try_into().unwrap());
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(grandchild as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert_eq!(p_wait(p.child), 128 + 9);
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn new_outside_a_runtime_is_an_error_not_a_panic() {
    let (a, _b) = Channel::pair().unwrap();
    assert!(matches!(AsyncChannel::new(a), Err(Error::Io { .. })));
}

fn p_wait(mut child: std::process::Child) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().unwrap();
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

// ----- async listener and connect -----

use sealpipe::asyncio::AsyncListener;
use sealpipe::{HandshakeConfig, Listener, Secret};

const PATH_ENV: &str = "SEALPIPE_TEST_SOCKET";

fn config(secret: &[u8]) -> HandshakeConfig {
    HandshakeConfig::new()
        .secret(Secret::new(secret).unwrap())
        .timeout(Duration::from_secs(5))
}

fn socket_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sealpipe-tokio-{tag}-{}.sock", std::process::id()))
}

/// Blocking peers for the listener tests; the socket path comes in `PATH_ENV`.
fn net_peer(role: &str, _ch: Channel) -> i32 {
    let path = std::env::var(PATH_ENV).unwrap();
    match role {
        // Connects (blocking), sends one region carrying its pid, expects it echoed back.
        "client" => {
            let ch = Channel::connect(&path, &config(b"an async test secret, 32 bytes!!")).unwrap();
            let id = u64::from(std::process::id());
            ch.send_timeout(&id.to_le_bytes(), &[&seq_region(id)], T)
                .unwrap();
            let echo = ch.recv_timeout(&Policy::immutable(), T).unwrap();
            i32::from(echo.payload() != id.to_le_bytes())
        }
        // Serves one connection (blocking), echoes the region's number, then exits.
        "listener" => {
            let mut l =
                Listener::bind(&path, &config(b"an async test secret, 32 bytes!!")).unwrap();
            _ch.send_timeout(b"bound", &[], T).unwrap();
            loop {
                match l.accept_timeout(T) {
                    Ok(ch) => {
                        let msg = ch.recv_timeout(&Policy::immutable(), T).unwrap();
                        let n: u64 = msg.regions()[0].read_value(0).unwrap();
                        ch.send_timeout(&n.to_le_bytes(), &[], T).unwrap();
                        return 0;
                    }
                    // The wrong-secret client comes first; keep serving.
                    Err(Error::Handshake { .. } | Error::PeerClosed) => continue,
                    Err(e) => {
                        eprintln!("listener: {e:?}");
                        return 1;
                    }
                }
            }
        }
        _ => 99,
    }
}

#[test]
fn async_listener_serves_blocking_clients_despite_a_silent_one() {
    common::peer_main(net_peer);
    let _serial = common::serial();
    let path = socket_path("listener");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let served = rt.block_on(async {
        let listener = Listener::bind(&path, &config(b"an async test secret, 32 bytes!!")).unwrap();
        let mut listener = AsyncListener::new(listener).unwrap();
        // A client that connects and never speaks (held open throughout) must not hold up
        // anyone else.
        let silent = rustix::net::socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            None,
        )
        .unwrap();
        rustix::net::connect(&silent, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
        let peers: Vec<_> = (0..6)
            .map(|_| {
                common::spawn_peer_with(
                    "async_listener_serves_blocking_clients_despite_a_silent_one",
                    "client",
                    |c| {
                        c.env(PATH_ENV, &path);
                    },
                )
            })
            .collect();
        let mut served = 0;
        let mut tasks = Vec::new();
        while served < 6 {
            match timeout(T, listener.accept()).await.expect("accept hung") {
                Ok(ch) => {
                    served += 1;
                    tasks.push(tokio::spawn(async move {
                        let msg = ch.recv(&Policy::immutable()).await.unwrap();
                        let id: u64 = msg.regions()[0].read_value(0).unwrap();
                        assert_eq!(msg.payload(), id.to_le_bytes());
                        ch.send(msg.payload(), &[]).await.unwrap();
                    }));
                }
                // The silent client's handshake times out on our side: reported, not fatal.
                Err(Error::Timeout) => {}
                Err(e) => panic!("accept: {e:?}"),
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        for p in peers {
            assert_eq!(p.wait(), 0);
        }
        drop(silent);
        served
    });
    assert_eq!(served, 6);
}

#[test]
fn async_client_connects_to_a_blocking_listener_in_another_process() {
    common::peer_main(net_peer);
    let _serial = common::serial();
    let path = socket_path("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let peer = common::spawn_peer_with(
        "async_client_connects_to_a_blocking_listener_in_another_process",
        "listener",
        |c| {
            c.env(PATH_ENV, &path);
        },
    );
    let bound = peer.channel.recv_timeout(&Policy::immutable(), T).unwrap();
    assert_eq!(bound.payload(), b"bound");
    rt.block_on(async {
        // A wrong secret is refused, with a reason, and does not stop the listener.
        let err = AsyncChannel::connect(&path, &config(b"not the secret, also 32 bytes!!!"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Handshake { .. }), "{err:?}");
        let ch = AsyncChannel::connect(&path, &config(b"an async test secret, 32 bytes!!"))
            .await
            .unwrap();
        ch.send(b"", &[&seq_region(77)]).await.unwrap();
        let reply = timeout(T, ch.recv(&Policy::immutable()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.payload(), 77u64.to_le_bytes());
    });
    assert_eq!(peer.wait(), 0);
}
