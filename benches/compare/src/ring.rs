//! The sealpipe ring (`sealpipe::ring`): small messages through a `PodProducer` of
//! `[u64; W]` items (one per call and batched), bulk records written in place into a byte
//! ring and read in place, and ping-pong over two rings in spin and park modes.

use crate::data::{check_small, small, Bulk, BulkCheck};
use crate::proc::{consumer_cpu, Ctl, Params, Peer};
use crate::rounds::timed;
use crate::small::BATCH;
use sealpipe::ring::{Consumer, PodConsumer, PodProducer, Producer, RingOptions, SpinPolicy};
use sealpipe::ring::{AsyncPodConsumer, AsyncPodProducer};
use sealpipe::{Channel, Error};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Items in the small-message ring (the same as the shmem-ipc and iceoryx2 buffers).
const RING: usize = 4096;
const WAIT: Duration = Duration::from_secs(30);

fn opts(capacity: usize, spin: SpinPolicy) -> RingOptions {
    RingOptions::new(capacity).spin(spin).timeout(WAIT)
}

/// Producer side of the small-message case.
pub fn small_run<const W: usize>(p: &Params, batched: bool) -> Duration
where
    [u64; W]: bytemuck::Pod,
{
    let (ch, rx) = Channel::pair().expect("channel");
    let mut peer = Peer::spawn(p, consumer_cpu(0), vec![rx.into_fd()]);
    let mut tx =
        PodProducer::<[u64; W]>::setup(ch, &opts(RING, SpinPolicy::Spin)).expect("ring connect");
    let count = p.count;
    let d = timed(&mut peer, p.rounds, |peer, r| {
        let mut i = 0;
        let mut spins = 0u32;
        while i < count {
            let base = (r * count + i) as u64;
            let res = if batched {
                // Written in place: up to BATCH free slots, one index publication.
                tx.try_reserve_slice(BATCH.min(count - i)).map(|mut slots| {
                    let n = slots.len();
                    for (j, m) in slots.as_mut_slice().iter_mut().enumerate() {
                        *m = small::<W>(base + j as u64);
                    }
                    slots.commit(n);
                    n
                })
            } else {
                tx.try_send(small::<W>(base)).map(|()| 1)
            };
            match res {
                Ok(n) => i += n,
                Err(Error::WouldBlock) => {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(4096) {
                        peer.check_alive();
                    }
                    std::hint::spin_loop();
                }
                Err(e) => panic!("ring push: {e}"),
            }
        }
    });
    peer.finish();
    d
}

/// Consumer side of the small-message case.
pub fn small_consume<const W: usize>(
    p: &Params,
    batched: bool,
    ctl: &mut Ctl,
    mut fds: Vec<OwnedFd>,
) where
    [u64; W]: bytemuck::Pod,
{
    let ch = Channel::from_fd(fds.remove(0)).expect("channel");
    ctl.ready();
    let mut rx =
        PodConsumer::<[u64; W]>::setup(ch, &opts(RING, SpinPolicy::Spin)).expect("ring connect");
    let mut buf = vec![[0u64; W]; BATCH];
    for r in 0..p.rounds {
        let mut i = 0;
        while i < p.count {
            let base = (r * p.count + i) as u64;
            let res = if batched {
                rx.try_recv_slice(&mut buf).inspect(|&n| {
                    for (j, m) in buf[..n].iter().enumerate() {
                        check_small::<W>(m, base + j as u64);
                    }
                })
            } else {
                rx.try_recv().map(|m| {
                    check_small::<W>(&m, base);
                    1
                })
            };
            match res {
                Ok(n) => i += n,
                Err(Error::WouldBlock) => std::hint::spin_loop(),
                Err(e) => panic!("ring pop: {e}"),
            }
        }
        assert_eq!(i, p.count, "more messages than sent");
        ctl.done();
    }
}

/// Byte-ring capacity for records of `size` bytes: room for at least four.
fn bulk_capacity(size: usize) -> usize {
    (4 * size).max(1 << 20).next_power_of_two()
}

/// Producer side of the bulk case: each payload is written in place into the ring.
pub fn bulk_run(p: &Params, src: &mut Bulk) -> Duration {
    let (ch, rx) = Channel::pair().expect("channel");
    let mut peer = Peer::spawn(p, consumer_cpu(0), vec![rx.into_fd()]);
    let mut tx = Producer::setup(ch, &opts(bulk_capacity(p.size), SpinPolicy::Spin))
        .expect("ring connect");
    let (count, size) = (p.count, p.size);
    let d = timed(&mut peer, p.rounds, |_, r| {
        for i in 0..count {
            src.stamp((r * count + i) as u64);
            let mut rec = tx.reserve_timeout(size, WAIT).expect("reserve");
            rec.as_mut_slice().copy_from_slice(&src.bytes);
            rec.commit();
        }
    });
    peer.finish();
    d
}

