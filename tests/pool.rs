//! Region pools across processes: streaming with each memfd sent once, fan-out with release
//! tracking, back-pressure and retirement, and hostile peers in both directions.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::fs::{self, MemfdFlags, SealFlags};
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvFlags, SendFlags};
use sealpipe::pool::{Pool, PoolOptions, PoolReceiver, PoolSender};
use sealpipe::wire::{self, PoolBufferRef};
use sealpipe::{Channel, Error, Policy, Region};

const T: Duration = Duration::from_secs(20);

fn policy() -> Policy {
    Policy::producer_writable()
}

/// The pattern of message `i`: its index and length up front, then `i + offset` bytes.
fn fill(buf: &mut [u8], i: u64) {
    let len = buf.len() as u64;
    for (k, b) in buf.iter_mut().enumerate() {
        *b = (i as usize).wrapping_add(k.wrapping_mul(31)) as u8;
    }
    if buf.len() >= 16 {
        buf[0..8].copy_from_slice(&i.to_le_bytes());
        buf[8..16].copy_from_slice(&len.to_le_bytes());
    }
}

fn check(bytes: &[u8]) -> u64 {
    let i = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
    let mut want = vec![0u8; bytes.len()];
    fill(&mut want, i);
    assert_eq!(bytes, &want[..], "message {i} corrupted");
    i
}

