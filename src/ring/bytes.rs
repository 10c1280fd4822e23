//! The byte ring: [`Producer`] and [`Consumer`] of variable-length records, their
//! reservations and batches.

use std::time::Duration;

use super::core::{self, Placement};
use super::layout::*;
use super::setup::*;
use super::wait::RingStats;
use crate::error::{Error, Result};
use crate::Channel;

/// The producer of a ring of variable-length byte records.
///
/// Each record costs its length rounded up to 8, plus 8 bytes of header; a record may
/// take at most half the ring ([`max_record_len`](Producer::max_record_len)).
#[derive(Debug)]
pub struct Producer {
    pub(super) engine: core::ByteProducer<'static>,
    pub(super) link: Link,
}

impl Producer {
    /// Creates a ring of `options.capacity()` bytes and hands it to the consumer at the
    /// other end of `channel` (which must call [`Consumer::setup`]).
    ///
    /// # Errors
    /// [`Error::InvalidCapacity`]; [`Error::Timeout`] if the consumer does not answer
    /// within `options`' timeout; [`Error::RingMismatch`] or any verification error if
    /// its control memfd is not what the protocol requires; errors creating the memfd.
    pub fn setup(channel: Channel, options: &RingOptions) -> Result<Producer> {
        let (link, cap, peer_flags) = producer_setup(channel, options, BYTES)?;
        Producer::from_link(link, cap, peer_flags)
    }

    /// The producer over a ring set up by `producer_setup` (or its async twin).
    pub(super) fn from_link(mut link: Link, cap: u32, peer_flags: u32) -> Result<Producer> {
        let m = mapped(&mut link);
        // `cap` bytes follow the control page: the memfd was made that size.
        let engine = core::ByteProducer::new(m.own_data, m.words, peer_flags & FLAG_PARKS != 0)
            .ok_or(Error::InvalidCapacity {
                capacity: u64::from(cap),
            })?;
        Ok(Producer { engine, link })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.engine.capacity() as usize
    }

    /// The longest record this ring carries: `capacity / 2 - 8`.
    pub fn max_record_len(&self) -> usize {
        core::max_record_len(self.engine.capacity())
    }

    /// This side's counters: units moved, waits, parks, wakes, index loads, peer
    /// corruption ([`RingStats`]).
    pub fn stats(&self) -> RingStats {
        self.link.stats(self.engine.counters, self.engine.units())
    }

    /// Copies `record` into the ring and publishes it, if there is room now.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] if the ring is full; [`Error::PeerClosed`] if it has stayed
    /// full and the consumer is gone; [`Error::RecordTooLarge`];
    /// [`Error::PeerCorrupt`] if the consumer's read index is impossible.
    #[inline]
    pub fn try_send(&mut self, record: &[u8]) -> Result<()> {
        self.send(record, Patience::Never, true)
    }

    /// Copies `record` into the ring and publishes it, waiting up to `timeout` for room.
    ///
    /// # Errors
    /// As [`try_send`](Producer::try_send), with [`Error::Timeout`] instead of
    /// [`Error::WouldBlock`], and [`Error::PeerClosed`] if the consumer is gone.
    #[inline]
    pub fn send_timeout(&mut self, record: &[u8], timeout: Duration) -> Result<()> {
        self.send(record, Patience::For(timeout), true)
    }

    /// Copies `record` into the ring and commits it; publishes it if `publish`.
    #[inline]
    fn send(&mut self, record: &[u8], wait: Patience, publish: bool) -> Result<()> {
        if self.send_cached(record, publish) {
            return Ok(());
        }
        self.send_slow(record, wait, publish)
    }

    /// The fast path of a send: only if the cached read index shows room (no shared
    /// load, no error). Returns whether the record was sent.
    #[inline]
    pub(super) fn send_cached(&mut self, record: &[u8], publish: bool) -> bool {
        if !self.link.ok() || record.len() > self.max_record_len() {
            return false;
        }
        match self.engine.reserve_cached(record.len()) {
            Some(place) => {
                self.put(place, record, publish);
                true
            }
            None => false,
        }
    }

    #[cold]
    fn send_slow(&mut self, record: &[u8], wait: Patience, publish: bool) -> Result<()> {
        let place = self.reserve_slow(record.len(), wait)?;
        self.put(place, record, publish);
        Ok(())
    }

    /// Copies `record` into its placement and commits it; publishes it if `publish`.
    #[inline]
    fn put(&mut self, place: Placement, record: &[u8], publish: bool) {
        self.engine.put(place, record);
        if publish {
            self.publish();
        }
    }

