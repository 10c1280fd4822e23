//! Sandboxed workers across real processes: each denial asserted in a sandboxed child, each
//! layer (channel + regions, ring spinning and parking, async channel) working inside, a
//! required level the kernel lacks failing clearly, a forbidden call answered with `EPERM`
//! or a kill without harming the parent, and the parent never sandboxed.
//!
//! This binary has its own small harness (`harness = false`): libtest runs every test on a
//! second thread, and a process must be single-threaded to enter a sandbox (Landlock
//! applies to the calling thread only, so [`Sandbox::enter`] refuses otherwise). A peer
//! role therefore runs on the main thread, before any test. Tests that need a kernel
//! feature this machine lacks are reported `ignored` with the reason, never passed.
//!
//! Each peer prints the first error it meets to stderr: if the allow-list misses a system
//! call a layer needs, the test fails and shows which operation got `EPERM`.
#![allow(unsafe_code)] // raw escape attempts in the sandboxed children

mod common;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use sealpipe::ring::{Consumer, Producer, RingOptions, SpinPolicy};
use sealpipe::sandbox::{Namespaces, Sandbox, Support, Violation};
use sealpipe::{Channel, Error, Policy, Region};

const TIMEOUT: Duration = Duration::from_secs(20);
const RECORDS: u64 = 20_000;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// 0 if `r` succeeded, else the errno.
fn outcome(r: libc::c_long) -> i32 {
    if r < 0 {
        errno()
    } else {
        0
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0xcbf2_9ce4_8422_2325, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (h ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3)
    })
}

fn record(i: u64) -> Vec<u8> {
    let len = (i % 200) as usize + 1;
    (0..len).map(|k| (i as u8).wrapping_add(k as u8)).collect()
}

fn enter(profile: Sandbox) {
    if let Err(e) = profile.enter() {
        eprintln!(
            "peer: enter failed: {e} ({:?})",
            std::error::Error::source(&e)
        );
        std::process::exit(90);
    }
}

/// Tries every escape the issue names; returns `name=errno` pairs (0 = it worked).
fn escapes(channel: &Channel) -> Vec<(&'static str, i32)> {
    // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
    // whatever it unexpectedly creates is closed, unmapped or reaped at once.
    let ppid = unsafe { libc::getppid() };
    assert!(ppid > 1, "getppid: {ppid}"); // never kill(-1, ...) or init
    let mut out = Vec::new();
    let passwd = c"/etc/passwd";
    // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
    // whatever it unexpectedly creates is closed, unmapped or reaped at once.
    out.push(("open", unsafe {
        let fd = libc::open(passwd.as_ptr(), libc::O_RDONLY);
        let r = outcome(fd as _);
        if fd >= 0 {
            libc::close(fd);
        }
        r
    }));
    // SAFETY: stat with a NUL-terminated path and a buffer of the right type.
    out.push(("stat", unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        outcome(libc::stat(passwd.as_ptr(), &mut st) as _)
    }));
    let reopen = CString::new(format!("/proc/self/fd/{}", channel.as_raw_fd())).unwrap();
    // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
    // whatever it unexpectedly creates is closed, unmapped or reaped at once.
    out.push(("reopen_proc_fd", unsafe {
        let fd = libc::open(reopen.as_ptr(), libc::O_RDWR);
        let r = outcome(fd as _);
        if fd >= 0 {
            libc::close(fd);
        }
        r
    }));
    for (name, domain) in [
        ("socket_inet", libc::AF_INET),
        ("socket_unix", libc::AF_UNIX),
    ] {
        // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
        // whatever it unexpectedly creates is closed, unmapped or reaped at once.
        out.push((name, unsafe {
            let fd = libc::socket(domain, libc::SOCK_STREAM, 0);
            let r = outcome(fd as _);
            if fd >= 0 {
                libc::close(fd);
            }
            r
        }));
    }
    // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
    // whatever it unexpectedly creates is closed, unmapped or reaped at once.
    out.push(("execve", unsafe {
        let sh = c"/bin/sh";
        let argv = [sh.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        outcome(libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) as _)
    }));
    // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
    // whatever it unexpectedly creates is closed, unmapped or reaped at once.
    out.push(("ptrace_parent", unsafe {
        let r = libc::ptrace(libc::PTRACE_ATTACH, ppid, 0, 0);
        outcome(r)
    }));
    // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
    // whatever it unexpectedly creates is closed, unmapped or reaped at once.
    out.push(("kill_parent", unsafe {
        outcome(libc::kill(ppid, libc::SIGCONT) as _)
    }));
    // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
    // whatever it unexpectedly creates is closed, unmapped or reaped at once.
    out.push(("mmap_exec", unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            errno()
        } else {
            libc::munmap(p, 4096);
            0
        }
    }));
    // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
    // whatever it unexpectedly creates is closed, unmapped or reaped at once.
    out.push(("mprotect_exec", unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            -1 // mapping without PROT_EXEC must work: reported as a failure of the test
        } else {
            let r = outcome(libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC) as _);
            libc::munmap(p, 4096);
            r
        }
    }));
    // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
    // whatever it unexpectedly creates is closed, unmapped or reaped at once.
    out.push(("fork", unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::_exit(0);
        }
        if pid > 0 {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        outcome(pid as _)
    }));
    out.push((
        "thread",
        match std::thread::Builder::new().spawn(|| ()) {
            Ok(h) => {
                let _ = h.join();
                0
            }
            Err(e) => e.raw_os_error().unwrap_or(-1),
        },
    ));
    out
}

