//! The typed ring: [`PodProducer`] and [`PodConsumer`] of `T` items in fixed slots.

use std::marker::PhantomData;
use std::time::Duration;

use super::core;
use super::layout::*;
use super::setup::*;
use super::wait::RingStats;
use crate::error::{Error, Result};
use crate::Channel;

/// The producer of a ring of `T` items in fixed slots (no per-item header).
#[derive(Debug)]
pub struct PodProducer<T: bytemuck::Pod> {
    pub(super) engine: core::PodProducer<'static, T>,
    pub(super) link: Link,
}

impl<T: bytemuck::Pod> PodProducer<T> {
    /// Creates a ring of `options.capacity()` items of `T` and hands it to the consumer
    /// at the other end of `channel` (which calls [`PodConsumer::setup`] with the same
    /// `T`).
    ///
    /// # Errors
    /// As [`Producer::setup`](super::Producer::setup).
    pub fn setup(channel: Channel, options: &RingOptions) -> Result<PodProducer<T>> {
        let (link, cap, peer_flags) = producer_setup(channel, options, pod_kind::<T>()?)?;
        PodProducer::from_link(link, cap, peer_flags)
    }

    /// The producer over a ring set up by `producer_setup` (or its async twin).
    pub(super) fn from_link(mut link: Link, cap: u32, peer_flags: u32) -> Result<PodProducer<T>> {
        let m = mapped(&mut link);
        // `cap` slots of T follow the page-aligned control page (align_of::<T>() <= 4096
        // checked in pod_kind): the memfd was made that size.
        let engine = core::PodProducer::new(m.own_data, cap, m.words, peer_flags & FLAG_PARKS != 0)
            .ok_or(Error::InvalidCapacity {
                capacity: u64::from(cap),
            })?;
        Ok(PodProducer { engine, link })
    }

    /// This side's counters: units moved, waits, parks, wakes, index loads, peer
    /// corruption ([`RingStats`]).
    pub fn stats(&self) -> RingStats {
        self.link.stats(self.engine.counters, self.engine.units())
    }

    /// Sends `item` (publishes it), if there is room now.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] if the ring is full; [`Error::PeerClosed`] if it has stayed
    /// full and the consumer is gone; [`Error::PeerCorrupt`].
    #[inline]
    pub fn try_send(&mut self, item: T) -> Result<()> {
        self.push_one(item, Patience::Never)
    }

    /// Sends `item` (publishes it), waiting up to `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::PeerClosed`], [`Error::PeerCorrupt`].
    #[inline]
    pub fn send_timeout(&mut self, item: T, timeout: Duration) -> Result<()> {
        self.push_one(item, Patience::For(timeout))
    }

    /// Pushes into a free slot the cached read index shows (the fast path: no shared
    /// load), or goes the slow way.
    #[inline]
    fn push_one(&mut self, item: T, wait: Patience) -> Result<()> {
        if self.link.ok() && self.engine.push_cached(item) {
            self.publish();
            return Ok(());
        }
        self.push_slow(item, wait)
    }

    #[cold]
    fn push_slow(&mut self, item: T, wait: Patience) -> Result<()> {
        self.drive(wait, |s| s.attempt_push(item))
    }

    /// Pushes and publishes `item` if there is room, or says what to wait for.
    #[inline]
    pub(super) fn attempt_push(&mut self, item: T) -> Result<Attempt<()>> {
        self.link.check_failed()?;
        loop {
            if self.engine.push_cached(item) {
                self.publish();
                return Ok(Ok(()));
            }
            let answer = self.engine.free(1);
            if let Err(blocked) = self.settle(answer)? {
                return Ok(Err(blocked));
            }
        }
    }

    /// Sends as many of `items` as fit now, with one publication; returns how many.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] if none fit (and `items` is not empty); [`Error::PeerCorrupt`].
    pub fn try_send_slice(&mut self, items: &[T]) -> Result<usize> {
        self.send_slice(items, Patience::Never)
    }

    fn send_slice(&mut self, items: &[T], wait: Patience) -> Result<usize> {
        self.drive(wait, |s| s.attempt_push_slice(items))
    }