/// Consumer side of the bulk case: each record is checked in place.
pub fn bulk_consume(p: &Params, ctl: &mut Ctl, mut fds: Vec<OwnedFd>) {
    let ch = Channel::from_fd(fds.remove(0)).expect("channel");
    ctl.ready();
    let mut rx = Consumer::setup(ch, &opts(1 << 20, SpinPolicy::Spin)).expect("ring connect");
    let check = BulkCheck::new(p.size);
    for r in 0..p.rounds {
        let mut i = 0;
        while i < p.count {
            let seq = (r * p.count + i) as u64;
            // SAFETY: the producer is this benchmark's own parent process, which follows the
            // ring protocol and never writes a published record (the trusted-producer case
            // that `try_recv_in_place` documents).
            match unsafe { rx.try_recv_in_place(|b| check.check(b, seq)) } {
                Ok(()) => i += 1,
                Err(Error::WouldBlock) => std::hint::spin_loop(),
                Err(e) => panic!("ring recv: {e}"),
            }
        }
        ctl.done();
    }
}

fn spin_of(role: &str) -> SpinPolicy {
    if role.ends_with("park") || role.ends_with("async") {
        SpinPolicy::Park
    } else {
        SpinPolicy::Spin
    }
}

/// Producer side of ping-pong: `count` round trips of one `[u64; 8]` over two rings.
pub fn pingpong_run(p: &Params) -> Vec<Duration> {
    if p.role.ends_with("async") {
        return pingpong_run_async(p);
    }
    let spin = spin_of(&p.role);
    let (ping, ping_rx) = Channel::pair().expect("channel");
    let (pong, pong_tx) = Channel::pair().expect("channel");
    let mut peer = Peer::spawn(
        p,
        consumer_cpu(0),
        vec![ping_rx.into_fd(), pong_tx.into_fd()],
    );
    let mut tx = PodProducer::<[u64; 8]>::setup(ping, &opts(64, spin)).expect("ring connect");
    let mut rx = PodConsumer::<[u64; 8]>::setup(pong, &opts(64, spin)).expect("ring connect");
    let mut rtts = Vec::with_capacity(p.count);
    for i in 0..p.count as u64 {
        let t = Instant::now();
        tx.send_timeout(small::<8>(i), WAIT).expect("push");
        let m = rx.recv_timeout(WAIT).expect("pop");
        rtts.push(t.elapsed());
        check_small::<8>(&m, i);
    }
    peer.wait_done();
    peer.finish();
    rtts
}

/// Consumer side of ping-pong.
pub fn pingpong_consume(p: &Params, ctl: &mut Ctl, mut fds: Vec<OwnedFd>) {
    if p.role.ends_with("async") {
        return pingpong_consume_async(p, ctl, fds);
    }
    let spin = spin_of(&p.role);
    let ping = Channel::from_fd(fds.remove(0)).expect("channel");
    let pong = Channel::from_fd(fds.remove(0)).expect("channel");
    ctl.ready();
    let mut rx = PodConsumer::<[u64; 8]>::setup(ping, &opts(64, spin)).expect("ring connect");
    let mut tx = PodProducer::<[u64; 8]>::setup(pong, &opts(64, spin)).expect("ring connect");
    for i in 0..p.count as u64 {
        let m = rx.recv_timeout(WAIT).expect("pop");
        check_small::<8>(&m, i);
        tx.send_timeout(m, WAIT).expect("push");
    }
    ctl.done();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Ping-pong with both sides on tokio (current-thread runtimes), parking at once like
/// "ring-park", but in the reactor: woken by a signal byte on the ring's channel.
fn pingpong_run_async(p: &Params) -> Vec<Duration> {
    let spin = spin_of(&p.role);
    let (ping, ping_rx) = Channel::pair().expect("channel");
    let (pong, pong_tx) = Channel::pair().expect("channel");
    let mut peer = Peer::spawn(
        p,
        consumer_cpu(0),
        vec![ping_rx.into_fd(), pong_tx.into_fd()],
    );
    let rtts = runtime().block_on(async {
        let mut tx = AsyncPodProducer::<[u64; 8]>::setup(ping, &opts(64, spin))
            .await
            .expect("ring connect");
        let mut rx = AsyncPodConsumer::<[u64; 8]>::setup(pong, &opts(64, spin))
            .await
            .expect("ring connect");
        let mut rtts = Vec::with_capacity(p.count);
        for i in 0..p.count as u64 {
            let t = Instant::now();
            tx.send(small::<8>(i)).await.expect("push");
            let m = rx.recv().await.expect("pop");
            rtts.push(t.elapsed());
            check_small::<8>(&m, i);
        }
        rtts
    });
    peer.wait_done();
    peer.finish();
    rtts
}

fn pingpong_consume_async(p: &Params, ctl: &mut Ctl, mut fds: Vec<OwnedFd>) {
    let spin = spin_of(&p.role);
    let ping = Channel::from_fd(fds.remove(0)).expect("channel");
    let pong = Channel::from_fd(fds.remove(0)).expect("channel");
    ctl.ready();
    runtime().block_on(async {
        let mut rx = AsyncPodConsumer::<[u64; 8]>::setup(ping, &opts(64, spin))
            .await
            .expect("ring connect");
        let mut tx = AsyncPodProducer::<[u64; 8]>::setup(pong, &opts(64, spin))
            .await
            .expect("ring connect");
        for i in 0..p.count as u64 {
            let m = rx.recv().await.expect("pop");
            check_small::<8>(&m, i);
            tx.send(m).await.expect("push");
        }
    });
    ctl.done();
}