fn encode(results: &[(&str, i32)]) -> Vec<u8> {
    results
        .iter()
        .map(|(n, e)| format!("{n}={e}"))
        .collect::<Vec<_>>()
        .join(" ")
        .into_bytes()
}

fn decode(payload: &[u8]) -> Vec<(String, i32)> {
    std::str::from_utf8(payload)
        .expect("utf-8")
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("name=errno");
            (k.to_string(), v.parse().expect("errno"))
        })
        .collect()
}

fn peer(role: &str, ch: Channel) -> i32 {
    let policy = Policy::immutable().max_region_len(1 << 26);
    match role {
        // Rejecting what a hostile peer sends (a socket, an eventfd, a pipe) uses only
        // calls the profile allows, even with violations killing the worker and no threads.
        "hostile_descriptors" => {
            enter(Sandbox::worker().on_violation(Violation::Kill));
            let mut out = Vec::new();
            for _ in 0..3 {
                let start = std::time::Instant::now();
                let err = ch.recv_timeout(&policy, TIMEOUT).expect_err("accepted");
                out.push(format!(
                    "{} {}",
                    matches!(err, Error::NotMemfd { .. }),
                    start.elapsed() < Duration::from_secs(1)
                ));
            }
            let honest = ch.recv_timeout(&policy, TIMEOUT).expect("honest");
            out.push(String::from_utf8_lossy(honest.payload()).into_owned());
            drop(honest);
            ch.send(out.join(",").as_bytes(), &[]).expect("send");
            // Dropping the channel (SO_PASSRIGHTS off, drain) is allowed too.
            drop(ch);
            0
        }
        "escapes" => {
            enter(Sandbox::worker());
            ch.send(&encode(&escapes(&ch)), &[]).expect("send");
            0
        }
        "regions" => {
            enter(Sandbox::worker());
            let policy = Policy::producer_writable().max_region_len(1 << 26);
            let msg = ch.recv_timeout(&policy, TIMEOUT).expect("recv");
            let sum = checksum(msg.regions()[0].as_bytes().expect("as_bytes"));
            let mut copy = vec![0u8; msg.regions()[1].len()];
            msg.regions()[1].read_at(0, &mut copy).expect("read_at");
            // And the worker answers with a region of its own.
            let mut answer = Region::new(4096).expect("region");
            answer.write_at(0, &sum.to_le_bytes()).expect("write_at");
            answer
                .write_at(8, &checksum(&copy).to_le_bytes())
                .expect("write_at");
            let answer = answer.seal().expect("seal");
            ch.send(b"sums", &[&answer]).expect("send");
            0
        }
        "ring_consumer_spin" | "ring_consumer_park" => {
            enter(Sandbox::worker());
            let spin = if role.ends_with("spin") {
                SpinPolicy::Spin
            } else {
                SpinPolicy::Park
            };
            let opts = RingOptions::new(1 << 12).spin(spin).timeout(TIMEOUT);
            let mut rx = Consumer::setup(ch, &opts).expect("connect");
            let mut buf = Vec::new();
            for i in 0..RECORDS {
                rx.recv_timeout(&mut buf, TIMEOUT).expect("recv");
                if buf != record(i) {
                    eprintln!("peer: record {i} is wrong");
                    return 2;
                }
            }
            0
        }
        "ring_producer_park" => {
            enter(Sandbox::worker());
            let opts = RingOptions::new(1 << 10)
                .spin(SpinPolicy::Park)
                .timeout(TIMEOUT);
            let mut tx = Producer::setup(ch, &opts).expect("connect");
            for i in 0..RECORDS {
                tx.send_timeout(&record(i), TIMEOUT).expect("send");
            }
            // Wait for the consumer to finish reading before the channel closes.
            std::thread::sleep(Duration::from_millis(200));
            0
        }
        #[cfg(feature = "tokio")]
        "async" => {
            enter(Sandbox::worker());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let ch = sealpipe::asyncio::AsyncChannel::new(ch).expect("register");
                let msg = ch.recv(&policy).await.expect("recv");
                let sum = checksum(msg.regions()[0].as_bytes().expect("as_bytes"));
                tokio::time::sleep(Duration::from_millis(5)).await;
                ch.send(&sum.to_le_bytes(), &[]).await.expect("send");
            });
            0
        }
        "violation_errno" => {
            enter(Sandbox::worker().on_violation(Violation::Errno));
            // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
            // whatever it unexpectedly creates is closed, unmapped or reaped at once.
            let r = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let e = errno();
            ch.send(format!("{r} {e}").as_bytes(), &[]).expect("send");
            0
        }
        "violation_kill" => {
            enter(Sandbox::worker().on_violation(Violation::Kill));
            ch.send(b"entered", &[]).expect("send");
            // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
            // whatever it unexpectedly creates is closed, unmapped or reaped at once.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            ch.send(b"survived", &[]).expect("send");
            0
        }
        "landlock_fs" => {
            let dir = std::env::var("SANDBOX_TEST_DIR").expect("dir");
            enter(Sandbox::worker().read_only(&dir).require_landlock_abi(1));
            let inside = std::fs::read(format!("{dir}/inside")).map(|_| 0);
            let outside = std::fs::File::open("/etc/passwd").map(|_| 0);
            let create = std::fs::File::create(format!("{dir}/new")).map(|_| 0);
            // A region the parent sent: reopening it read-write must not give a way to write.
            let msg = ch
                .recv_timeout(&policy.keep_descriptors(true), TIMEOUT)
                .expect("recv");
            let region_fd = msg.regions()[0]
                .fd()
                .expect("the policy keeps descriptors")
                .as_raw_fd();
            // Landlock does not govern memfds (an internal mount): with paths granted the
            // reopen itself may succeed, and the seal must then refuse the write.
            let reopened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/proc/self/fd/{region_fd}"));
            let reopen_write = match &reopened {
                Ok(f) => std::io::Write::write(&mut &*f, b"x").map(|_| 0),
                Err(e) => Err(std::io::Error::from_raw_os_error(
                    e.raw_os_error().unwrap_or(-1),
                )),
            };
            let e = |r: std::io::Result<i32>| r.unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1));
            let out = [
                ("inside", e(inside)),
                ("outside", e(outside)),
                ("create", e(create)),
                ("reopen_write", e(reopen_write)),
            ];
            ch.send(&encode(&out), &[]).expect("send");
            0
        }
        "landlock_net" => {
            let port: u16 = std::env::var("SANDBOX_TEST_PORT").unwrap().parse().unwrap();
            // socket/connect/bind are let through seccomp so that Landlock alone decides.
            enter(Sandbox::worker().require_landlock_abi(4).allow_syscalls(&[
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_bind,
                libc::SYS_setsockopt,
            ]));
            let connect = std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| 0);
            let bind = std::net::TcpListener::bind("127.0.0.1:0").map(|_| 0);
            let e = |r: std::io::Result<i32>| r.unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1));
            ch.send(&encode(&[("connect", e(connect)), ("bind", e(bind))]), &[])
                .expect("send");
            0
        }
        "landlock_scope" => {
            let name = std::env::var("SANDBOX_TEST_ABSTRACT").unwrap();
            enter(Sandbox::worker().require_landlock_abi(6).allow_syscalls(&[
                libc::SYS_kill,
                libc::SYS_socket,
                libc::SYS_connect,
            ]));
            // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
            // whatever it unexpectedly creates is closed, unmapped or reaped at once.
            let ppid = unsafe { libc::getppid() };
            // Never kill(-1, ...) or init.
            assert!(ppid > 1, "getppid: {ppid}");
            // SAFETY: kill with a pid and a harmless signal.
            let kill = outcome(unsafe { libc::kill(ppid, libc::SIGCONT) } as _);
            let connect = {
                use std::os::linux::net::SocketAddrExt;
                let addr =
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
                std::os::unix::net::UnixStream::connect_addr(&addr)
                    .map(|_| 0)
                    .unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1))
            };
            ch.send(
                &encode(&[("kill", kill), ("abstract_connect", connect)]),
                &[],
            )
            .expect("send");
            0
        }
        "namespaces" => {
            let e = Sandbox::worker()
                .namespaces(Namespaces {
                    user: true,
                    net: true,
                })
                .enter()
                .expect("enter");
            ch.send(format!("{}", e.namespaces.net).as_bytes(), &[])
                .expect("send");
            // Keep running until the parent has looked at our namespaces.
            let _ = ch.recv_timeout(&policy, TIMEOUT);
            0
        }
        "abort" => {
            enter(Sandbox::worker());
            ch.send(b"entered", &[]).expect("send");
            std::process::abort();
        }
        "threads" => {
            enter(Sandbox::worker().allow_threads(true));
            // clone3 is answered ENOSYS; the C library falls back to clone(CLONE_THREAD).
            let thread = std::thread::spawn(|| 7).join().map_err(|_| "join");
            // SAFETY: a child, if one were created, only calls `_exit`; it is reaped.
            let fork = unsafe {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid > 0 {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                outcome(pid as _)
            };
            let out = [("thread", i32::from(thread != Ok(7))), ("fork", fork)];
            ch.send(&encode(&out), &[]).expect("send");
            0
        }
        "spawned_in_namespaces" => {
            ch.send(b"up", &[]).expect("send");
            let _ = ch.recv_timeout(&policy, TIMEOUT);
            0
        }
        "spawned_sandboxed" => {
            // Sandboxed before main: the startup filter and Landlock are in force.
            let open = std::fs::File::open("/etc/passwd")
                .map(|_| 0)
                .unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1));
            // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
            // whatever it unexpectedly creates is closed, unmapped or reaped at once.
            let socket = outcome(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) } as _);
            // Entering the full profile removes the startup allowance (execve).
            enter(Sandbox::worker());
            // SAFETY: a raw call with valid arguments (live C strings, buffers, our own mappings);
            // whatever it unexpectedly creates is closed, unmapped or reaped at once.
            let execve = unsafe {
                let sh = c"/bin/sh";
                let argv = [sh.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                outcome(libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) as _)
            };
            let msg = ch.recv_timeout(&policy, TIMEOUT).expect("recv");
            let sum = checksum(msg.regions()[0].as_bytes().expect("as_bytes"));
            let out = [
                ("open", open),
                ("socket", socket),
                ("execve", execve),
                ("sum_ok", i32::from(sum != 0)),
            ];
            ch.send(&encode(&out), &[]).expect("send");
            0
        }
        _ => 99,
    }
}