    /// Pushes and publishes as many of `items` as fit (at least one), or says what to
    /// wait for.
    pub(super) fn attempt_push_slice(&mut self, items: &[T]) -> Result<Attempt<usize>> {
        self.link.check_failed()?;
        if items.is_empty() {
            return Ok(Ok(0));
        }
        let answer = self.engine.free(items.len().min(u32::MAX as usize) as u32);
        let free = match self.settle(answer)? {
            Ok(free) => free,
            Err(blocked) => return Ok(Err(blocked)),
        };
        let n = items.len().min(free as usize);
        self.engine.write(&items[..n]);
        self.publish();
        Ok(Ok(n))
    }

    /// Reserves up to `max` consecutive free slots, to be written in place and then
    /// [committed](PodReservation::commit) with one publication, if any slot is free
    /// now. The reservation may be shorter than `max`: it holds the free slots up to the
    /// end of the ring (the next reservation continues at the start).
    ///
    /// ```no_run
    /// # fn main() -> sealpipe::Result<()> {
    /// # let (a, _b) = sealpipe::Channel::pair()?;
    /// use sealpipe::ring::{PodProducer, RingOptions};
    /// let mut tx = PodProducer::<u64>::setup(a, &RingOptions::new(1024))?;
    /// let mut slots = tx.try_reserve_slice(32)?;
    /// let n = slots.len();
    /// for (i, slot) in slots.as_mut_slice().iter_mut().enumerate() {
    ///     *slot = i as u64; // written straight into the ring
    /// }
    /// slots.commit(n); // one index publication for all of them
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::WouldBlock`] if the ring is full (and `max` is not 0);
    /// [`Error::PeerClosed`] if it stays full and the consumer is gone;
    /// [`Error::PeerCorrupt`].
    pub fn try_reserve_slice(&mut self, max: usize) -> Result<PodReservation<'_, T>> {
        self.reserve_slice(max, Patience::Never)
    }

    /// [`try_reserve_slice`](Self::try_reserve_slice), waiting up to `timeout` for a
    /// free slot.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::PeerClosed`], [`Error::PeerCorrupt`].
    pub fn reserve_slice_timeout(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<PodReservation<'_, T>> {
        self.reserve_slice(max, Patience::For(timeout))
    }

    fn reserve_slice(&mut self, max: usize, wait: Patience) -> Result<PodReservation<'_, T>> {
        // At most the capacity: asking for more would reload the consumer's index on
        // every call.
        let want = max.min(self.engine.capacity() as usize) as u32;
        self.drive(wait, |s| {
            s.link.check_failed()?;
            if want == 0 {
                return Ok(Ok(()));
            }
            let answer = s.engine.free(want);
            Ok(s.settle(answer)?.map(|_| ()))
        })?;
        let len = self.engine.contiguous(want);
        Ok(PodReservation {
            producer: self,
            len: len as usize,
        })
    }
}

impl<T: bytemuck::Pod> Side for PodProducer<T> {
    type Engine = core::PodProducer<'static, T>;

    fn parts(&mut self) -> (&mut Link, &mut Self::Engine) {
        (&mut self.link, &mut self.engine)
    }
}

/// Consecutive free slots of a typed ring, written in place; see
/// [`PodProducer::try_reserve_slice`].
///
/// Dropping it without [`commit`](PodReservation::commit) abandons it.
#[derive(Debug)]
pub struct PodReservation<'a, T: bytemuck::Pod> {
    producer: &'a mut PodProducer<T>,
    len: usize,
}

impl<T: bytemuck::Pod> PodReservation<'_, T> {
    /// How many slots are reserved.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is reserved (only when asked for 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The reserved slots, in the ring (initially whatever the ring held there).
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // The consumer does not read free slots before they are published, and the
        // `&mut self` borrow keeps the producer from handing them out again while the
        // slice lives.
        self.producer.engine.slots_mut(self.len as u32)
    }

    /// Publishes the first `n` reserved slots (at most [`len`](Self::len); the rest are
    /// abandoned), with one index publication.
    pub fn commit(self, n: usize) {
        let p = self.producer;
        p.engine.advance(n.min(self.len) as u32);
        p.publish();
    }
}

/// The consumer of a ring of `T` items.
#[derive(Debug)]
pub struct PodConsumer<T: bytemuck::Pod> {
    pub(super) engine: core::PodConsumer<'static, T>,
    pub(super) link: Link,
    cap: u32,
    _t: PhantomData<T>,
}

