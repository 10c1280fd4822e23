use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::*;

#[test]
fn index_validation_rejects_impossible_values() {
    let cap = 64;
    assert!(check_write(cap, 0, 0, 64).is_ok());
    assert!(check_write(cap, 0, 0, 72).is_err(), "more than cap ahead");
    assert!(check_write(cap, 0, 16, 8).is_err(), "backwards");
    assert!(
        check_write(cap, u32::MAX - 7, u32::MAX - 7, 24).is_ok(),
        "wraps"
    );
    assert!(check_write(cap, 10, 10, 9).is_err(), "behind the reader");
    assert!(check_read(64, 0, 64).is_ok());
    assert!(check_read(64, 0, 72).is_err(), "past write");
    assert!(check_read(64, 16, 8).is_err(), "backwards");
    assert!(check_read(8, u32::MAX - 7, 8).is_ok(), "wraps");
    assert!(!valid_capacity(0) && !valid_capacity(48) && !valid_capacity(1 << 32));
    assert!(valid_capacity(16) && valid_capacity(1 << 31));
}

#[test]
fn headers_are_validated_against_capacity_and_published_data() {
    let cap = 128;
    assert_eq!(
        parse(cap, 0, 16, record_header(5)),
        Ok(Parsed::Record {
            offset: 0,
            len: 5,
            span: 16
        })
    );
    assert!(
        parse(cap, 0, 8, record_header(5)).is_err(),
        "longer than published"
    );
    assert!(
        parse(cap, 0, 128, record_header(57)).is_err(),
        "over half the ring"
    );
    assert!(
        parse(cap, 120, 64, record_header(8)).is_err(),
        "crosses the end"
    );
    assert_eq!(parse(cap, 120, 64, pad_header()), Ok(Parsed::Pad(8)));
    assert!(
        parse(cap, 120, 0, pad_header()).is_err(),
        "pad beyond published"
    );
    assert!(parse(cap, 0, 128, pad_header()).is_err(), "pad at start");
    assert!(parse(cap, 0, 128, 7 << 32).is_err(), "unknown kind");
    assert!(parse(cap, 0, 128, u64::MAX).is_err());
    assert_eq!(max_record_len(128), 56);
    assert_eq!(record_span(usize::MAX), None);
}

#[test]
fn placement_pads_to_the_end_when_a_record_does_not_fit() {
    assert_eq!(
        place(128, 96, 128, 48),
        Some(Placement {
            pad: 32,
            offset: 0,
            span: 48
        })
    );
    assert_eq!(place(128, 96, 64, 48), None);
    assert_eq!(
        place(128, 0, 128, 64),
        Some(Placement {
            pad: 0,
            offset: 0,
            span: 64
        })
    );
    // Any record of at most half the ring fits an empty ring at any position.
    for pos in (0..128).step_by(8) {
        assert!(place(128, pos, 128, 64).is_some(), "pos {pos}");
    }
}

#[test]
fn a_waiter_is_woken_only_if_it_waits_on_another_value() {
    let index = AtomicU32::new(5);
    let wait = AtomicU64::new(0);
    let mut woken = 0;
    let mut publish = |new, peer_parks| publish(&index, new, &wait, peer_parks, &mut woken);
    assert_eq!(publish(6, true), Wake::None, "nobody waits");
    wait.store(WAITING | 6, Ordering::Relaxed);
    assert_eq!(publish(6, true), Wake::None, "waiter already saw 6");
    assert_eq!(publish(7, true), Wake::Futex);
    assert_eq!(publish(8, true), Wake::None, "already woken for this park");
    wait.store(WAITING | 8, Ordering::Relaxed);
    assert_eq!(publish(9, true), Wake::Futex, "a new park is woken");
    wait.store(WAITING | SIGNAL | 9, Ordering::Relaxed);
    assert_eq!(publish(10, true), Wake::Signal);
    assert_eq!(publish(11, true), Wake::None, "already signalled");
    wait.store(SIGNAL | 6, Ordering::Relaxed);
    assert_eq!(publish(12, true), Wake::None, "not parked");
    wait.store(WAITING | SIGNAL | 9, Ordering::Relaxed);
    assert_eq!(
        publish(13, true),
        Wake::Signal,
        "another word was seen in between"
    );
    wait.store(WAITING | 13, Ordering::Relaxed);
    assert_eq!(publish(14, false), Wake::None, "peer never parks");
    index.store(8, Ordering::Relaxed);
    let own = AtomicU64::new(0);
    let moved = prepare_park(&own, &index, 7, false);
    assert!(!moved, "index moved: do not sleep");
    assert_eq!(own.load(Ordering::Relaxed), 0);
    assert!(prepare_park(&own, &index, 8, false));
    assert_eq!(own.load(Ordering::Relaxed), WAITING | 8);
    assert!(prepare_park(&own, &index, 8, true));
    assert_eq!(own.load(Ordering::Relaxed), WAITING | SIGNAL | 8);
}