// ---------------------------------------------------------------------------------------
// The tests (run in the parent, which is never sandboxed).

fn expect_all_refused(results: &[(String, i32)], allowed_errnos: &[i32]) {
    for (name, e) in results {
        assert!(
            allowed_errnos.contains(e),
            "{name}: expected one of {allowed_errnos:?}, got {e} ({})",
            if *e == 0 {
                "it succeeded".to_string()
            } else {
                std::io::Error::from_raw_os_error(*e).to_string()
            }
        );
    }
}

fn reply(peer: &common::Peer) -> Vec<u8> {
    peer.channel
        .recv_timeout(&Policy::immutable(), TIMEOUT)
        .expect("reply")
        .payload()
        .to_vec()
}

fn every_escape_is_refused() {
    let peer = common::spawn_peer("every_escape_is_refused", "escapes");
    let results = decode(&reply(&peer));
    assert_eq!(results.len(), 12, "{results:?}");
    // seccomp answers EPERM for every call it does not allow; glibc reports a refused
    // clone3 for a thread as EPERM too.
    expect_all_refused(&results, &[libc::EPERM]);
    assert_eq!(peer.wait(), 0);
}

fn regions_are_received_verified_and_answered_inside() {
    let peer = common::spawn_peer(
        "regions_are_received_verified_and_answered_inside",
        "regions",
    );
    let data: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i * 7 + i / 4093) as u8)
        .collect();
    let mut big = Region::new(data.len()).unwrap();
    big.write_at(0, &data).unwrap();
    let big = big.seal().unwrap();
    let mut shared = Region::new(1 << 16).unwrap().seal_producer_writable().unwrap();
    shared.as_mut_slice().fill(0x5a);
    let small = vec![0x5au8; 1 << 16];
    peer.channel
        .send(b"regions", &[&big, shared.region()])
        .unwrap();
    let msg = peer
        .channel
        .recv_timeout(&Policy::immutable(), TIMEOUT)
        .expect("the worker's answer");
    assert_eq!(msg.payload(), b"sums");
    let sums: [u64; 2] = msg.regions()[0].read_value(0).unwrap();
    assert_eq!(sums, [checksum(&data), checksum(&small)]);
    drop(msg);
    assert_eq!(peer.wait(), 0);
}

