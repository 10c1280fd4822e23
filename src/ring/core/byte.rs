//! The byte ring's engines: [`ByteProducer`] and [`ByteConsumer`] of variable-length
//! records.

use super::*;
use crate::shm::{SharedBytes, SharedBytesMut};

/// Producer state of a byte ring.
///
/// Invariants: `data` is `cap` bytes; `read <= published <= write <= read + cap`
/// (wrapping), all multiples of 8.
#[derive(Debug)]
pub(crate) struct ByteProducer<'a> {
    data: SharedBytesMut<'a>,
    cap: u32,
    /// Position after the last committed record (published or not).
    write: u32,
    /// The consumer's read index as last loaded and validated.
    cached_read: u32,
    pub(crate) words: Words<'a>,
    pub(crate) peer_parks: bool,
    pub(crate) counters: Counters,
}

impl<'a> ByteProducer<'a> {
    /// The producer over `data`, whose length is its capacity (`None` if that is not a
    /// valid capacity).
    pub(crate) fn new(
        data: SharedBytesMut<'a>,
        words: Words<'a>,
        peer_parks: bool,
    ) -> Option<Self> {
        let cap = u32::try_from(data.len()).ok()?;
        if !valid_capacity(u64::from(cap)) {
            return None;
        }
        Some(ByteProducer {
            data,
            cap,
            write: 0,
            cached_read: 0,
            words,
            peer_parks,
            counters: Counters::default(),
        })
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.cap
    }

    /// Loads, validates and caches the consumer's read index.
    fn refresh_read(&mut self) -> Result<u32, Corrupt> {
        let r = self.counters.load_peer_index(&self.words, self.write);
        check_read(self.words.published(), self.cached_read, r)?;
        if r % 8 != 0 {
            return Err(Corrupt("read index not 8-aligned"));
        }
        self.cached_read = r;
        Ok(r)
    }

    /// Finds room for `len` bytes using only the cached read index (no shared load):
    /// the fast path of [`reserve`](Self::reserve). `len` must be at most
    /// `max_record_len(cap)`.
    #[inline]
    pub(crate) fn reserve_cached(&self, len: usize) -> Option<Placement> {
        debug_assert!(len <= max_record_len(self.cap));
        // len <= 2^30: cannot overflow.
        let span = ((len as u32 + 7) & !7) + RECORD_HEADER;
        let pos = self.write & (self.cap - 1);
        let used = self.write.wrapping_sub(self.cached_read);
        if span <= self.cap - pos && used + span <= self.cap {
            return Some(Placement {
                pad: 0,
                offset: pos,
                span,
            });
        }
        None
    }

    /// Finds room for `len` bytes. `Ok(Err(blocked))` if the ring is too full now.
    /// `len` must be at most `max_record_len(cap)`.
    pub(crate) fn reserve(&mut self, len: usize) -> Result<Result<Placement, Blocked>, Corrupt> {
        debug_assert!(len <= max_record_len(self.cap));
        let span = record_span(len).unwrap_or(u32::MAX);
        let free = self.cap - self.write.wrapping_sub(self.cached_read);
        if let Some(p) = place(self.cap, self.write, free, span) {
            return Ok(Ok(p));
        }
        let r = self.refresh_read()?;
        let free = self.cap - self.write.wrapping_sub(r);
        let placed = place(self.cap, self.write, free, span).ok_or(Blocked { seen: r });
        if placed.is_err() {
            self.counters.blocked += 1;
        }
        Ok(placed)
    }

    /// The `len` payload bytes of a reserved record, to write (`None` only if `p` did not
    /// come from [`reserve`](Self::reserve) for `len` bytes).
    #[inline]
    pub(crate) fn payload_mut(&mut self, p: Placement, len: usize) -> Option<&mut [u8]> {
        self.data
            .range_mut((p.offset + RECORD_HEADER) as usize, len)
    }

    /// Writes the headers of a reserved record of `len` bytes and advances the local
    /// write position; the record becomes visible at the next [`publish`](Self::publish).
    #[inline]
    pub(crate) fn commit(&mut self, p: Placement, len: usize) {
        self.pad(p);
        // In bounds: place() guarantees offset + span <= cap.
        self.data
            .write(p.offset as usize, record_header(len as u32).to_le());
        self.write = self.write.wrapping_add(p.pad + p.span);
    }