/// Polls `tx` until `cond` holds (or fails the test after 20 s).
fn poll_until(what: &str, tx: &PoolSender, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !cond() {
        match tx.poll_releases() {
            Ok(_) | Err(Error::PeerClosed) => {}
            Err(e) => panic!("{what}: {e:?}"),
        }
        assert!(Instant::now() < end, "{what}: timed out");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Consumer roles shared by several tests.
fn consumer_roles(role: &str, ch: Channel) -> i32 {
    let mut rx = PoolReceiver::new(ch, &policy()).unwrap();
    match role {
        // Reads and checks every buffer until the producer closes; releases each at once.
        "checker" => {
            let fds_before = common::fds();
            let mut n = 0u64;
            loop {
                match rx.recv_timeout(T) {
                    Ok(buf) => {
                        check(&buf.to_vec());
                        n += 1;
                    }
                    Err(Error::PeerClosed) => break,
                    Err(e) => panic!("checker: {e:?}"),
                }
            }
            // A fixed number of descriptors however many messages flowed.
            assert!(n >= 300, "only {n} messages");
            assert!(rx.memfds() <= 8, "{} memfds", rx.memfds());
            assert!(fds_before.opened_since().len() <= rx.memfds());
            0
        }
        // Holds every buffer it gets until the producer closes.
        "hoarder" => {
            let mut held = Vec::new();
            loop {
                match rx.recv_timeout(T) {
                    Ok(buf) => held.push(buf),
                    Err(Error::PeerClosed) => return 0,
                    Err(e) => panic!("hoarder: {e:?}"),
                }
            }
        }
        // Holds its first buffer for 300 ms, then behaves.
        "slow" => {
            let first = rx.recv_timeout(T).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
            rx.flush_releases().unwrap();
            loop {
                match rx.recv_timeout(T) {
                    Ok(_) => {}
                    Err(Error::PeerClosed) => return 0,
                    Err(e) => panic!("slow: {e:?}"),
                }
            }
        }
        // Takes two buffers and exits without releasing them.
        "quitter" => {
            let a = rx.recv_timeout(T).unwrap();
            let b = rx.recv_timeout(T).unwrap();
            std::mem::forget((a, b));
            std::process::exit(0)
        }
        _ => 99,
    }
}

#[test]
fn stream_across_processes_sends_each_memfd_once() {
    common::peer_main(consumer_roles);
    let peer = common::spawn_peer("stream_across_processes_sends_each_memfd_once", "checker");
    let pool = Pool::new(PoolOptions::new().max_bytes(8 << 20).slab_len(1 << 20)).unwrap();
    let tx = pool.attach(peer.channel).unwrap();
    let sizes = [100, 4096, 5000, 64 << 10, 1 << 20];
    for i in 0..300u64 {
        let mut lease = pool
            .lease_timeout(sizes[i as usize % sizes.len()], T)
            .unwrap();
        fill(&mut lease, i);
        lease.send(&[&tx]).unwrap();
    }
    poll_until("all released", &tx, || tx.held() == 0);
    let stats = pool.stats();
    assert_eq!(stats.held, 0);
    assert!(stats.memfds <= 8, "{stats:?}");
    let peer = common::Peer {
        child: peer.child,
        channel: Channel::pair().unwrap().0,
    };
    drop(tx);
    assert_eq!(peer.wait(), 0);
}

#[test]
fn fan_out_frees_a_buffer_only_when_every_consumer_released_it() {
    common::peer_main(consumer_roles);
    let name = "fan_out_frees_a_buffer_only_when_every_consumer_released_it";
    let peers: Vec<_> = ["checker", "slow", "checker"]
        .iter()
        .map(|r| common::spawn_peer(name, r))
        .collect();
    let pool = Pool::new(
        PoolOptions::new()
            .max_bytes((1 << 20) + (256 << 10))
            .slab_len(256 << 10),
    )
    .unwrap();
    let mut children = Vec::new();
    let mut txs = Vec::new();
    for p in peers {
        children.push(p.child);
        txs.push(pool.attach(p.channel).unwrap());
    }
    let all: Vec<&PoolSender> = txs.iter().collect();
    let mut lease = pool.lease(1 << 20).unwrap();
    fill(&mut lease, 0);
    lease.send(&all).unwrap();
    // The fast consumers release; the slow one still holds it, so it is not free.
    poll_until("fast consumers released", &txs[0], || {
        let _ = txs[2].poll_releases();
        txs[0].held() == 0 && txs[2].held() == 0
    });
    assert_eq!(txs[1].held(), 1);
    assert_eq!(pool.stats().held, 1);
    assert!(matches!(
        pool.try_lease(1 << 20),
        Err(Error::PoolExhausted { held: 1, .. })
    ));
    // Once the slow one releases, the buffer is leased again (waiting for it here).
    let again = pool.lease_timeout(1 << 20, T).unwrap();
    assert_eq!(pool.stats().held, 0);
    assert_eq!(txs[1].held(), 0);
    drop(again);
    // 300 more messages to all three (the checkers need them to pass).
    for i in 1..=300u64 {
        let mut lease = pool.lease_timeout(64 << 10, T).unwrap();
        fill(&mut lease, i);
        lease.send(&all).unwrap();
    }
    drop(all);
    drop(txs);
    for mut child in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn stalled_consumer_gets_back_pressure_then_its_buffers_are_retired() {
    common::peer_main(consumer_roles);
    let name = "stalled_consumer_gets_back_pressure_then_its_buffers_are_retired";
    let hoarder = common::spawn_peer(name, "hoarder");
    let pool = Pool::new(
        PoolOptions::new()
            .max_bytes(128 << 10)
            .slab_len(128 << 10)
            .max_retired_bytes(128 << 10),
    )
    .unwrap();
    let tx = pool.attach(hoarder.channel).unwrap();
    for i in 0..2 {
        let mut lease = pool.try_lease(64 << 10).unwrap();
        fill(&mut lease, i);
        lease.send(&[&tx]).unwrap();
    }
    // Every buffer is held: lease waits out its deadline, then reports back-pressure.
    let start = Instant::now();
    let err = pool
        .lease_timeout(64 << 10, Duration::from_millis(200))
        .unwrap_err();
    assert!(
        matches!(err, Error::PoolExhausted { held: 2, .. }),
        "{err:?}"
    );
    assert!(start.elapsed() >= Duration::from_millis(200));
    // Retire what was held too long: never reused, replaced by new memory.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        pool.retire_held_longer_than(Duration::from_millis(10))
            .unwrap(),
        2
    );
    let stats = pool.stats();
    assert_eq!((stats.held, stats.retired_bytes), (0, 128 << 10));
    let mut lease = pool.try_lease(64 << 10).unwrap();
    assert_eq!(pool.stats().memfds, 2, "new memory replaces the retired");
    fill(&mut lease, 2);
    lease.send(&[&tx]).unwrap();
    // The retirement budget is spent: the next retirement is refused.
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(
        pool.retire_held_longer_than(Duration::from_millis(10)),
        Err(Error::LimitExceeded {
            what: "retired bytes",
            ..
        })
    ));
    let peer = common::Peer {
        child: hoarder.child,
        channel: Channel::pair().unwrap().0,
    };
    drop(tx);
    assert_eq!(peer.wait(), 0);
}

#[test]
fn a_consumer_that_exits_gives_back_what_it_held() {
    common::peer_main(consumer_roles);
    let peer = common::spawn_peer("a_consumer_that_exits_gives_back_what_it_held", "quitter");
    let pool = Pool::new(PoolOptions::new()).unwrap();
    let tx = pool.attach(peer.channel).unwrap();
    for i in 0..2 {
        let mut lease = pool.lease(4096).unwrap();
        fill(&mut lease, i);
        lease.send(&[&tx]).unwrap();
    }
    let end = Instant::now() + T;
    loop {
        match tx.poll_releases() {
            Err(Error::PeerClosed) => break,
            Ok(0) => assert!(Instant::now() < end),
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(pool.stats().held, 0);
    assert_eq!(tx.held(), 0);
    // A send to the gone consumer says so; the buffer goes back to the pool.
    assert!(matches!(
        pool.lease(4096).unwrap().send(&[&tx]),
        Err(Error::PeerClosed)
    ));
    assert_eq!(pool.stats().held, 0);
    let mut child = peer.child;
    assert!(child.wait().unwrap().success());
}

// ----- hostile consumer -----

/// Receives one datagram, dropping any descriptors; returns its bytes.
fn recv_raw(sock: BorrowedFd<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 17];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .unwrap();
    for m in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(fds) = m {
            fds.for_each(drop); // close them
        }
    }
    buf.truncate(r.bytes);
    buf
}

fn release_msg(entries: &[PoolBufferRef]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&wire::MAGIC);
    m.extend_from_slice(&wire::VERSION.to_le_bytes());
    m.extend_from_slice(&wire::KIND_POOL_RELEASE.to_le_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&((entries.len() * 24) as u32).to_le_bytes());
    for e in entries {
        m.extend_from_slice(&e.memfd_id.to_le_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&e.offset.to_le_bytes());
        m.extend_from_slice(&e.generation.to_le_bytes());
    }
    m
}

