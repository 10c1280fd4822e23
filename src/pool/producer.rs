//! The producer side: [`Pool`], [`Lease`], [`PoolSender`].

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;
use rustix::event::{epoll, eventfd, EventfdFlags, Timespec};
use rustix::io::Errno;

use super::lock;
use crate::error::{Error, Result};
use crate::region::{Region, SealedRegion};
use crate::stats::ChannelStats;
use crate::transport::{Channel, Wait};
use crate::wire::{self, PoolBufferRef, PoolMessage};

/// Buffers are multiples of this many bytes (and page-aligned within their memfd).
const GRANULE: usize = 4096;
/// Most messages one drain reads from one consumer: a consumer that sends releases
/// without end cannot keep a lease in its drain loop.
const MAX_DRAIN: usize = 64;

/// Limits and layout of a [`Pool`]. A builder: `PoolOptions::new().max_bytes(..)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    max_bytes: usize,
    max_memfds: usize,
    slab_len: usize,
    max_retired_bytes: usize,
}

impl PoolOptions {
    /// The defaults: 256 MiB, 64 memfds, 4 MiB slabs, 64 MiB may be retired.
    pub const fn new() -> PoolOptions {
        PoolOptions {
            max_bytes: 256 << 20,
            max_memfds: 64,
            slab_len: 4 << 20,
            max_retired_bytes: 64 << 20,
        }
    }

    /// Most bytes of memory in circulation (committed, not counting retired buffers).
    /// A lease larger than this fails with [`Error::LimitExceeded`].
    pub const fn max_bytes(mut self, n: usize) -> PoolOptions {
        self.max_bytes = n;
        self
    }

    /// Most memfds the pool makes (each is a descriptor and a mapping in every consumer
    /// that is sent one of its buffers; keep it within the consumers'
    /// [`Policy::max_pool_memfds`](crate::Policy::max_pool_memfds)).
    pub const fn max_memfds(mut self, n: usize) -> PoolOptions {
        self.max_memfds = n;
        self
    }

    /// Length of a memfd of small buffers: a class of buffers shorter than this gets
    /// memfds of `slab_len / class` buffers each (fewer if `max_bytes` is nearly spent).
    pub const fn slab_len(mut self, n: usize) -> PoolOptions {
        self.slab_len = n;
        self
    }

    /// Most bytes [`Pool::retire_held_longer_than`] may take out of circulation, over the
    /// pool's life.
    pub const fn max_retired_bytes(mut self, n: usize) -> PoolOptions {
        self.max_retired_bytes = n;
        self
    }
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions::new()
    }
}

/// The buffer length of the class that holds `len` bytes: whole 4 KiB granules, rounded up
/// to one of four steps per doubling (at most 25% slack beyond the first 16 KiB).
fn class_len(len: usize) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let granules = len.checked_add(GRANULE - 1)? / GRANULE;
    let granules = if granules <= 4 {
        granules
    } else {
        let k = usize::BITS - 1 - granules.leading_zeros();
        let step = 1usize << (k - 2);
        granules.checked_add(step - 1)? & !(step - 1)
    };
    granules.checked_mul(GRANULE)
}

/// One backing memfd: a slab of `buffers` buffers of `buffer_len` bytes.
#[derive(Debug)]
pub(super) struct Memfd {
    /// Index in `PoolState::memfds`, and the id announced on the wire.
    id: u32,
    region: SealedRegion,
    /// The producer's writable shared mapping, made before the seals.
    map: MmapRaw,
    buffer_len: usize,
    buffers: usize,
    /// Index in `PoolState::slots` of this memfd's first buffer.
    first_slot: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Leased,
    /// Sent to `holders` consumers that have not released it yet.
    Sent,
    /// Taken out of circulation for good.
    Retired,
}

#[derive(Debug)]
struct Slot {
    memfd: usize,
    offset: usize,
    state: SlotState,
    holders: u32,
    sent_at: Instant,
}

#[derive(Debug)]
struct Class {
    buffer_len: usize,
    free: Vec<usize>,
}

