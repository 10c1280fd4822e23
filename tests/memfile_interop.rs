//! memfile interop, both ways, and forwarding received regions through a broker process.
//!
//! - a `memfile::MemFile` made by the user becomes a `SealedRegion` or a `ProducerWritableRegion`
//!   without copying (the same inode), after the checks a receiver makes, and comes back
//!   unchanged when a check fails;
//! - a received view becomes a `MemFile`;
//! - a received region is forwarded as is, A → broker → B and C, each receiver verifying
//!   it again; a producer-writable one stays producer-writable and is read by copying.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use memfile::{CreateOptions, MemFile, Seal};
use sealpipe::{Channel, Error, Policy, Region, SealedRegion, Seals, ProducerWritableRegion};

const T: Duration = Duration::from_secs(20);

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12)) as u8
}

fn sealable(name: &str) -> MemFile {
    MemFile::create(name, CreateOptions::new().allow_sealing(true)).unwrap()
}

fn inode(fd: impl AsFd) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).unwrap();
    (st.st_dev, st.st_ino)
}

fn raw_seals(fd: impl AsFd) -> u32 {
    rustix::fs::fcntl_get_seals(fd).unwrap().bits()
}

const IMMUTABLE: [Seal; 4] = [Seal::Write, Seal::Shrink, Seal::Grow, Seal::Seal];

fn seal_immutable(file: &MemFile) {
    for s in IMMUTABLE {
        file.add_seal(s).unwrap();
    }
}

#[test]
fn a_sealed_memfile_becomes_a_region_without_copying() {
    let mut file = sealable("interop");
    let data: Vec<u8> = (0..3 * 4096 + 17).map(pattern).collect();
    file.write_all(&data).unwrap();
    seal_immutable(&file);
    let ino = inode(&file);

    let region = SealedRegion::from_memfile(file, &Policy::immutable()).unwrap();
    assert_eq!(region.len(), data.len());
    assert!(region.seals().contains(Seals::IMMUTABLE));
    assert_eq!(inode(&region), ino, "the same file, not a copy");

    let (a, b) = Channel::pair().unwrap();
    a.send(b"", &[&region]).unwrap();
    let msg = b.recv(&Policy::immutable()).unwrap();
    assert!(msg.regions()[0].as_bytes().unwrap() == &data[..]);

    // And back: the region's memfd as a MemFile, seals intact.
    let mut file = region.into_memfile();
    assert_eq!(inode(&file), ino);
    assert!(file.get_seals().unwrap().contains(Seal::Write));
    let mut back = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap(); // the cursor is where write_all left it
    file.read_to_end(&mut back).unwrap();
    assert!(back == data, "the same bytes");
}

#[test]
fn a_memfile_that_fails_a_receiver_check_is_handed_back() {
    // Not sealed at all.
    let mut file = sealable("unsealed");
    file.write_all(&[1u8; 4096]).unwrap();
    let ino = inode(&file);
    let (err, mut file) = SealedRegion::from_memfile(file, &Policy::immutable()).unwrap_err();
    assert!(
        matches!(err, Error::MissingSeals { missing, .. } if missing == Seals::WRITE | Seals::SHRINK | Seals::GROW),
        "{err:?}"
    );
    assert_eq!(inode(&file), ino, "the same file comes back");
    file.write_all(b"still mine").unwrap();

    // Sized but never written: a receiver would refuse it (no page allocated).
    let file = sealable("holes");
    file.set_len(1 << 20).unwrap();
    seal_immutable(&file);
    let (err, _) = SealedRegion::from_memfile(file, &Policy::immutable()).unwrap_err();
    assert!(
        matches!(err, Error::Uncommitted { committed: 0, .. }),
        "{err:?}"
    );

    // Pages allocated past the end to disguise holes inside: the receiver's cachestat
    // check sees through it here too.
    let file = sealable("disguised");
    file.set_len(1 << 16).unwrap();
    rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::KEEP_SIZE,
        1 << 16,
        1 << 16,
    )
    .unwrap();
    seal_immutable(&file);
    let (err, _) = SealedRegion::from_memfile(file, &Policy::immutable()).unwrap_err();
    assert!(matches!(err, Error::Uncommitted { .. }), "{err:?}");

    // Empty.
    let file = sealable("empty");
    seal_immutable(&file);
    let (err, _) = SealedRegion::from_memfile(file, &Policy::immutable()).unwrap_err();
    assert!(matches!(err, Error::EmptyRegion { .. }), "{err:?}");

    // Over the policy's limit.
    let mut file = sealable("big");
    file.write_all(&[0u8; 8192]).unwrap();
    seal_immutable(&file);
    let (err, file) =
        SealedRegion::from_memfile(file, &Policy::immutable().max_region_len(4096)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RegionTooLarge {
                len: 8192,
                max: 4096,
                ..
            }
        ),
        "{err:?}"
    );
    // The same file passes a policy that allows it.
    SealedRegion::from_memfile(file, &Policy::immutable()).unwrap();

    // Sealed FUTURE_WRITE: producer-writable, so only a policy that accepts that takes it.
    let mut file = sealable("future");
    file.write_all(&[0u8; 4096]).unwrap();
    for s in [Seal::FutureWrite, Seal::Shrink, Seal::Grow] {
        file.add_seal(s).unwrap();
    }
    let (err, file) = SealedRegion::from_memfile(file, &Policy::immutable()).unwrap_err();
    assert!(
        matches!(err, Error::MissingSeals { missing, .. } if missing == Seals::WRITE),
        "{err:?}"
    );
    let region = SealedRegion::from_memfile(file, &Policy::producer_writable()).unwrap();
    assert!(region.seals().contains(Seals::FUTURE_WRITE));
}