fn r(memfd_id: u32, offset: u64, generation: u64) -> PoolBufferRef {
    PoolBufferRef {
        memfd_id,
        offset,
        generation,
    }
}

/// What the hostile consumer sends, one step per "go" datagram from the producer.
fn hostile_steps() -> Vec<(Vec<u8>, bool)> {
    vec![
        (release_msg(&[r(9, 0, 1)]), false),
        (release_msg(&[r(0, 100, 1)]), false),
        (release_msg(&[r(0, 64 << 10, 1)]), false),
        (release_msg(&[r(0, 0, 5)]), false),
        (release_msg(&[r(0, 0, 1)]), false), // the one valid release
        (release_msg(&[r(0, 0, 1)]), false), // duplicate
        (wire::encode_pool_notice(r(0, 0, 1), 1).to_vec(), false),
        (release_msg(&[r(0, 0, 1)]), true), // with a descriptor
        (release_msg(&[r(0, 64 << 10, 2)]), false), // the second buffer, valid
    ]
}

#[test]
fn hostile_consumer_releases_are_refused_and_free_nothing_held() {
    common::peer_main(|role, ch| {
        if role != "hostile" {
            return consumer_roles(role, ch);
        }
        for (msg, with_fd) in hostile_steps() {
            // Pool messages (announce, notices) arrive too: wait for the one-byte "go".
            loop {
                let m = recv_raw(ch.as_fd());
                if m.is_empty() {
                    return 0;
                }
                if m.len() == 1 {
                    break;
                }
            }
            if with_fd {
                // The producer refuses descriptors on its consumers' channels
                // (SO_PASSRIGHTS): the kernel fails this send. Say so with a message the
                // producer must reject, so the step is judged.
                let memfd = Region::new(4096).unwrap().seal().unwrap();
                let refused = common::forge::try_send_raw(ch.as_fd(), &msg, &[memfd.as_fd()]);
                if refused == Err(rustix::io::Errno::PERM) {
                    common::forge::send_raw(ch.as_fd(), b"refused", &[]);
                }
                continue;
            }
            common::forge::send_raw(ch.as_fd(), &msg, &[]);
        }
        // Stay until the producer hangs up, so that every step is judged by its release.
        while !recv_raw(ch.as_fd()).is_empty() {}
        0
    });
    let name = "hostile_consumer_releases_are_refused_and_free_nothing_held";
    let honest = common::spawn_peer(name, "hoarder");
    let hostile = common::spawn_peer(name, "hostile");
    let pool = Pool::new(PoolOptions::new().max_bytes(128 << 10).slab_len(128 << 10)).unwrap();
    let holder = pool.attach(honest.channel).unwrap();
    let hostile_tx = pool.attach(hostile.channel).unwrap();
    // Buffer (0, 0) to both; buffer (0, 64 KiB) to the hostile one only, later.
    let mut a = pool.lease(64 << 10).unwrap();
    fill(&mut a, 0);
    a.send(&[&holder, &hostile_tx]).unwrap();
    let expect = [
        "unknown memfd id",
        "offset is not a buffer",
        "not held by this consumer",
        "stale or forged generation",
        "",
        "not held by this consumer",
        "kind this side never receives",
        // Refused by the kernel where it has SO_PASSRIGHTS (the child then sends a
        // malformed message instead); elsewhere the producer rejects the descriptor.
        if sealpipe::capabilities().pass_rights {
            "shorter than the 16-byte header"
        } else {
            "descriptor"
        },
        "",
    ];
    let go = |step: usize| {
        // The hostile side reads every pool message too: skip them, then step.
        common::forge::send_raw(hostile_tx.channel().as_fd(), &[step as u8], &[]);
    };
    let mut child = hostile.child;
    for (step, want) in expect.iter().enumerate() {
        if step == 8 {
            let mut b = pool.lease(64 << 10).unwrap();
            fill(&mut b, 1);
            b.send(&[&hostile_tx]).unwrap();
        }
        go(step);
        let end = Instant::now() + T;
        let got = loop {
            match hostile_tx.poll_releases() {
                Ok(0) => {}
                other => break other,
            }
            assert!(Instant::now() < end, "step {step}: no answer");
            std::thread::sleep(Duration::from_millis(2));
        };
        match (want.is_empty(), &got) {
            (true, Ok(1)) => {}
            (false, Err(e)) if format!("{e:?}{e}").contains(want) => {
                assert!(e.is_peer_fault(), "{e:?}");
            }
            _ => panic!("step {step}: wanted {want:?}, got {got:?}"),
        }
        // Whatever the hostile consumer did, the honest one still holds buffer (0, 0).
        assert_eq!(holder.held(), 1, "step {step}");
        assert!(pool.stats().held >= 1);
    }
    assert_eq!(hostile_tx.held(), 0);
    assert_eq!(pool.stats().held, 1, "only the honest consumer's buffer");
    drop(hostile_tx);
    assert!(child.wait().unwrap().success());
    drop(holder);
    let mut honest_child = honest.child;
    assert!(honest_child.wait().unwrap().success());
}

