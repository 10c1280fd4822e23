//! The pool on a tokio runtime (feature `tokio`): [`AsyncPool`], [`AsyncPoolReceiver`].

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{Lease, Outgoing, Pool, PoolBuffer, PoolReceiver, PoolSender};
use crate::asyncio::{ready_or_exit, register, watch_exit};
use crate::error::{Error, Result};
use crate::stats::ChannelStats;

/// A [`Pool`] whose leases are awaited on a tokio runtime: a task waiting for a free buffer
/// sleeps in the reactor (on the pool's epoll descriptor, which every consumer's channel
/// and the pool's wake-up eventfd are in) instead of blocking its thread. No helper
/// thread.
///
/// [`send`](AsyncPool::send) and [`send_to`](AsyncPool::send_to) await room in a consumer's
/// full socket the same way. For a deadline, wrap any call in `tokio::time::timeout`.
#[derive(Debug)]
pub struct AsyncPool {
    pool: Pool,
    epoll: AsyncFd<OwnedFd>,
}

impl AsyncPool {
    /// Registers `pool` with the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Io`] outside a runtime with I/O enabled, or if registration fails.
    pub fn new(pool: Pool) -> Result<AsyncPool> {
        let epoll = rustix::io::fcntl_dupfd_cloexec(pool.epoll_fd(), 0)
            .map_err(|e| Error::io("duplicate the pool's epoll descriptor", e))?;
        Ok(AsyncPool {
            epoll: register(epoll)?,
            pool,
        })
    }

    /// The pool (to attach consumers, retire, read stats, or lease without waiting).
    pub fn get_ref(&self) -> &Pool {
        &self.pool
    }

    /// A writable buffer of at least `len` bytes, awaiting a release if the pool is at its
    /// limits. See [`Pool::lease_timeout`]; wrap it in `tokio::time::timeout` for a
    /// deadline.
    ///
    /// # Errors
    /// As [`Pool::lease_timeout`], without [`Error::PoolExhausted`].
    ///
    /// # Cancel safety
    /// Cancel safe: a buffer is taken from the pool within one poll, and returned to it if
    /// the lease is dropped; a dropped future holds nothing.
    pub async fn lease(&self, len: usize) -> Result<Lease> {
        loop {
            match self.pool.try_lease(len) {
                Err(Error::PoolExhausted { .. }) => {}
                r => return r,
            }
            // From here on, a buffer freed by another thread wakes the epoll descriptor.
            let _waiting = self.pool.waiting();
            match self.pool.try_lease(len) {
                Err(Error::PoolExhausted { .. }) => {}
                r => return r,
            }
            let mut ready = self.epoll.readable().await.map_err(reactor_error)?;
            ready.clear_ready();
            self.pool.take_wake_token();
        }
    }

