//! Two real processes sharing one open file description: through `std::fs::File` each
//! side's reads, writes and seeks move the other's offset; through `PositionalFile` they
//! never do. Each test runs the same script both ways and asserts both outcomes.

mod common;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use sealpipe::{Channel, Policy, PositionalFile, Region};

const T: Duration = Duration::from_secs(20);
const LEN: usize = 64 * 1024;

fn data() -> Vec<u8> {
    (0..LEN).map(|i| (i * 7 % 251) as u8).collect()
}

/// What the script does to each side's handle, whatever its type.
trait Handle: Read + Write + Seek {}
impl Handle for File {}
impl Handle for PositionalFile {}

fn open(kind: &str, fd: OwnedFd) -> Box<dyn Handle> {
    match kind {
        "file" => Box::new(File::from(fd)),
        "positional" => Box::new(PositionalFile::from(fd)),
        _ => unreachable!("unknown handle kind {kind}"),
    }
}

/// The peer: takes its descriptor (inherited, or the region of the first message), then
/// runs commands from the parent until the parent closes the channel. Role:
/// `<kind>-inherited` or `<kind>-region`.
fn peer(role: &str, ch: Channel) -> i32 {
    let (kind, source) = role.split_once('-').unwrap_or((role, ""));
    let fd = if source == "region" {
        let msg = ch
            .recv_timeout(&Policy::immutable().keep_descriptors(true), T)
            .unwrap();
        let (_, mut regions) = msg.into_parts();
        let view = regions.pop().unwrap();
        if kind == "positional" {
            // The conversion under test: a received region straight into a PositionalFile.
            PositionalFile::try_from(view).unwrap().into_fd()
        } else {
            view.into_fd().unwrap()
        }
    } else {
        common::shared_fd()
    };
    let mut handle = open(kind, fd);
    loop {
        let cmd = match ch.recv_timeout(&Policy::immutable(), T) {
            Ok(msg) => msg.payload().to_vec(),
            Err(sealpipe::Error::PeerClosed) => return 0,
            Err(e) => {
                eprintln!("peer: {e}");
                return 1;
            }
        };
        let reply: Vec<u8> = match cmd.as_slice() {
            b"read" => {
                let mut buf = vec![0u8; 100];
                handle.read_exact(&mut buf).unwrap();
                buf
            }
            b"write" => {
                handle.write_all(b"PEER-WROTE").unwrap();
                Vec::new()
            }
            b"seek" => {
                handle.seek(SeekFrom::Start(5000)).unwrap();
                Vec::new()
            }
            b"position" => handle.stream_position().unwrap().to_le_bytes().to_vec(),
            _ => return 2,
        };
        ch.send_timeout(&reply, &[], T).unwrap();
    }
}

fn ask(ch: &Channel, cmd: &[u8]) -> Vec<u8> {
    ch.send_timeout(cmd, &[], T).unwrap();
    ch.recv_timeout(&Policy::immutable(), T)
        .unwrap()
        .payload()
        .to_vec()
}

fn read100(h: &mut dyn Handle) -> Vec<u8> {
    let mut buf = vec![0u8; 100];
    h.read_exact(&mut buf).unwrap();
    buf
}

/// What each side observed during the script.
#[derive(Debug)]
struct Trace {
    parent_first: Vec<u8>,
    peer_first: Vec<u8>,
    parent_second: Vec<u8>,
    peer_position_after_parent_reads: u64,
    parent_position_after_peer_write: u64,
    parent_after_peer_seek: Vec<u8>,
}

/// Parent and peer take turns on their own handles to one open file description.
fn script(mine: &mut dyn Handle, ch: &Channel, peer_writes: bool) -> Trace {
    let parent_first = read100(mine);
    let peer_first = ask(ch, b"read");
    let parent_second = read100(mine);
    let peer_position_after_parent_reads =
        u64::from_le_bytes(ask(ch, b"position").try_into().unwrap());
    if peer_writes {
        ask(ch, b"write");
    }
    let parent_position_after_peer_write = mine.stream_position().unwrap();
    ask(ch, b"seek");
    let parent_after_peer_seek = read100(mine);
    Trace {
        parent_first,
        peer_first,
        parent_second,
        peer_position_after_parent_reads,
        parent_position_after_peer_write,
        parent_after_peer_seek,
    }
}

