//! Small messages (8 B and 64 B), one per call and batched. Every message is `size / 8`
//! words each holding its sequence number; the consumer checks every word of every message.

use crate::data::{check_small, check_small_bytes, fill_small_bytes, small};
use crate::proc::{consumer_cpu, pin, Ctl, Params, Peer};
use crate::rounds::{timed, timed_local};
use iceoryx2::prelude::*;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Messages per batched call.
pub const BATCH: usize = 256;
/// Capacity (messages) of the shared-memory rings.
const RING: usize = 4096;

/// Contenders in the small-message case and whether each has a batch API.
pub const CONTENDERS: &[(&str, bool)] = &[
    ("sealpipe", false),
    ("ring", true),
    ("seqpacket", false),
    ("stream", true),
    ("pipe", true),
    ("ipc-bytes", false),
    ("iceoryx2", false),
    ("shmem-ipc", true),
    ("rtrb", true),
];

fn params(
    contender: &str,
    size: usize,
    batched: bool,
    count: usize,
    rounds: usize,
    extra: String,
) -> Params {
    Params {
        role: format!("small/{contender}/{}", u8::from(batched)),
        size,
        count,
        rounds,
        extra,
    }
}

/// Runs one contender; returns the median time of one round of `count` messages.
pub fn run(contender: &str, size: usize, batched: bool, count: usize, rounds: usize) -> Duration {
    let p = params(contender, size, batched, count, rounds, String::new());
    match (contender, size) {
        ("ring", 8) => crate::ring::small_run::<1>(&p, batched),
        ("ring", _) => crate::ring::small_run::<8>(&p, batched),
        ("rtrb", 8) => rtrb_run::<1>(batched, count, rounds),
        ("rtrb", _) => rtrb_run::<8>(batched, count, rounds),
        ("shmem-ipc", 8) => shmem_run::<1>(&p, batched),
        ("shmem-ipc", _) => shmem_run::<8>(&p, batched),
        ("iceoryx2", 8) => iceoryx_run::<1>(&p),
        ("iceoryx2", _) => iceoryx_run::<8>(&p),
        ("ipc-bytes", _) => ipc_run(&p),
        ("sealpipe", _) => {
            let (tx, rx) = sealpipe::Channel::pair().expect("channel");
            let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![rx.into_fd()]);
            let mut msg = vec![0u8; size];
            let d = timed(&mut peer, rounds, |_, r| {
                for i in 0..count {
                    fill_small_bytes(&mut msg, (r * count + i) as u64);
                    tx.send(&msg, &[]).expect("sealpipe send");
                }
            });
            peer.finish();
            d
        }
        (kind, _) => {
            let (tx, rx) = byte_pair(kind);
            let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![rx]);
            let mut tx = File::from(tx);
            let per_call = if batched { BATCH } else { 1 };
            let mut buf = vec![0u8; size * per_call];
            let d = timed(&mut peer, rounds, |_, r| {
                let mut i = 0;
                while i < count {
                    let n = per_call.min(count - i);
                    for (j, m) in buf[..n * size].chunks_exact_mut(size).enumerate() {
                        fill_small_bytes(m, (r * count + i + j) as u64);
                    }
                    tx.write_all(&buf[..n * size]).expect("write");
                    i += n;
                }
            });
            peer.finish();
            d
        }
    }
}

/// A connected pair of descriptors for a kernel byte transport: (producer end, consumer end).
pub fn byte_pair(kind: &str) -> (OwnedFd, OwnedFd) {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    match kind {
        "seqpacket" | "stream" => {
            let ty = if kind == "stream" {
                SocketType::STREAM
            } else {
                SocketType::SEQPACKET
            };
            socketpair(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None).expect("socketpair")
        }
        "pipe" => {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
            let _ = rustix::pipe::fcntl_setpipe_size(&w, 1 << 20);
            (w, r)
        }
        other => panic!("unknown byte transport {other}"),
    }
}

