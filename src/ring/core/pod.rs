//! The typed ring's engines: [`PodProducer`] and [`PodConsumer`] of `T` slots.

use std::marker::PhantomData;

use super::*;
use crate::shm::{SharedBytes, SharedBytesMut};

/// Producer state of a typed ring of `T` slots.
///
/// Invariants: `data` is `cap` `T`s, aligned for `T`; `cached_read <= published <= write
/// <= cached_read + cap`.
#[derive(Debug)]
pub(crate) struct PodProducer<'a, T> {
    data: SharedBytesMut<'a>,
    cap: u32,
    write: u32,
    cached_read: u32,
    pub(crate) words: Words<'a>,
    pub(crate) peer_parks: bool,
    pub(crate) counters: Counters,
    _t: PhantomData<T>,
}

impl<'a, T: bytemuck::Pod> PodProducer<'a, T> {
    /// The producer over `data`, `cap` slots of `T` (`None` if `cap` is not a valid
    /// capacity, `data` is not `cap` `T`s long, or not aligned for `T`).
    pub(crate) fn new(
        data: SharedBytesMut<'a>,
        cap: u32,
        words: Words<'a>,
        peer_parks: bool,
    ) -> Option<Self> {
        let fits = (cap as usize).checked_mul(std::mem::size_of::<T>()) == Some(data.len());
        if !valid_capacity(u64::from(cap)) || !fits || !data.as_ptr().cast::<T>().is_aligned() {
            return None;
        }
        Some(PodProducer {
            data,
            cap,
            write: 0,
            cached_read: 0,
            words,
            peer_parks,
            counters: Counters::default(),
            _t: PhantomData,
        })
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.cap
    }

    /// Free slots; refreshes the cached read index only if fewer than `want` are free.
    pub(crate) fn free(&mut self, want: u32) -> Result<Result<u32, Blocked>, Corrupt> {
        let free = self.cap - self.write.wrapping_sub(self.cached_read);
        if free >= want {
            return Ok(Ok(free));
        }
        let r = self.counters.load_peer_index(&self.words, self.write);
        check_read(self.words.published(), self.cached_read, r)?;
        self.cached_read = r;
        let free = self.cap - self.write.wrapping_sub(r);
        Ok(if free == 0 {
            self.counters.blocked += 1;
            Err(Blocked { seen: r })
        } else {
            Ok(free)
        })
    }

    /// Writes one item if the cached read index shows a free slot (no shared load).
    #[inline]
    pub(crate) fn push_cached(&mut self, item: T) -> bool {
        if self.write.wrapping_sub(self.cached_read) >= self.cap {
            return false;
        }
        self.put(item);
        true
    }

    /// Writes `item` into the slot at the write position (free: the caller checked) and
    /// advances the local write index.
    #[inline]
    fn put(&mut self, item: T) {
        let pos = self.write & (self.cap - 1);
        // In bounds: pos < cap. The consumer does not read a free slot.
        self.data
            .write(pos as usize * std::mem::size_of::<T>(), item);
        self.write = self.write.wrapping_add(1);
    }

    /// How many free slots follow the write position without crossing the end of the
    /// ring, at most `max` (by the cached read index).
    pub(crate) fn contiguous(&self, max: u32) -> u32 {
        let pos = self.write & (self.cap - 1);
        let free = self.cap - self.write.wrapping_sub(self.cached_read);
        max.min(free).min(self.cap - pos)
    }

    /// The `n` slots from the write position, to write in place (at most what
    /// [`contiguous`](Self::contiguous) returned; empty if more).
    pub(crate) fn slots_mut(&mut self, n: u32) -> &mut [T] {
        let size = std::mem::size_of::<T>();
        let pos = (self.write & (self.cap - 1)) as usize;
        self.data
            .range_mut(pos * size, n as usize * size)
            .and_then(|bytes| bytemuck::try_cast_slice_mut(bytes).ok())
            .unwrap_or_default()
    }

    /// Advances the local write index over `n` slots written in place (at most what
    /// [`contiguous`](Self::contiguous) returned).
    pub(crate) fn advance(&mut self, n: u32) {
        debug_assert!(n <= self.cap - self.write.wrapping_sub(self.cached_read));
        self.write = self.write.wrapping_add(n);
    }

    /// Writes `items` (at most the free slots) and advances the local write index.
    pub(crate) fn write(&mut self, items: &[T]) {
        for &item in items {
            self.put(item);
        }
    }

