//! 64 B ping-pong: the producer sends a message, the consumer checks it and sends it back,
//! the producer checks the reply; one round trip at a time. Median and p99 of every round
//! trip after a warm-up tenth.

use crate::data::{check_small, check_small_bytes, fill_small_bytes, small};
use crate::proc::{consumer_cpu, Ctl, Params, Peer};
use crate::small::{byte_pair, iceoryx_name};
use crate::Fig;
use iceoryx2::prelude::*;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Contenders in the ping-pong case.
pub const CONTENDERS: &[&str] = &[
    "sealpipe",
    "ring",
    "ring-park",
    "ring-async",
    "seqpacket",
    "stream",
    "pipe",
    "ipc-bytes",
    "iceoryx2",
    "cacheline",
];

/// Median and p99 of round trips.
pub fn summarize(v: &[Duration]) -> Fig {
    let mut v = v.to_vec();
    v.sort();
    Fig::Rtt {
        median: v[v.len() / 2],
        p99: v[(v.len() * 99 / 100).min(v.len() - 1)],
    }
}

/// Runs `count` round trips of `size` bytes with one contender; returns every round trip
/// after the first tenth (the warm-up).
pub fn run(contender: &str, size: usize, count: usize) -> Vec<Duration> {
    let p = Params {
        role: format!("pingpong/{contender}"),
        size,
        count,
        rounds: 1,
        extra: String::new(),
    };
    let mut rtts = Vec::with_capacity(count);
    let mut msg = vec![0u8; size];
    let mut reply = vec![0u8; size];
    let cpu = consumer_cpu(0);
    match contender {
        "ring" | "ring-park" | "ring-async" => rtts = crate::ring::pingpong_run(&p),
        "sealpipe" => {
            let (ch, rx) = sealpipe::Channel::pair().expect("channel");
            let mut peer = Peer::spawn(&p, cpu, vec![rx.into_fd()]);
            let policy = sealpipe::Policy::immutable();
            for i in 0..count as u64 {
                fill_small_bytes(&mut msg, i);
                let t = Instant::now();
                ch.send(&msg, &[]).expect("send");
                let m = ch.recv(&policy).expect("recv");
                rtts.push(t.elapsed());
                check_small_bytes(m.payload(), size, i);
            }
            peer.wait_done();
            peer.finish();
        }
        "pipe" | "stream" | "seqpacket" => {
            let (mut tx, mut rx, fds) = if contender == "pipe" {
                let (w1, r1) = byte_pair("pipe");
                let (w2, r2) = byte_pair("pipe");
                (File::from(w1), File::from(r2), vec![r1, w2])
            } else {
                let (a, b) = byte_pair(contender);
                let a = File::from(a);
                (a.try_clone().expect("dup"), a, vec![b])
            };
            let mut peer = Peer::spawn(&p, cpu, fds);
            for i in 0..count as u64 {
                fill_small_bytes(&mut msg, i);
                let t = Instant::now();
                tx.write_all(&msg).expect("write");
                rx.read_exact(&mut reply).expect("read");
                rtts.push(t.elapsed());
                check_small_bytes(&reply, size, i);
            }
            peer.wait_done();
            peer.finish();
        }
        "ipc-bytes" => {
            use ipc_channel::ipc::{bytes_channel, IpcBytesSender, IpcOneShotServer, IpcSender};
            let (server, name) =
                IpcOneShotServer::<(IpcBytesSender, IpcSender<IpcBytesSender>)>::new()
                    .expect("server");
            let p = Params { extra: name, ..p };
            let mut peer = Peer::spawn(&p, cpu, vec![]);
            let (_, (tx, back)) = server.accept().expect("accept");
            let (my_tx, rx) = bytes_channel().expect("bytes channel");
            back.send(my_tx).expect("send");
            for i in 0..count as u64 {
                fill_small_bytes(&mut msg, i);
                let t = Instant::now();
                tx.send(&msg).expect("send");
                let m = rx.recv().expect("recv");
                rtts.push(t.elapsed());
                check_small_bytes(&m, size, i);
            }
            peer.wait_done();
            peer.finish();
        }
        "iceoryx2" => {
            let (ping, pong) = (iceoryx_name("ping"), iceoryx_name("pong"));
            let node = NodeBuilder::new().create::<ipc::Service>().expect("node");
            let open = |name: &str| {
                node.service_builder(&name.try_into().expect("name"))
                    .publish_subscribe::<[u64; 8]>()
                    .open_or_create()
                    .expect("service")
            };
            let (s_ping, s_pong) = (open(&ping), open(&pong));
            let publisher = s_ping.publisher_builder().create().expect("publisher");
            let subscriber = s_pong.subscriber_builder().create().expect("subscriber");
            let p = Params {
                extra: format!("{ping},{pong}"),
                ..p
            };
            let mut peer = Peer::spawn(&p, cpu, vec![]);
            peer.expect(b'S'); // the consumer's publisher exists
            for i in 0..count as u64 {
                let t = Instant::now();
                publisher
                    .loan_uninit()
                    .expect("loan")
                    .write_payload(small::<8>(i))
                    .send()
                    .expect("send");
                let s = loop {
                    if let Some(s) = subscriber.receive().expect("receive") {
                        break s;
                    }
                    std::hint::spin_loop();
                };
                rtts.push(t.elapsed());
                check_small::<8>(s.payload(), i);
            }
            peer.wait_done();
            peer.finish();
        }
        "cacheline" => {
            let fd = rustix::fs::memfd_create("pingpong", rustix::fs::MemfdFlags::CLOEXEC)
                .expect("memfd");
            rustix::fs::ftruncate(&fd, 4096).expect("ftruncate");
            let file = File::from(fd);
            // SAFETY: a fresh memfd of 4096 bytes shared only with our own consumer, which
            // touches it only through the same atomic.
            let map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("mmap");
            let mut peer = Peer::spawn(&p, cpu, vec![file.try_clone().expect("dup").into()]);
            let line = as_atomic(&map);
            for i in 0..count as u64 {
                let t = Instant::now();
                line.store(2 * i + 1, Ordering::Release);
                while line.load(Ordering::Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
                rtts.push(t.elapsed());
            }
            peer.wait_done();
            peer.finish();
        }
        other => panic!("unknown ping-pong contender {other}"),
    }
    rtts.split_off(count / 10)
}

fn as_atomic(map: &memmap2::MmapMut) -> &AtomicU64 {
    // SAFETY: the mapping is page aligned, at least 8 bytes, lives as long as the borrow,
    // and both processes access these 8 bytes only atomically.
    unsafe { &*(map.as_ptr() as *const AtomicU64) }
}

/// Consumer side: check each message and send it back.
pub fn consume(kind: &str, p: &Params, ctl: &mut Ctl, mut fds: Vec<OwnedFd>) {
    let size = p.size;
    match kind {
        "ring" | "ring-park" | "ring-async" => {
            return crate::ring::pingpong_consume(p, ctl, fds)
        }
        "sealpipe" => {
            let ch = sealpipe::Channel::from_fd(fds.remove(0)).expect("channel");
            let policy = sealpipe::Policy::immutable();
            ctl.ready();
            for i in 0..p.count as u64 {
                let m = ch.recv(&policy).expect("recv");
                check_small_bytes(m.payload(), size, i);
                ch.send(m.payload(), &[]).expect("send");
            }
        }
        "pipe" | "stream" | "seqpacket" => {
            let mut rx = File::from(fds.remove(0));
            let mut tx = if fds.is_empty() {
                rx.try_clone().expect("dup")
            } else {
                File::from(fds.remove(0))
            };
            let mut buf = vec![0u8; size];
            ctl.ready();
            for i in 0..p.count as u64 {
                rx.read_exact(&mut buf).expect("read");
                check_small_bytes(&buf, size, i);
                tx.write_all(&buf).expect("write");
            }
        }
        "ipc-bytes" => {
            use ipc_channel::ipc::{bytes_channel, channel, IpcBytesSender, IpcSender};
            let (my_tx, rx) = bytes_channel().expect("bytes channel");
            let (otx, orx) = channel::<IpcBytesSender>().expect("channel");
            IpcSender::<(IpcBytesSender, IpcSender<IpcBytesSender>)>::connect(p.extra.clone())
                .expect("connect")
                .send((my_tx, otx))
                .expect("send");
            ctl.ready();
            let tx = orx.recv().expect("reply sender");
            for i in 0..p.count as u64 {
                let m = rx.recv().expect("recv");
                check_small_bytes(&m, size, i);
                tx.send(&m).expect("send");
            }
        }
        "iceoryx2" => {
            let (ping, pong) = p.extra.split_once(',').expect("two names");
            let node = NodeBuilder::new().create::<ipc::Service>().expect("node");
            let open = |name: &str| {
                node.service_builder(&name.try_into().expect("name"))
                    .publish_subscribe::<[u64; 8]>()
                    .open_or_create()
                    .expect("service")
            };
            let (s_ping, s_pong) = (open(ping), open(pong));
            let subscriber = s_ping.subscriber_builder().create().expect("subscriber");
            let publisher = s_pong.publisher_builder().create().expect("publisher");
            ctl.ready();
            ctl.send_byte(b'S');
            for i in 0..p.count as u64 {
                let s = loop {
                    if let Some(s) = subscriber.receive().expect("receive") {
                        break s;
                    }
                    std::hint::spin_loop();
                };
                check_small::<8>(s.payload(), i);
                publisher
                    .loan_uninit()
                    .expect("loan")
                    .write_payload(*s.payload())
                    .send()
                    .expect("send");
            }
        }
        "cacheline" => {
            let file = File::from(fds.remove(0));
            // SAFETY: the producer's 4096-byte memfd, accessed only through one atomic.
            let map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("mmap");
            let line = as_atomic(&map);
            ctl.ready();
            for i in 0..p.count as u64 {
                while line.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                line.store(2 * i + 2, Ordering::Release);
            }
        }
        other => panic!("unknown ping-pong contender {other}"),
    }
    ctl.done();
}