    /// Reserves room for a record of `len` bytes, to be written in place and then
    /// [committed](Reservation::commit), if there is room now.
    ///
    /// # Errors
    /// As [`try_send`](Producer::try_send).
    pub fn try_reserve(&mut self, len: usize) -> Result<Reservation<'_>> {
        let place = self.reserve(len, Patience::Never)?;
        Ok(Reservation::new(self, place, len))
    }

    /// [`try_reserve`](Producer::try_reserve), waiting up to `timeout` for room.
    ///
    /// # Errors
    /// As [`send_timeout`](Producer::send_timeout).
    pub fn reserve_timeout(&mut self, len: usize, timeout: Duration) -> Result<Reservation<'_>> {
        let place = self.reserve(len, Patience::For(timeout))?;
        Ok(Reservation::new(self, place, len))
    }

    /// Starts a batch: records committed through it become visible together, with one
    /// index publication, when the batch is [published](SendBatch::publish) or dropped.
    pub fn batch(&mut self) -> SendBatch<'_> {
        SendBatch { producer: self }
    }

    /// Room for `len` bytes: from the cached read index if it shows room (the fast
    /// path: no shared load), or by [`reserve_slow`](Self::reserve_slow).
    #[inline]
    fn reserve(&mut self, len: usize, wait: Patience) -> Result<Placement> {
        if self.link.ok() && len <= self.max_record_len() {
            if let Some(place) = self.engine.reserve_cached(len) {
                return Ok(place);
            }
        }
        self.reserve_slow(len, wait)
    }

    #[cold]
    fn reserve_slow(&mut self, len: usize, wait: Patience) -> Result<Placement> {
        self.drive(wait, |s| s.attempt_reserve(len))
    }

    /// Reserves room now, or says what to wait for.
    pub(super) fn attempt_reserve(&mut self, len: usize) -> Result<Attempt<Placement>> {
        self.link.check_failed()?;
        let max = self.max_record_len();
        if len > max {
            return Err(Error::RecordTooLarge { len, max });
        }
        let answer = self.engine.reserve(len);
        self.settle(answer)
    }
}

impl Side for Producer {
    type Engine = core::ByteProducer<'static>;

    fn parts(&mut self) -> (&mut Link, &mut Self::Engine) {
        (&mut self.link, &mut self.engine)
    }
}

/// Room for one record in the ring, written in place.
///
/// Dropping it without [`commit`](Reservation::commit) abandons the record.
#[derive(Debug)]
pub struct Reservation<'a> {
    producer: &'a mut Producer,
    place: Placement,
    len: usize,
    publish: bool,
}

impl Reservation<'_> {
    /// The record's bytes, in the ring (initially whatever the ring held there).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // Always Some: the placement was reserved for `len` bytes. The consumer does not
        // read it before it is published, and the `&mut self` borrow keeps the producer
        // from reserving it again while the slice lives.
        self.producer
            .engine
            .payload_mut(self.place, self.len)
            .unwrap_or_default()
    }

    /// A reservation published on commit.
    pub(super) fn new(producer: &mut Producer, place: Placement, len: usize) -> Reservation<'_> {
        Reservation {
            producer,
            place,
            len,
            publish: true,
        }
    }

    /// Copies `data` (of exactly the reserved length) into the record.
    #[cfg(feature = "tokio")]
    pub(super) fn write(mut self, data: &[u8]) -> Self {
        self.as_mut_slice().copy_from_slice(data);
        self
    }

    /// Finishes the record: visible to the consumer at once, or (in a [`SendBatch`]) when
    /// the batch is published.
    pub fn commit(self) {
        let p = self.producer;
        p.engine.commit(self.place, self.len);
        if self.publish {
            p.publish();
        }
    }
}

/// Records committed together and published with one index store; see
/// [`Producer::batch`]. Publishes on drop.
#[derive(Debug)]
pub struct SendBatch<'a> {
    producer: &'a mut Producer,
}