    /// Sends `lease` to every consumer in `to`, awaiting room in any consumer's full
    /// socket: as [`Lease::send`] (the consumers with room get it at once, then each full
    /// one in turn), without blocking the thread.
    ///
    /// # Errors
    /// As [`Lease::send`]: the first error of any consumer, which then did not get the
    /// buffer; every other consumer did. For each consumer's own result, use
    /// [`send_to`](AsyncPool::send_to).
    ///
    /// # Cancel safety
    /// Not cancel safe in the sense of "nothing happened": the lease is consumed. If the
    /// future is dropped while it waits for a full socket, the buffer has been sent to
    /// every consumer that had room and to those already waited for, and to no other; the
    /// notices sent stay valid (those consumers read and release the buffer as usual) and
    /// the buffer returns to the pool once they have released it (at once if none got it).
    /// Nothing leaks and nothing is freed twice. To retry the consumers left out, use
    /// [`Lease::into_outgoing`] and [`send_to`](AsyncPool::send_to), which are cancel safe.
    pub async fn send(&self, lease: Lease, to: &[&PoolSender]) -> Result<()> {
        let out = lease.into_outgoing();
        let (full, mut first_err) = out.try_send_each(to, true);
        for i in full {
            if let Err(e) = self.send_to(&out, to[i]).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Sends `out` to `to`, awaiting room if its socket is full: as
    /// [`Outgoing::send_to`], without blocking the thread.
    ///
    /// # Errors
    /// As [`Outgoing::send_to`]; [`Error::Io`] if the socket cannot be registered with the
    /// runtime.
    ///
    /// # Cancel safety
    /// Cancel safe. Each attempt is made within one poll (the announcement of a memfd and
    /// the notice, each one non-blocking `sendmsg`; an announcement that went out is
    /// remembered), so if the future is dropped, `to` either got the buffer or did not,
    /// and `out` is still yours: send it again, or drop it.
    pub async fn send_to(&self, out: &Outgoing, to: &PoolSender) -> Result<()> {
        match out.try_send_to(to) {
            Err(Error::WouldBlock) => {}
            r => return r,
        }
        // The slow path: wait for room in this consumer's socket (a duplicate registered
        // for this wait only; a busy stream never gets here).
        let sock = rustix::io::fcntl_dupfd_cloexec(to.channel(), 0)
            .map_err(|e| Error::io("duplicate the channel's socket", e))?;
        let fd = register(sock)?;
        let peer_exit = watch_exit(to.channel())?;
        loop {
            let Some(mut ready) =
                ready_or_exit(&fd, peer_exit.as_ref(), Interest::WRITABLE).await?
            else {
                // The consumer process has exited.
                return match out.try_send_to(to) {
                    Err(Error::WouldBlock) => Err(Error::PeerClosed),
                    r => r,
                };
            };
            match ready.try_io(|_| match out.try_send_to(to) {
                Err(Error::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
                other => Ok(other),
            }) {
                Ok(result) => return result.map_err(reactor_error)?,
                Err(_would_block) => continue,
            }
        }
    }
}

/// A [`PoolReceiver`] driven by a tokio runtime. Dropping a [`PoolBuffer`] releases it as
/// in blocking code (queued, never blocking).
#[derive(Debug)]
pub struct AsyncPoolReceiver {
    rx: PoolReceiver,
    fd: AsyncFd<OwnedFd>,
    peer_exit: Option<AsyncFd<OwnedFd>>,
}

impl AsyncPoolReceiver {
    /// Registers `rx`'s channel (and its peer's pidfd, if any) with the current runtime.
    ///
    /// # Errors
    /// [`Error::Io`] outside a runtime with I/O enabled, or if registration fails.
    pub fn new(rx: PoolReceiver) -> Result<AsyncPoolReceiver> {
        let sock = rustix::io::fcntl_dupfd_cloexec(rx.channel(), 0)
            .map_err(|e| Error::io("duplicate the channel's socket", e))?;
        Ok(AsyncPoolReceiver {
            peer_exit: watch_exit(rx.channel())?,
            fd: register(sock)?,
            rx,
        })
    }

    /// The receiver's counters ([`PoolReceiver::stats`]).
    pub fn stats(&self) -> ChannelStats {
        self.rx.stats()
    }

    /// The receiver underneath.
    pub fn get_mut(&mut self) -> &mut PoolReceiver {
        &mut self.rx
    }

    /// Receives the next buffer. See [`PoolReceiver::recv`].
    ///
    /// # Errors
    /// As [`PoolReceiver::recv`].
    ///
    /// # Cancel safety
    /// Cancel safe: messages are taken from the socket and handled within one poll (an
    /// announcement is verified and kept even if no notice follows yet), so a dropped
    /// future loses nothing.
    pub async fn recv(&mut self) -> Result<PoolBuffer> {
        loop {
            let Some(mut ready) =
                ready_or_exit(&self.fd, self.peer_exit.as_ref(), Interest::READABLE).await?
            else {
                return self.rx.try_recv();
            };
            let rx = &mut self.rx;
            match ready.try_io(|_| match rx.try_recv() {
                Err(Error::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
                other => Ok(other),
            }) {
                Ok(result) => return result.map_err(reactor_error)?,
                Err(_would_block) => continue,
            }
        }
    }
}

fn reactor_error(source: io::Error) -> Error {
    Error::Io {
        op: "wait for readiness",
        source,
    }
}