fn ring_consumer(test: &str, role: &str) {
    let peer = common::spawn_peer(test, role);
    let common::Peer { mut child, channel } = peer;
    let mut tx = Producer::setup(channel, &RingOptions::new(1 << 12).timeout(TIMEOUT))
        .expect("connect to the sandboxed consumer");
    for i in 0..RECORDS {
        tx.send_timeout(&record(i), TIMEOUT).expect("send");
        if i % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(1)); // let the consumer park
        }
    }
    let status = wait_child(&mut child);
    drop(tx);
    assert_eq!(status, 0);
}

fn wait_child(child: &mut std::process::Child) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().expect("wait");
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn ring_spinning_consumer_works_inside() {
    ring_consumer("ring_spinning_consumer_works_inside", "ring_consumer_spin");
}

fn ring_parking_consumer_works_inside() {
    ring_consumer("ring_parking_consumer_works_inside", "ring_consumer_park");
}

fn ring_parking_producer_works_inside() {
    let peer = common::spawn_peer("ring_parking_producer_works_inside", "ring_producer_park");
    let common::Peer { mut child, channel } = peer;
    let mut rx = Consumer::setup(channel, &RingOptions::new(1 << 10).timeout(TIMEOUT))
        .expect("connect to the sandboxed producer");
    let mut buf = Vec::new();
    for i in 0..RECORDS {
        rx.recv_timeout(&mut buf, TIMEOUT).expect("recv");
        assert_eq!(buf, record(i));
        if i % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(1)); // let the producer fill up and park
        }
    }
    assert_eq!(wait_child(&mut child), 0);
}