impl SendBatch<'_> {
    /// As [`Producer::try_send`], without publishing.
    ///
    /// # Errors
    /// As [`Producer::try_send`]. Before reporting a full ring, the records committed so
    /// far are published (the consumer could not free room otherwise).
    #[inline]
    pub fn try_send(&mut self, record: &[u8]) -> Result<()> {
        self.producer.send(record, Patience::Never, false)
    }

    /// As [`Producer::send_timeout`], without publishing (unless it has to wait).
    ///
    /// # Errors
    /// As [`Producer::send_timeout`].
    #[inline]
    pub fn send_timeout(&mut self, record: &[u8], timeout: Duration) -> Result<()> {
        self.producer.send(record, Patience::For(timeout), false)
    }

    /// As [`Producer::try_reserve`]; the committed record is published with the batch.
    ///
    /// # Errors
    /// As [`Producer::try_reserve`].
    pub fn try_reserve(&mut self, len: usize) -> Result<Reservation<'_>> {
        let place = self.producer.reserve(len, Patience::Never)?;
        Ok(Reservation {
            producer: self.producer,
            place,
            len,
            publish: false,
        })
    }

    /// As [`Producer::reserve_timeout`]; the committed record is published with the
    /// batch.
    ///
    /// # Errors
    /// As [`Producer::reserve_timeout`].
    pub fn reserve_timeout(&mut self, len: usize, timeout: Duration) -> Result<Reservation<'_>> {
        let place = self.producer.reserve(len, Patience::For(timeout))?;
        Ok(Reservation {
            producer: self.producer,
            place,
            len,
            publish: false,
        })
    }

    /// Publishes every record committed in the batch (also done on drop).
    pub fn publish(self) {}
}

impl Drop for SendBatch<'_> {
    fn drop(&mut self) {
        self.producer.publish();
    }
}

/// The consumer of a ring of variable-length byte records.
#[derive(Debug)]
pub struct Consumer {
    pub(super) engine: core::ByteConsumer<'static>,
    pub(super) link: Link,
    cap: u32,
}

impl Consumer {
    /// Receives a ring from the producer at the other end of `channel` (which calls
    /// [`Producer::setup`]), checks it, and answers with this side's control memfd.
    ///
    /// # Errors
    /// [`Error::Timeout`]; any verification error for the producer's memfd;
    /// [`Error::RingMismatch`] / [`Error::PeerCorrupt`] for a header this side cannot
    /// use (bad magic, version, kind, capacity, size or layout).
    pub fn setup(channel: Channel, options: &RingOptions) -> Result<Consumer> {
        let (link, cap, peer_flags) = consumer_setup(channel, options, BYTES)?;
        Consumer::from_link(link, cap, peer_flags)
    }

    /// The consumer over a ring set up by `consumer_setup` (or its async twin).
    pub(super) fn from_link(mut link: Link, cap: u32, peer_flags: u32) -> Result<Consumer> {
        let m = mapped(&mut link);
        let data = peer_data(&m.peer, cap as usize)?;
        let engine = core::ByteConsumer::new(data, m.words, peer_flags & FLAG_PARKS != 0);
        let engine = engine.ok_or(Error::PeerCorrupt {
            what: "ring data area",
        })?;
        Ok(Consumer { engine, link, cap })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// This side's counters: units moved, waits, parks, wakes, index loads, peer
    /// corruption ([`RingStats`]).
    pub fn stats(&self) -> RingStats {
        self.link.stats(self.engine.counters, self.engine.units())
    }

    /// Copies the next record into `out` (replacing its contents), if one is published.
    /// `out` keeps its allocation, so a reused buffer makes receiving allocation-free.
    /// Makes no system call while records flow; once the ring has been found empty
    /// by many calls in a row for 20 ms, it checks (one `poll`) whether the producer
    /// is still there.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] if the ring is empty; [`Error::PeerClosed`] if it has
    /// stayed empty and the producer is gone; [`Error::PeerCorrupt`] if the producer
    /// wrote an impossible index or record header.
    #[inline]
    pub fn try_recv(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.recv(out, Patience::Never, true)
    }

    /// [`try_recv`](Consumer::try_recv), waiting up to `timeout` for a record.
    ///
    /// # Errors
    /// As [`try_recv`](Consumer::try_recv), with [`Error::Timeout`] instead of
    /// [`Error::WouldBlock`], and [`Error::PeerClosed`] once the producer is gone and
    /// every record it published has been received.
    #[inline]
    pub fn recv_timeout(&mut self, out: &mut Vec<u8>, timeout: Duration) -> Result<()> {
        self.recv(out, Patience::For(timeout), true)
    }

    /// Starts a batch read: records taken through it are released to the producer
    /// (its read index published) together, once, when the batch is
    /// [finished](RecvBatch::finish) or dropped — or earlier if the ring runs empty,
    /// since the producer could not refill it otherwise.
    ///
    /// Outside a batch the read index is already published lazily (every quarter of
    /// the ring, and whenever the ring is found empty); a batch makes that one
    /// publication per batch.
    ///
    /// ```no_run
    /// # fn main() -> sealpipe::Result<()> {
    /// # let (a, b) = sealpipe::Channel::pair()?;
    /// use sealpipe::ring::{Consumer, RingOptions};
    /// let mut rx = Consumer::setup(b, &RingOptions::default())?;
    /// let mut record = Vec::new();
    /// let mut batch = rx.batch();
    /// while batch.try_recv(&mut record).is_ok() {
    ///     // use `record`
    /// }
    /// batch.finish(); // one publication of the read index
    /// # Ok(()) }
    /// ```
    pub fn batch(&mut self) -> RecvBatch<'_> {
        RecvBatch { consumer: self }
    }

