//! Ring setup: a consumer validates the producer's control-page header (magic, version,
//! kind, capacity, offsets, memfd size) before it maps anything, and a producer validates
//! its options and record sizes. Nothing leaks on a refused setup.

mod common;

use std::time::Duration;

use common::ring_peers::*;
use sealpipe::ring::{layout, Consumer, PodConsumer, Producer, RingOptions};
use sealpipe::{Channel, Error, Region};

/// Sends a hand-made producer memfd and returns what `Consumer::setup` says about it.
fn connect_to_forged(cap: u32, len: usize, edit: impl FnOnce(&mut [u8; 64])) -> Error {
    let (a, b) = Channel::pair().unwrap();
    let mut region = Region::new(len).unwrap();
    let mut h = [0u8; 64];
    h[..8].copy_from_slice(&layout::PRODUCER_MAGIC);
    for (at, v) in [
        (layout::VERSION_AT, layout::VERSION),
        (layout::KIND_AT, layout::KIND_BYTES),
        (layout::CAPACITY_AT, cap),
        (layout::UNIT_AT, 1),
        (layout::DATA_AT_AT, layout::CONTROL_LEN as u32),
        (layout::INDEX_AT_AT, layout::INDEX_AT as u32),
        (layout::WAIT_AT_AT, layout::WAIT_AT as u32),
    ] {
        h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    edit(&mut h);
    region.write_at(0, &h).unwrap();
    let shared = region.seal_producer_writable().unwrap();
    a.send(b"sealpipe ring v1", &[shared.region()]).unwrap();
    let opts = RingOptions::default().timeout(Duration::from_millis(100));
    Consumer::setup(b, &opts).unwrap_err()
}

#[test]
fn consumer_validates_the_ring_header() {
    let _serial = common::serial();
    let fds = common::fds();
    let maps = memfd_maps();
    let c = layout::CONTROL_LEN;
    let ok = |h: &mut [u8; 64]| {
        let _ = h;
    };
    assert!(matches!(
        connect_to_forged(4096, c + 4096, |h| h[0] = b'X'),
        Error::RingMismatch { .. }
    ));
    assert!(matches!(
        connect_to_forged(4096, c + 4096, |h| h[layout::VERSION_AT] = 9),
        Error::RingMismatch { .. }
    ));
    assert!(matches!(
        connect_to_forged(4096, c + 4096, |h| h[layout::KIND_AT] = 2),
        Error::RingMismatch { .. }
    ));
    assert!(matches!(
        connect_to_forged(4096, c + 4096, |h| h[layout::INDEX_AT_AT] = 8),
        Error::RingMismatch { .. }
    ));
    assert!(matches!(
        connect_to_forged(3000, c + 3000, ok),
        Error::PeerCorrupt { .. }
    ));
    assert!(matches!(
        connect_to_forged(8192, c + 4096, ok),
        Error::PeerCorrupt { .. }
    ));
    assert!(matches!(
        connect_to_forged(1 << 31, c + 4096, ok),
        Error::PeerCorrupt { .. }
    ));
    // A setup message without a memfd.
    let (a, b) = Channel::pair().unwrap();
    a.send(b"x", &[]).unwrap();
    let opts = RingOptions::default().timeout(Duration::from_millis(100));
    assert!(matches!(
        Consumer::setup(b, &opts),
        Err(Error::RingMismatch { .. })
    ));
    drop(a);
    // A typed consumer refuses a byte ring, and the other way round.
    let (a, b) = Channel::pair().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            let _ = Producer::setup(
                a,
                &RingOptions::new(4096).timeout(Duration::from_millis(300)),
            );
        });
        let r = PodConsumer::<u64>::setup(b, &opts);
        assert!(matches!(r, Err(Error::RingMismatch { .. })), "{r:?}");
    });
    common::assert_no_new_fds(&fds, "descriptors leaked");
    assert_eq!(memfd_maps(), maps, "mappings leaked");
}

#[test]
fn producer_validates_its_options_and_record_sizes() {
    let _serial = common::serial();
    let (a, _b) = Channel::pair().unwrap();
    assert!(matches!(
        Producer::setup(a, &RingOptions::new(1000)),
        Err(Error::InvalidCapacity { .. })
    ));
    let (a, b) = Channel::pair().unwrap();
    std::thread::scope(|s| {
        let h = s.spawn(move || Consumer::setup(b, &RingOptions::default()).unwrap());
        let mut tx = Producer::setup(a, &RingOptions::new(256)).unwrap();
        let mut rx = h.join().unwrap();
        assert_eq!(tx.max_record_len(), 120);
        assert!(matches!(
            tx.try_send(&[0; 121]),
            Err(Error::RecordTooLarge { len: 121, max: 120 })
        ));
        tx.try_send(&[5; 120]).unwrap();
        let mut v = Vec::new();
        rx.try_recv(&mut v).unwrap();
        assert_eq!(v, [5; 120]);
        assert!(matches!(rx.try_recv(&mut v), Err(Error::WouldBlock)));
        // A batch publishes once, on publish() or drop.
        let mut batch = tx.batch();
        batch.try_send(b"a").unwrap();
        batch.try_send(b"b").unwrap();
        assert!(
            matches!(rx.try_recv(&mut v), Err(Error::WouldBlock)),
            "not yet published"
        );
        batch.publish();
        rx.try_recv(&mut v).unwrap();
        assert_eq!(v, b"a");
        #[allow(unsafe_code)]
        // SAFETY: this producer is honest: it does not touch published records.
        let in_place = unsafe { rx.try_recv_in_place(|b| b.to_vec()) }.unwrap();
        assert_eq!(in_place, b"b");
    });
}