fn assert_undisturbed(t: &Trace, d: &[u8]) {
    assert_eq!(t.parent_first, d[0..100]);
    assert_eq!(
        t.peer_first,
        d[0..100],
        "peer starts at 0, whatever the parent read"
    );
    assert_eq!(
        t.parent_second,
        d[100..200],
        "parent continues where it was"
    );
    assert_eq!(t.peer_position_after_parent_reads, 100);
    assert_eq!(t.parent_position_after_peer_write, 200);
    assert_eq!(
        t.parent_after_peer_seek,
        d[200..300],
        "the peer's write and seek did not move us"
    );
}

fn assert_disturbed(t: &Trace, d: &[u8], peer_wrote: bool) {
    assert_eq!(t.parent_first, d[0..100]);
    assert_eq!(
        t.peer_first,
        d[100..200],
        "the parent's read moved the peer's offset"
    );
    assert_eq!(
        t.parent_second,
        d[200..300],
        "the peer's read moved the parent's offset"
    );
    assert_eq!(t.peer_position_after_parent_reads, 300);
    let after_write = if peer_wrote { 310 } else { 300 };
    assert_eq!(
        t.parent_position_after_peer_write, after_write,
        "the peer's write moved the parent's offset"
    );
    assert_eq!(
        t.parent_after_peer_seek,
        d[5000..5100],
        "the peer's seek moved the parent's offset"
    );
}

#[test]
fn inherited_description_file_vs_positional() {
    common::peer_main(peer);
    let _serial = common::serial();
    let d = data();
    for kind in ["file", "positional"] {
        let fd = rustix::fs::memfd_create("shared", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::io::pwrite(&fd, &d, 0).unwrap();
        let flags = rustix::fs::fcntl_getfl(&fd).unwrap();
        let p = common::spawn_peer_sharing(
            "inherited_description_file_vs_positional",
            &format!("{kind}-inherited"),
            fd.as_fd(),
        );
        let mut mine = open(kind, rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap());
        let trace = script(mine.as_mut(), &p.channel, true);
        assert_eq!(p.wait(), 0, "{kind}: peer failed");
        let mut written = [0u8; 10];
        rustix::io::pread(
            &fd,
            &mut written[..],
            if kind == "file" { 300 } else { 100 },
        )
        .unwrap();
        assert_eq!(
            &written, b"PEER-WROTE",
            "{kind}: the peer's write landed where it was"
        );
        let kernel_offset = rustix::fs::seek(&fd, rustix::fs::SeekFrom::Current(0)).unwrap();
        if kind == "file" {
            assert_disturbed(&trace, &d, true);
            assert_eq!(kernel_offset, 5100, "File used the shared offset");
        } else {
            assert_undisturbed(&trace, &d);
            assert_eq!(
                kernel_offset, 0,
                "PositionalFile never touched the shared offset"
            );
            assert_eq!(
                rustix::fs::fcntl_getfl(&fd).unwrap(),
                flags,
                "flags unchanged"
            );
        }
    }
}

#[test]
fn received_region_file_vs_positional() {
    common::peer_main(peer);
    let _serial = common::serial();
    let d = data();
    for kind in ["file", "positional"] {
        let mut region = Region::new(LEN).unwrap();
        region.write_at(0, &d).unwrap();
        let region = region.seal().unwrap();
        let p = common::spawn_peer(
            "received_region_file_vs_positional",
            &format!("{kind}-region"),
        );
        // The peer's received descriptor and our clone share one open file description.
        p.channel.send_timeout(b"", &[&region], T).unwrap();
        let mut mine = open(kind, region.try_clone().unwrap().into_fd());
        let trace = script(mine.as_mut(), &p.channel, false);
        assert_eq!(p.wait(), 0, "{kind}: peer failed");
        if kind == "file" {
            assert_disturbed(&trace, &d, false);
        } else {
            assert_undisturbed(&trace, &d);
        }
    }
}

/// `status_flags` reports the description's flags as the kernel's bits (`libc::O_*`), and
/// sees a flag the other holder of the description sets.
#[test]
fn status_flags_are_the_kernels_bits_shared_with_the_other_holder() {
    let fd = rustix::fs::memfd_create("flags", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let other = fd.try_clone().unwrap(); // a dup: the same open file description
    let pf = PositionalFile::new(fd);
    assert_eq!(pf.status_flags().unwrap() & libc::O_APPEND, 0);
    assert_eq!(pf.status_flags().unwrap() & libc::O_ACCMODE, libc::O_RDWR);
    rustix::fs::fcntl_setfl(&other, rustix::fs::OFlags::APPEND).unwrap();
    assert_ne!(pf.status_flags().unwrap() & libc::O_APPEND, 0);
}
