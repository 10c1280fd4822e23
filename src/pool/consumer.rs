//! The consumer side: [`PoolReceiver`], [`PoolBuffer`].

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock;
use crate::error::{Error, Result};
use crate::seals::Policy;
use crate::stats::ChannelStats;
use crate::transport::{Channel, Wait};
use crate::verify::{verify_or_return, RegionView};
use crate::wire::{self, PoolBufferRef, PoolMessage};

/// Default number of releases sent in one message.
const DEFAULT_RELEASE_BATCH: usize = 32;
/// Releases are sent once the queued buffers hold this many bytes, whatever their number:
/// a producer of large buffers has few of them, and should not wait for 32.
const RELEASE_BYTES: usize = 256 << 10;

/// Longest message a consumer accepts: an announcement or a notice (anything longer is
/// truncated by the kernel and rejected).
const RECV_BUF_LEN: usize = wire::HEADER_LEN + wire::POOL_NOTICE_LEN + 1;

/// The consumer's end of a pool channel: receives buffers of a producer's
/// [`Pool`](crate::pool::Pool) as [`PoolBuffer`]s. See the [module docs](crate::pool).
#[derive(Debug)]
pub struct PoolReceiver {
    shared: Arc<RxShared>,
    policy: Policy,
    /// Announced memfds, verified and mapped once: (id, view).
    memfds: Vec<(u32, Arc<RegionView>)>,
    /// Bytes of all announced memfds.
    bytes: u64,
    /// Generation of the last notice accepted (0 before the first).
    last_generation: u64,
    fds: Vec<OwnedFd>,
}

#[derive(Debug)]
struct RxShared {
    channel: Channel,
    releases: Mutex<Releases>,
}

#[derive(Debug)]
struct Releases {
    queue: Vec<PoolBufferRef>,
    /// Bytes of the buffers in `queue`.
    bytes: usize,
    batch: usize,
    /// The encoded message being sent (kept to reuse its memory).
    msg: Vec<u8>,
}

impl RxShared {
    /// Sends the queued releases with non-blocking `sendmsg`s; what does not fit the socket
    /// stays queued. A gone producer drops the queue (there is no one left to tell).
    fn flush(&self, r: &mut Releases) -> Result<()> {
        while !r.queue.is_empty() {
            let n = r.queue.len().min(wire::POOL_MAX_RELEASES);
            r.msg
                .resize(wire::HEADER_LEN + n * wire::POOL_RELEASE_ENTRY_LEN, 0);
            wire::encode_pool_release_header(&mut r.msg, n);
            for (i, b) in r.queue[..n].iter().enumerate() {
                let at = wire::HEADER_LEN + i * wire::POOL_RELEASE_ENTRY_LEN;
                wire::encode_pool_release_entry(&mut r.msg[at..], *b);
            }
            match self.channel.send_encoded(&r.msg, &[], Wait::Never) {
                Ok(()) => {
                    r.queue.drain(..n);
                }
                Err(Error::PeerClosed) => {
                    r.queue.clear();
                    r.bytes = 0;
                    return Err(Error::PeerClosed);
                }
                Err(e) => return Err(e),
            }
        }
        r.bytes = 0;
        Ok(())
    }

    fn release(&self, b: PoolBufferRef, len: usize) {
        let mut r = lock(&self.releases);
        r.queue.push(b);
        r.bytes = r.bytes.saturating_add(len);
        if r.queue.len() >= r.batch || r.bytes >= RELEASE_BYTES {
            // Never blocks: a full socket keeps the releases queued for the next flush.
            let _ = self.flush(&mut r);
        }
    }
}