/// A byte ring over ordinary memory: both engines in one test, with the control words in
/// boxes and the data in a Vec (this is what Miri runs).
struct Mem {
    /// In cells: the engines write it through a pointer taken from `&self`.
    data: Vec<std::cell::UnsafeCell<u64>>,
    p_index: Box<AtomicU32>,
    p_wait: Box<AtomicU64>,
    c_index: Box<AtomicU32>,
    c_wait: Box<AtomicU64>,
}

impl Mem {
    fn new(cap: usize) -> Mem {
        Mem {
            data: (0..cap / 8)
                .map(|_| std::cell::UnsafeCell::new(0))
                .collect(),
            p_index: Box::default(),
            p_wait: Box::default(),
            c_index: Box::default(),
            c_wait: Box::default(),
        }
    }
    fn engines(&self) -> (ByteProducer<'_>, ByteConsumer<'_>) {
        let cap = (self.data.len() * 8) as u32;
        let data =
            NonNull::new(std::cell::UnsafeCell::raw_get(self.data.as_ptr()).cast::<u8>()).unwrap();
        // SAFETY: the boxes and the Vec outlive the engines (borrowed from `self`); only the
        // producer writes `data`, through slices of ranges the consumer does not read; the
        // consumer reads by volatile copy.
        unsafe {
            let pw = Words::new(&self.p_index, &self.p_wait, &self.c_index, &self.c_wait);
            let cw = Words::new(&self.c_index, &self.c_wait, &self.p_index, &self.p_wait);
            (
                ByteProducer::new(
                    crate::shm::SharedBytesMut::new(data.as_ptr(), cap as usize),
                    pw,
                    true,
                )
                .unwrap(),
                ByteConsumer::new(
                    crate::shm::SharedBytes::new(data.as_ptr(), cap as usize),
                    cw,
                    true,
                )
                .unwrap(),
            )
        }
    }
}

/// Sends `msg` copied in (`put`) if its length is even, written in place (`payload_mut`
/// and `commit`) if odd, so that both run.
fn send(p: &mut ByteProducer, msg: &[u8]) -> bool {
    match p.reserve(msg.len()).unwrap() {
        Ok(place) => {
            if msg.len() % 2 == 0 {
                p.put(place, msg);
            } else {
                p.payload_mut(place, msg.len())
                    .unwrap()
                    .copy_from_slice(msg);
                p.commit(place, msg.len());
            }
            p.publish();
            true
        }
        Err(_) => false,
    }
}

/// Receives through the fast path (cached write index) when it finds a record, else
/// through `next` and the checked copy, so that both run (under Miri too).
fn recv(c: &mut ByteConsumer) -> Option<Vec<u8>> {
    let mut fast = Vec::new();
    if c.take_cached(&mut fast) {
        c.publish();
        return Some(fast);
    }
    let rec = c.next().unwrap().ok()?;
    let mut v = vec![0; rec.len as usize];
    c.copy_out(rec, &mut v);
    c.consume(rec);
    c.publish();
    Some(v)
}

#[test]
fn byte_ring_wraps_and_keeps_order() {
    let mem = Mem::new(256);
    let (mut p, mut c) = mem.engines();
    let mut next_in = 0u32;
    let mut next_out = 0u32;
    for round in 0..200usize {
        // Lengths from 0 to 120 (the limit for 256 bytes) force padding at every offset.
        let len = (round * 37) % 121;
        while send(&mut p, &vec![next_in as u8; len]) {
            next_in += 1;
            if next_in % 3 == 0 {
                break;
            }
        }
        while let Some(v) = recv(&mut c) {
            assert!(v.iter().all(|&b| b == next_out as u8), "record {next_out}");
            next_out += 1;
        }
    }
    assert_eq!(next_in, next_out);
    assert!(next_in > 200);
}

