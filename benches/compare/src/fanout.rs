//! Fan-out: one 64 MiB buffer to N consumer processes. Reports the time until every
//! consumer has checked every byte, and the memory the transfer added (sum of the PSS of
//! every process, measured while every consumer still holds its last buffer and after the
//! producer has dropped what it no longer needs, minus the same sum before the buffer
//! existed).

use crate::data::{Bulk, BulkCheck};
use crate::proc::{consumer_cpu, pss, Ctl, Params, Peer};
use crate::rounds::median;
use crate::small::byte_pair;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Contenders in the fan-out case.
/// `pool`: one pool buffer leased per delivery and sent to every consumer at once (one
/// notice each; each memfd travels once); consumers read it in place (a trusted producer)
/// and release it before the next delivery.
pub const CONTENDERS: &[&str] = &["sealpipe", "pool", "stream", "ipc-shmem"];

enum Sink {
    Sealpipe(sealpipe::Channel),
    Pool(sealpipe::pool::PoolSender),
    Stream(File),
    Shmem(ipc_channel::ipc::IpcSender<ipc_channel::ipc::IpcSharedMemory>),
}

fn connect(contender: &str, p: &Params, i: usize, pool: &sealpipe::pool::Pool) -> (Peer, Sink) {
    let cpu = consumer_cpu(i);
    match contender {
        "pool" => {
            let (tx, rx) = sealpipe::Channel::pair().expect("channel");
            let tx = pool.attach(tx).expect("attach");
            (Peer::spawn(p, cpu, vec![rx.into_fd()]), Sink::Pool(tx))
        }
        "sealpipe" => {
            let (tx, rx) = sealpipe::Channel::pair().expect("channel");
            (Peer::spawn(p, cpu, vec![rx.into_fd()]), Sink::Sealpipe(tx))
        }
        "stream" => {
            let (tx, rx) = byte_pair("stream");
            for fd in [&tx, &rx] {
                let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, 4 << 20);
                let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, 4 << 20);
            }
            (Peer::spawn(p, cpu, vec![rx]), Sink::Stream(File::from(tx)))
        }
        "ipc-shmem" => {
            use ipc_channel::ipc::{IpcOneShotServer, IpcSender, IpcSharedMemory};
            let (server, name) =
                IpcOneShotServer::<IpcSender<IpcSharedMemory>>::new().expect("ipc server");
            let p = Params {
                extra: name,
                ..p.clone()
            };
            let peer = Peer::spawn(&p, cpu, vec![]);
            let (_, tx) = server.accept().expect("accept");
            (peer, Sink::Shmem(tx))
        }
        other => panic!("unknown fan-out contender {other}"),
    }
}

/// Runs one contender with `consumers` consumer processes; returns the median time of one
/// delivery and the bytes of memory the transfer added.
pub fn run(contender: &str, size: usize, consumers: usize, rounds: usize) -> (Duration, u64) {
    let p = Params {
        role: format!("fanout/{contender}"),
        size,
        count: 1,
        rounds,
        extra: String::new(),
    };
    // One buffer: each delivery's lease waits for every consumer's release of the last one
    // (they release it before they wait for the next), so memory stays one copy.
    let pool = sealpipe::pool::Pool::new(
        sealpipe::pool::PoolOptions::new()
            .max_bytes(size)
            .slab_len(size),
    )
    .expect("pool");
    let (mut peers, sinks): (Vec<Peer>, Vec<Sink>) = (0..consumers)
        .map(|i| connect(contender, &p, i, &pool))
        .unzip();
    let total_pss =
        |peers: &[Peer]| pss(std::process::id()) + peers.iter().map(|p| pss(p.pid())).sum::<u64>();
    let before = total_pss(&peers);
    let mut src = Bulk::new(size);
    let mut times = Vec::new();
    for r in 0..rounds {
        src.stamp(r as u64);
        let t = Instant::now();
        match contender {
            "sealpipe" => {
                let mut region = sealpipe::Region::new(size).expect("region");
                region.write_at(0, &src.bytes).expect("write_at");
                let sealed = region.seal().expect("seal");
                for s in &sinks {
                    if let Sink::Sealpipe(tx) = s {
                        tx.send(&[], &[&sealed]).expect("send");
                    }
                }
            }
            "pool" => {
                let mut lease = pool
                    .lease_timeout(size, Duration::from_secs(60))
                    .expect("lease");
                lease.copy_from_slice(&src.bytes);
                let to: Vec<&sealpipe::pool::PoolSender> = sinks
                    .iter()
                    .filter_map(|s| match s {
                        Sink::Pool(tx) => Some(tx),
                        _ => None,
                    })
                    .collect();
                lease.send(&to).expect("send");
            }
            "stream" => {
                for s in &sinks {
                    if let Sink::Stream(tx) = s {
                        let mut tx: &File = tx;
                        tx.write_all(&src.bytes).expect("write");
                    }
                }
            }
            _ => {
                let shm = ipc_channel::ipc::IpcSharedMemory::from_bytes(&src.bytes);
                for s in &sinks {
                    if let Sink::Shmem(tx) = s {
                        tx.send(shm.clone()).expect("send");
                    }
                }
            }
        }
        for peer in &mut peers {
            peer.wait_done();
        }
        if r > 0 || rounds == 1 {
            times.push(t.elapsed());
        }
    }
    drop(src);
    let after = total_pss(&peers);
    for peer in peers {
        peer.finish();
    }
    drop(sinks);
    (median(&mut times), after.saturating_sub(before))
}

