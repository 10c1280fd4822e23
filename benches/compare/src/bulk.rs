//! Bulk transfers (64 KiB, 1 MiB, 64 MiB). The producer stamps each payload with its
//! sequence number and hands it to the transport; the consumer reads every byte and checks
//! the word sum and the stamps.

use crate::data::{Bulk, BulkCheck};
use crate::proc::{consumer_cpu, Ctl, Params, Peer};
use crate::rounds::{after_recv, timed, timed_local, Credit};
use crate::small::{byte_pair, iceoryx_name};
use iceoryx2::prelude::*;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// Contenders in the bulk case, and the sizes each runs at (`None`: every size).
pub const CONTENDERS: &[(&str, Option<&[usize]>)] = &[
    ("sealpipe", None),
    ("pool", None),
    ("ring", None),
    ("stream", None),
    ("ipc-bytes", None),
    ("ipc-shmem", None),
    ("iceoryx2", Some(&[64 << 10, 1 << 20])),
    ("memcpy", None),
];

/// Unix socket buffer asked for (the kernel caps it at `net.core.wmem_max`).
const SOCK_BUF: usize = 4 << 20;

/// Runs one contender; returns the median time of one round of `count` payloads.
pub fn run(contender: &str, size: usize, count: usize, rounds: usize) -> Duration {
    let p = Params {
        role: format!("bulk/{contender}"),
        size,
        count,
        rounds,
        extra: String::new(),
    };
    let mut src = Bulk::new(size);
    match contender {
        "ring" => crate::ring::bulk_run(&p, &mut src),
        "memcpy" => {
            let mut dst = vec![0u8; size];
            timed_local(rounds, |_| {
                for _ in 0..count {
                    dst.copy_from_slice(std::hint::black_box(&src.bytes));
                    std::hint::black_box(&mut dst);
                }
            })
        }
        "sealpipe" => {
            let (tx, rx) = sealpipe::Channel::pair().expect("channel");
            let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![rx.into_fd()]);
            let mut credit = Credit::default();
            let d = timed(&mut peer, rounds, |peer, r| {
                for i in 0..count {
                    credit.before_send(peer, i);
                    src.stamp((r * count + i) as u64);
                    let mut region = sealpipe::Region::new(size).expect("region");
                    region.write_at(0, &src.bytes).expect("write_at");
                    let sealed = region.seal().expect("seal");
                    tx.send(&[], &[&sealed]).expect("send");
                }
            });
            peer.finish();
            d
        }
        "pool" => {
            // A pool of 16 buffers (4 at 64 MiB), each memfd sent once; the consumer copies
            // every buffer out (the safe read) and releases it.
            let (tx, rx) = sealpipe::Channel::pair().expect("channel");
            let buffers = if size >= 64 << 20 { 4 } else { 16 };
            let pool = sealpipe::pool::Pool::new(
                sealpipe::pool::PoolOptions::new()
                    .max_bytes(buffers * size)
                    .slab_len((4 << 20).max(size)),
            )
            .expect("pool");
            let tx = pool.attach(tx).expect("attach");
            let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![rx.into_fd()]);
            let d = timed(&mut peer, rounds, |_, r| {
                for i in 0..count {
                    src.stamp((r * count + i) as u64);
                    let mut lease = pool
                        .lease_timeout(size, Duration::from_secs(60))
                        .expect("lease");
                    lease.copy_from_slice(&src.bytes);
                    lease.send(&[&tx]).expect("send");
                }
            });
            peer.finish();
            d
        }
        "stream" => {
            let (tx, rx) = byte_pair("stream");
            for fd in [&tx, &rx] {
                let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, SOCK_BUF);
                let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, SOCK_BUF);
            }
            let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![rx]);
            let mut tx = File::from(tx);
            let d = timed(&mut peer, rounds, |_, r| {
                for i in 0..count {
                    src.stamp((r * count + i) as u64);
                    tx.write_all(&src.bytes).expect("write");
                }
            });
            peer.finish();
            d
        }
        "ipc-bytes" => {
            use ipc_channel::ipc::{IpcBytesSender, IpcOneShotServer};
            let (server, name) = IpcOneShotServer::<IpcBytesSender>::new().expect("ipc server");
            let p = Params { extra: name, ..p };
            let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![]);
            let (_, tx) = server.accept().expect("accept");
            let mut credit = Credit::default();
            let d = timed(&mut peer, rounds, |peer, r| {
                for i in 0..count {
                    credit.before_send(peer, i);
                    src.stamp((r * count + i) as u64);
                    tx.send(&src.bytes).expect("ipc send");
                }
            });
            peer.finish();
            d
        }
        "ipc-shmem" => {
            use ipc_channel::ipc::{IpcOneShotServer, IpcSender, IpcSharedMemory};
            let (server, name) =
                IpcOneShotServer::<IpcSender<IpcSharedMemory>>::new().expect("ipc server");
            let p = Params { extra: name, ..p };
            let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![]);
            let (_, tx) = server.accept().expect("accept");
            let mut credit = Credit::default();
            let d = timed(&mut peer, rounds, |peer, r| {
                for i in 0..count {
                    credit.before_send(peer, i);
                    src.stamp((r * count + i) as u64);
                    tx.send(IpcSharedMemory::from_bytes(&src.bytes))
                        .expect("ipc send");
                }
            });
            peer.finish();
            d
        }
        "iceoryx2" => {
            let name = iceoryx_name("bulk");
            let node = NodeBuilder::new().create::<ipc::Service>().expect("node");
            let service = node
                .service_builder(&name.as_str().try_into().expect("name"))
                .publish_subscribe::<[u8]>()
                .enable_safe_overflow(false)
                .subscriber_max_buffer_size(8)
                .create()
                .expect("service");
            let publisher = service
                .publisher_builder()
                .initial_max_slice_len(size)
                .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
                .create()
                .expect("publisher");
            let p = Params { extra: name, ..p };
            let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![]);
            let d = timed(&mut peer, rounds, |_, r| {
                for i in 0..count {
                    src.stamp((r * count + i) as u64);
                    let sample = publisher.loan_slice_uninit(size).expect("loan");
                    sample.write_from_slice(&src.bytes).send().expect("send");
                }
            });
            peer.finish();
            d
        }
        other => panic!("unknown bulk contender {other}"),
    }
}

