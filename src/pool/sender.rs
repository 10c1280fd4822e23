//! One consumer of a pool: [`PoolSender`], its channel and the releases read from it.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use rustix::event::epoll;

use super::lock;
use super::memory::{Memfd, PoolState, SlotState};
use super::producer::PoolShared;
use crate::error::{Error, Result};
use crate::stats::ChannelStats;
use crate::transport::{Channel, Wait};
use crate::wire::{self, PoolBufferRef, PoolMessage};

/// Most messages one drain reads from one consumer: a consumer that sends releases
/// without end cannot keep a lease in its drain loop.
const MAX_DRAIN: usize = 64;

/// A consumer of a [`Pool`](super::Pool): the producer's end of one channel bound to the
/// pool ([`Pool::attach`](super::Pool::attach)). Pass it to
/// [`Lease::send`](super::Lease::send). `Send + Sync`.
///
/// Dropping it closes the channel; buffers the consumer still held are never reused (it
/// can no longer say it is done with them) and count as retired.
#[derive(Debug)]
pub struct PoolSender {
    pub(super) pool: Arc<PoolShared>,
    pub(super) link: Arc<Link>,
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
        self.link.unwatch(&self.pool);
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
                st.retire(slot);
            }
        }
    }
}

/// One consumer's channel and what the producer knows about it.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) channel: Channel,
    pub(super) id: usize,
    pub(super) state: Mutex<LinkState>,
}

#[derive(Debug)]
pub(super) struct LinkState {
    /// By memfd id: whether this consumer has been sent the memfd.
    announced: Vec<bool>,
    /// By slot: the generation this consumer holds the slot under, 0 if none.
    pub(super) outstanding: Vec<u64>,
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
    /// The link of a consumer just attached on `channel`.
    pub(super) fn new(channel: Channel, id: usize) -> Link {
        Link {
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
        }
    }

    /// Announces the memfd if needed, then sends the notice. On success the consumer holds
    /// the slot (one more holder); on failure nothing changed but, perhaps, the
    /// announcement (kept: the consumer has the memfd).
    pub(super) fn send_buffer(
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

    /// Takes this consumer's socket (and peer pidfd) out of the pool's epoll set.
    fn unwatch(&self, pool: &PoolShared) {
        let _ = epoll::delete(&pool.epoll, &self.channel);
        if let Some(pidfd) = self.channel.peer_pidfd() {
            let _ = epoll::delete(&pool.epoll, pidfd);
        }
    }

    /// The consumer has gone: every buffer it held is released.
    fn close(&self, pool: &PoolShared, st: &mut LinkState) {
        st.closed = true;
        // A hung-up socket stays readable: stop waking waiting leases with it.
        self.unwatch(pool);
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
    pub(super) fn drain(&self, pool: &PoolShared, st: &mut LinkState) -> usize {
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