impl PoolReceiver {
    /// Wraps the consumer's end of a channel whose producer [attached](crate::pool::Pool::attach)
    /// the other end to a pool. Every announced memfd is verified against `policy` (which
    /// must accept `FUTURE_WRITE` regions, as [`Policy::producer_writable`] does) and counted
    /// against its [`Policy::max_pool_memfds`] and [`Policy::max_pool_bytes`].
    ///
    /// # Errors
    /// None today; the `Result` leaves room for setup checks.
    pub fn new(channel: Channel, policy: &Policy) -> Result<PoolReceiver> {
        Ok(PoolReceiver {
            shared: Arc::new(RxShared {
                channel,
                releases: Mutex::new(Releases {
                    queue: Vec::with_capacity(DEFAULT_RELEASE_BATCH),
                    bytes: 0,
                    batch: DEFAULT_RELEASE_BATCH,
                    msg: Vec::with_capacity(
                        wire::HEADER_LEN + DEFAULT_RELEASE_BATCH * wire::POOL_RELEASE_ENTRY_LEN,
                    ),
                }),
            }),
            policy: *policy,
            memfds: Vec::new(),
            bytes: 0,
            last_generation: 0,
            fds: Vec::with_capacity(1),
        })
    }

    /// Releases are sent once `n` are queued (1 to 2730, what one release message holds; default 32)
    /// or the queued buffers hold 256 KiB, whichever comes first.
    pub fn set_release_batch(&mut self, n: usize) {
        let n = n.clamp(1, wire::POOL_MAX_RELEASES);
        let mut r = lock(&self.shared.releases);
        r.batch = n;
        let (q, m) = (r.queue.len(), r.msg.len());
        r.queue.reserve(n.saturating_sub(q));
        r.msg
            .reserve((wire::HEADER_LEN + n * wire::POOL_RELEASE_ENTRY_LEN).saturating_sub(m));
    }

    /// The channel underneath.
    pub fn channel(&self) -> &Channel {
        &self.shared.channel
    }

    /// Memfds this receiver holds (each verified and mapped once).
    pub fn memfds(&self) -> usize {
        self.memfds.len()
    }

    /// Sends the queued releases now, without waiting.
    ///
    /// # Errors
    /// [`Error::WouldBlock`] if the socket is full (the rest stay queued);
    /// [`Error::PeerClosed`] if the producer is gone (the queue is dropped); [`Error::Io`].
    pub fn flush_releases(&self) -> Result<()> {
        self.shared.flush(&mut lock(&self.shared.releases))
    }

    /// Receives the next buffer, waiting for it. Announced memfds on the way are verified
    /// and mapped. Before waiting, queued releases are flushed (without blocking).
    ///
    /// A bad message is rejected whole with a specific error (its descriptor closed) and
    /// the receiver stays usable.
    ///
    /// # Errors
    /// [`Error::PeerClosed`]; peer faults: [`Error::BadNotice`], [`Error::BadAnnounce`],
    /// [`Error::PolicyLimit`] (`"pool memfds"`, `"pool bytes"`), any verification error
    /// of an announced memfd, framing errors ([`Error::Malformed`], ...); [`Error::Map`],
    /// [`Error::Io`].
    pub fn recv(&mut self) -> Result<PoolBuffer> {
        self.recv_with(Wait::Forever)
    }

