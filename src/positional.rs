//! [`PositionalFile`]: a file handle with its own offset, for descriptors whose open file
//! description is shared with another process. The crate's guide
//! [Sharing descriptors safely](crate#sharing-descriptors-safely) says why and which tool of
//! this crate to use when.

use std::io::{self, IoSlice, IoSliceMut, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::{Errno, ReadWriteFlags};

use crate::verify::RegionView;

/// `RWF_NOAPPEND` (Linux 6.9+): write at the given offset even if the OFD has `O_APPEND`.
/// Not yet named by rustix.
const RWF_NOAPPEND: u32 = 0x20;

/// Set once `pwritev2` has answered `EOPNOTSUPP` to `RWF_NOAPPEND` (a kernel before 6.9).
static NOAPPEND_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// A file handle with its own offset, for descriptors whose open file description is shared
/// with another process.
///
/// Every transfer is a `pread`/`pwrite` (`preadv`/`pwritev2` for vectored I/O) at the
/// offset this struct keeps, so:
///
/// - **it never moves the shared file offset**, and the other holder moving it (with
///   `read`, `write` or `lseek`) never moves this one;
/// - **it never changes the shared status flags** (it only reads them in
///   [`PositionalFile::status_flags`]), and never takes or releases a lock;
/// - **`O_APPEND` set by the other holder does not redirect its writes** on Linux 6.9+
///   (`RWF_NOAPPEND`); on older kernels Linux's `pwrite` appends on an `O_APPEND`
///   description whatever the offset, so check [`PositionalFile::status_flags`] if the peer
///   may set it;
/// - `EINTR` is retried, and [`read_exact_at`](PositionalFile::read_exact_at) /
///   [`write_all_at`](PositionalFile::write_all_at) (and `Read::read_exact`,
///   `Write::write_all`) loop over short transfers.
///
/// What it **cannot** do: stop another holder from changing the file's *contents* or
/// *length* (use seals for that, see the [module docs](self)); make a sequence of reads
/// atomic with respect to the other side's writes; work on descriptors that have no
/// offset (pipes and sockets answer `ESPIPE`). Dropping it closes its descriptor, which,
/// like any `close`, releases every POSIX record lock (`F_SETLK`) this *process* holds on
/// the file.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::io::{Read, Seek, SeekFrom, Write};
/// use sealpipe::PositionalFile;
///
/// let fd = rustix::fs::memfd_create("doc", rustix::fs::MemfdFlags::CLOEXEC)?;
/// let mut a = PositionalFile::from(fd);
/// let mut b = a.try_clone()?; // same open file description, its own offset
/// a.write_all(b"hello world")?;
/// let mut word = [0u8; 5];
/// b.read_exact(&mut word)?; // b still starts at 0: a's writes did not move it
/// assert_eq!(&word, b"hello");
/// a.seek(SeekFrom::Start(6))?;
/// a.read_exact(&mut word)?;
/// assert_eq!(&word, b"world");
/// assert_eq!(b.stream_position()?, 5);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PositionalFile {
    fd: OwnedFd,
    /// Offset of the next `Read::read`/`Write::write`. Always `<= i64::MAX`.
    pos: u64,
}

impl PositionalFile {
    /// Wraps `fd`, starting at offset 0 (whatever the shared offset is).
    pub fn new(fd: OwnedFd) -> PositionalFile {
        PositionalFile { fd, pos: 0 }
    }

    /// The offset the next `read`/`write` uses.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The file's current size (`fstat`). Another holder may change it at any moment.
    ///
    /// # Errors
    /// The error of `fstat`.
    pub fn len(&self) -> io::Result<u64> {
        let st = rustix::fs::fstat(&self.fd)?;
        Ok(u64::try_from(st.st_size).unwrap_or(0))
    }

    /// Whether the file is empty right now.
    ///
    /// # Errors
    /// The error of `fstat`.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The open file description's status flags (`F_GETFL`), shared with every other
    /// holder, as the kernel's bits (the `O_*` constants of `libc`, e.g.
    /// `flags & libc::O_APPEND != 0`; the same form as std's `OpenOptionsExt::custom_flags`).
    /// Read only: this type never sets them.
    ///
    /// # Errors
    /// The error of `fcntl`.
    pub fn status_flags(&self) -> io::Result<i32> {
        // The bits are the kernel's `int` flags; rustix keeps them as `u32`.
        Ok(rustix::fs::fcntl_getfl(&self.fd)?.bits() as i32)
    }