    /// Writes `record` into its reserved placement, header and payload through one
    /// bounds check, and advances the local write position: [`payload_mut`] and
    /// [`commit`] in one step, for a record copied in.
    ///
    /// [`payload_mut`]: Self::payload_mut
    /// [`commit`]: Self::commit
    #[inline]
    pub(crate) fn put(&mut self, p: Placement, record: &[u8]) {
        self.pad(p);
        let span = RECORD_HEADER as usize + record.len();
        // Always Some: place() guarantees offset + span <= cap.
        if let Some(bytes) = self.data.range_mut(p.offset as usize, span) {
            let (header, payload) = bytes.split_at_mut(RECORD_HEADER as usize);
            header.copy_from_slice(&record_header(record.len() as u32).to_le_bytes());
            payload.copy_from_slice(record);
        }
        self.write = self.write.wrapping_add(p.pad + p.span);
    }

    /// Writes the padding header a placement asks for, if any.
    #[inline]
    fn pad(&mut self, p: Placement) {
        if p.pad != 0 {
            // In bounds: padding (at least 8 bytes) reaches the end of the ring.
            let at = self.write & (self.cap - 1);
            self.data.write(at as usize, pad_header().to_le());
        }
    }

    /// Bytes committed so far (records with their headers, and padding).
    pub(crate) fn units(&self) -> u64 {
        self.counters.moved(self.write)
    }
}

impl<'a> Engine<'a> for ByteProducer<'a> {
    fn words(&self) -> &Words<'a> {
        &self.words
    }

    /// Publishes every committed record.
    #[inline]
    fn publish(&mut self) -> Wake {
        self.words.publish(self.write, self.peer_parks)
    }
}

/// Consumer state of a byte ring.
///
/// Invariants: `data` is `cap` bytes, 8-aligned (the producer may write any of it at any
/// time: it is only read by copy); `read <= cached_write <= read + cap` (wrapping).
#[derive(Debug)]
pub(crate) struct ByteConsumer<'a> {
    data: SharedBytes<'a>,
    cap: u32,
    read: u32,
    cached_write: u32,
    pub(crate) words: Words<'a>,
    pub(crate) peer_parks: bool,
    pub(crate) counters: Counters,
}

/// A validated record in the ring: payload at `offset`, `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) offset: u32,
    pub(crate) len: u32,
    span: u32,
}

impl<'a> ByteConsumer<'a> {
    /// The consumer over `data`, whose length is its capacity (`None` if that is not a
    /// valid capacity or `data` is not 8-aligned).
    pub(crate) fn new(data: SharedBytes<'a>, words: Words<'a>, peer_parks: bool) -> Option<Self> {
        let cap = u32::try_from(data.len()).ok()?;
        if !valid_capacity(u64::from(cap)) || data.as_ptr() as usize % 8 != 0 {
            return None;
        }
        Some(ByteConsumer {
            data,
            cap,
            read: 0,
            cached_write: 0,
            words,
            peer_parks,
            counters: Counters::default(),
        })
    }

    fn refresh_write(&mut self) -> Result<u32, Corrupt> {
        let w = self.counters.load_peer_index(&self.words, self.read);
        check_write(self.cap, self.read, self.cached_write, w)?;
        if w % 8 != 0 {
            return Err(Corrupt("write index not 8-aligned"));
        }
        self.cached_write = w;
        Ok(w)
    }

    /// The header word at the current read position, loaded once (one aligned 8-byte
    /// load), and that position.
    #[inline]
    fn header(&self) -> (u32, u64) {
        let pos = self.read & (self.cap - 1);
        // SAFETY: `pos < cap = data.len()`, and `pos` and `cap` are multiples of 8 (`read`
        // only ever advances by record spans and padding, multiples of 8, and `cap` is a
        // power of two >= 8), so `pos + 8 <= data.len()`; the base is 8-aligned (checked
        // in `new`), so `pos` is aligned for a u64.
        let word = unsafe { self.data.read_aligned_unchecked::<u64>(pos as usize) };
        (pos, u64::from_le(word))
    }

    /// Starts loading the cache line after the one that holds the header at `pos`, if
    /// the published data reaches into it. A record that straddles two lines (a 64-byte
    /// payload with its 8-byte header always does) then costs one cache miss rather
    /// than two in a row: without the hint the payload's loads are issued only once the
    /// header has arrived and been validated. Measured on the 64 B spin round trip
    /// (two rings, 2-vCPU AMD EPYC): about half the time.
    #[inline]
    fn prefetch_tail(&self, pos: u32, avail: u32) {
        let next_line = (pos | 63) + 1;
        if next_line - pos < avail {
            self.data.prefetch(next_line as usize);
        }
    }

