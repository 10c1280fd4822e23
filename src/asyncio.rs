//! tokio integration (feature `tokio`): await messages without a helper thread and without
//! polling.
//!
//! [`AsyncChannel`] registers the channel's socket with the runtime's reactor
//! (`tokio::io::unix::AsyncFd`) and drives the very same non-blocking send and receive code
//! as the blocking API ([`Channel::try_send`], [`Channel::try_recv`]): one implementation of
//! the protocol and its checks, woken by the kernel's readiness events.
//!
//! Timeouts: wrap any call in `tokio::time::timeout`; every call is cancel safe (see each
//! method's `# Cancel safety`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sealpipe::Result<()> {
//! use sealpipe::{asyncio::AsyncChannel, Channel, Policy, Region};
//! let (a, b) = Channel::pair()?;
//! let (a, b) = (AsyncChannel::new(a)?, AsyncChannel::new(b)?);
//! let region = Region::new(4096)?.seal()?;
//! a.send(b"hi", &[&region]).await?;
//! let msg = b.recv(&Policy::immutable()).await?;
//! assert_eq!(msg.payload(), b"hi");
//! # Ok(()) }
//! ```
#![allow(unsafe_code)] // one call: registering the channel's descriptor with the reactor

use std::io;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{Error, Result};
use crate::region::SealedRegion;
use crate::seals::Policy;
use crate::transport::{Channel, Message};

/// A [`Channel`] driven by a tokio runtime.
#[derive(Debug)]
pub struct AsyncChannel {
    fd: AsyncFd<Channel>,
}

impl AsyncChannel {
    /// Registers `channel` with the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Io`] if called outside a runtime with I/O enabled, or registration fails.
    pub fn new(channel: Channel) -> Result<AsyncChannel> {
        // tokio panics without a runtime; a library must not, so check first.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Io {
                op: "register with the tokio reactor",
                source: io::Error::other("not called from within a tokio runtime"),
            });
        }
        // SAFETY: `Channel` owns its socket as an `OwnedFd` and gives it up only by value
        // (`into_fd`, `Drop`), so the descriptor stays open, refers to the same socket and is
        // what `as_raw_fd` returns for as long as the `AsyncFd` owns the channel.
        let fd = unsafe {
            AsyncFd::register_with_interest(channel, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| Error::Io {
            op: "register with the tokio reactor",
            source: e.into_parts().1,
        })?;
        Ok(AsyncChannel { fd })
    }

    /// The blocking channel underneath (for example to [`Channel::try_send`] from
    /// synchronous code).
    pub fn get_ref(&self) -> &Channel {
        self.fd.get_ref()
    }

    /// Deregisters from the runtime and returns the channel.
    pub fn into_inner(self) -> Channel {
        self.fd.into_inner()
    }

    /// Sends one message, waiting for room in the socket. See [`Channel::send`].
    ///
    /// # Errors
    /// As [`Channel::send`].
    ///
    /// # Cancel safety
    /// Cancel safe. A message is handed to the kernel whole, by one non-blocking `sendmsg`
    /// inside a single poll: if the future is dropped, the message was either sent entirely
    /// or not at all. The regions stay yours either way.
    pub async fn send(&self, payload: &[u8], regions: &[&SealedRegion]) -> Result<()> {
        loop {
            let mut ready = self.fd.writable().await.map_err(reactor_error)?;
            match ready.try_io(|ch| would_block(ch.get_ref().try_send(payload, regions))) {
                Ok(result) => return result.map_err(reactor_error)?,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message and verifies its regions. See [`Channel::recv`].
    ///
    /// # Errors
    /// As [`Channel::recv`].
    ///
    /// # Cancel safety
    /// Cancel safe. A message is taken from the socket, verified and returned within a
    /// single poll; if the future is dropped while waiting, no message has been taken and
    /// no descriptor received, so the next `recv` gets it.
    pub async fn recv(&self, policy: &Policy) -> Result<Message> {
        loop {
            let mut ready = self.fd.readable().await.map_err(reactor_error)?;
            match ready.try_io(|ch| would_block(ch.get_ref().try_recv(policy))) {
                Ok(result) => return result.map_err(reactor_error)?,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Turns sealpipe's `WouldBlock` into the `io::ErrorKind::WouldBlock` that makes tokio clear
/// the readiness flag; every other outcome is passed through.
fn would_block<T>(r: Result<T>) -> io::Result<Result<T>> {
    match r {
        Err(Error::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
        other => Ok(other),
    }
}

fn reactor_error(source: io::Error) -> Error {
    Error::Io {
        op: "wait for readiness",
        source,
    }
}
