//! The pool on a tokio runtime (feature `tokio`): [`AsyncPool`], [`AsyncPoolReceiver`].

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{Lease, Pool, PoolBuffer, PoolReceiver};
use crate::asyncio::{ready_or_exit, register, watch_exit};
use crate::error::{Error, Result};
use crate::stats::ChannelStats;

/// A [`Pool`] whose leases are awaited on a tokio runtime: a task waiting for a free buffer
/// sleeps in the reactor (on the pool's epoll descriptor, which every consumer's channel
/// and the pool's wake-up eventfd are in) instead of blocking its thread. No helper
/// thread.
///
/// Send with [`Lease::try_send`]: it never blocks (a consumer whose socket is full of
/// notices gets [`Error::WouldBlock`]; it is hundreds of buffers behind).
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
