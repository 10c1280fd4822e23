//! The pool itself: [`Pool`], [`PoolOptions`], [`PoolStats`].

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;
use rustix::event::{epoll, eventfd, EventfdFlags, Timespec};
use rustix::io::Errno;

use super::lease::Lease;
use super::lock;
use super::memory::{class_len, Class, Memfd, PoolState, Slot, SlotState};
use super::sender::{Link, PoolSender};
use crate::error::{Error, Result};
use crate::region::Region;
use crate::transport::{Channel, Wait};

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

#[derive(Debug)]
pub(super) struct PoolShared {
    pub(super) options: PoolOptions,
    pub(super) state: Mutex<PoolState>,
    pub(super) links: Mutex<Vec<Arc<Link>>>,
    /// Every link's socket (and peer pidfd) and `wake`: what a waiting `lease` sleeps on.
    pub(super) epoll: OwnedFd,
    /// A semaphore eventfd, written when a buffer is freed while someone waits.
    pub(super) wake: OwnedFd,
    pub(super) waiters: AtomicUsize,
    pub(super) next_link: AtomicUsize,
}

impl PoolShared {
    /// Called after freeing buffers outside a waiting `lease`'s own drain.
    pub(super) fn notify(&self, freed: usize) {
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
        let link = Arc::new(Link::new(channel, id));
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
        Some(Lease::new(
            Arc::clone(&self.shared),
            memfd,
            slot,
            offset,
            len,
        ))
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
        Ok(Some(Lease::new(
            Arc::clone(&self.shared),
            memfd,
            first_slot,
            0,
            len,
        )))
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
        let waiting = self.waiting();
        // A buffer freed between our last look and the registration above did not write
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
        drop(waiting);
        self.take_wake_token();
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
            st.slots[slot].holders = 0;
            st.retire(slot);
            retired += 1;
        }
        Ok(retired)
    }

    /// The epoll descriptor a waiting lease sleeps on (for the async pool).
    #[cfg(feature = "tokio")]
    pub(super) fn epoll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.shared.epoll.as_fd()
    }

    /// Registers a waiter until the guard is dropped: buffers freed meanwhile write the
    /// wake-up eventfd.
    pub(super) fn waiting(&self) -> Waiting<'_> {
        self.shared.waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(&self.shared)
    }

    /// Consumes one wake-up token, if there is one (a semaphore: one per freed buffer).
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
pub(super) struct Waiting<'a>(&'a PoolShared);

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