    /// [`recv`](PoolReceiver::recv), giving up with [`Error::Timeout`] after `timeout`.
    ///
    /// # Errors
    /// As [`recv`](PoolReceiver::recv), plus [`Error::Timeout`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<PoolBuffer> {
        self.recv_with(Wait::timeout(timeout))
    }

    /// [`recv`](PoolReceiver::recv) without waiting: [`Error::WouldBlock`] if no buffer is
    /// queued.
    ///
    /// # Errors
    /// As [`recv`](PoolReceiver::recv), plus [`Error::WouldBlock`].
    pub fn try_recv(&mut self) -> Result<PoolBuffer> {
        self.recv_with(Wait::Never)
    }

    pub(crate) fn recv_with(&mut self, wait: Wait) -> Result<PoolBuffer> {
        let mut w = Wait::Never;
        loop {
            match self.recv_one(w) {
                Ok(Some(buf)) => return Ok(buf),
                Ok(None) => {}
                Err(Error::WouldBlock) if matches!(w, Wait::Never) => {
                    // Nothing queued: send our releases before we sleep, so that a
                    // producer waiting for buffers gets them.
                    let _ = self.flush_releases();
                    if matches!(wait, Wait::Never) {
                        return Err(Error::WouldBlock);
                    }
                    w = wait;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A snapshot of this receiver's counters (those of its channel): announcements and
    /// notices received as messages (an announcement's memfd as a region and its bytes as
    /// mapped), messages rejected by reason, descriptors of rejected messages closed.
    pub fn stats(&self) -> ChannelStats {
        self.shared.channel.stats()
    }

    /// Receives one message: `Some` buffer for a notice, `None` for an announcement.
    fn recv_one(&mut self, wait: Wait) -> Result<Option<PoolBuffer>> {
        let r = self.recv_one_uncounted(wait);
        let counters = self.shared.channel.counters();
        match &r {
            Ok(Some(_)) => counters.received(0, 0),
            Ok(None) => {}
            Err(e) => counters.failed(e, self.shared.channel.peer_credentials()),
        }
        r
    }

    fn recv_one_uncounted(&mut self, wait: Wait) -> Result<Option<PoolBuffer>> {
        let mut buf = [0u8; RECV_BUF_LEN];
        let r = self.shared.channel.recv_pool(
            &mut buf,
            &mut self.fds,
            &[wire::KIND_POOL_ANNOUNCE, wire::KIND_POOL_NOTICE],
            wait,
        );
        let fd = self.fds.pop();
        let surplus = crate::closer::dispose_all(self.fds.drain(..));
        self.shared.channel.counters().disposed(surplus);
        match r? {
            PoolMessage::Announce { memfd_id, len } => {
                let Some(fd) = fd else {
                    return Err(Error::FdCountMismatch {
                        declared: 1,
                        received: 0,
                    });
                };
                // A refused announcement's descriptor is disposed of without blocking
                // (it may be anything, e.g. a lingering socket), and counted.
                if let Err((e, fd)) = self.announce(fd, memfd_id, len) {
                    let closed = crate::closer::dispose_all([fd]);
                    self.shared.channel.counters().disposed(closed);
                    return Err(e);
                }
                Ok(None)
            }
            PoolMessage::Notice { buffer, len } => self.notice(buffer, len).map(Some),
            PoolMessage::Release { .. } => Err(Error::Malformed {
                reason: "pool message of a kind this side never receives",
            }),
        }
    }

    /// Maps an announced memfd; hands the descriptor back if it is refused.
    fn announce(&mut self, fd: OwnedFd, memfd_id: u32, len: u64) -> Result<(), (Error, OwnedFd)> {
        if self.memfds.iter().any(|(id, _)| *id == memfd_id) {
            return Err((
                Error::BadAnnounce {
                    memfd_id,
                    reason: "memfd id announced before",
                },
                fd,
            ));
        }
        let max_memfds = self.policy.pool_memfds_limit();
        if self.memfds.len() >= max_memfds {
            return Err((
                Error::PolicyLimit {
                    what: "pool memfds",
                    got: self.memfds.len() as u64 + 1,
                    max: max_memfds as u64,
                },
                fd,
            ));
        }
        let max_bytes = self.policy.pool_bytes_limit();
        let bytes = self.bytes.saturating_add(len);
        if bytes > max_bytes {
            return Err((
                Error::PolicyLimit {
                    what: "pool bytes",
                    got: bytes,
                    max: max_bytes,
                },
                fd,
            ));
        }
        // The one verification path of every received region (seals, size, kind, committed
        // pages), then one read-only mapping for the receiver's life.
        let view = verify_or_return(fd, len, &self.policy, 0)?;
        self.memfds.push((memfd_id, Arc::new(view)));
        self.bytes = bytes;
        self.shared.channel.counters().received(1, len);
        Ok(())
    }

    fn notice(&mut self, buffer: PoolBufferRef, len: u64) -> Result<PoolBuffer> {
        let bad = |reason| Error::BadNotice {
            reason,
            memfd_id: buffer.memfd_id,
            offset: buffer.offset,
            len,
            generation: buffer.generation,
        };
        let view = self
            .memfds
            .iter()
            .find(|(id, _)| *id == buffer.memfd_id)
            .map(|(_, v)| v)
            .ok_or_else(|| bad("unknown memfd id"))?;
        if len == 0 {
            return Err(bad("empty buffer"));
        }
        match buffer.offset.checked_add(len) {
            Some(end) if end <= view.len() as u64 => {}
            _ => return Err(bad("range outside the memfd")),
        }
        if buffer.generation <= self.last_generation {
            return Err(bad(
                "generation not above the last one (reused or out of order)",
            ));
        }
        self.last_generation = buffer.generation;
        Ok(PoolBuffer {
            view: Arc::clone(view),
            shared: Arc::clone(&self.shared),
            buffer,
            offset: buffer.offset as usize, // fits: inside a mapped region
            len: len as usize,
        })
    }
}

impl Drop for PoolReceiver {
    fn drop(&mut self) {
        let _ = self.flush_releases();
    }
}

/// A buffer received from a pool: a read-only view into a producer-writable memfd.
///
/// Read it by copying ([`read_at`](PoolBuffer::read_at), [`read_value`](PoolBuffer::read_value),
/// [`to_vec`](PoolBuffer::to_vec)): each byte is read exactly once into your memory, where
/// you validate it. [`as_bytes_unchecked`](PoolBuffer::as_bytes_unchecked) reads in place,
/// for producers you trust. Dropping it releases the buffer to the producer (queued, never
/// blocking; see [`PoolReceiver::set_release_batch`]). `Send + Sync`.
#[derive(Debug)]
pub struct PoolBuffer {
    view: Arc<RegionView>,
    shared: Arc<RxShared>,
    buffer: PoolBufferRef,
    offset: usize,
    len: usize,
}

impl PoolBuffer {
    /// Length in bytes.
    #[allow(
        clippy::len_without_is_empty,
        reason = "a pool buffer is never empty: empty notices are refused"
    )]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The buffer's generation: its notice's sequence number on this channel.
    pub fn generation(&self) -> u64 {
        self.buffer.generation
    }

    /// Copies `out.len()` bytes starting at `offset` (within the buffer) into `out`, each
    /// byte read exactly once (the producer could be writing: validate what you read).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range does not fit the buffer.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        match offset.checked_add(out.len()) {
            Some(end) if end <= self.len => self.view.read_at(self.offset + offset, out),
            _ => Err(Error::OutOfBounds {
                offset: offset as u64,
                len: out.len() as u64,
                region_len: self.len as u64,
            }),
        }
    }

    /// Reads one `T` at byte `offset` by copy (any alignment).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if it does not fit the buffer.
    pub fn read_value<T: bytemuck::Pod>(&self, offset: usize) -> Result<T> {
        let mut v = T::zeroed();
        self.read_at(offset, bytemuck::bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Copies the whole buffer into a new `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        // In bounds: the notice's range was checked against the memfd.
        let _ = self.view.read_at(self.offset, &mut v);
        v
    }

    /// The buffer's bytes, in place.
    ///
    /// # Safety
    /// The caller must know that the producer does not write this buffer while the slice
    /// lives (a trusted producer using [`Pool`](crate::pool::Pool), which never writes a
    /// sent buffer before every consumer released it). Concurrent writes would be a data
    /// race: undefined behaviour, not merely stale data.
    #[allow(unsafe_code)]
    pub unsafe fn as_bytes_unchecked(&self) -> &[u8] {
        // SAFETY: forwarded to the caller (see above); the range was checked to lie inside
        // the mapping when the notice was accepted.
        let all = unsafe { self.view.as_bytes_unchecked() };
        &all[self.offset..self.offset + self.len]
    }
}

impl Drop for PoolBuffer {
    fn drop(&mut self) {
        self.shared.release(self.buffer, self.len);
    }
}