#[test]
fn consumer_rejects_a_forged_write_index_and_header() {
    let mem = Mem::new(128);
    let (mut p, mut c) = mem.engines();
    assert!(send(&mut p, b"hello"));
    mem.p_index.store(1000, Ordering::Relaxed);
    assert!(c.next().is_err(), "index past capacity");

    for forged in [record_header(100), 5 << 32, pad_header()] {
        let mut mem = Mem::new(128);
        mem.p_index.store(16, Ordering::Relaxed);
        *mem.data[0].get_mut() = forged.to_le();
        let (_p, mut c) = mem.engines();
        assert!(c.next().is_err(), "header {forged:#x}");
    }
}

#[test]
fn two_threads_stream_through_the_byte_ring() {
    let mem = Mem::new(512);
    let (mut p, mut c) = mem.engines();
    let n: u32 = if cfg!(miri) { 300 } else { 20_000 };
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..n {
                let len = (i % 50) as usize;
                let mut msg = vec![i as u8; len + 4];
                msg[..4].copy_from_slice(&i.to_le_bytes());
                while !send(&mut p, &msg) {
                    std::hint::spin_loop();
                }
            }
        });
        for i in 0..n {
            let v = loop {
                if let Some(v) = recv(&mut c) {
                    break v;
                }
                std::hint::spin_loop();
            };
            assert_eq!(v.len(), (i % 50) as usize + 4);
            assert_eq!(u32::from_le_bytes(v[..4].try_into().unwrap()), i);
            assert!(v[4..].iter().all(|&b| b == i as u8));
        }
    });
}

#[test]
fn pod_ring_moves_items_in_order_across_the_wrap() {
    let mut data = vec![0u64; 16];
    let (pi, pw, ci, cw) = (
        AtomicU32::new(0),
        AtomicU64::new(0),
        AtomicU32::new(0),
        AtomicU64::new(0),
    );
    let ptr = NonNull::new(data.as_mut_ptr()).unwrap();
    // SAFETY: locals outlive the engines; only the producer writes `data`.
    let (mut p, mut c) = unsafe {
        (
            PodProducer::<u64>::new(
                crate::shm::SharedBytesMut::new(ptr.as_ptr().cast(), 16 * 8),
                16,
                Words::new(&pi, &pw, &ci, &cw),
                false,
            )
            .unwrap(),
            PodConsumer::<u64>::new(
                crate::shm::SharedBytes::new(ptr.as_ptr().cast(), 16 * 8),
                16,
                Words::new(&ci, &cw, &pi, &pw),
                false,
            )
            .unwrap(),
        )
    };
    let mut next = 0u64;
    let mut expect = 0u64;
    for _ in 0..50 {
        let free = p.free(5).unwrap().map_or(0, |f| f.min(5));
        let items: Vec<u64> = (next..next + u64::from(free)).collect();
        p.write(&items);
        p.publish();
        next += u64::from(free);
        if let Ok(avail) = c.available().unwrap() {
            let mut out = vec![0u64; avail.min(3) as usize];
            c.read(&mut out);
            c.publish();
            for v in out {
                assert_eq!(v, expect);
                expect += 1;
            }
        }
    }
    assert!(expect > 50);
    // The single-item paths, which use only the cached peer index.
    while c.available().unwrap().is_ok() {
        let mut rest = [0u64; 1];
        c.read(&mut rest);
    }
    c.publish();
    p.free(16).unwrap().unwrap();
    for i in 0..16 {
        assert!(p.push_cached(1000 + i));
    }
    assert!(!p.push_cached(0), "ring full");
    p.publish();
    assert_eq!(c.pop_cached(), None, "not refreshed yet");
    c.available().unwrap().unwrap();
    for i in 0..16 {
        assert_eq!(c.pop_cached(), Some(1000 + i));
    }
    ci.store(99, Ordering::Relaxed);
    assert!(p.free(16).is_err(), "read index past write");
}
