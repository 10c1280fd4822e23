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
pub const CONTENDERS: &[&str] = &["sealpipe", "stream", "ipc-shmem"];

enum Sink {
    Sealpipe(sealpipe::Channel),
    Stream(File),
    Shmem(ipc_channel::ipc::IpcSender<ipc_channel::ipc::IpcSharedMemory>),
}

fn connect(contender: &str, p: &Params, i: usize) -> (Peer, Sink) {
    let cpu = consumer_cpu(i);
    match contender {
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
    let (mut peers, sinks): (Vec<Peer>, Vec<Sink>) =
        (0..consumers).map(|i| connect(contender, &p, i)).unzip();
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