    /// The next record if the cached write index shows one and its header is an
    /// ordinary record (no shared index load): the check of [`take_cached`]. `None` sends
    /// the caller to [`next`](Self::next), which loads the header again and handles
    /// padding, an empty ring and corruption (this load's value is not used).
    ///
    /// [`take_cached`]: Self::take_cached
    #[inline]
    pub(crate) fn next_cached(&self) -> Option<Record> {
        let avail = self.cached_write.wrapping_sub(self.read);
        if avail == 0 {
            return None;
        }
        let (pos, header) = self.header();
        // Kind KIND_RECORD (0) and a length within the ring's limit, in one compare.
        if header > max_record_len(self.cap) as u64 {
            return None;
        }
        let len = header as u32;
        // Cannot overflow: len <= cap / 2 - 8.
        let span = ((len + 7) & !7) + RECORD_HEADER;
        if span > avail || span > self.cap - pos {
            return None;
        }
        Some(Record {
            offset: pos + RECORD_HEADER,
            len,
            span,
        })
    }

    /// Takes the record [`next_cached`](Self::next_cached) finds into `out`; `false` if
    /// it finds none. The fast path of a receive.
    #[inline]
    pub(crate) fn take_cached(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(rec) = self.next_cached() else {
            return false;
        };
        // SAFETY: `next_cached` just made `rec`: its payload starts 8-aligned (a header
        // position plus 8, see `header`), and its length rounded up to 8 ends at
        // `pos + span <= cap = data.len()` (checked there).
        unsafe {
            self.data
                .copy_record_into_unchecked(rec.offset as usize, rec.len as usize, out)
        };
        self.consume(rec);
        true
    }

    /// The next record, validated; `Ok(Err(blocked))` if none is published.
    pub(crate) fn next(&mut self) -> Result<Result<Record, Blocked>, Corrupt> {
        loop {
            let mut avail = self.cached_write.wrapping_sub(self.read);
            if avail == 0 {
                let w = self.refresh_write()?;
                avail = w.wrapping_sub(self.read);
                if avail == 0 {
                    self.counters.blocked += 1;
                    return Ok(Err(Blocked { seen: w }));
                }
            }
            self.prefetch_tail(self.read & (self.cap - 1), avail);
            let (_, header) = self.header();
            match parse(self.cap, self.read, avail, header)? {
                Parsed::Pad(skip) => self.read = self.read.wrapping_add(skip),
                Parsed::Record { offset, len, span } => {
                    return Ok(Ok(Record {
                        offset: offset + RECORD_HEADER,
                        len,
                        span,
                    }))
                }
            }
        }
    }

    /// Copies the payload of `rec` (from [`next`](Self::next)) into `dst`
    /// (`dst.len() == rec.len`).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn copy_out(&self, rec: Record, dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), rec.len as usize);
        // Cannot fail: parse() checked that the record lies inside the ring.
        let _ = self.data.copy_out(rec.offset as usize, dst);
    }

    /// Replaces the contents of `out` by the payload of `rec`, without zero-filling it
    /// first. (`out` is left empty if `rec` did not come from [`next`](Self::next).)
    #[inline]
    pub(crate) fn copy_into(&self, rec: Record, out: &mut Vec<u8>) {
        self.data
            .copy_record_into(rec.offset as usize, rec.len as usize, out);
    }

    /// The payload of `rec` (from [`next`](Self::next)), in the shared memory.
    pub(crate) fn payload(&self, rec: Record) -> Option<SharedBytes<'a>> {
        self.data
            .subslice(rec.offset as usize, rec.len as usize)
            .ok()
    }

    /// Marks `rec` consumed (visible to the producer at the next publish).
    #[inline]
    pub(crate) fn consume(&mut self, rec: Record) {
        self.read = self.read.wrapping_add(rec.span);
    }

    /// Bytes consumed since the last publication.
    #[inline]
    pub(crate) fn unpublished(&self) -> u32 {
        self.read.wrapping_sub(self.words.published())
    }

    /// Units (bytes with headers and padding, or items) consumed so far.
    pub(crate) fn units(&self) -> u64 {
        self.counters.moved(self.read)
    }
}

impl<'a> Engine<'a> for ByteConsumer<'a> {
    fn words(&self) -> &Words<'a> {
        &self.words
    }

    /// Publishes the read index.
    #[inline]
    fn publish(&mut self) -> Wake {
        self.words.publish(self.read, self.peer_parks)
    }
}