/// Consumer side of every small-message contender.
/// One per call means one message per receive call too; batched reads all that is there.
pub fn consume(kind: &str, batched: bool, p: &Params, ctl: &mut Ctl, mut fds: Vec<OwnedFd>) {
    let (size, count) = (p.size, p.count);
    match (kind, size) {
        ("ring", 8) => return crate::ring::small_consume::<1>(p, batched, ctl, fds),
        ("ring", _) => return crate::ring::small_consume::<8>(p, batched, ctl, fds),
        ("shmem-ipc", 8) => return shmem_consume::<1>(p, batched, ctl, fds),
        ("shmem-ipc", _) => return shmem_consume::<8>(p, batched, ctl, fds),
        ("iceoryx2", 8) => return iceoryx_consume::<1>(p, ctl),
        ("iceoryx2", _) => return iceoryx_consume::<8>(p, ctl),
        ("ipc-bytes", _) => return ipc_consume(p, ctl),
        _ => {}
    }
    let fd = fds.remove(0);
    ctl.ready();
    match kind {
        "sealpipe" => {
            let rx = sealpipe::Channel::from_fd(fd).expect("channel");
            let policy = sealpipe::Policy::immutable();
            for r in 0..p.rounds {
                for i in 0..count {
                    let msg = rx.recv(&policy).expect("sealpipe recv");
                    check_small_bytes(msg.payload(), size, (r * count + i) as u64);
                }
                ctl.done();
            }
        }
        "seqpacket" => {
            let mut rx = File::from(fd);
            let mut buf = [0u8; 128];
            for r in 0..p.rounds {
                for i in 0..count {
                    let n = rx.read(&mut buf).expect("read");
                    check_small_bytes(&buf[..n], size, (r * count + i) as u64);
                }
                ctl.done();
            }
        }
        _ if !batched => {
            let mut rx = File::from(fd);
            let mut buf = vec![0u8; size];
            for r in 0..p.rounds {
                for i in 0..count {
                    rx.read_exact(&mut buf).expect("read");
                    check_small_bytes(&buf, size, (r * count + i) as u64);
                }
                ctl.done();
            }
        }
        _ => {
            // Byte streams, batched: read as much as is there, check every whole message.
            let mut rx = File::from(fd);
            let mut buf = vec![0u8; 1 << 16];
            let mut have = 0;
            for r in 0..p.rounds {
                let mut i = 0;
                while i < count {
                    let n = rx.read(&mut buf[have..]).expect("read");
                    assert!(n > 0, "stream ended early");
                    have += n;
                    let whole = have / size;
                    for m in 0..whole {
                        check_small_bytes(
                            &buf[m * size..(m + 1) * size],
                            size,
                            (r * count + i + m) as u64,
                        );
                    }
                    i += whole;
                    buf.copy_within(whole * size..have, 0);
                    have -= whole * size;
                }
                assert!(i == count && have == 0, "more messages than sent");
                ctl.done();
            }
        }
    }
}

// --- ipc-channel -------------------------------------------------------------------------

fn ipc_run(p: &Params) -> Duration {
    use ipc_channel::ipc::{IpcBytesSender, IpcOneShotServer};
    let (server, name) = IpcOneShotServer::<IpcBytesSender>::new().expect("ipc server");
    let p = Params {
        extra: name,
        ..p.clone()
    };
    let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![]);
    let (_, tx) = server.accept().expect("ipc accept");
    let mut msg = vec![0u8; p.size];
    let d = timed(&mut peer, p.rounds, |_, r| {
        for i in 0..p.count {
            fill_small_bytes(&mut msg, (r * p.count + i) as u64);
            tx.send(&msg).expect("ipc send");
        }
    });
    peer.finish();
    d
}

fn ipc_consume(p: &Params, ctl: &mut Ctl) {
    use ipc_channel::ipc::{bytes_channel, IpcBytesSender, IpcSender};
    let (tx, rx) = bytes_channel().expect("bytes channel");
    IpcSender::<IpcBytesSender>::connect(p.extra.clone())
        .expect("connect")
        .send(tx)
        .expect("send");
    ctl.ready();
    for r in 0..p.rounds {
        for i in 0..p.count {
            let msg = rx.recv().expect("ipc recv");
            check_small_bytes(&msg, p.size, (r * p.count + i) as u64);
        }
        ctl.done();
    }
}

// --- iceoryx2 ----------------------------------------------------------------------------

/// A service name unique to this run and case.
pub fn iceoryx_name(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "sealpipe-compare/{}/{tag}/{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn iceoryx_run<const W: usize>(p: &Params) -> Duration {
    let name = iceoryx_name("small");
    let node = NodeBuilder::new().create::<ipc::Service>().expect("node");
    let service = node
        .service_builder(&name.as_str().try_into().expect("name"))
        .publish_subscribe::<[u64; W]>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(RING)
        .create()
        .expect("service");
    let publisher = service
        .publisher_builder()
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()
        .expect("publisher");
    let p = Params {
        extra: name,
        ..p.clone()
    };
    let mut peer = Peer::spawn(&p, consumer_cpu(0), vec![]);
    let d = timed(&mut peer, p.rounds, |_, r| {
        for i in 0..p.count {
            let sample = publisher.loan_uninit().expect("loan");
            sample
                .write_payload(small::<W>((r * p.count + i) as u64))
                .send()
                .expect("send");
        }
    });
    peer.finish();
    d
}