#[derive(Debug)]
struct PoolState {
    memfds: Vec<Arc<Memfd>>,
    slots: Vec<Slot>,
    classes: Vec<Class>,
    /// Bytes of all memfds.
    bytes: usize,
    /// Bytes of retired buffers (included in `bytes`).
    retired_bytes: usize,
    /// Buffers in state `Sent`.
    held: usize,
}

impl PoolState {
    /// Drops one holder of `slot`; frees it when none is left. Returns whether it was freed.
    fn unhold(&mut self, slot: usize) -> bool {
        let s = &mut self.slots[slot];
        s.holders = s.holders.saturating_sub(1);
        if s.holders > 0 {
            return false;
        }
        match s.state {
            SlotState::Sent => {
                self.held -= 1;
                self.free_slot(slot);
                true
            }
            _ => false,
        }
    }

    fn free_slot(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.state = SlotState::Free;
        let len = self.memfds[s.memfd].buffer_len;
        if let Some(class) = self.classes.iter_mut().find(|c| c.buffer_len == len) {
            class.free.push(slot);
        }
    }
}

#[derive(Debug)]
pub(super) struct PoolShared {
    options: PoolOptions,
    state: Mutex<PoolState>,
    links: Mutex<Vec<Arc<Link>>>,
    /// Every link's socket (and peer pidfd) and `wake`: what a waiting `lease` sleeps on.
    epoll: OwnedFd,
    /// A semaphore eventfd, written when a buffer is freed while someone waits.
    wake: OwnedFd,
    waiters: AtomicUsize,
    next_link: AtomicUsize,
}

impl PoolShared {
    /// Called after freeing buffers outside a waiting `lease`'s own drain.
    fn notify(&self, freed: usize) {
        if freed > 0 && self.waiters.load(Ordering::SeqCst) > 0 {
            let _ = rustix::io::write(&self.wake, &(freed as u64).to_ne_bytes());
        }
    }
}

/// A pool of sealed, reusable shared memory, carved into buffers (see the
/// [module docs](crate::pool)). Cheap to clone (a shared handle); `Send + Sync`.
///
/// Memory the pool has made is never given back while the pool lives, not even memory of
/// a size class no longer used: consumers keep every memfd mapped, and the protocol has no
/// message telling them to forget one. Drop the pool (and its senders) to free it.
#[derive(Debug, Clone)]
pub struct Pool {
    shared: Arc<PoolShared>,
}

