//! Sending pool buffers to consumers whose socket is full: the send waits (blocking and
//! async) or, without waiting, says which consumer did not get the buffer; a slow consumer
//! does not hold up the others in a fan-out; a cancelled or failed send never leaks the
//! buffer nor frees it while a consumer that got it still holds it. Consumers are real
//! processes.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sealpipe::pool::{Lease, Outgoing, Pool, PoolOptions, PoolReceiver, PoolSender};
use sealpipe::{Channel, Error, Policy};

const T: Duration = Duration::from_secs(20);
/// Where a "late" consumer looks for the file that tells it to start reading.
const FLAG_ENV: &str = "SEALPIPE_TEST_FLAG";
/// Index written into a buffer the late consumer must never see.
const NEVER: u64 = 0xdead_beef;

fn fill(lease: &mut Lease, i: u64) {
    lease[..8].copy_from_slice(&i.to_le_bytes());
}

/// A pool of 4 KiB buffers, enough of them to fill any socket with notices.
fn small_pool() -> Pool {
    Pool::new(PoolOptions::new().max_bytes(8 << 20).slab_len(4 << 20)).unwrap()
}

fn flag_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sealpipe-{test}-{}", std::process::id()))
}

fn ready_path(flag: &Path) -> PathBuf {
    flag.with_extension("ready")
}