#[cfg(feature = "tokio")]
fn async_channel_works_inside() {
    let peer = common::spawn_peer("async_channel_works_inside", "async");
    let data = vec![0x33u8; 1 << 20];
    let mut region = Region::new(data.len()).unwrap();
    region.write_at(0, &data).unwrap();
    peer.channel.send(b"", &[&region.seal().unwrap()]).unwrap();
    assert_eq!(reply(&peer), checksum(&data).to_le_bytes());
    assert_eq!(peer.wait(), 0);
}

fn required_level_the_kernel_lacks_is_a_clear_error() {
    let support = Support::detect();
    let err = Sandbox::worker()
        .require_landlock_abi(u32::MAX)
        .enter()
        .expect_err("no kernel has this ABI");
    match &err {
        Error::SandboxUnavailable {
            layer,
            required,
            available,
        } => {
            assert_eq!(*layer, "Landlock");
            assert_eq!(*required, u32::MAX);
            assert_eq!(*available, support.landlock_abi);
        }
        other => panic!("expected SandboxUnavailable, got {other:?}"),
    }
    assert!(err.to_string().contains("cannot enforce Landlock"), "{err}");
    // Nothing was applied to this (the test) process.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");
    assert!(status.contains("Seccomp:\t0"), "{status}");
}