/// Consumer side of every bulk contender.
pub fn consume(kind: &str, p: &Params, ctl: &mut Ctl, mut fds: Vec<OwnedFd>) {
    let check = BulkCheck::new(p.size);
    let seq = |r: usize, i: usize| (r * p.count + i) as u64;
    match kind {
        "ring" => crate::ring::bulk_consume(p, ctl, fds),
        "sealpipe" => {
            let rx = sealpipe::Channel::from_fd(fds.remove(0)).expect("channel");
            let policy = sealpipe::Policy::immutable().max_region_len(p.size as u64);
            ctl.ready();
            for r in 0..p.rounds {
                for i in 0..p.count {
                    let msg = rx.recv(&policy).expect("sealpipe recv");
                    let region = msg.regions().first().expect("one region");
                    check.check(region.as_bytes().expect("immutable"), seq(r, i));
                    drop(msg);
                    after_recv(ctl, i);
                }
                ctl.done();
            }
        }
        "pool" => {
            let ch = sealpipe::Channel::from_fd(fds.remove(0)).expect("channel");
            let policy = sealpipe::Policy::producer_writable().max_region_len(64 << 20);
            let mut rx = sealpipe::pool::PoolReceiver::new(ch, &policy).expect("receiver");
            let mut buf = vec![0u8; p.size];
            ctl.ready();
            for r in 0..p.rounds {
                for i in 0..p.count {
                    let b = rx.recv().expect("pool recv");
                    b.read_at(0, &mut buf).expect("read_at");
                    drop(b);
                    check.check(&buf, seq(r, i));
                }
                // About to block on the control socket: give back what is queued.
                rx.flush_releases().expect("flush releases");
                ctl.done();
            }
        }
        "stream" => {
            let mut rx = File::from(fds.remove(0));
            let mut buf = vec![0u8; p.size];
            ctl.ready();
            for r in 0..p.rounds {
                for i in 0..p.count {
                    rx.read_exact(&mut buf).expect("read");
                    check.check(&buf, seq(r, i));
                }
                ctl.done();
            }
        }
        "ipc-bytes" => {
            use ipc_channel::ipc::{bytes_channel, IpcBytesSender, IpcSender};
            let (tx, rx) = bytes_channel().expect("bytes channel");
            IpcSender::<IpcBytesSender>::connect(p.extra.clone())
                .expect("connect")
                .send(tx)
                .expect("send");
            ctl.ready();
            for r in 0..p.rounds {
                for i in 0..p.count {
                    check.check(&rx.recv().expect("ipc recv"), seq(r, i));
                    after_recv(ctl, i);
                }
                ctl.done();
            }
        }
        "ipc-shmem" => {
            use ipc_channel::ipc::{channel, IpcSender, IpcSharedMemory};
            let (tx, rx) = channel::<IpcSharedMemory>().expect("channel");
            IpcSender::<IpcSender<IpcSharedMemory>>::connect(p.extra.clone())
                .expect("connect")
                .send(tx)
                .expect("send");
            ctl.ready();
            for r in 0..p.rounds {
                for i in 0..p.count {
                    check.check(&rx.recv().expect("ipc recv"), seq(r, i));
                    after_recv(ctl, i);
                }
                ctl.done();
            }
        }
        "iceoryx2" => {
            let node = NodeBuilder::new().create::<ipc::Service>().expect("node");
            let service = node
                .service_builder(&p.extra.as_str().try_into().expect("name"))
                .publish_subscribe::<[u8]>()
                .enable_safe_overflow(false)
                .subscriber_max_buffer_size(8)
                .open()
                .expect("open service");
            let subscriber = service
                .subscriber_builder()
                .buffer_size(8)
                .create()
                .expect("subscriber");
            ctl.ready();
            for r in 0..p.rounds {
                let mut i = 0;
                while i < p.count {
                    match subscriber.receive().expect("receive") {
                        Some(s) => {
                            check.check(s.payload(), seq(r, i));
                            i += 1;
                        }
                        None => std::hint::spin_loop(),
                    }
                }
                ctl.done();
            }
        }
        other => panic!("unknown bulk contender {other}"),
    }
}