#[test]
fn a_memfile_becomes_a_producer_writable_region_without_copying() {
    let mut file = sealable("live");
    let data: Vec<u8> = (0..1 << 16).map(pattern).collect();
    file.write_all(&data).unwrap();
    let ino = inode(&file);
    let mut shared = ProducerWritableRegion::from_memfile(file, &Policy::producer_writable()).unwrap();
    assert_eq!(inode(shared.region()), ino);
    assert!(shared.region().seals().contains(Seals::PRODUCER_WRITABLE));
    assert!(
        shared.as_mut_slice() == &data[..],
        "the file's bytes, mapped"
    );
    // Nobody else can write it any more.
    assert_eq!(
        rustix::io::pwrite(shared.region(), b"x", 0).unwrap_err(),
        rustix::io::Errno::PERM
    );

    let (a, b) = Channel::pair().unwrap();
    a.send(b"", &[shared.region()]).unwrap();
    let msg = b.recv(&Policy::producer_writable()).unwrap();
    let view = &msg.regions()[0];
    assert!(matches!(view.as_bytes(), Err(Error::NotImmutable { .. })));
    shared.as_mut_slice()[100] = !data[100];
    assert_eq!(view.read_value::<u8>(100).unwrap(), !data[100]);
}

#[test]
fn a_memfile_refused_as_producer_writable_comes_back_unsealed() {
    // A policy that refuses producer-writable regions: refused before anything is done.
    let mut file = sealable("strict");
    file.write_all(&[0u8; 4096]).unwrap();
    let (err, file) = ProducerWritableRegion::from_memfile(file, &Policy::immutable()).unwrap_err();
    assert!(
        matches!(err, Error::MissingSeals { missing, .. } if missing == Seals::WRITE),
        "{err:?}"
    );
    assert_eq!(raw_seals(&file), 0, "no seal was added");

    // Uncommitted: refused before mapping or sealing.
    let file = sealable("holes");
    file.set_len(1 << 20).unwrap();
    let (err, file) = ProducerWritableRegion::from_memfile(file, &Policy::producer_writable()).unwrap_err();
    assert!(matches!(err, Error::Uncommitted { .. }), "{err:?}");
    assert_eq!(raw_seals(&file), 0, "no seal was added");

    // Already write-sealed: the kernel refuses the writable mapping.
    let mut file = sealable("sealed");
    file.write_all(&[0u8; 4096]).unwrap();
    seal_immutable(&file);
    let before = raw_seals(&file);
    let (err, file) = ProducerWritableRegion::from_memfile(file, &Policy::producer_writable()).unwrap_err();
    assert!(matches!(err, Error::Io { op: "mmap", .. }), "{err:?}");
    assert_eq!(raw_seals(&file), before);

    // Sealed F_SEAL_SEAL only: mapped, then the kernel refuses the seals; the mapping is
    // gone and the file comes back as it was (still writable).
    let mut file = sealable("seal-sealed");
    file.write_all(&[0u8; 4096]).unwrap();
    file.add_seal(Seal::Seal).unwrap();
    let before = raw_seals(&file);
    let (err, mut file) = ProducerWritableRegion::from_memfile(file, &Policy::producer_writable()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Io {
                op: "fcntl(F_ADD_SEALS)",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(raw_seals(&file), before);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.contains("memfd:seal-sealed"),
        "the writable mapping was released"
    );
    file.write_all(b"still writable").unwrap();
}

#[test]
fn a_received_view_becomes_a_memfile() {
    let mut region = Region::new(4096).unwrap();
    region.write_at(0, b"view").unwrap();
    let region = region.seal().unwrap();
    let ino = inode(&region);
    let (a, b) = Channel::pair().unwrap();

    a.send(b"", &[&region]).unwrap();
    let (_, mut views) = b
        .recv(&Policy::immutable().keep_descriptors(true))
        .unwrap()
        .into_parts();
    let view = views.remove(0);
    assert_eq!(view.region().map(inode), Some(ino));
    let mut file = view.into_memfile().unwrap();
    assert_eq!(inode(&file), ino);
    assert_eq!(raw_seals(&file), region.seals().bits());
    let mut start = [0u8; 4];
    file.read_exact(&mut start).unwrap();
    assert_eq!(&start, b"view");
    // Its seals hold for whoever has the MemFile.
    assert!(file.set_len(1).is_err());
    assert!(file.write_all(b"x").is_err());

    // Without the descriptor (the default), the view comes back, still readable.
    a.send(b"", &[&region]).unwrap();
    let (_, mut views) = b.recv(&Policy::immutable()).unwrap().into_parts();
    let view = views.remove(0);
    assert!(view.region().is_none());
    let view = view.into_memfile().unwrap_err();
    assert_eq!(&view.as_bytes().unwrap()[..4], b"view");
}

#[test]
fn a_forwarded_region_is_verified_again_by_each_receiver() {
    let (producer, broker_in) = Channel::pair().unwrap();
    let (broker_out, strict) = Channel::pair().unwrap();
    let shared = Region::new(4096).unwrap().seal_producer_writable().unwrap();
    producer.send(b"", &[shared.region()]).unwrap();
    let msg = broker_in
        .recv(&Policy::producer_writable().keep_descriptors(true))
        .unwrap();
    let region = msg.regions()[0].region().unwrap();
    assert_eq!(region.seals(), shared.region().seals());
    broker_out.send(b"", &[region]).unwrap();
    // A receiver that demands immutable regions refuses the forwarded producer-writable one.
    let err = strict.recv(&Policy::immutable()).unwrap_err();
    assert!(
        matches!(err, Error::MissingSeals { missing, .. } if missing == Seals::WRITE),
        "{err:?}"
    );
}

// ---- forwarding through a broker process ----

const BROKER_TEST_IMMUTABLE: &str = "a_broker_forwards_an_immutable_region_to_its_workers";
const BROKER_TEST_WRITABLE: &str = "a_broker_forwards_a_producer_writable_region_to_its_workers";

/// The broker: spawns two workers, then forwards every message from A to both (regions as
/// received, verified here first) and sends each worker's answer back to A.
fn broker(from_a: Channel, test: &str) -> i32 {
    let workers = [
        common::spawn_peer(test, "worker"),
        common::spawn_peer(test, "worker"),
    ];
    // Keep descriptors: that is what lets the broker forward what it received.
    let policy = Policy::producer_writable().keep_descriptors(true);
    loop {
        let msg = match from_a.recv_timeout(&policy, T) {
            Ok(msg) => msg,
            Err(Error::PeerClosed) => break,
            Err(e) => {
                eprintln!("broker: {e}");
                return 1;
            }
        };
        let Some(regions) = msg
            .regions()
            .iter()
            .map(|v| v.region())
            .collect::<Option<Vec<&SealedRegion>>>()
        else {
            eprintln!("broker: a view without its descriptor");
            return 2;
        };
        for w in &workers {
            w.channel.send_timeout(msg.payload(), &regions, T).unwrap();
        }
        for w in &workers {
            let answer = w.channel.recv_timeout(&Policy::immutable(), T).unwrap();
            from_a.send_timeout(answer.payload(), &[], T).unwrap();
        }
    }
    let codes: Vec<i32> = workers.into_iter().map(common::Peer::wait).collect();
    if codes.iter().all(|&c| c == 0) {
        0
    } else {
        eprintln!("broker: workers exited {codes:?}");
        3
    }
}

/// A worker: verifies what the broker forwards (as any receiver does) and answers
/// `"<immutable> <seals> <sum> <dev>:<ino>"` for a region, the first byte of the last
/// region for a message `byte0`.
fn worker(ch: Channel) -> i32 {
    let policy = Policy::producer_writable().keep_descriptors(true);
    let mut last: Option<sealpipe::RegionView> = None;
    loop {
        let msg = match ch.recv_timeout(&policy, T) {
            Ok(msg) => msg,
            Err(Error::PeerClosed) => return 0,
            Err(e) => {
                eprintln!("worker: {e}");
                return 1;
            }
        };
        let (payload, mut views) = msg.into_parts();
        let answer = if payload == b"byte0" {
            let Some(view) = &last else { return 4 };
            view.read_value::<u8>(0).unwrap().to_string()
        } else {
            let view = views.remove(0);
            let bytes = if view.is_immutable() {
                view.as_bytes().unwrap().to_vec()
            } else {
                // Producer-writable: only copying reads are allowed.
                if !matches!(view.as_bytes(), Err(Error::NotImmutable { .. })) {
                    return 5;
                }
                view.to_vec()
            };
            let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
            let (dev, ino) = inode(view.fd().unwrap());
            let answer = format!(
                "{} {:#x} {sum} {dev}:{ino}",
                view.is_immutable(),
                view.seals().bits()
            );
            last = Some(view);
            answer
        };
        ch.send_timeout(answer.as_bytes(), &[], T).unwrap();
    }
}

fn roles(test: &'static str) {
    common::peer_main(|role, ch| match role {
        "broker" => broker(ch, test),
        "worker" => worker(ch),
        _ => 99,
    });
}

fn answers(ch: &Channel) -> [String; 2] {
    [0, 1].map(|_| {
        let msg = ch.recv_timeout(&Policy::immutable(), T).unwrap();
        String::from_utf8(msg.payload().to_vec()).unwrap()
    })
}

#[test]
fn a_broker_forwards_an_immutable_region_to_its_workers() {
    roles(BROKER_TEST_IMMUTABLE);
    let _serial = common::serial();
    let data: Vec<u8> = (0..1 << 20).map(pattern).collect();
    let mut region = Region::new(data.len()).unwrap();
    region.write_at(0, &data).unwrap();
    let region = region.seal().unwrap();
    let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    let (dev, ino) = inode(&region);

    let broker = common::spawn_peer(BROKER_TEST_IMMUTABLE, "broker");
    broker.channel.send(b"frame", &[&region]).unwrap();
    let expected = format!("true {:#x} {sum} {dev}:{ino}", region.seals().bits());
    assert_eq!(
        answers(&broker.channel),
        [expected.clone(), expected],
        "B and C verified and read the same bytes of the same file"
    );
    assert_eq!(broker.wait(), 0);
}

#[test]
fn a_broker_forwards_a_producer_writable_region_to_its_workers() {
    roles(BROKER_TEST_WRITABLE);
    let _serial = common::serial();
    let data: Vec<u8> = (0..1 << 16).map(pattern).collect();
    let mut region = Region::new(data.len()).unwrap();
    region.write_at(0, &data).unwrap();
    let mut shared = region.seal_producer_writable().unwrap();
    let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    let (dev, ino) = inode(shared.region());
    let seals = shared.region().seals();
    assert!(seals.contains(Seals::PRODUCER_WRITABLE));

    let broker = common::spawn_peer(BROKER_TEST_WRITABLE, "broker");
    broker.channel.send(b"frame", &[shared.region()]).unwrap();
    let expected = format!("false {:#x} {sum} {dev}:{ino}", seals.bits());
    assert_eq!(answers(&broker.channel), [expected.clone(), expected]);

    // Still producer-writable after the forward: B and C see A's write.
    assert_ne!(data[0], 0xab);
    shared.as_mut_slice()[0] = 0xab;
    broker.channel.send(b"byte0", &[]).unwrap();
    assert_eq!(answers(&broker.channel), ["171", "171"]);
    assert_eq!(broker.wait(), 0);
}