    /// Reads into `buf` from `offset`, with one `pread` (retried on `EINTR`). Returns the
    /// bytes read, fewer than `buf.len()` at the end of the file. Does not use or move the
    /// position.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] if `offset` exceeds `i64::MAX`; the error of `pread`
    /// (`ESPIPE` for a pipe or socket).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        check_offset(offset)?;
        retry(|| rustix::io::pread(&self.fd, &mut *buf, offset))
    }

    /// Fills `buf` from `offset`, looping over short reads.
    ///
    /// # Errors
    /// [`io::ErrorKind::UnexpectedEof`] if the file ends first (what was read stays in
    /// `buf`); otherwise as [`read_at`](Self::read_at).
    pub fn read_exact_at(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(offset, buf)? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before the requested range",
                    ))
                }
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    /// Writes `buf` at `offset` with one `pwritev2(RWF_NOAPPEND)` (plain `pwritev` on
    /// kernels before 6.9), retried on `EINTR`. Returns the bytes written. Does not use or
    /// move the position.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] if `offset` exceeds `i64::MAX`; the error of the
    /// write (`EPERM` on a write-sealed memfd, `EBADF` on a read-only descriptor).
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored_at(offset, &[IoSlice::new(buf)])
    }

    /// Writes all of `buf` at `offset`, looping over short writes.
    ///
    /// # Errors
    /// [`io::ErrorKind::WriteZero`] if the kernel accepts no bytes; otherwise as
    /// [`write_at`](Self::write_at).
    pub fn write_all_at(&self, mut offset: u64, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_at(offset, buf)? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file accepted no more bytes",
                    ))
                }
                n => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }

    fn write_vectored_at(&self, offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Besides the kernel's own limit, this guard matters for pwritev2: an offset of -1
        // (u64::MAX) would mean "use and move the shared file offset".
        check_offset(offset)?;
        if !NOAPPEND_UNSUPPORTED.load(Ordering::Relaxed) {
            let flags = ReadWriteFlags::from_bits_retain(RWF_NOAPPEND);
            match retry(|| rustix::io::pwritev2(&self.fd, bufs, offset, flags)) {
                Err(e) if e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => {
                    NOAPPEND_UNSUPPORTED.store(true, Ordering::Relaxed);
                }
                result => return result,
            }
        }
        retry(|| rustix::io::pwritev(&self.fd, bufs, offset))
    }

    /// A second handle to the same open file description (`F_DUPFD_CLOEXEC`), with its own
    /// position, starting at 0.
    ///
    /// # Errors
    /// The error of `fcntl` (`EMFILE` when out of descriptors).
    pub fn try_clone(&self) -> io::Result<PositionalFile> {
        Ok(PositionalFile::new(rustix::io::fcntl_dupfd_cloexec(
            &self.fd, 0,
        )?))
    }

    /// Gives up the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

fn check_offset(offset: u64) -> io::Result<()> {
    if offset > i64::MAX as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "file offset beyond i64::MAX",
        ));
    }
    Ok(())
}

/// Runs `f` until it does not fail with `EINTR`.
fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

impl Read for PositionalFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        check_offset(self.pos)?;
        let pos = self.pos;
        let n = retry(|| rustix::io::preadv(&self.fd, &mut *bufs, pos))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for PositionalFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.write_vectored_at(self.pos, bufs)?;
        self.pos += n as u64;
        Ok(n)
    }

    /// Nothing to flush: every write went straight to the kernel.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for PositionalFile {
    /// Moves this handle's position only; no `lseek` is made (`SeekFrom::End` reads the
    /// size with `fstat`). Seeking past the end is allowed, as for files.
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len()?.checked_add_signed(d),
        };
        match new {
            Some(n) if n <= i64::MAX as u64 => {
                self.pos = n;
                Ok(n)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )),
        }
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}

impl From<OwnedFd> for PositionalFile {
    fn from(fd: OwnedFd) -> PositionalFile {
        PositionalFile::new(fd)
    }
}