/// Consumer side: receive, check every byte, keep the last buffer until told to exit.
pub fn consume(kind: &str, p: &Params, ctl: &mut Ctl, mut fds: Vec<OwnedFd>) {
    let check = BulkCheck::new(p.size);
    match kind {
        "sealpipe" => {
            let rx = sealpipe::Channel::from_fd(fds.remove(0)).expect("channel");
            let policy = sealpipe::Policy::immutable().max_region_len(p.size as u64);
            ctl.ready();
            let mut last: Option<sealpipe::Message> = None;
            for r in 0..p.rounds {
                drop(last.take()); // free the previous buffer before the next arrives
                let msg = rx.recv(&policy).expect("recv");
                check.check(
                    msg.regions()
                        .first()
                        .expect("one region")
                        .as_bytes()
                        .expect("immutable"),
                    r as u64,
                );
                last = Some(msg);
                ctl.done();
            }
            ctl.wait_exit();
            drop(last);
        }
        "pool" => {
            let ch = sealpipe::Channel::from_fd(fds.remove(0)).expect("channel");
            let policy = sealpipe::Policy::producer_writable().max_region_len(p.size as u64);
            let mut rx = sealpipe::pool::PoolReceiver::new(ch, &policy).expect("receiver");
            rx.set_release_batch(1);
            ctl.ready();
            let mut last = None;
            for r in 0..p.rounds {
                drop(last.take()); // release the previous buffer before the next arrives
                let b = rx.recv().expect("pool recv");
                // SAFETY: the producer (this benchmark) never writes a buffer it has sent.
                #[allow(unsafe_code)]
                let bytes = unsafe { b.as_bytes_unchecked() };
                check.check(bytes, r as u64);
                last = Some(b);
                ctl.done();
            }
            ctl.wait_exit();
            drop(last);
        }
        "stream" => {
            let mut rx = File::from(fds.remove(0));
            let mut buf = vec![0u8; p.size];
            ctl.ready();
            for r in 0..p.rounds {
                rx.read_exact(&mut buf).expect("read");
                check.check(&buf, r as u64);
                ctl.done();
            }
            ctl.wait_exit();
        }
        "ipc-shmem" => {
            use ipc_channel::ipc::{channel, IpcSender, IpcSharedMemory};
            let (tx, rx) = channel::<IpcSharedMemory>().expect("channel");
            IpcSender::<IpcSender<IpcSharedMemory>>::connect(p.extra.clone())
                .expect("connect")
                .send(tx)
                .expect("send");
            ctl.ready();
            let mut last = None;
            for r in 0..p.rounds {
                drop(last.take());
                let shm = rx.recv().expect("recv");
                check.check(&shm, r as u64);
                last = Some(shm);
                ctl.done();
            }
            ctl.wait_exit();
            drop(last);
        }
        other => panic!("unknown fan-out contender {other}"),
    }
}
