//! A leased buffer ([`Lease`]) and a sent one on its way to consumers ([`Outgoing`]).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lock;
use super::memory::{Memfd, SlotState};
use super::producer::PoolShared;
use super::sender::PoolSender;
use crate::error::{Error, Result};
use crate::shm::SharedBytesMut;
use crate::transport::Wait;
use crate::wire::PoolBufferRef;

/// A buffer of a [`Pool`](super::Pool), writable by this process only: `&mut [u8]`
/// (through `Deref`), typed views, [`io::Write`]. [`send`](Lease::send) it, or drop it to
/// give it back unsent.
///
/// Its contents are whatever the buffer held last (this producer's earlier data, or zeros
/// for new memory): write what you send.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<PoolShared>,
    memfd: Arc<Memfd>,
    /// In state `Leased` while this lease lives (until [`Lease::into_outgoing`]).
    slot: usize,
    offset: usize,
    len: usize,
    /// The buffer: `len` bytes (as leased) at `offset` in `memfd`'s mapping.
    bytes: SharedBytesMut<'static>,
    cursor: usize,
}

impl Lease {
    /// A lease of `slot` (in state `Leased`), `len` bytes at `offset` in `memfd`.
    #[allow(unsafe_code)]
    pub(super) fn new(
        pool: Arc<PoolShared>,
        memfd: Arc<Memfd>,
        slot: usize,
        offset: usize,
        len: usize,
    ) -> Lease {
        // SAFETY: `offset..offset + len` lies inside the memfd's mapping (a slot of
        // `buffer_len >= len` bytes at `offset`), which lives as long as `memfd`, held next
        // to it (`'static` stands for that). The slot is in state `Leased` and this lease is
        // its only owner: no other lease, no consumer (the pool never sends a leased slot)
        // and no other process (the memfd is sealed FUTURE_WRITE; consumers map it
        // read-only) writes it, and nothing else in this process refers to it.
        let bytes = unsafe { SharedBytesMut::new(memfd.map.as_mut_ptr().add(offset), len) };
        Lease {
            pool,
            memfd,
            slot,
            offset,
            len,
            bytes,
            cursor: 0,
        }
    }

    /// Length in bytes (what was asked for; what is sent).
    #[allow(
        clippy::len_without_is_empty,
        reason = "a lease is never empty: `lease(0)` and `truncate(0)` are refused"
    )]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Sends `len` bytes instead of [`len`](Lease::len) (to shrink a lease once the data's
    /// size is known).
    ///
    /// # Errors
    /// [`Error::ZeroLength`] if `len` is 0, [`Error::OutOfBounds`] if it is larger than the
    /// lease.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroLength { what: "lease" });
        }
        if len > self.len {
            return Err(Error::OutOfBounds {
                offset: 0,
                len: len as u64,
                region_len: self.len as u64,
            });
        }
        self.len = len;
        self.cursor = self.cursor.min(len);
        Ok(())
    }

    /// The buffer as a mutable byte slice.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // Always Some: `len` only shrinks (truncate).
        self.bytes.range_mut(0, self.len).unwrap_or_default()
    }

    /// The buffer as `&mut [T]` (buffers are page-aligned).
    ///
    /// # Errors
    /// [`Error::Cast`] if the length is not a multiple of `size_of::<T>()`.
    pub fn as_mut_slice_of<T: bytemuck::Pod>(&mut self) -> Result<&mut [T]> {
        let bytes = self.as_mut_slice();
        let len = bytes.len();
        bytemuck::try_cast_slice_mut(bytes).map_err(|e| Error::cast::<T>(e, len))
    }

    /// Ends the writing: the buffer becomes an [`Outgoing`], which safe code can no longer
    /// write, to be sent to consumers one at a time, each with its own result.
    pub fn into_outgoing(self) -> Outgoing {
        {
            let mut st = lock(&self.pool.state);
            let s = &mut st.slots[self.slot];
            s.state = SlotState::Sent;
            s.holders = 1; // the `Outgoing` itself
            s.sent_at = Instant::now();
            st.held += 1;
        }
        // `self` is dropped here and sees the slot `Sent`: it leaves it alone.
        Outgoing {
            pool: Arc::clone(&self.pool),
            memfd: Arc::clone(&self.memfd),
            slot: self.slot,
            offset: self.offset,
            len: self.len,
        }
    }

    /// Sends the buffer to every consumer in `to` (a consumer listed twice gets it once),
    /// announcing its memfd first to a consumer that has not seen it; it returns to the
    /// pool when every consumer that got it has released it. A consumer whose socket is
    /// full does not hold up the others: they get the buffer first, then this waits for
    /// room in each full socket in turn. See [`send_timeout`](Lease::send_timeout).
    ///
    /// # Errors
    /// As [`send_timeout`](Lease::send_timeout), without [`Error::Timeout`].
    pub fn send(self, to: &[&PoolSender]) -> Result<()> {
        self.into_outgoing().fan_out(to, Wait::Forever)
    }

    /// [`send`](Lease::send), giving up on a consumer whose socket stays full past
    /// `timeout` (the deadline is for the whole call).
    ///
    /// # Errors
    /// The first error of any consumer: [`Error::PeerClosed`], [`Error::Timeout`], a fault
    /// recorded on that consumer since its last call ([`Error::BadRelease`], ...), or
    /// [`Error::LimitExceeded`] if a sender belongs to another pool. A consumer that fails
    /// does not get the buffer; every other one does, and the buffer returns to the pool
    /// once those have released it (at once if none got it). To learn which consumer
    /// failed, send an [`Outgoing`] to each ([`Lease::into_outgoing`]).
    pub fn send_timeout(self, to: &[&PoolSender], timeout: Duration) -> Result<()> {
        self.into_outgoing().fan_out(to, Wait::timeout(timeout))
    }
}