// ----- hostile producer -----

fn memfd(len: u64, seals: u32) -> std::os::fd::OwnedFd {
    let fd = fs::memfd_create("hostile", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    fs::ftruncate(&fd, len).unwrap();
    fs::fallocate(&fd, fs::FallocateFlags::empty(), 0, len).unwrap();
    if seals != 0 {
        fs::fcntl_add_seals(&fd, SealFlags::from_bits_retain(seals)).unwrap();
    }
    fd
}

const PRODUCER_WRITABLE: u32 = 0x10 | 0x2 | 0x4 | 0x1;

fn announce(sock: BorrowedFd<'_>, id: u32, declared: u64, fd: BorrowedFd<'_>) {
    common::forge::send_raw(sock, &wire::encode_pool_announce(id, declared), &[fd]);
}

fn notice(sock: BorrowedFd<'_>, id: u32, offset: u64, len: u64, generation: u64) {
    let b = r(id, offset, generation);
    common::forge::send_raw(sock, &wire::encode_pool_notice(b, len), &[]);
}

#[test]
fn hostile_producer_notices_and_announcements_are_refused() {
    common::peer_main(|role, ch| {
        assert_eq!(role, "hostile_producer");
        let s = ch.as_fd();
        let mut good = Region::new(64 << 10).unwrap();
        good.write_at(0, b"pool bytes").unwrap();
        let good = good.seal_producer_writable().unwrap();
        notice(s, 3, 0, 10, 1); // unknown id
        announce(s, 0, 64 << 10, good.region().as_fd());
        notice(s, 0, 60_000, 8192, 1); // out of range
        notice(s, 0, 0, 10, 2); // valid
        notice(s, 0, 4096, 10, 2); // reused generation
        notice(s, 0, u64::MAX - 5, 100, 9); // overflowing range
        notice(s, 0, 0, 0, 10); // empty
        let other = memfd(64 << 10, PRODUCER_WRITABLE);
        announce(s, 0, 64 << 10, other.as_fd()); // id announced again, another memfd
        let unsealed = memfd(4096, 0);
        announce(s, 1, 4096, unsealed.as_fd()); // missing seals
        let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
        announce(s, 2, 4096, pipe_r.as_fd()); // not a memfd
        announce(s, 3, 8192, other.as_fd()); // size mismatch
        let second = memfd(4096, PRODUCER_WRITABLE);
        announce(s, 4, 4096, second.as_fd()); // fine: the second memfd
        let third = memfd(4096, PRODUCER_WRITABLE);
        announce(s, 5, 4096, third.as_fd()); // over the receiver's memfd limit
        notice(s, 4, 0, 4096, 11); // valid, in the second memfd
                                   // Wait for the receiver to hang up.
        let _ = recv_raw(s);
        0
    });
    let peer = common::spawn_peer(
        "hostile_producer_notices_and_announcements_are_refused",
        "hostile_producer",
    );
    let fds_before = common::fds();
    let mut rx = PoolReceiver::new(peer.channel, &policy().max_pool_memfds(2)).unwrap();
    let mut next = |what: &str| -> Result<sealpipe::pool::PoolBuffer, Error> {
        let r = rx.recv_timeout(T);
        if let Err(e) = &r {
            assert!(e.is_peer_fault(), "{what}: {e:?}");
        }
        r
    };
    let bad_notice = |r: Result<_, Error>, reason: &str| match r {
        Err(Error::BadNotice { reason: got, .. }) if got.contains(reason) => {}
        other => panic!("wanted BadNotice {reason:?}, got {other:?}"),
    };
    bad_notice(next("unknown"), "unknown memfd id");
    bad_notice(next("range"), "range outside the memfd");
    let buf = next("valid").unwrap();
    let mut head = [0u8; 10];
    buf.read_at(0, &mut head).unwrap();
    assert_eq!(&head, b"pool bytes");
    assert!(
        buf.read_at(1, &mut head).is_err(),
        "reads stay inside the buffer"
    );
    bad_notice(next("reused"), "generation not above");
    bad_notice(next("overflow"), "range outside the memfd");
    bad_notice(next("empty"), "empty buffer");
    assert!(matches!(
        next("re-announce"),
        Err(Error::BadAnnounce { memfd_id: 0, .. })
    ));
    assert!(matches!(next("unsealed"), Err(Error::MissingSeals { .. })));
    assert!(matches!(next("pipe"), Err(Error::NotMemfd { .. })));
    assert!(matches!(next("size"), Err(Error::SizeMismatch { .. })));
    assert!(matches!(
        next("limit"),
        Err(Error::PolicyLimit {
            what: "pool memfds",
            ..
        })
    ));
    let b2 = next("second memfd").unwrap();
    assert_eq!(b2.len(), 4096);
    assert_eq!(rx.memfds(), 2);
    // Only the two accepted memfds stay open; every refused descriptor was closed.
    assert!(fds_before.opened_since().len() <= 2);
    drop((buf, b2, rx));
    let mut child = peer.child;
    assert!(child.wait().unwrap().success());
}

#[test]
#[allow(unsafe_code)]
fn leases_write_typed_and_by_io_write_and_truncate() {
    let (a, b) = Channel::pair().unwrap();
    let pool = Pool::new(PoolOptions::new()).unwrap();
    let tx = pool.attach(a).unwrap();
    let mut rx = PoolReceiver::new(b, &policy()).unwrap();
    let mut lease = pool.lease(4096).unwrap();
    lease.as_mut_slice_of::<u32>().unwrap()[3] = 0xdead_beef;
    lease.write_all(b"hdr").unwrap();
    assert!(lease.as_mut_slice_of::<[u8; 3]>().is_err());
    lease.truncate(16).unwrap();
    assert!(lease.truncate(17).is_err());
    lease.send(&[&tx]).unwrap();
    let buf = rx.recv_timeout(T).unwrap();
    assert_eq!(buf.len(), 16);
    assert_eq!(buf.read_value::<u32>(12).unwrap(), 0xdead_beef);
    assert_eq!(&buf.to_vec()[..3], b"hdr");
    // SAFETY: this test's producer writes nothing while the slice lives.
    let in_place = unsafe { buf.as_bytes_unchecked() };
    assert_eq!(&in_place[..3], b"hdr");
    assert!(matches!(
        pool.lease(0),
        Err(Error::ZeroLength { what: "lease" })
    ));
    assert!(matches!(
        pool.lease(1 << 40),
        Err(Error::LimitExceeded { .. })
    ));
    // An unsent lease goes straight back.
    let free = pool.stats().free;
    drop(pool.lease(4096).unwrap());
    assert_eq!(pool.stats().free, free);
}

#[cfg(feature = "tokio")]
#[test]
fn async_lease_awaits_releases_and_both_sides_are_cancel_safe() {
    use sealpipe::pool::{AsyncPool, AsyncPoolReceiver};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = Channel::pair().unwrap();
        let pool = Pool::new(PoolOptions::new().max_bytes(128 << 10).slab_len(128 << 10)).unwrap();
        let tx = pool.attach(a).unwrap();
        let apool = AsyncPool::new(pool.clone()).unwrap();
        let mut arx = AsyncPoolReceiver::new(PoolReceiver::new(b, &policy()).unwrap()).unwrap();
        let short = Duration::from_millis(50);
        // Nothing sent yet: a cancelled receive takes nothing.
        assert!(tokio::time::timeout(short, arx.recv()).await.is_err());
        for i in 0..2 {
            let mut lease = apool.lease(64 << 10).await.unwrap();
            fill(&mut lease, i);
            apool.send(lease, &[&tx]).await.unwrap();
        }
        // Both buffers are held: the lease waits, and a cancelled wait holds nothing.
        assert!(tokio::time::timeout(short, apool.lease(64 << 10))
            .await
            .is_err());
        let first = arx.recv().await.unwrap();
        assert_eq!(check(&first.to_vec()), 0);
        // A task awaiting a lease is woken by the release that dropping `first` sends.
        let waiter = async {
            let mut lease = apool.lease(64 << 10).await.unwrap();
            fill(&mut lease, 2);
            apool.send(lease, &[&tx]).await.unwrap();
        };
        let consumer = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(first);
            let second = arx.recv().await.unwrap(); // flushes the release before waiting
            assert_eq!(check(&second.to_vec()), 1);
            drop(second);
            let third = arx.recv().await.unwrap();
            assert_eq!(check(&third.to_vec()), 2);
        };
        tokio::time::timeout(T, async { tokio::join!(waiter, consumer) })
            .await
            .expect("the lease was woken");
        assert_eq!(pool.stats().memfds, 1);
    });
}