fn hostile_descriptors_are_refused_inside_without_a_violation() {
    use std::os::fd::AsFd;
    let peer = common::spawn_peer(
        "hostile_descriptors_are_refused_inside_without_a_violation",
        "hostile_descriptors",
    );
    let send = |fd: std::os::fd::BorrowedFd<'_>| {
        let mut m = Vec::new();
        m.extend_from_slice(b"SPIP");
        m.extend_from_slice(&1u16.to_le_bytes());
        m.extend_from_slice(&1u16.to_le_bytes());
        m.extend_from_slice(&1u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&4096u64.to_le_bytes());
        let fds = [fd];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &peer.channel,
            &[std::io::IoSlice::new(&m)],
            &mut control,
            rustix::net::SendFlags::NOSIGNAL,
        )
        .unwrap();
    };
    let (sock, _other) = Channel::pair().unwrap();
    let ev = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let (pipe, _w) = rustix::pipe::pipe().unwrap();
    send(sock.as_fd());
    send(ev.as_fd());
    send(pipe.as_fd());
    let honest = Region::new(4096).unwrap().seal().unwrap();
    peer.channel.send(b"honest", &[&honest]).unwrap();
    let got = peer.channel.recv_timeout(&Policy::immutable(), TIMEOUT);
    let mut peer = peer;
    if got.is_err() {
        panic!("worker died: {}", peer.exit_code());
    }
    assert_eq!(
        got.unwrap().payload(),
        b"true true,true true,true true,honest",
        "every rejection was specific and prompt"
    );
    assert_eq!(peer.wait(), 0, "the worker was not killed");
}

fn forbidden_call_gets_eperm_and_the_worker_goes_on() {
    let peer = common::spawn_peer(
        "forbidden_call_gets_eperm_and_the_worker_goes_on",
        "violation_errno",
    );
    assert_eq!(reply(&peer), format!("-1 {}", libc::EPERM).as_bytes());
    assert_eq!(peer.wait(), 0);
}

fn forbidden_call_kills_the_worker_not_the_parent() {
    let mut peer = common::spawn_peer(
        "forbidden_call_kills_the_worker_not_the_parent",
        "violation_kill",
    );
    assert_eq!(reply(&peer), b"entered");
    // SECCOMP_RET_KILL_PROCESS: the worker dies of SIGSYS at socket(), before "survived".
    assert_eq!(peer.exit_code(), 128 + libc::SIGSYS);
    match peer
        .channel
        .recv_timeout(&Policy::immutable(), Duration::from_secs(5))
    {
        Err(Error::PeerClosed) => {}
        other => panic!("expected PeerClosed, got {other:?}"),
    }
}

fn landlock_confines_files_to_the_granted_paths() {
    let dir = std::env::temp_dir().join(format!("sealpipe-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"granted").unwrap();
    let peer = common::spawn_peer_with(
        "landlock_confines_files_to_the_granted_paths",
        "landlock_fs",
        |cmd| {
            cmd.env("SANDBOX_TEST_DIR", &dir);
        },
    );
    let mut region = Region::new(4096).unwrap();
    region.write_at(0, b"sealed").unwrap();
    peer.channel.send(b"", &[&region.seal().unwrap()]).unwrap();
    let results = decode(&reply(&peer));
    let _ = std::fs::remove_dir_all(&dir);
    let get = |n: &str| results.iter().find(|(k, _)| k == n).unwrap().1;
    assert_eq!(get("inside"), 0, "{results:?}");
    // Landlock answers EACCES: openat itself is allowed once paths are granted.
    for n in ["outside", "create"] {
        assert_eq!(get(n), libc::EACCES, "{n}: {results:?}");
    }
    // Reopening the region read-write through /proc: refused by Landlock (EACCES), or
    // (memfds live on an internal mount Landlock does not govern) the write is refused by
    // the region's WRITE seal (EPERM).
    assert!(
        [libc::EACCES, libc::EPERM].contains(&get("reopen_write")),
        "{results:?}"
    );
    assert_eq!(peer.wait(), 0);
}

fn landlock_denies_tcp_bind_and_connect() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = common::spawn_peer_with(
        "landlock_denies_tcp_bind_and_connect",
        "landlock_net",
        |cmd| {
            cmd.env("SANDBOX_TEST_PORT", port.to_string());
        },
    );
    let results = decode(&reply(&peer));
    expect_all_refused(&results, &[libc::EACCES]);
    assert_eq!(peer.wait(), 0);
}

fn landlock_scopes_signals_and_abstract_sockets() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("sealpipe-sandbox-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let peer = common::spawn_peer_with(
        "landlock_scopes_signals_and_abstract_sockets",
        "landlock_scope",
        |cmd| {
            cmd.env("SANDBOX_TEST_ABSTRACT", &name);
        },
    );
    let results = decode(&reply(&peer));
    expect_all_refused(&results, &[libc::EPERM]);
    assert_eq!(peer.wait(), 0);
}