impl Pool {
    /// An empty pool: memory is made on first need, within `options`' limits.
    ///
    /// # Errors
    /// [`Error::Io`] if the epoll or eventfd descriptor cannot be made.
    pub fn new(options: PoolOptions) -> Result<Pool> {
        let epoll =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| Error::io("epoll_create", e))?;
        let wake = eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK | EventfdFlags::SEMAPHORE,
        )
        .map_err(|e| Error::io("eventfd", e))?;
        epoll::add(
            &epoll,
            &wake,
            epoll::EventData::new_u64(u64::MAX),
            epoll::EventFlags::IN,
        )
        .map_err(|e| Error::io("epoll_ctl", e))?;
        Ok(Pool {
            shared: Arc::new(PoolShared {
                options,
                state: Mutex::new(PoolState {
                    memfds: Vec::new(),
                    slots: Vec::new(),
                    classes: Vec::new(),
                    bytes: 0,
                    retired_bytes: 0,
                    held: 0,
                }),
                links: Mutex::new(Vec::new()),
                epoll,
                wake,
                waiters: AtomicUsize::new(0),
                next_link: AtomicUsize::new(0),
            }),
        })
    }

    /// The pool's options.
    pub fn options(&self) -> PoolOptions {
        self.shared.options
    }

    /// Binds `channel` to this pool: its peer becomes a consumer that buffers can be sent
    /// to. The channel then carries only pool messages (the peer uses a
    /// [`PoolReceiver`](crate::pool::PoolReceiver)).
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot be added to the pool's epoll set.
    pub fn attach(&self, channel: Channel) -> Result<PoolSender> {
        // Releases carry no descriptors: refuse them (`SO_PASSRIGHTS`), so a consumer cannot
        // make this side close a descriptor whose close blocks.
        crate::closer::refuse_descriptors(&channel);
        let id = self.shared.next_link.fetch_add(1, Ordering::Relaxed);
        let data = epoll::EventData::new_u64(id as u64);
        epoll::add(&self.shared.epoll, &channel, data, epoll::EventFlags::IN)
            .map_err(|e| Error::io("epoll_ctl", e))?;
        if let Some(pidfd) = channel.peer_pidfd() {
            epoll::add(&self.shared.epoll, pidfd, data, epoll::EventFlags::IN)
                .map_err(|e| Error::io("epoll_ctl", e))?;
        }
        let link = Arc::new(Link {
            channel,
            id,
            state: Mutex::new(LinkState {
                announced: Vec::new(),
                outstanding: Vec::new(),
                next_generation: 1,
                buf: vec![0u8; wire::POOL_MAX_MESSAGE_LEN + 1].into_boxed_slice(),
                fault: None,
                closed: false,
            }),
        });
        lock(&self.shared.links).push(Arc::clone(&link));
        Ok(PoolSender {
            pool: Arc::clone(&self.shared),
            link,
        })
    }

    /// A writable buffer of at least `len` bytes, waiting for one to be released if the
    /// pool is at its limits. See [`lease_timeout`](Pool::lease_timeout).
    ///
    /// # Errors
    /// As [`lease_timeout`](Pool::lease_timeout), except for [`Error::PoolExhausted`].
    pub fn lease(&self, len: usize) -> Result<Lease> {
        self.lease_with(len, Wait::Forever)
    }

    /// A writable buffer of at least `len` bytes (exactly `len` are sent): a free buffer
    /// of its class, else one released by consumers (read here, see the
    /// [module docs](crate::pool#producer)), else one in a new memfd if the limits allow,
    /// else waits for a release until `timeout`.
    ///
    /// # Errors
    /// [`Error::PoolExhausted`] at the deadline (back-pressure: consumers hold every
    /// buffer); [`Error::ZeroLength`] if `len` is 0; [`Error::LimitExceeded`] if it is more
    /// than [`PoolOptions::max_bytes`]; [`Error::OutOfMemory`] or [`Error::Io`] if a new memfd
    /// cannot be made.
    pub fn lease_timeout(&self, len: usize, timeout: Duration) -> Result<Lease> {
        self.lease_with(len, Wait::timeout(timeout))
    }

    /// [`lease`](Pool::lease) without waiting: [`Error::PoolExhausted`] at once if no
    /// buffer is free, none was released and no memory can be added.
    ///
    /// # Errors
    /// As [`lease_timeout`](Pool::lease_timeout).
    pub fn try_lease(&self, len: usize) -> Result<Lease> {
        self.lease_with(len, Wait::Never)
    }

    fn lease_with(&self, len: usize, wait: Wait) -> Result<Lease> {
        if len == 0 {
            return Err(Error::ZeroLength { what: "lease" });
        }
        let class = match class_len(len) {
            Some(c) if c <= self.shared.options.max_bytes && c <= isize::MAX as usize => c,
            _ => {
                return Err(Error::LimitExceeded {
                    what: "lease length",
                    got: len,
                    max: self.shared.options.max_bytes,
                })
            }
        };
        loop {
            if let Some(lease) = self.take_free(class, len) {
                return Ok(lease);
            }
            self.drain_releases();
            if let Some(lease) = self.take_free(class, len) {
                return Ok(lease);
            }
            if let Some(lease) = self.grow(class, len)? {
                return Ok(lease);
            }
            self.wait_for_release(class, len, wait)?;
        }
    }

    fn take_free(&self, class: usize, len: usize) -> Option<Lease> {
        let mut st = lock(&self.shared.state);
        let slot = st
            .classes
            .iter_mut()
            .find(|c| c.buffer_len == class)?
            .free
            .pop()?;
        st.slots[slot].state = SlotState::Leased;
        let memfd = Arc::clone(&st.memfds[st.slots[slot].memfd]);
        let offset = st.slots[slot].offset;
        Some(Lease {
            pool: Arc::clone(&self.shared),
            memfd,
            slot,
            offset,
            len,
            cursor: 0,
        })
    }

    /// Makes a new memfd for `class` if the limits allow, and leases its first buffer.
    fn grow(&self, class: usize, len: usize) -> Result<Option<Lease>> {
        let opts = self.shared.options;
        let mut st = lock(&self.shared.state);
        let live = st.bytes - st.retired_bytes;
        let room = opts.max_bytes.saturating_sub(live) / class;
        let buffers = (opts.slab_len / class).max(1).min(room);
        if buffers == 0
            || st.memfds.len() >= opts.max_memfds
            || st.memfds.len() >= u32::MAX as usize
        {
            return Ok(None);
        }
        let memfd_len = buffers * class;
        let (map, region) = Region::new(memfd_len)?
            .seal_producer_writable()?
            .into_parts();
        let id = st.memfds.len();
        let first_slot = st.slots.len();
        st.memfds.push(Arc::new(Memfd {
            id: id as u32,
            region,
            map: MmapRaw::from(map),
            buffer_len: class,
            buffers,
            first_slot,
        }));
        st.bytes += memfd_len;
        let now = Instant::now();
        for i in 0..buffers {
            st.slots.push(Slot {
                memfd: id,
                offset: i * class,
                state: SlotState::Free,
                holders: 0,
                sent_at: now,
            });
        }
        let class_index = match st.classes.iter().position(|c| c.buffer_len == class) {
            Some(i) => i,
            None => {
                st.classes.push(Class {
                    buffer_len: class,
                    free: Vec::new(),
                });
                st.classes.len() - 1
            }
        };
        // Lease the first buffer; the rest are free (highest first, so the lowest go first).
        st.classes[class_index]
            .free
            .extend((first_slot + 1..first_slot + buffers).rev());
        st.slots[first_slot].state = SlotState::Leased;
        let memfd = Arc::clone(&st.memfds[id]);
        drop(st);
        self.shared.notify(buffers - 1);
        Ok(Some(Lease {
            pool: Arc::clone(&self.shared),
            memfd,
            slot: first_slot,
            offset: 0,
            len,
            cursor: 0,
        }))
    }

    /// Reads the releases queued on every consumer's channel (without waiting).
    fn drain_releases(&self) {
        let links = lock(&self.shared.links);
        for link in links.iter() {
            // A link busy in another thread (sending, or draining) is skipped.
            if let Ok(mut st) = link.state.try_lock() {
                link.drain(&self.shared, &mut st);
            }
        }
    }

    /// Sleeps until a consumer's channel is readable, a buffer is freed elsewhere, or the
    /// deadline passes.
    fn wait_for_release(&self, class: usize, len: usize, wait: Wait) -> Result<()> {
        let exhausted = || Error::PoolExhausted {
            len,
            held: lock(&self.shared.state).held,
        };
        let timeout = match wait {
            Wait::Never => return Err(exhausted()),
            Wait::Forever => None,
            Wait::Until(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(exhausted());
                }
                Some(Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                }))
            }
        };
        self.shared.waiters.fetch_add(1, Ordering::SeqCst);
        // A buffer freed between our last look and the increment above did not write
        // `wake`: look once more before sleeping.
        let freed = lock(&self.shared.state)
            .classes
            .iter()
            .any(|c| c.buffer_len == class && !c.free.is_empty());
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); 8];
        let r = if freed {
            Ok(())
        } else {
            match epoll::wait(&self.shared.epoll, &mut events[..], timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => Ok(()),
                Err(e) => Err(Error::io("epoll_wait", e)),
            }
        };
        self.shared.waiters.fetch_sub(1, Ordering::SeqCst);
        // Consume one wake-up, if there is one (a semaphore: one per freed buffer).
        let mut word = [0u8; 8];
        let _ = rustix::io::read(&self.shared.wake, &mut word);
        r
    }

    /// Takes every buffer that has been held by a consumer for longer than `age` out of
    /// circulation: it is never leased again (a consumer may still be reading it), its
    /// consumers' later releases of it are [`Error::BadRelease`], and its bytes count
    /// against [`PoolOptions::max_retired_bytes`] and no longer against
    /// [`PoolOptions::max_bytes`], so the pool can make new memory in its place. Returns
    /// how many buffers were retired.
    ///
    /// # Errors
    /// [`Error::LimitExceeded`] (`"retired bytes"`) if a buffer would exceed the retirement
    /// budget; the buffers retired before it stay retired.
    pub fn retire_held_longer_than(&self, age: Duration) -> Result<usize> {
        let links = lock(&self.shared.links);
        let mut link_states: Vec<_> = links.iter().map(|l| lock(&l.state)).collect();
        let mut st = lock(&self.shared.state);
        let now = Instant::now();
        let mut retired = 0;
        for slot in 0..st.slots.len() {
            let s = &st.slots[slot];
            if s.state != SlotState::Sent || now.saturating_duration_since(s.sent_at) <= age {
                continue;
            }
            let len = st.memfds[s.memfd].buffer_len;
            let over = st.retired_bytes.saturating_add(len);
            if over > self.shared.options.max_retired_bytes {
                return Err(Error::LimitExceeded {
                    what: "retired bytes",
                    got: over,
                    max: self.shared.options.max_retired_bytes,
                });
            }
            for ls in link_states.iter_mut() {
                if let Some(g) = ls.outstanding.get_mut(slot) {
                    *g = 0;
                }
            }
            let s = &mut st.slots[slot];
            s.state = SlotState::Retired;
            s.holders = 0;
            st.held -= 1;
            st.retired_bytes += len;
            retired += 1;
        }
        Ok(retired)
    }

    /// The epoll descriptor a waiting lease sleeps on (for the async pool).
    #[cfg(feature = "tokio")]
    pub(super) fn epoll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shared.epoll.as_fd()
    }

    /// Registers a waiter until the guard is dropped: buffers freed meanwhile write the
    /// wake-up eventfd.
    #[cfg(feature = "tokio")]
    pub(super) fn waiting(&self) -> Waiting<'_> {
        self.shared.waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(&self.shared)
    }

    /// Consumes one wake-up token, if there is one.
    #[cfg(feature = "tokio")]
    pub(super) fn take_wake_token(&self) {
        let mut word = [0u8; 8];
        let _ = rustix::io::read(&self.shared.wake, &mut word);
    }

    /// Counters of the pool, for monitoring and tests.
    pub fn stats(&self) -> PoolStats {
        let st = lock(&self.shared.state);
        PoolStats {
            memfds: st.memfds.len(),
            bytes: st.bytes,
            held: st.held,
            free: st.classes.iter().map(|c| c.free.len()).sum(),
            retired_bytes: st.retired_bytes,
        }
    }
}