#[test]
fn receiver_caps_the_bytes_one_producer_makes_it_map() {
    let (a, b) = Channel::pair().unwrap();
    let mut rx = PoolReceiver::new(b, &policy().max_pool_bytes(96 << 10)).unwrap();
    let first = memfd(64 << 10, PRODUCER_WRITABLE);
    let second = memfd(64 << 10, PRODUCER_WRITABLE);
    announce(a.as_fd(), 0, 64 << 10, first.as_fd());
    announce(a.as_fd(), 1, 64 << 10, second.as_fd()); // 128 KiB in all: over the cap
    notice(a.as_fd(), 0, 0, 100, 1);
    assert!(matches!(
        rx.recv_timeout(T),
        Err(Error::PolicyLimit {
            what: "pool bytes",
            got,
            max,
        }) if got == 128 << 10 && max == 96 << 10
    ));
    assert_eq!(rx.recv_timeout(T).unwrap().len(), 100);
    assert_eq!(rx.memfds(), 1);
}

#[test]
fn a_release_after_retirement_is_refused_and_frees_nothing() {
    common::peer_main(consumer_roles);
    let peer = common::spawn_peer(
        "a_release_after_retirement_is_refused_and_frees_nothing",
        "slow",
    );
    let pool = Pool::new(PoolOptions::new().max_bytes(128 << 10).slab_len(128 << 10)).unwrap();
    let tx = pool.attach(peer.channel).unwrap();
    let mut lease = pool.lease(64 << 10).unwrap();
    fill(&mut lease, 0);
    lease.send(&[&tx]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        pool.retire_held_longer_than(Duration::from_millis(10))
            .unwrap(),
        1
    );
    // The slow consumer releases it after 300 ms: too late, refused, and never reused.
    let end = Instant::now() + T;
    let err = loop {
        match tx.poll_releases() {
            Ok(0) => {}
            Err(e) => break e,
            Ok(n) => panic!("{n} buffers released after retirement"),
        }
        assert!(Instant::now() < end, "no late release arrived");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        matches!(err, Error::BadRelease { reason, .. } if reason.contains("retired")),
        "{err:?}"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.held, stats.retired_bytes, stats.free),
        (0, 64 << 10, 1)
    );
    // The consumer goes on working with the rest of the pool.
    let mut lease = pool.lease(64 << 10).unwrap();
    fill(&mut lease, 1);
    lease.send(&[&tx]).unwrap();
    poll_until("released", &tx, || tx.held() == 0);
    drop(tx);
    let mut child = peer.child;
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_waiting_lease_is_woken_by_a_buffer_freed_in_another_thread() {
    let pool = Pool::new(PoolOptions::new().max_bytes(64 << 10).slab_len(64 << 10)).unwrap();
    let held = pool.lease(64 << 10).unwrap();
    let p2 = pool.clone();
    let waiter = std::thread::spawn(move || {
        let start = Instant::now();
        let lease = p2.lease_timeout(64 << 10, T).map(drop);
        (lease, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(held); // unsent: straight back to the pool, waking the waiter
    let (lease, waited) = waiter.join().unwrap();
    lease.unwrap();
    assert!(waited < Duration::from_secs(10), "woken after {waited:?}");
    assert!(matches!(
        pool.try_lease(128 << 10),
        Err(Error::LimitExceeded { .. })
    ));
}

#[test]
fn a_release_flood_cannot_hold_a_lease_in_its_drain() {
    let (a, b) = Channel::pair().unwrap();
    let pool = Pool::new(PoolOptions::new().max_bytes(64 << 10).slab_len(64 << 10)).unwrap();
    let tx = pool.attach(a).unwrap();
    let mut lease = pool.lease(4096).unwrap();
    fill(&mut lease, 0);
    lease.send(&[&tx]).unwrap();
    // The consumer end floods the producer with forged releases from another thread.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let msg = release_msg(&[r(0, 0, 99); 100]);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rustix::net::send(&b, &msg, SendFlags::DONTWAIT);
            }
            b
        })
    };
    // Every buffer but the sent one is free: leases keep working, each drain is bounded.
    let start = Instant::now();
    for _ in 0..100 {
        drop(pool.lease_timeout(4096, T).unwrap());
    }
    let err = pool
        .lease_timeout(64 << 10, Duration::from_millis(100))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitExceeded { .. } | Error::PoolExhausted { .. }
        ),
        "{err:?}"
    );
    assert!(start.elapsed() < T);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _b = flood.join().unwrap();
    assert!(matches!(
        tx.poll_releases(),
        Err(Error::BadRelease { reason, .. }) if reason.contains("stale or forged")
    ));
    assert_eq!(tx.held(), 1, "forged releases freed nothing");
}
