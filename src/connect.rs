//! Named endpoints, the connecting side: [`Channel::connect`] to a
//! [`Listener`](crate::Listener)'s path.

use std::path::Path;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{connect, sockopt, SocketAddrUnix};

use crate::closer::{self, PeerSocket};
use crate::credentials::PeerCredentials;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::handshake::{self, check_identity, HandshakeConfig};
use crate::listener::{new_socket, unix_addr};
use crate::transport::Channel;

impl Channel {
    /// Connects to the listener at `path` and makes the handshake described by `config`
    /// (the listener's credentials are checked against `config`'s policy first). The whole
    /// call takes at most `config`'s timeout.
    ///
    /// There is no non-blocking variant: the handshake needs several round trips. Run it on
    /// a thread of its own if it must not block an event loop.
    ///
    /// # Errors
    /// [`Error::Io`] with `op: "connect"` if nobody listens there (`ENOENT`,
    /// `ECONNREFUSED`); [`Error::Timeout`] if the listener's backlog stays full;
    /// [`Error::Handshake`] if the handshake fails (both sides learn why); [`Error::Timeout`]
    /// if it does not complete within the config's timeout; [`Error::PeerClosed`] if the
    /// listener closes the connection during it;
    /// [`Error::UnsafePath`] for a path too long for a socket address.
    pub fn connect(path: impl AsRef<Path>, config: &HandshakeConfig) -> Result<Channel> {
        let path = path.as_ref();
        #[cfg(feature = "tracing")]
        let _span =
            tracing::info_span!("sealpipe_handshake", side = "client", path = %path.display())
                .entered();
        crate::stats::traced("handshake", Channel::connect_untraced(path, config))
    }

    fn connect_untraced(path: &Path, config: &HandshakeConfig) -> Result<Channel> {
        let deadline = Deadline::after(config.timeout);
        let connecting = Connecting::new(path)?;
        while !connecting.try_connect()? {
            let pause = Duration::from_millis(2);
            match deadline.left() {
                Some(left) if left.is_zero() => return Err(Error::Timeout),
                left => std::thread::sleep(left.map_or(pause, |l| l.min(pause))),
            }
        }
        let (sock, peer, mut client) = connecting.start_handshake(config)?;
        while !client.step(&sock)? {
            handshake::wait_readable(&sock, deadline)?;
        }
        Ok(Channel::new(sock, Some(peer), None))
    }
}

/// A client connection on its way to a handshaken [`Channel`], in non-blocking steps that
/// both [`Channel::connect`] and the async `connect` drive.
#[derive(Debug)]
pub(crate) struct Connecting {
    sock: PeerSocket,
    addr: SocketAddrUnix,
    /// This process as it is when it calls `connect`: what the server's `SO_PEERCRED`
    /// reports.
    own: PeerCredentials,
}

impl Connecting {
    pub(crate) fn new(path: &Path) -> Result<Connecting> {
        let sock = new_socket()?;
        // Until the listener has proved itself (see `handshake`), no descriptors.
        closer::refuse_descriptors(&sock);
        Ok(Connecting {
            addr: unix_addr(path)?,
            sock: PeerSocket::new(sock),
            own: PeerCredentials::own(),
        })
    }

    /// Tries to connect; `Ok(false)` while the listener's backlog is full.
    pub(crate) fn try_connect(&self) -> Result<bool> {
        loop {
            match connect(&self.sock, &self.addr) {
                Ok(()) => return Ok(true),
                Err(Errno::INTR) => {}
                // Non-blocking unix sockets say EAGAIN while the backlog is full.
                Err(Errno::AGAIN) => return Ok(false),
                Err(e) => return Err(Error::io("connect", e)),
            }
        }
    }

    /// Once connected: checks the listener's kernel-reported identity against the policy
    /// and sends `HELLO`.
    pub(crate) fn start_handshake(
        self,
        config: &HandshakeConfig,
    ) -> Result<(PeerSocket, PeerCredentials, handshake::ClientHandshake)> {
        let sock = self.sock;
        let peer = PeerCredentials::from_ucred(
            sockopt::socket_peercred(&sock).map_err(|e| Error::io("getsockopt(SO_PEERCRED)", e))?,
        );
        check_identity(&sock, &config.policy, peer)?;
        let ends = handshake::Ends {
            server: peer,
            client: self.own,
        };
        let client = handshake::ClientHandshake::start(&sock, config.secret.clone(), false, ends)?;
        Ok((sock, peer, client))
    }
}