/// A registered waiter (see [`Pool::waiting`]).
#[cfg(feature = "tokio")]
pub(super) struct Waiting<'a>(&'a PoolShared);

#[cfg(feature = "tokio")]
impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A snapshot of a [`Pool`]'s counters ([`Pool::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Memfds made.
    pub memfds: usize,
    /// Bytes of all memfds (committed memory), retired buffers included.
    pub bytes: usize,
    /// Buffers sent and not yet released by every consumer.
    pub held: usize,
    /// Buffers free to lease.
    pub free: usize,
    /// Bytes of retired buffers.
    pub retired_bytes: usize,
}

/// A buffer of a [`Pool`], writable by this process only: `&mut [u8]` (through `Deref`),
/// typed views, [`io::Write`]. [`send`](Lease::send) it, or drop it to give it back unsent.
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
    cursor: usize,
}

impl Lease {
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
    #[allow(unsafe_code)]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `offset..offset + len` lies inside the memfd's mapping (a slot of
        // `buffer_len >= len` bytes at `offset`), which lives as long as `self.memfd`. The
        // slot is in state `Leased` and this lease is its only owner: no other lease, no
        // consumer (the pool never sends a leased slot) and no other process (the memfd is
        // sealed FUTURE_WRITE; consumers map it read-only) writes it while the borrow of
        // `self` lasts.
        unsafe {
            std::slice::from_raw_parts_mut(self.memfd.map.as_mut_ptr().add(self.offset), self.len)
        }
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