/// Spawns a consumer; a "late" one is waited for until it is up and will not read.
fn spawn(test: &str, role: &str, flag: &Path) -> common::Peer {
    let peer = common::spawn_peer_with(test, role, |cmd| {
        cmd.env(FLAG_ENV, flag);
    });
    if role == "late" {
        let end = Instant::now() + T;
        while !ready_path(flag).exists() {
            assert!(Instant::now() < end, "the late consumer did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = std::fs::remove_file(ready_path(flag));
    }
    peer
}

/// Consumer roles: "late" does not read until the flag file exists (so its socket fills
/// up), then reads every buffer in order, checks that the indices are 0, 1, 2, ... (a
/// cancelled buffer never arrives), releases each, and at the end writes how many it got
/// to the flag file; "reader" reads and releases every buffer at once.
fn roles(role: &str, ch: Channel) -> i32 {
    let flag = PathBuf::from(std::env::var_os(FLAG_ENV).expect("flag path"));
    let mut rx = PoolReceiver::new(ch, &Policy::producer_writable()).unwrap();
    if role == "late" {
        // Past the spawn handshake (whose last message the parent sent to this side and
        // which it has now read): from here on only pool notices fill its socket.
        std::fs::write(ready_path(&flag), b"").unwrap();
        let end = Instant::now() + T;
        while !flag.exists() {
            assert!(Instant::now() < end, "late: no flag");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut n = 0u64;
    loop {
        match rx.recv_timeout(T) {
            Ok(buf) => {
                let i: u64 = buf.read_value(0).unwrap();
                if role == "late" {
                    assert_eq!(
                        i, n,
                        "late: out of order, missing, or cancelled ({NEVER:x})"
                    );
                }
                n += 1;
            }
            Err(Error::PeerClosed) => break,
            Err(e) => panic!("{role}: {e:?}"),
        }
    }
    if role == "late" {
        std::fs::write(&flag, n.to_string()).unwrap();
    }
    0
}

/// Sends buffers 0, 1, 2, ... to `tx` without waiting until its socket is full; returns
/// how many it got and the one that did not fit.
fn fill_socket(pool: &Pool, tx: &PoolSender) -> (u64, Outgoing) {
    for i in 0..2000u64 {
        let mut lease = pool.try_lease(4096).unwrap();
        fill(&mut lease, i);
        let out = lease.into_outgoing();
        match out.try_send_to(tx) {
            Ok(()) => {}
            Err(Error::WouldBlock) => return (i, out),
            Err(e) => panic!("send {i}: {e:?}"),
        }
    }
    panic!("the socket never filled up");
}

/// Polls releases until `cond` holds (or fails after 20 s).
fn poll_until(what: &str, txs: &[&PoolSender], mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !cond() {
        for tx in txs {
            let _ = tx.poll_releases();
        }
        assert!(Instant::now() < end, "{what}: timed out");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Drops the producer's end, waits for the peer, and returns what a "late" peer wrote.
fn finish(tx: PoolSender, child: std::process::Child, flag: &Path) -> u64 {
    drop(tx);
    let mut peer = common::Peer {
        child,
        channel: Channel::pair().unwrap().0,
    };
    assert_eq!(peer.exit_code(), 0);
    let n = std::fs::read_to_string(flag).unwrap_or_default();
    let _ = std::fs::remove_file(flag);
    n.parse().unwrap_or(0)
}

#[test]
fn a_full_socket_makes_send_wait_and_try_send_say_who_did_not_get_it() {
    common::peer_main(roles);
    let name = "a_full_socket_makes_send_wait_and_try_send_say_who_did_not_get_it";
    let flag = flag_path(name);
    let peer = spawn(name, "late", &flag);
    let pool = small_pool();
    let tx = pool.attach(peer.channel).unwrap();
    let (n, out) = fill_socket(&pool, &tx);
    assert!(n > 10, "only {n} notices fit");
    // The consumer that did not get it does not hold it; the socket is still full.
    assert_eq!(tx.held(), n as usize);
    assert_eq!(pool.stats().held, n as usize + 1); // + the `Outgoing` itself
    assert!(matches!(out.try_send_to(&tx), Err(Error::WouldBlock)));
    assert!(matches!(
        out.send_to_timeout(&tx, Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
    assert_eq!(tx.held(), n as usize);
    // A blocking send waits until the consumer reads, then gets through.
    let start = Instant::now();
    let reader = std::thread::spawn({
        let flag = flag.clone();
        move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(&flag, b"go").unwrap();
        }
    });
    out.send_to(&tx).unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(90),
        "{:?} n={n} exists={}",
        start.elapsed(),
        flag.exists()
    );
    reader.join().unwrap();
    drop(out);
    // And `Lease::send` waits likewise, with no socket full now.
    let mut lease = pool.lease_timeout(4096, T).unwrap();
    fill(&mut lease, n + 1);
    lease.send_timeout(&[&tx], T).unwrap();
    poll_until("all released", &[&tx], || pool.stats().held == 0);
    assert_eq!(tx.held(), 0);
    assert_eq!(finish(tx, peer.child, &flag), n + 2);
}

#[test]
fn fan_out_to_a_slow_consumer_does_not_hold_up_the_others() {
    common::peer_main(roles);
    let name = "fan_out_to_a_slow_consumer_does_not_hold_up_the_others";
    let flag = flag_path(name);
    let late = spawn(name, "late", &flag);
    let readers: Vec<_> = (0..2).map(|_| spawn(name, "reader", &flag)).collect();
    let pool = small_pool();
    let late_tx = pool.attach(late.channel).unwrap();
    let mut children = Vec::new();
    let mut reader_txs = Vec::new();
    for p in readers {
        children.push(p.child);
        reader_txs.push(pool.attach(p.channel).unwrap());
    }
    let (n, stuck) = fill_socket(&pool, &late_tx);
    drop(stuck); // sent to nobody: straight back to the pool
    assert_eq!(pool.stats().held, n as usize);

    // Without waiting, each consumer's result says who got it: the readers did, the late
    // one did not; the buffer comes back once the readers release it, although the late
    // consumer never got it.
    let mut lease = pool.try_lease(4096).unwrap();
    fill(&mut lease, NEVER);
    let out = lease.into_outgoing();
    assert!(out.try_send_to(&reader_txs[0]).is_ok());
    assert!(matches!(out.try_send_to(&late_tx), Err(Error::WouldBlock)));
    assert!(out.try_send_to(&reader_txs[1]).is_ok());
    drop(out);
    assert_eq!(late_tx.held(), n as usize);
    poll_until(
        "readers released",
        &[&reader_txs[0], &reader_txs[1]],
        || pool.stats().held == n as usize,
    );

    // A blocking fan-out with the late consumer in the middle: the readers get (and
    // release) the buffer while the send still waits for the late consumer's socket.
    let mut lease = pool.try_lease(4096).unwrap();
    fill(&mut lease, n);
    let (released, sent) = std::thread::scope(|s| {
        let sender = s.spawn(|| lease.send_timeout(&[&reader_txs[0], &late_tx, &reader_txs[1]], T));
        let mut released = [0usize; 2];
        let end = Instant::now() + T;
        while released.contains(&0) && Instant::now() < end {
            for (r, tx) in released.iter_mut().zip(&reader_txs) {
                *r += tx.poll_releases().unwrap();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let waiting = !sender.is_finished();
        std::fs::write(&flag, b"go").unwrap();
        (released, (waiting, sender.join().unwrap()))
    });
    assert_eq!(released, [1, 1], "the readers got the buffer");
    assert!(sent.0, "the send was still waiting for the late consumer");
    sent.1.unwrap();
    poll_until("all released", &[&late_tx], || pool.stats().held == 0);
    assert_eq!(finish(late_tx, late.child, &flag), n + 1);
    drop(reader_txs);
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
}

#[cfg(feature = "tokio")]
#[test]
fn async_send_awaits_a_full_socket_and_a_cancelled_send_leaks_nothing() {
    use sealpipe::pool::AsyncPool;
    common::peer_main(roles);
    let name = "async_send_awaits_a_full_socket_and_a_cancelled_send_leaks_nothing";
    let flag = flag_path(name);
    let late = spawn(name, "late", &flag);
    let reader = spawn(name, "reader", &flag);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = small_pool();
    let late_tx = pool.attach(late.channel).unwrap();
    let reader_tx = pool.attach(reader.channel).unwrap();
    let n = rt.block_on(async {
        let apool = AsyncPool::new(pool.clone()).unwrap();
        let short = Duration::from_millis(50);
        let (n, out) = fill_socket(&pool, &late_tx);
        let free = pool.stats().free;

        // A cancelled `send_to` leaves the `Outgoing` as it was: not sent, still ours.
        assert!(tokio::time::timeout(short, apool.send_to(&out, &late_tx))
            .await
            .is_err());
        assert_eq!(late_tx.held(), n as usize);

        // A cancelled `send` to the late consumer alone: nobody got the buffer, it is back
        // in the pool at once.
        let mut lease = apool.lease(4096).await.unwrap();
        fill(&mut lease, NEVER);
        assert_eq!(pool.stats().free, free - 1);
        assert!(tokio::time::timeout(short, apool.send(lease, &[&late_tx]))
            .await
            .is_err());
        assert_eq!(pool.stats().free, free);
        assert_eq!(pool.stats().held, n as usize + 1); // + `out`

        // A cancelled fan-out: the reader got it (its notice stays valid, it releases it),
        // the late consumer did not; the buffer returns once the reader has released it.
        let mut lease = apool.lease(4096).await.unwrap();
        fill(&mut lease, NEVER);
        assert!(
            tokio::time::timeout(short, apool.send(lease, &[&reader_tx, &late_tx]))
                .await
                .is_err()
        );
        poll_until("reader released", &[&reader_tx], || {
            pool.stats().held == n as usize + 1
        });
        assert_eq!(pool.stats().free, free);
        assert_eq!(late_tx.held(), n as usize);

        // Now the consumer reads: the waiting `send_to` is woken and gets through, and a
        // fan-out `send` to both completes.
        let go = async {
            tokio::time::sleep(short).await;
            std::fs::write(&flag, b"go").unwrap();
        };
        let (sent, ()) =
            tokio::time::timeout(T, async { tokio::join!(apool.send_to(&out, &late_tx), go) })
                .await
                .expect("the send was woken");
        sent.unwrap();
        drop(out);
        let mut lease = apool.lease(4096).await.unwrap();
        fill(&mut lease, n + 1);
        tokio::time::timeout(T, apool.send(lease, &[&reader_tx, &late_tx]))
            .await
            .unwrap()
            .unwrap();
        n
    });
    poll_until("all released", &[&late_tx, &reader_tx], || {
        pool.stats().held == 0
    });
    assert_eq!(finish(late_tx, late.child, &flag), n + 2);
    drop(reader_tx);
    let mut reader = reader.child;
    assert!(reader.wait().unwrap().success());
}

#[test]
fn outgoing_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Outgoing>();
}

#[test]
fn a_consumer_listed_twice_gets_the_buffer_once_and_holds_it_once() {
    let (a, b) = Channel::pair().unwrap();
    let pool = small_pool();
    let tx = pool.attach(a).unwrap();
    let mut rx = PoolReceiver::new(b, &Policy::producer_writable()).unwrap();
    let mut lease = pool.lease(4096).unwrap();
    fill(&mut lease, 7);
    lease.send(&[&tx, &tx]).unwrap();
    assert_eq!(tx.held(), 1);
    let buf = rx.recv_timeout(T).unwrap();
    assert_eq!(buf.read_value::<u64>(0).unwrap(), 7);
    assert!(matches!(rx.try_recv(), Err(Error::WouldBlock)));
    // One release frees it.
    drop(buf);
    rx.flush_releases().unwrap();
    assert_eq!(tx.poll_releases().unwrap(), 1);
    assert_eq!(pool.stats().held, 0);
    // An `Outgoing` sent to nobody goes straight back.
    let free = pool.stats().free;
    drop(pool.lease(4096).unwrap().into_outgoing());
    assert_eq!(pool.stats().free, free);
    assert_eq!(pool.stats().held, 0);
}