    #[inline]
    fn recv(&mut self, out: &mut Vec<u8>, wait: Patience, publish: bool) -> Result<()> {
        if self.recv_cached(out, publish) {
            return Ok(());
        }
        self.recv_slow(out, wait, publish)
    }

    /// The fast path of a receive: only if the cached write index shows a record (no
    /// shared index load, no error). Returns whether a record was received.
    #[inline]
    pub(super) fn recv_cached(&mut self, out: &mut Vec<u8>, publish: bool) -> bool {
        if !self.link.ok() {
            return false;
        }
        if !self.engine.take_cached(out) {
            return false;
        }
        if publish && self.engine.unpublished() >= self.cap / 4 {
            self.publish();
        }
        true
    }

    #[cold]
    fn recv_slow(&mut self, out: &mut Vec<u8>, wait: Patience, publish: bool) -> Result<()> {
        let rec = self.next(wait)?;
        self.engine.copy_into(rec, out);
        self.engine.consume(rec);
        if publish {
            self.consumed();
        }
        Ok(())
    }

    /// Copies `rec` into `out` and consumes it.
    #[cfg(feature = "tokio")]
    pub(super) fn take(&mut self, rec: core::Record, out: &mut Vec<u8>) {
        self.engine.copy_into(rec, out);
        self.consume(rec);
    }

    /// Hands the next record to `f` in place, without copying, if one is published.
    ///
    /// # Errors
    /// As [`try_recv`](Consumer::try_recv).
    ///
    /// # Safety
    /// The producer must not write the record while `f` runs: only a trusted producer
    /// following this protocol guarantees that. (The record's position and length are
    /// validated as always, so a hostile producer cannot make this read out of bounds;
    /// but it can change the bytes under the slice, which is a data race: undefined
    /// behaviour.)
    pub unsafe fn try_recv_in_place<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let rec = self.next(Patience::Never)?;
        let payload = self.engine.payload(rec).ok_or(Error::PeerCorrupt {
            what: "ring record out of bounds",
        })?;
        // SAFETY: the caller guarantees that nobody writes the record while the slice
        // lives (`next` validated that it lies inside the mapping).
        let r = f(unsafe { payload.as_slice() });
        self.consume(rec);
        Ok(r)
    }

    fn next(&mut self, wait: Patience) -> Result<core::Record> {
        self.drive(wait, |s| s.attempt_next())
    }

    /// The next record if one is published, or what to wait for.
    pub(super) fn attempt_next(&mut self) -> Result<Attempt<core::Record>> {
        self.link.check_failed()?;
        let answer = self.engine.next();
        self.settle(answer)
    }

    fn consume(&mut self, rec: core::Record) {
        self.engine.consume(rec);
        self.consumed();
    }

    /// Publishes the read index once a quarter of the ring has been consumed.
    #[inline]
    fn consumed(&mut self) {
        if self.engine.unpublished() >= self.cap / 4 {
            self.publish();
        }
    }
}

impl Side for Consumer {
    type Engine = core::ByteConsumer<'static>;

    fn parts(&mut self) -> (&mut Link, &mut Self::Engine) {
        (&mut self.link, &mut self.engine)
    }
}

/// Records taken together and released to the producer with one publication of the
/// read index; see [`Consumer::batch`]. Publishes on drop.
#[derive(Debug)]
pub struct RecvBatch<'a> {
    consumer: &'a mut Consumer,
}

impl RecvBatch<'_> {
    /// As [`Consumer::try_recv`], without publishing the read index (unless the ring
    /// is found empty).
    ///
    /// # Errors
    /// As [`Consumer::try_recv`].
    #[inline]
    pub fn try_recv(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.consumer.recv(out, Patience::Never, false)
    }

    /// As [`Consumer::recv_timeout`], without publishing the read index (unless it has
    /// to wait).
    ///
    /// # Errors
    /// As [`Consumer::recv_timeout`].
    #[inline]
    pub fn recv_timeout(&mut self, out: &mut Vec<u8>, timeout: Duration) -> Result<()> {
        self.consumer.recv(out, Patience::For(timeout), false)
    }

    /// Releases every record taken in the batch to the producer (also done on drop).
    pub fn finish(self) {}
}

impl Drop for RecvBatch<'_> {
    fn drop(&mut self) {
        self.consumer.publish();
    }
}