    /// Sends to every consumer in `to`: first to each without waiting, then, as `wait`
    /// allows, to each whose socket was full. Returns the first error.
    pub(super) fn fan_out(self, to: &[&PoolSender], wait: Wait) -> Result<()> {
        let mut first_err = None;
        // Indices of consumers whose socket was full (allocates only then).
        let mut full = Vec::new();
        for (i, tx) in to.iter().enumerate() {
            match self.send_to_with(tx, Wait::Never) {
                Ok(()) => {}
                Err(Error::WouldBlock) if !matches!(wait, Wait::Never) => full.push(i),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
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
    #[allow(unsafe_code)]
    fn deref(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`: the range is mapped and only this lease writes it,
        // and it cannot while this shared borrow lives.
        unsafe { std::slice::from_raw_parts(self.memfd.map.as_ptr().add(self.offset), self.len) }
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

/// A consumer of a [`Pool`]: the producer's end of one channel bound to the pool
/// ([`Pool::attach`]). Pass it to [`Lease::send`]. `Send + Sync`.
///
/// Dropping it closes the channel; buffers the consumer still held are never reused (it
/// can no longer say it is done with them) and count as retired.
#[derive(Debug)]
pub struct PoolSender {
    pool: Arc<PoolShared>,
    link: Arc<Link>,
}

impl PoolSender {
    /// A number identifying this consumer within its pool (in [`Error::BadRelease`]).
    pub fn id(&self) -> usize {
        self.link.id
    }

    /// A snapshot of this consumer's counters (those of its channel): release messages
    /// received, and releases or messages refused by reason ([`Error::BadRelease`], ...).
    pub fn stats(&self) -> ChannelStats {
        self.link.channel.stats()
    }

    /// The channel underneath.
    pub fn channel(&self) -> &Channel {
        &self.link.channel
    }

    /// Reads the releases this consumer has sent (without waiting) and returns how many
    /// buffers it released; reports a fault recorded since the last call.
    ///
    /// # Errors
    /// [`Error::BadRelease`] and other peer faults (the valid entries were applied);
    /// [`Error::PeerClosed`] once the consumer has gone and there is no release left to
    /// report (every buffer it held was freed).
    pub fn poll_releases(&self) -> Result<usize> {
        let mut st = lock(&self.link.state);
        let n = self.link.drain(&self.pool, &mut st);
        if let Some(e) = st.fault.take() {
            return Err(e);
        }
        if st.closed && n == 0 {
            return Err(Error::PeerClosed);
        }
        Ok(n)
    }

    /// Buffers this consumer holds (sent, not released).
    pub fn held(&self) -> usize {
        lock(&self.link.state)
            .outstanding
            .iter()
            .filter(|g| **g != 0)
            .count()
    }
}

impl Drop for PoolSender {
    fn drop(&mut self) {
        let mut links = lock(&self.pool.links);
        links.retain(|l| !Arc::ptr_eq(l, &self.link));
        drop(links);
        let _ = epoll::delete(&self.pool.epoll, &self.link.channel);
        if let Some(pidfd) = self.link.channel.peer_pidfd() {
            let _ = epoll::delete(&self.pool.epoll, pidfd);
        }
        let ls = lock(&self.link.state);
        if ls.closed {
            return;
        }
        let mut st = lock(&self.pool.state);
        for (slot, g) in ls.outstanding.iter().enumerate() {
            if *g == 0 {
                continue;
            }
            let s = &mut st.slots[slot];
            s.holders = s.holders.saturating_sub(1);
            if s.state == SlotState::Sent {
                let len = st.memfds[st.slots[slot].memfd].buffer_len;
                st.slots[slot].state = SlotState::Retired;
                st.held -= 1;
                st.retired_bytes += len;
            }
        }
    }
}

/// One consumer's channel and what the producer knows about it.
#[derive(Debug)]
struct Link {
    channel: Channel,
    id: usize,
    state: Mutex<LinkState>,
}

#[derive(Debug)]
struct LinkState {
    /// By memfd id: whether this consumer has been sent the memfd.
    announced: Vec<bool>,
    /// By slot: the generation this consumer holds the slot under, 0 if none.
    outstanding: Vec<u64>,
    /// The next notice's generation (its sequence number on this channel, from 1).
    next_generation: u64,
    /// Receive buffer for releases.
    buf: Box<[u8]>,
    /// A fault to report on the next call.
    fault: Option<Error>,
    /// The consumer has gone; its buffers were freed.
    closed: bool,
}

impl Link {
    /// Announces the memfd if needed, then sends the notice. On success the consumer holds
    /// the slot (one more holder); on failure nothing changed but, perhaps, the
    /// announcement (kept: the consumer has the memfd).
    fn send_buffer(
        &self,
        pool: &PoolShared,
        memfd: &Memfd,
        slot: usize,
        mut buffer: PoolBufferRef,
        len: usize,
        wait: Wait,
    ) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(e) = st.fault.take() {
            return Err(e);
        }
        if st.closed {
            return Err(Error::PeerClosed);
        }
        let id = memfd.id as usize;
        if st.announced.len() <= id {
            st.announced.resize(id + 1, false);
        }
        if st.outstanding.len() <= slot {
            st.outstanding.resize(memfd.first_slot + memfd.buffers, 0);
        }
        if st.outstanding[slot] != 0 {
            // This consumer holds the buffer already: one claim, not two.
            return Ok(());
        }
        let r = (|| {
            if !st.announced[id] {
                let msg = wire::encode_pool_announce(memfd.id, memfd.region.len() as u64);
                self.channel
                    .send_encoded(&msg, &[memfd.region.as_fd()], wait)?;
                st.announced[id] = true;
            }
            buffer.generation = st.next_generation;
            let msg = wire::encode_pool_notice(buffer, len as u64);
            self.channel.send_encoded(&msg, &[], wait)
        })();
        match r {
            Ok(()) => {
                // Under this link's lock: no release of it can be read before the claim
                // is counted.
                st.outstanding[slot] = buffer.generation;
                st.next_generation += 1;
                let mut ps = lock(&pool.state);
                ps.slots[slot].holders = ps.slots[slot].holders.saturating_add(1);
                Ok(())
            }
            Err(Error::PeerClosed) => {
                self.close(pool, &mut st);
                Err(Error::PeerClosed)
            }
            Err(e) => Err(e),
        }
    }

    /// The consumer has gone: every buffer it held is released.
    fn close(&self, pool: &PoolShared, st: &mut LinkState) {
        st.closed = true;
        // A hung-up socket stays readable: stop waking waiting leases with it.
        let _ = epoll::delete(&pool.epoll, &self.channel);
        if let Some(pidfd) = self.channel.peer_pidfd() {
            let _ = epoll::delete(&pool.epoll, pidfd);
        }
        let mut freed = 0;
        let mut ps = lock(&pool.state);
        for (slot, g) in st.outstanding.iter_mut().enumerate() {
            if *g != 0 {
                *g = 0;
                if ps.unhold(slot) {
                    freed += 1;
                }
            }
        }
        drop(ps);
        pool.notify(freed);
    }

    /// Reads every queued release message and applies it; returns the buffers released.
    /// Faults are recorded in `st.fault` (the first one wins).
    fn drain(&self, pool: &PoolShared, st: &mut LinkState) -> usize {
        if st.closed {
            return 0;
        }
        let mut released = 0;
        let mut freed = 0;
        let mut no_fds = Vec::new();
        for _ in 0..MAX_DRAIN {
            let LinkState {
                buf,
                outstanding,
                fault,
                ..
            } = &mut *st;
            let r =
                self.channel
                    .recv_pool(buf, &mut no_fds, &[wire::KIND_POOL_RELEASE], Wait::Never);
            let counters = self.channel.counters();
            counters.disposed(crate::closer::dispose_all(no_fds.drain(..)));
            if let Err(e) = &r {
                counters.failed(e, self.channel.peer_credentials());
            }
            match r {
                Ok(PoolMessage::Release { entries }) => {
                    counters.received(0, 0);
                    let mut ps = lock(&pool.state);
                    let mut i = 0;
                    while let Some(b) = wire::pool_release_entry(entries, i) {
                        i += 1;
                        match release_one(&mut ps, outstanding, b) {
                            Ok(f) => {
                                released += 1;
                                freed += usize::from(f);
                            }
                            Err(reason) => {
                                let e = Error::BadRelease {
                                    consumer: self.id,
                                    reason,
                                    memfd_id: b.memfd_id,
                                    offset: b.offset,
                                    generation: b.generation,
                                };
                                counters.failed(&e, self.channel.peer_credentials());
                                fault.get_or_insert(e);
                            }
                        }
                    }
                    if i * wire::POOL_RELEASE_ENTRY_LEN != entries.len() {
                        let e = Error::Malformed {
                            reason: "reserved word of a release entry is not zero",
                        };
                        counters.failed(&e, self.channel.peer_credentials());
                        fault.get_or_insert(e);
                    }
                }
                Ok(_) => {} // check_pool_received accepts only releases here
                Err(Error::WouldBlock) => break,
                Err(Error::PeerClosed) => {
                    self.close(pool, st);
                    break;
                }
                Err(e) if e.is_peer_fault() => {
                    fault.get_or_insert(e);
                }
                Err(e) => {
                    fault.get_or_insert(e);
                    break;
                }
            }
        }
        pool.notify(freed);
        released
    }
}

/// Applies one release entry; returns whether the buffer became free, or why the entry is
/// refused (nothing changed then).
fn release_one(
    ps: &mut PoolState,
    outstanding: &mut [u64],
    b: PoolBufferRef,
) -> std::result::Result<bool, &'static str> {
    let memfd = ps
        .memfds
        .get(b.memfd_id as usize)
        .ok_or("unknown memfd id")?;
    let len = memfd.buffer_len as u64;
    if b.offset % len != 0 || b.offset / len >= memfd.buffers as u64 {
        return Err("offset is not a buffer of that memfd");
    }
    let slot = memfd.first_slot + (b.offset / len) as usize;
    match outstanding.get(slot).copied().unwrap_or(0) {
        0 => Err(
            "buffer is not held by this consumer (duplicate, late, retired or never sent to it)",
        ),
        g if g != b.generation => Err("stale or forged generation"),
        _ => {
            outstanding[slot] = 0;
            Ok(ps.unhold(slot))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_a_quarter() {
        assert_eq!(class_len(0), None);
        assert_eq!(class_len(1), Some(4096));
        assert_eq!(class_len(4096), Some(4096));
        assert_eq!(class_len(4097), Some(8192));
        assert_eq!(class_len(16 << 10), Some(16 << 10));
        assert_eq!(class_len((16 << 10) + 1), Some(20 << 10));
        assert_eq!(class_len(1 << 20), Some(1 << 20));
        assert_eq!(class_len(1920 * 1080 * 4), Some(8 << 20));
        assert_eq!(class_len(usize::MAX), None);
        for len in (1..(64 << 20)).step_by(9973) {
            let c = class_len(len).unwrap();
            assert!(c >= len && c % GRANULE == 0);
            assert!(c <= 16 << 10 || (c - len) * 4 <= len, "{len} -> {c}");
        }
    }
}