/// Unmaps a received region and keeps its descriptor, which shares its open file
/// description with the sender's. Fails (handing the view back) unless the receiving
/// policy kept descriptors ([`crate::Policy::keep_descriptors`]).
impl TryFrom<RegionView> for PositionalFile {
    type Error = RegionView;

    fn try_from(view: RegionView) -> Result<PositionalFile, RegionView> {
        view.into_fd().map(PositionalFile::new)
    }
}

impl From<PositionalFile> for OwnedFd {
    fn from(file: PositionalFile) -> OwnedFd {
        file.fd
    }
}

impl AsFd for PositionalFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{fcntl_getfl, fcntl_setfl, memfd_create, MemfdFlags, OFlags};

    fn memfd() -> OwnedFd {
        memfd_create("positional-test", MemfdFlags::CLOEXEC).unwrap()
    }

    fn kernel_offset(fd: impl AsFd) -> u64 {
        rustix::fs::seek(fd, rustix::fs::SeekFrom::Current(0)).unwrap()
    }

    #[test]
    fn io_never_moves_the_shared_offset_or_flags() {
        let fd = memfd();
        rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(3)).unwrap();
        let flags = fcntl_getfl(&fd).unwrap();
        let mut f = PositionalFile::new(rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap());
        f.write_all(b"0123456789").unwrap();
        let n = f
            .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .unwrap();
        assert_eq!(n, 4, "a memfd takes small writes whole");
        assert_eq!(f.position(), 14);
        f.seek(SeekFrom::Start(2)).unwrap();
        let (mut x, mut y) = ([0u8; 2], [0u8; 3]);
        let n = f
            .read_vectored(&mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)])
            .unwrap();
        assert_eq!((n, &x, &y), (5, b"23", b"456"));
        assert_eq!(f.seek(SeekFrom::End(-2)).unwrap(), 12);
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"cd");
        assert_eq!(kernel_offset(&fd), 3, "the shared offset did not move");
        assert_eq!(
            fcntl_getfl(&fd).unwrap(),
            flags,
            "the shared flags did not change"
        );
    }

    #[test]
    fn peer_set_o_append_does_not_redirect_writes() {
        let fd = memfd();
        let f = PositionalFile::new(rustix::io::fcntl_dupfd_cloexec(&fd, 0).unwrap());
        f.write_all_at(0, b"aaaaaaaa").unwrap();
        fcntl_setfl(&fd, OFlags::APPEND).unwrap(); // "the peer" sets O_APPEND on the OFD
        f.write_all_at(2, b"XY").unwrap();
        let mut all = [0u8; 8];
        f.read_exact_at(0, &mut all).unwrap();
        assert_eq!(f.len().unwrap(), 8, "the write did not append (Linux 6.9+)");
        assert_eq!(&all, b"aaXYaaaa");
    }

    #[test]
    fn offsets_that_would_mean_the_shared_offset_are_refused() {
        let mut f = PositionalFile::new(memfd());
        let err = f.write_at(u64::MAX, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(f.read_at(1 << 63, &mut [0u8; 1]).is_err());
        assert!(f.seek(SeekFrom::Start(u64::MAX)).is_err());
        assert!(f.seek(SeekFrom::Current(-1)).is_err());
        assert_eq!(f.position(), 0);
    }

    #[test]
    fn end_of_file_and_errors_are_reported() {
        let f = PositionalFile::new(memfd());
        f.write_all_at(0, b"abc").unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(f.read_at(1, &mut buf).unwrap(), 2);
        let err = f.read_exact_at(1, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let p = PositionalFile::new(r);
        assert_eq!(
            p.read_at(0, &mut buf).unwrap_err().raw_os_error(),
            Some(Errno::SPIPE.raw_os_error())
        );
    }

    #[test]
    fn clones_share_the_description_not_the_position() {
        let mut a = PositionalFile::new(memfd());
        a.write_all(b"xyz").unwrap();
        let b = a.try_clone().unwrap();
        assert_eq!(b.position(), 0);
        let flags = rustix::io::fcntl_getfd(&b).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        let mut buf = [0u8; 3];
        b.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"xyz");
    }
}