impl<T: bytemuck::Pod> PodConsumer<T> {
    /// Receives a typed ring of `T` from the producer at the other end of `channel`.
    ///
    /// # Errors
    /// As [`Consumer::setup`](super::Consumer::setup); [`Error::RingMismatch`] if the producer's item size
    /// differs from `size_of::<T>()`.
    pub fn setup(channel: Channel, options: &RingOptions) -> Result<PodConsumer<T>> {
        let (link, cap, peer_flags) = consumer_setup(channel, options, pod_kind::<T>()?)?;
        PodConsumer::from_link(link, cap, peer_flags)
    }

    /// The consumer over a ring set up by `consumer_setup` (or its async twin).
    pub(super) fn from_link(mut link: Link, cap: u32, peer_flags: u32) -> Result<PodConsumer<T>> {
        let m = mapped(&mut link);
        let data = peer_data(&m.peer, cap as usize * std::mem::size_of::<T>())?;
        let engine = core::PodConsumer::new(data, cap, m.words, peer_flags & FLAG_PARKS != 0);
        let engine = engine.ok_or(Error::PeerCorrupt {
            what: "ring data area",
        })?;
        Ok(PodConsumer {
            engine,
            link,
            cap,
            _t: PhantomData,
        })
    }

    /// This side's counters: units moved, waits, parks, wakes, index loads, peer
    /// corruption ([`RingStats`]).
    pub fn stats(&self) -> RingStats {
        self.link.stats(self.engine.counters, self.engine.units())
    }

    /// Capacity in items.
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// Takes the next item, if one is published.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] if the ring is empty; [`Error::PeerClosed`] if it has stayed
    /// empty and the producer is gone; [`Error::PeerCorrupt`].
    #[inline]
    pub fn try_recv(&mut self) -> Result<T> {
        self.pop_one(Patience::Never)
    }

    /// Takes the next item, waiting up to `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::PeerClosed`] (once the producer is gone and the ring
    /// is empty), [`Error::PeerCorrupt`].
    #[inline]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T> {
        self.pop_one(Patience::For(timeout))
    }

    /// Fills the start of `out` with as many items as are published; returns how many.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] if the ring is empty (and `out` is not); [`Error::PeerCorrupt`].
    pub fn try_recv_slice(&mut self, out: &mut [T]) -> Result<usize> {
        self.recv_slice(out, Patience::Never)
    }

    /// Takes an item the cached write index shows (the fast path: no shared load), or
    /// goes the slow way.
    #[inline]
    fn pop_one(&mut self, wait: Patience) -> Result<T> {
        if self.link.ok() {
            if let Some(item) = self.engine.pop_cached() {
                self.consumed();
                return Ok(item);
            }
        }
        self.pop_slow(wait)
    }

    #[cold]
    fn pop_slow(&mut self, wait: Patience) -> Result<T> {
        self.drive(wait, |s| s.attempt_pop())
    }

    /// Takes the next item if one is published, or says what to wait for.
    #[inline]
    pub(super) fn attempt_pop(&mut self) -> Result<Attempt<T>> {
        self.link.check_failed()?;
        loop {
            if let Some(item) = self.engine.pop_cached() {
                self.consumed();
                return Ok(Ok(item));
            }
            let answer = self.engine.available();
            if let Err(blocked) = self.settle(answer)? {
                return Ok(Err(blocked));
            }
        }
    }

    fn recv_slice(&mut self, out: &mut [T], wait: Patience) -> Result<usize> {
        self.drive(wait, |s| s.attempt_pop_slice(out))
    }

    /// Fills the start of `out` with the published items (at least one), or says what
    /// to wait for.
    pub(super) fn attempt_pop_slice(&mut self, out: &mut [T]) -> Result<Attempt<usize>> {
        self.link.check_failed()?;
        if out.is_empty() {
            return Ok(Ok(0));
        }
        let answer = self.engine.available();
        let avail = match self.settle(answer)? {
            Ok(avail) => avail,
            Err(blocked) => return Ok(Err(blocked)),
        };
        let n = out.len().min(avail as usize);
        self.engine.read(&mut out[..n]);
        self.consumed();
        Ok(Ok(n))
    }

    /// Publishes the read index once a quarter of the ring has been consumed.
    #[inline]
    fn consumed(&mut self) {
        if self.engine.unpublished() >= self.cap / 4 {
            self.publish();
        }
    }
}

impl<T: bytemuck::Pod> Side for PodConsumer<T> {
    type Engine = core::PodConsumer<'static, T>;

    fn parts(&mut self) -> (&mut Link, &mut Self::Engine) {
        (&mut self.link, &mut self.engine)
    }
}