fn namespaces_isolate_the_network() {
    let peer = common::spawn_peer("namespaces_isolate_the_network", "namespaces");
    assert_eq!(reply(&peer), b"true");
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", peer.pid())).unwrap();
    assert_ne!(ours, theirs);
    let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/user", peer.pid())).unwrap();
    assert_ne!(ours, theirs);
    peer.channel.send(b"done", &[]).unwrap();
    assert_eq!(peer.wait(), 0);
}

fn spawn_sandboxes_the_child_before_main_and_never_the_parent() {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg("spawn_sandboxes_the_child_before_main_and_never_the_parent")
        .env(common::ROLE_ENV, "spawned_sandboxed")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let (mut child, channel, enforced) =
        sealpipe::spawn::spawn_sandboxed(&mut cmd, &Sandbox::worker()).expect("spawn_sandboxed");
    assert!(
        enforced.startup_allowance && enforced.no_new_privs,
        "{enforced}"
    );
    let mut region = Region::new(4096).unwrap();
    region.write_at(0, b"payload").unwrap();
    channel.send(b"", &[&region.seal().unwrap()]).unwrap();
    let results = decode(
        channel
            .recv_timeout(&Policy::immutable(), TIMEOUT)
            .expect("reply")
            .payload(),
    );
    let get = |n: &str| results.iter().find(|(k, _)| k == n).unwrap().1;
    let landlock = Support::detect().landlock_abi > 0;
    assert_eq!(
        get("open"),
        if landlock { libc::EACCES } else { 0 },
        "{results:?}"
    );
    assert_eq!(get("socket"), libc::EPERM, "{results:?}");
    assert_eq!(get("execve"), libc::EPERM, "{results:?}");
    assert_eq!(get("sum_ok"), 1);
    drop(channel);
    assert_eq!(wait_child(&mut child), 0);
    // The parent is untouched.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(status.contains("NoNewPrivs:\t0"), "{status}");
    assert!(status.contains("Seccomp:\t0"), "{status}");
    std::net::TcpListener::bind("127.0.0.1:0").expect("the parent can still use the network");
}

fn an_aborting_worker_still_dies() {
    let mut peer = common::spawn_peer("an_aborting_worker_still_dies", "abort");
    assert_eq!(reply(&peer), b"entered");
    // tgkill is refused, so abort() cannot raise SIGABRT: glibc's fallback crash
    // instruction ends the process instead.
    let code = peer.exit_code();
    assert!(
        code > 128,
        "the worker must die by a signal, got exit code {code}"
    );
    eprintln!("an aborting sandboxed worker died by signal {}", code - 128);
}

fn threads_when_allowed_but_never_processes() {
    let peer = common::spawn_peer("threads_when_allowed_but_never_processes", "threads");
    let results = decode(&reply(&peer));
    assert_eq!(results[0], ("thread".to_string(), 0), "{results:?}");
    assert_eq!(results[1], ("fork".to_string(), libc::EPERM), "{results:?}");
    assert_eq!(peer.wait(), 0);
}

fn spawn_sandboxed_moves_the_child_into_namespaces() {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.env(common::ROLE_ENV, "spawned_in_namespaces")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let profile = Sandbox::worker().namespaces(Namespaces {
        user: true,
        net: true,
    });
    // The handshake's SCM_CREDENTIALS check passes: the child maps its own uid and gid.
    let (mut child, channel, enforced) =
        sealpipe::spawn::spawn_sandboxed(&mut cmd, &profile).expect("spawn_sandboxed");
    assert!(
        enforced.namespaces.user && enforced.namespaces.net,
        "{enforced}"
    );
    let msg = channel
        .recv_timeout(&Policy::immutable(), TIMEOUT)
        .expect("up");
    assert_eq!(msg.payload(), b"up");
    for ns in ["net", "user"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{}/ns/{ns}", child.id())).unwrap();
        assert_ne!(ours, theirs, "{ns}");
    }
    channel.send(b"done", &[]).unwrap();
    assert_eq!(wait_child(&mut child), 0);
}