    /// Items written so far.
    pub(crate) fn units(&self) -> u64 {
        self.counters.moved(self.write)
    }
}

impl<'a, T: bytemuck::Pod> Engine<'a> for PodProducer<'a, T> {
    fn words(&self) -> &Words<'a> {
        &self.words
    }

    /// Publishes written items.
    #[inline]
    fn publish(&mut self) -> Wake {
        self.words.publish(self.write, self.peer_parks)
    }
}

/// Consumer state of a typed ring of `T` slots.
///
/// Invariants: `data` is `cap` `T`s, aligned for `T` (read only by copy);
/// `read <= cached_write <= read + cap`.
#[derive(Debug)]
pub(crate) struct PodConsumer<'a, T> {
    data: SharedBytes<'a>,
    cap: u32,
    read: u32,
    cached_write: u32,
    pub(crate) words: Words<'a>,
    pub(crate) peer_parks: bool,
    pub(crate) counters: Counters,
    _t: PhantomData<T>,
}

impl<'a, T: bytemuck::Pod> PodConsumer<'a, T> {
    /// The consumer over `data`, `cap` slots of `T` (`None` if `cap` is not a valid
    /// capacity, `data` is not `cap` `T`s long, or not aligned for `T`).
    pub(crate) fn new(
        data: SharedBytes<'a>,
        cap: u32,
        words: Words<'a>,
        peer_parks: bool,
    ) -> Option<Self> {
        let fits = (cap as usize).checked_mul(std::mem::size_of::<T>()) == Some(data.len());
        if !valid_capacity(u64::from(cap)) || !fits || !data.as_ptr().cast::<T>().is_aligned() {
            return None;
        }
        Some(PodConsumer {
            data,
            cap,
            read: 0,
            cached_write: 0,
            words,
            peer_parks,
            counters: Counters::default(),
            _t: PhantomData,
        })
    }

    /// Items available; refreshes the cached write index only if none are.
    pub(crate) fn available(&mut self) -> Result<Result<u32, Blocked>, Corrupt> {
        let avail = self.cached_write.wrapping_sub(self.read);
        if avail != 0 {
            return Ok(Ok(avail));
        }
        let w = self.counters.load_peer_index(&self.words, self.read);
        check_write(self.cap, self.read, self.cached_write, w)?;
        self.cached_write = w;
        let avail = w.wrapping_sub(self.read);
        Ok(if avail == 0 {
            self.counters.blocked += 1;
            Err(Blocked { seen: w })
        } else {
            Ok(avail)
        })
    }

    /// Takes one item if the cached write index shows one (no shared load).
    #[inline]
    pub(crate) fn pop_cached(&mut self) -> Option<T> {
        if self.cached_write == self.read {
            return None;
        }
        let pos = self.read & (self.cap - 1);
        // pos < cap, so the slot lies in `data` and is aligned for T: one volatile load.
        let item = self
            .data
            .read_aligned::<T>(pos as usize * std::mem::size_of::<T>())?;
        self.read = self.read.wrapping_add(1);
        Some(item)
    }

    /// Items consumed since the last publication.
    #[inline]
    pub(crate) fn unpublished(&self) -> u32 {
        self.read.wrapping_sub(self.words.published())
    }

    /// Copies `out.len()` items (at most the available ones) out and consumes them.
    pub(crate) fn read(&mut self, out: &mut [T]) {
        let mut done = 0;
        while done < out.len() {
            let pos = self.read & (self.cap - 1);
            let run = (out.len() - done).min((self.cap - pos) as usize);
            let dst = bytemuck::cast_slice_mut(&mut out[done..done + run]);
            // pos + run <= cap, inside `data`, so this cannot fail.
            if self
                .data
                .copy_out(pos as usize * std::mem::size_of::<T>(), dst)
                .is_err()
            {
                return;
            }
            done += run;
            self.read = self.read.wrapping_add(run as u32);
        }
    }

    /// Units (bytes with headers and padding, or items) consumed so far.
    pub(crate) fn units(&self) -> u64 {
        self.counters.moved(self.read)
    }
}

impl<'a, T: bytemuck::Pod> Engine<'a> for PodConsumer<'a, T> {
    fn words(&self) -> &Words<'a> {
        &self.words
    }

    /// Publishes the read index.
    #[inline]
    fn publish(&mut self) -> Wake {
        self.words.publish(self.read, self.peer_parks)
    }
}