/// A leased buffer on its way to consumers ([`Lease::into_outgoing`]): safe code can no
/// longer write it. Send it to each consumer with [`send_to`](Outgoing::send_to),
/// [`send_to_timeout`](Outgoing::send_to_timeout) or
/// [`try_send_to`](Outgoing::try_send_to) (or, async,
/// `AsyncPool::send_to`), each call with its own result: a consumer whose socket is full can
/// be tried again later, and one that has gone does not stop the others.
///
/// The buffer returns to the pool once this handle is dropped **and** every consumer it
/// was actually sent to has released it: at once if it was sent to none. `Send + Sync`.
#[derive(Debug)]
pub struct Outgoing {
    pool: Arc<PoolShared>,
    memfd: Arc<Memfd>,
    /// In state `Sent` (or `Retired`); this handle is one of its holders.
    slot: usize,
    offset: usize,
    len: usize,
}

impl Outgoing {
    /// Length in bytes (what is sent).
    #[allow(
        clippy::len_without_is_empty,
        reason = "a lease is never empty: `lease(0)` and `truncate(0)` are refused"
    )]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Sends the buffer to `to`, announcing its memfd first if `to` has not seen it,
    /// waiting for room if its socket is full. Sending it to a consumer that still holds
    /// it (from an earlier call) does nothing.
    ///
    /// # Errors
    /// As [`send_to_timeout`](Outgoing::send_to_timeout), without [`Error::Timeout`].
    pub fn send_to(&self, to: &PoolSender) -> Result<()> {
        self.send_to_with(to, Wait::Forever)
    }

    /// [`send_to`](Outgoing::send_to), giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the socket stayed full (the consumer did not get the buffer;
    /// its memfd may have been announced, which is kept); [`Error::PeerClosed`] if the
    /// consumer has gone; a fault recorded on this consumer since its last call
    /// ([`Error::BadRelease`], ...: reported once, the buffer was not sent);
    /// [`Error::LimitExceeded`] if `to` belongs to another pool; [`Error::Io`].
    pub fn send_to_timeout(&self, to: &PoolSender, timeout: Duration) -> Result<()> {
        self.send_to_with(to, Wait::timeout(timeout))
    }

    /// [`send_to`](Outgoing::send_to) without waiting: [`Error::WouldBlock`] if `to`'s
    /// socket is full (it did not get the buffer; try again later).
    ///
    /// # Errors
    /// As [`send_to_timeout`](Outgoing::send_to_timeout), with [`Error::WouldBlock`]
    /// instead of [`Error::Timeout`].
    pub fn try_send_to(&self, to: &PoolSender) -> Result<()> {
        self.send_to_with(to, Wait::Never)
    }

    pub(super) fn send_to_with(&self, to: &PoolSender, wait: Wait) -> Result<()> {
        if !Arc::ptr_eq(&to.pool, &self.pool) {
            return Err(Error::LimitExceeded {
                what: "sender of another pool",
                got: 1,
                max: 0,
            });
        }
        let buffer = PoolBufferRef {
            memfd_id: self.memfd.id,
            offset: self.offset as u64,
            generation: 0,
        };
        to.link
            .send_buffer(&self.pool, &self.memfd, self.slot, buffer, self.len, wait)
    }

    /// The first pass of a fan-out: sends to each consumer in `to` without waiting. Returns
    /// the indices of the consumers whose socket was full if `keep_full` (allocates only
    /// then; otherwise a full socket is an error like any other), and the first error.
    pub(super) fn try_send_each(
        &self,
        to: &[&PoolSender],
        keep_full: bool,
    ) -> (Vec<usize>, Option<Error>) {
        let mut first_err = None;
        let mut full = Vec::new();
        for (i, tx) in to.iter().enumerate() {
            match self.send_to_with(tx, Wait::Never) {
                Ok(()) => {}
                Err(Error::WouldBlock) if keep_full => full.push(i),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        (full, first_err)
    }

    /// Sends to every consumer in `to`: first to each without waiting, then, as `wait`
    /// allows, to each whose socket was full. Returns the first error.
    pub(super) fn fan_out(self, to: &[&PoolSender], wait: Wait) -> Result<()> {
        let (full, mut first_err) = self.try_send_each(to, !matches!(wait, Wait::Never));
        for i in full {
            if let Err(e) = self.send_to_with(to[i], wait) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let freed = lock(&self.pool.state).unhold(self.slot);
        self.pool.notify(usize::from(freed));
    }
}

impl std::ops::Deref for Lease {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // Always Some: `len` only shrinks (truncate).
        self.bytes.range(0, self.len).unwrap_or_default()
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl io::Write for Lease {
    /// Copies into the lease at its cursor (starting at 0); `Ok(0)` once it is full.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let at = self.cursor;
        let n = buf.len().min(self.len - at);
        self.as_mut_slice()[at..at + n].copy_from_slice(&buf[..n]);
        self.cursor += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = lock(&self.pool.state);
        // `Sent` after `into_outgoing`: the `Outgoing` owns it now.
        if st.slots[self.slot].state == SlotState::Leased {
            st.free_slot(self.slot);
            drop(st);
            self.pool.notify(1);
        }
    }
}