// ---------------------------------------------------------------------------------------
// The harness.

type Test = (&'static str, fn(), Option<String>);

fn tests() -> Vec<Test> {
    let support = Support::detect();
    let needs_abi = |abi: u32| {
        (support.landlock_abi < abi).then(|| {
            format!(
                "needs Landlock ABI {abi}; this kernel offers {}",
                support.landlock_abi
            )
        })
    };
    #[allow(unused_mut)] // pushed to with the tokio feature
    let mut t: Vec<Test> = vec![
        ("every_escape_is_refused", every_escape_is_refused, None),
        (
            "hostile_descriptors_are_refused_inside_without_a_violation",
            hostile_descriptors_are_refused_inside_without_a_violation,
            None,
        ),
        (
            "regions_are_received_verified_and_answered_inside",
            regions_are_received_verified_and_answered_inside,
            None,
        ),
        (
            "ring_spinning_consumer_works_inside",
            ring_spinning_consumer_works_inside,
            None,
        ),
        (
            "ring_parking_consumer_works_inside",
            ring_parking_consumer_works_inside,
            None,
        ),
        (
            "ring_parking_producer_works_inside",
            ring_parking_producer_works_inside,
            None,
        ),
        (
            "required_level_the_kernel_lacks_is_a_clear_error",
            required_level_the_kernel_lacks_is_a_clear_error,
            None,
        ),
        (
            "forbidden_call_gets_eperm_and_the_worker_goes_on",
            forbidden_call_gets_eperm_and_the_worker_goes_on,
            None,
        ),
        (
            "forbidden_call_kills_the_worker_not_the_parent",
            forbidden_call_kills_the_worker_not_the_parent,
            None,
        ),
        (
            "landlock_confines_files_to_the_granted_paths",
            landlock_confines_files_to_the_granted_paths,
            needs_abi(1),
        ),
        (
            "landlock_denies_tcp_bind_and_connect",
            landlock_denies_tcp_bind_and_connect,
            needs_abi(4),
        ),
        (
            "landlock_scopes_signals_and_abstract_sockets",
            landlock_scopes_signals_and_abstract_sockets,
            needs_abi(6),
        ),
        (
            "namespaces_isolate_the_network",
            namespaces_isolate_the_network,
            (!support.user_namespaces)
                .then(|| "user namespaces are not available to this process".to_string()),
        ),
        (
            "an_aborting_worker_still_dies",
            an_aborting_worker_still_dies,
            None,
        ),
        (
            "threads_when_allowed_but_never_processes",
            threads_when_allowed_but_never_processes,
            None,
        ),
        (
            "spawn_sandboxed_moves_the_child_into_namespaces",
            spawn_sandboxed_moves_the_child_into_namespaces,
            (!support.user_namespaces)
                .then(|| "user namespaces are not available to this process".to_string()),
        ),
        (
            "spawn_sandboxes_the_child_before_main_and_never_the_parent",
            spawn_sandboxes_the_child_before_main_and_never_the_parent,
            None,
        ),
    ];
    #[cfg(feature = "tokio")]
    t.push((
        "async_channel_works_inside",
        async_channel_works_inside,
        None,
    ));
    t
}

fn main() {
    common::peer_main(peer);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let exact = flag("--exact");
    let selected = |name: &str| {
        filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    name == *f
                } else {
                    name.contains(f.as_str())
                }
            })
    };
    let tests: Vec<Test> = tests().into_iter().filter(|t| selected(t.0)).collect();
    if flag("--list") {
        for (name, _, _) in &tests {
            println!("{name}: test");
        }
        return;
    }
    let run_ignored = flag("--ignored") || flag("--include-ignored");
    println!("\nrunning {} tests", tests.len());
    let (mut passed, mut failed, mut ignored) = (0, Vec::new(), 0);
    for (name, f, ignore) in tests {
        if let Some(reason) = ignore.filter(|_| !run_ignored) {
            println!("test {name} ... ignored, {reason}");
            ignored += 1;
            continue;
        }
        match std::panic::catch_unwind(f) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; {ignored} ignored\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(101);
    }
}