fn iceoryx_consume<const W: usize>(p: &Params, ctl: &mut Ctl) {
    let node = NodeBuilder::new().create::<ipc::Service>().expect("node");
    let service = node
        .service_builder(&p.extra.as_str().try_into().expect("name"))
        .publish_subscribe::<[u64; W]>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(RING)
        .open()
        .expect("open service");
    let subscriber = service
        .subscriber_builder()
        .buffer_size(RING)
        .create()
        .expect("subscriber");
    ctl.ready();
    for r in 0..p.rounds {
        let mut i = 0;
        while i < p.count {
            match subscriber.receive().expect("receive") {
                Some(s) => {
                    check_small::<W>(s.payload(), (r * p.count + i) as u64);
                    i += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        ctl.done();
    }
}

// --- shmem-ipc (spinning, no eventfd wakeups) ----------------------------------------------

fn shmem_run<const W: usize>(p: &Params, batched: bool) -> Duration
where
    [u64; W]: zerocopy03::AsBytes + zerocopy03::FromBytes,
{
    let mut tx = shmem_ipc::sharedring::Sender::<[u64; W]>::new(RING).expect("shmem-ipc ring");
    let fds: Vec<OwnedFd> = vec![
        tx.memfd().as_file().try_clone().expect("dup").into(),
        tx.empty_signal().try_clone().expect("dup").into(),
        tx.full_signal().try_clone().expect("dup").into(),
    ];
    let mut peer = Peer::spawn(p, consumer_cpu(0), fds);
    let count = p.count;
    let d = timed(&mut peer, p.rounds, |peer, r| {
        let mut i = 0;
        let mut spins = 0u32;
        while i < count {
            let want = if batched { BATCH.min(count - i) } else { 1 };
            let base = (r * count + i) as u64;
            let mut wrote = 0;
            tx.sender_mut()
                .send(|ptr, n| {
                    let n = n.min(want);
                    for j in 0..n {
                        // SAFETY: shmem-ipc hands us `n` writable slots starting at `ptr`.
                        unsafe { ptr.add(j).write(small::<W>(base + j as u64)) };
                    }
                    wrote = n;
                    n
                })
                .expect("shmem-ipc send");
            if wrote == 0 {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(4096) {
                    peer.check_alive();
                }
                std::hint::spin_loop();
            }
            i += wrote;
        }
    });
    peer.finish();
    d
}

fn shmem_consume<const W: usize>(p: &Params, batched: bool, ctl: &mut Ctl, fds: Vec<OwnedFd>)
where
    [u64; W]: zerocopy03::AsBytes + zerocopy03::FromBytes,
{
    let mut it = fds.into_iter().map(File::from);
    let (m, e, f) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let mut rx =
        shmem_ipc::sharedring::Receiver::<[u64; W]>::open(RING, m, e, f).expect("open ring");
    ctl.ready();
    for r in 0..p.rounds {
        let mut i = 0;
        while i < p.count {
            let base = (r * p.count + i) as u64;
            let mut got = 0;
            rx.receiver_mut()
                .recv(|ptr, n| {
                    let n = if batched { n } else { n.min(1) };
                    for j in 0..n {
                        // SAFETY: shmem-ipc hands us `n` readable slots starting at `ptr`.
                        let m = unsafe { ptr.add(j).read() };
                        check_small::<W>(&m, base + j as u64);
                    }
                    got = n;
                    n
                })
                .expect("shmem-ipc recv");
            if got == 0 {
                std::hint::spin_loop();
            }
            i += got;
        }
        assert_eq!(i, p.count, "more messages than sent");
        ctl.done();
    }
}

// --- rtrb, two threads of one process (the in-process reference) --------------------------

fn rtrb_run<const W: usize>(batched: bool, count: usize, rounds: usize) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::<[u64; W]>::new(RING);
    let done = std::sync::Arc::new(AtomicUsize::new(0));
    let done2 = done.clone();
    let consumer = std::thread::spawn(move || {
        pin(consumer_cpu(0));
        for r in 0..rounds {
            let mut i = 0;
            while i < count {
                if !batched {
                    match rx.pop() {
                        Ok(m) => {
                            check_small::<W>(&m, (r * count + i) as u64);
                            i += 1;
                        }
                        Err(_) => std::hint::spin_loop(),
                    }
                    continue;
                }
                let n = rx.slots();
                if n == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let chunk = rx.read_chunk(n).expect("read chunk");
                let (a, b) = chunk.as_slices();
                for (j, m) in a.iter().chain(b).enumerate() {
                    check_small::<W>(m, (r * count + i + j) as u64);
                }
                chunk.commit_all();
                i += n;
            }
            assert_eq!(i, count, "more messages than sent");
            done2.fetch_add(1, Ordering::Release);
        }
    });
    let d = timed_local(rounds, |r| {
        let mut i = 0;
        while i < count {
            let base = (r * count + i) as u64;
            if batched {
                let n = tx.slots().min(BATCH).min(count - i);
                if n == 0 {
                    assert!(
                        !consumer.is_finished(),
                        "rtrb consumer stopped early: it found bad data"
                    );
                    std::hint::spin_loop();
                    continue;
                }
                let chunk = tx.write_chunk_uninit(n).expect("write chunk");
                chunk.fill_from_iter((0..n as u64).map(|j| small::<W>(base + j)));
                i += n;
            } else if tx.push(small::<W>(base)).is_ok() {
                i += 1;
            } else {
                assert!(
                    !consumer.is_finished(),
                    "rtrb consumer stopped early: it found bad data"
                );
                std::hint::spin_loop();
            }
        }
        while done.load(Ordering::Acquire) < r + 1 {
            assert!(
                !consumer.is_finished(),
                "rtrb consumer stopped early: it found bad data"
            );
            std::hint::spin_loop();
        }
    });
    consumer.join().expect("rtrb consumer");
    d
}
