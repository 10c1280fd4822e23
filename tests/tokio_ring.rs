//! The async ring on tokio: async and blocking sides in other processes (both ways), under
//! both runtime flavours, cancellation at every await point, peer death while awaiting, and
//! a peer flooding the wake channel with signals that carry descriptors.
#![cfg(feature = "tokio")]

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use sealpipe::ring::{AsyncConsumer, AsyncPodConsumer, AsyncPodProducer, AsyncProducer};
use sealpipe::ring::{Consumer, Producer, RingOptions, SpinPolicy};
use sealpipe::{Channel, Error};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);
const RECORDS: u64 = 3000;

/// Record `seq`: its number, then `seq % 200` bytes of `seq as u8`.
fn record(seq: u64) -> Vec<u8> {
    let mut r = seq.to_le_bytes().to_vec();
    r.resize(8 + (seq % 200) as usize, seq as u8);
    r
}

fn check(seq: u64, got: &[u8]) {
    assert_eq!(
        got,
        record(seq),
        "record {seq} lost, duplicated, reordered or damaged"
    );
}

/// A small ring, so that both sides wait for each other often.
fn small() -> RingOptions {
    RingOptions::new(1024).timeout(T)
}

/// Blocking peers.
fn peer(role: &str, ch: Channel) -> i32 {
    match role {
        // Sends RECORDS records, pausing now and then so that the consumer parks.
        "producer" => {
            let mut tx = Producer::setup(ch, &small()).unwrap();
            for seq in 0..RECORDS {
                tx.send_timeout(&record(seq), T).unwrap();
                if seq % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            0
        }
        // Leaks its end of the channel into a grandchild, sends the grandchild's pid as its
        // only record, and exits: the socket outlives the producer.
        "leaking_producer" => {
            rustix::io::fcntl_setfd(&ch, rustix::io::FdFlags::empty()).unwrap();
            let mut tx = Producer::setup(ch, &small()).unwrap();
            #[allow(clippy::zombie_processes)] // we exit; init reaps the grandchild
            let grandchild = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            tx.send_timeout(&u64::from(grandchild.id()).to_le_bytes(), T)
                .unwrap();
            0
        }
        // Connects, then never sends.
        "silent_producer" => {
            let _tx = Producer::setup(ch, &small()).unwrap();
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        // Reads until an empty record, pausing now and then so that the producer parks;
        // records must be numbered 0, 1, 2, ... Exit code 0 if so.
        "consumer" => {
            let mut rx = Consumer::setup(ch, &small()).unwrap();
            let mut out = Vec::new();
            let mut next = 0u64;
            loop {
                rx.recv_timeout(&mut out, T).unwrap();
                if out.is_empty() {
                    return 0;
                }
                check(next, &out);
                next += 1;
                if next % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        _ => 99,
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Receives every record in order (through tiny, varying deadlines if `cancel_often`, so
/// that the future is dropped at its await point again and again), then `PeerClosed`.
/// Returns how many times it parked.
async fn receive_all(rx: &mut AsyncConsumer, cancel_often: bool) -> u64 {
    let mut out = Vec::new();
    let mut next = 0u64;
    let mut cancelled = 0u64;
    loop {
        let result = if cancel_often {
            let tiny = Duration::from_micros(1 + (next * 37 + cancelled) % 300);
            match timeout(tiny, rx.recv(&mut out)).await {
                Ok(r) => r,
                Err(_elapsed) => {
                    cancelled += 1;
                    continue;
                }
            }
        } else {
            timeout(T, rx.recv(&mut out)).await.expect("recv hung")
        };
        match result {
            Ok(()) => {
                check(next, &out);
                next += 1;
            }
            Err(Error::PeerClosed) => break,
            Err(e) => panic!("recv: {e:?}"),
        }
    }
    assert_eq!(next, RECORDS);
    if cancel_often {
        assert!(cancelled > 0, "the test must cancel some receives");
    }
    rx.get_mut().stats().parks
}

#[test]
fn async_consumer_blocking_producer_current_thread() {
    common::peer_main(peer);
    let _serial = common::serial();
    let p = common::spawn_peer(
        "async_consumer_blocking_producer_current_thread",
        "producer",
    );
    let baseline = common::fds();
    let parks = current_thread().block_on(async {
        let mut rx = AsyncConsumer::setup(p.channel, &small()).await.unwrap();
        receive_all(&mut rx, false).await
    });
    assert!(
        parks > 0,
        "the consumer must have parked and been signalled"
    );
    assert!(
        common::fd_count() < baseline.count(),
        "channel and its duplicate closed"
    );
    assert_eq!(p_wait(p.child), 0);
}

#[test]
fn cancelled_async_receives_lose_nothing_multi_thread() {
    common::peer_main(peer);
    let _serial = common::serial();
    let p = common::spawn_peer(
        "cancelled_async_receives_lose_nothing_multi_thread",
        "producer",
    );
    let baseline = common::fds();
    multi_thread().block_on(async {
        let mut rx = AsyncConsumer::setup(p.channel, &small()).await.unwrap();
        receive_all(&mut rx, true).await;
    });
    assert!(
        common::fd_count() < baseline.count(),
        "nothing leaked by cancelled receives"
    );
    assert_eq!(p_wait(p.child), 0);
}

#[test]
fn async_producer_blocking_consumer_with_cancelled_sends() {
    common::peer_main(peer);
    let _serial = common::serial();
    let p = common::spawn_peer(
        "async_producer_blocking_consumer_with_cancelled_sends",
        "consumer",
    );
    let (sent, cancelled, parks) = multi_thread().block_on(async {
        let mut tx = AsyncProducer::setup(p.channel, &small()).await.unwrap();
        let (mut seq, mut cancelled) = (0u64, 0u64);
        while seq < RECORDS {
            // Tiny deadlines: a dropped send must have sent the whole record or nothing, so
            // the consumer sees 0, 1, 2, ... with no gap and no duplicate.
            let tiny = Duration::from_micros(1 + (seq * 13 + cancelled) % 200);
            match timeout(tiny, tx.send(&record(seq))).await {
                Ok(r) => {
                    r.unwrap();
                    seq += 1;
                }
                Err(_elapsed) => cancelled += 1,
            }
        }
        timeout(T, tx.send(b"")).await.unwrap().unwrap();
        (seq, cancelled, tx.get_mut().stats().parks)
    });
    assert_eq!(
        p_wait(p.child),
        0,
        "consumer saw every record once, in order"
    );
    assert_eq!(sent, RECORDS);
    assert!(cancelled > 0, "the test must cancel some sends");
    assert!(parks > 0, "the producer must have parked for room");
}

#[test]
fn peer_death_ends_an_async_wait() {
    common::peer_main(peer);
    let _serial = common::serial();
    let p = common::spawn_peer("peer_death_ends_an_async_wait", "silent_producer");
    let pid = rustix::process::Pid::from_raw(p.pid() as i32).unwrap();
    let err = current_thread().block_on(async {
        let mut rx = AsyncConsumer::setup(p.channel, &small()).await.unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        });
        let mut out = Vec::new();
        timeout(T, rx.recv(&mut out))
            .await
            .expect("no wake on peer death")
            .unwrap_err()
    });
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    assert_eq!(p_wait(p.child), 128 + 9);
}

/// The spawned producer exits while a grandchild keeps its socket open: only the pidfd can
/// tell, and both kinds of consumer must end their wait with `PeerClosed`.
#[test]
fn a_spawned_producer_exiting_ends_the_wait_even_if_its_socket_lives_on() {
    common::peer_main(peer);
    let _serial = common::serial();
    let test = "a_spawned_producer_exiting_ends_the_wait_even_if_its_socket_lives_on";
    for is_async in [false, true] {
        let p = common::spawn_peer(test, "leaking_producer");
        let (grandchild, err) = if is_async {
            current_thread().block_on(async {
                let mut rx = AsyncConsumer::setup(p.channel, &small()).await.unwrap();
                let mut out = Vec::new();
                timeout(T, rx.recv(&mut out)).await.unwrap().unwrap();
                let err = timeout(T, rx.recv(&mut out))
                    .await
                    .expect("wait not ended by the producer's exit")
                    .unwrap_err();
                (out, err)
            })
        } else {
            let mut rx = Consumer::setup(p.channel, &small()).unwrap();
            let mut out = Vec::new();
            rx.recv_timeout(&mut out, T).unwrap();
            let err = rx.recv_timeout(&mut out, T).unwrap_err();
            (out, err)
        };
        let grandchild = u64::from_le_bytes(grandchild.try_into().unwrap());
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(grandchild as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        assert!(
            matches!(err, Error::PeerClosed),
            "async {is_async}: {err:?}"
        );
        assert_eq!(p_wait(p.child), 0);
    }
}

#[test]
fn async_pod_ring_both_sides_async_in_one_runtime() {
    let _serial = common::serial();
    for rt in [current_thread(), multi_thread()] {
        let (a, b) = Channel::pair().unwrap();
        let options = RingOptions::new(64).spin(SpinPolicy::Park).timeout(T);
        let (tx_stats, rx_stats) = rt.block_on(async {
            let (tx, rx) = tokio::join!(
                AsyncPodProducer::<u64>::setup(a, &options),
                AsyncPodConsumer::<u64>::setup(b, &options),
            );
            let (mut tx, mut rx) = (tx.unwrap(), rx.unwrap());
            let producer = tokio::spawn(async move {
                let items: Vec<u64> = (0..20_000).collect();
                let mut sent = 0;
                while sent < items.len() {
                    if sent % 2 == 0 {
                        tx.send(items[sent]).await.unwrap();
                        sent += 1;
                    } else {
                        sent += tx.send_slice(&items[sent..]).await.unwrap();
                    }
                }
                tx.get_mut().stats()
            });
            let mut next = 0u64;
            let mut buf = [0u64; 48];
            while next < 20_000 {
                if next % 3 == 0 {
                    assert_eq!(timeout(T, rx.recv()).await.unwrap().unwrap(), next);
                    next += 1;
                } else {
                    let n = timeout(T, rx.recv_slice(&mut buf)).await.unwrap().unwrap();
                    for (i, item) in buf[..n].iter().enumerate() {
                        assert_eq!(*item, next + i as u64);
                    }
                    next += n as u64;
                }
            }
            let tx_stats = producer.await.unwrap();
            let err = timeout(T, rx.recv()).await.unwrap().unwrap_err();
            assert!(matches!(err, Error::PeerClosed), "{err:?}");
            (tx_stats, rx.get_mut().stats())
        });
        assert!(
            tx_stats.parks + rx_stats.parks > 0 && tx_stats.wakes + rx_stats.wakes > 0,
            "a 64-item ring must make the sides park and signal: {tx_stats:?} {rx_stats:?}"
        );
        assert_eq!(tx_stats.missed_wakes + rx_stats.missed_wakes, 0);
    }
}

#[test]
fn many_rings_share_one_thread() {
    // 24 rings, both sides of each on one current-thread runtime: every wait must give the
    // thread back (a side that blocked or spun forever would stall the others), whatever
    // its spin policy.
    let _serial = common::serial();
    let policies = [SpinPolicy::Spin, SpinPolicy::Park, SpinPolicy::default()];
    let totals = current_thread().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..24u64 {
            let (a, b) = Channel::pair().unwrap();
            let options = RingOptions::new(1024)
                .spin(policies[i as usize % 3])
                .timeout(T);
            tasks.spawn(async move {
                let mut tx = AsyncProducer::setup(a, &options).await.unwrap();
                for seq in 0..500 {
                    tx.send(&record(seq * i)).await.unwrap();
                }
                0u64
            });
            tasks.spawn(async move {
                let mut rx = AsyncConsumer::setup(b, &options).await.unwrap();
                let (mut out, mut n) = (Vec::new(), 0u64);
                loop {
                    match rx.recv(&mut out).await {
                        Ok(()) => {
                            check(n * i, &out);
                            n += 1;
                        }
                        Err(Error::PeerClosed) => return n,
                        Err(e) => panic!("recv: {e:?}"),
                    }
                }
            });
        }
        let mut totals = Vec::new();
        while let Some(t) = timeout(T, tasks.join_next()).await.expect("a ring stalled") {
            totals.push(t.unwrap());
        }
        totals
    });
    assert_eq!(totals.iter().sum::<u64>(), 24 * 500);
}

#[test]
fn an_idle_async_consumer_parks_once() {
    let _serial = common::serial();
    let (a, b) = Channel::pair().unwrap();
    let options = RingOptions::new(1024).timeout(T);
    let producer = std::thread::spawn(move || {
        let mut tx = Producer::setup(a, &options).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        tx.send_timeout(b"late", T).unwrap();
        tx.stats()
    });
    let parks = current_thread().block_on(async {
        let mut rx = AsyncConsumer::setup(b, &options).await.unwrap();
        let mut out = Vec::new();
        timeout(T, rx.recv(&mut out)).await.unwrap().unwrap();
        assert_eq!(out, b"late");
        rx.get_mut().stats().parks
    });
    let tx = producer.join().unwrap();
    // Idle means asleep in the reactor: one park, ended by the producer's one signal.
    assert_eq!(parks, 1, "an idle consumer must not wake up to poll");
    assert_eq!(tx.wakes, 1);
}

#[test]
fn signals_carrying_descriptors_are_discarded() {
    let _serial = common::serial();
    let (a, b) = Channel::pair().unwrap();
    // What a hostile producer can do on its end of the channel: send anything, any time.
    let hostile = rustix::io::fcntl_dupfd_cloexec(&a, 0).unwrap();
    let options = RingOptions::new(1024).spin(SpinPolicy::Park).timeout(T);
    let rt = current_thread();
    let producer = std::thread::spawn(move || Producer::setup(a, &options).unwrap());
    let mut rx = rt.block_on(AsyncConsumer::setup(b, &options)).unwrap();
    let mut tx = producer.join().unwrap();
    let baseline = common::fds();
    let flood = std::thread::spawn(move || {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut refused = 0;
        for i in 0..500 {
            let fds = [r.as_fd(), w.as_fd()];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
            let data: &[u8] = if i % 2 == 0 { b"" } else { b"x" };
            match rustix::net::sendmsg(
                &hostile,
                &[std::io::IoSlice::new(data)],
                &mut control,
                rustix::net::SendFlags::empty(),
            ) {
                Ok(_) => {}
                // Linux 6.16+: the ring's channel refuses descriptors after setup.
                Err(rustix::io::Errno::PERM) => refused += 1,
                Err(e) => panic!("flood: {e:?}"),
            }
        }
        // All refused (SO_PASSRIGHTS) or all queued (older kernels), never a mix.
        assert!(refused == 0 || refused == 500, "{refused} refused");
        std::thread::sleep(Duration::from_millis(50));
        tx.send_timeout(b"honest", T).unwrap();
        (tx, hostile)
    });
    let got = rt.block_on(async {
        let mut out = Vec::new();
        timeout(T, rx.recv(&mut out)).await.unwrap().unwrap();
        out
    });
    let (_tx, _hostile) = flood.join().unwrap();
    assert_eq!(got, b"honest");
    common::assert_no_new_fds(&baseline, "no descriptor from a signal was installed");
}

#[test]
fn outside_a_runtime_is_an_error_not_a_panic() {
    let _serial = common::serial();
    let (a, b) = Channel::pair().unwrap();
    let options = RingOptions::new(1024).timeout(T);
    let producer = std::thread::spawn(move || Producer::setup(a, &options).unwrap());
    let rx = Consumer::setup(b, &options).unwrap();
    let _tx = producer.join().unwrap();
    assert!(matches!(AsyncConsumer::new(rx), Err(Error::Io { .. })));
}

fn p_wait(mut child: std::process::Child) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().unwrap();
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
