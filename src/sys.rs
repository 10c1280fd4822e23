//! The few places that need `unsafe`: mapping descriptors and copying out of memory that
//! another process may write; the system calls rustix does not wrap (Landlock, seccomp,
//! `fork`); and the code a spawn runs in the child between `fork` and `exec`.
//!
//! Invariants the safe layers rely on:
//! - a [`ReadMap`] is only created over a file whose size was checked to be at least the
//!   mapping's length and which is sealed against shrinking, so touching it cannot `SIGBUS`;
//! - a mapping is only ever read through [`ReadMap::bytes`], a [`SharedBytes`]: copies with
//!   volatile loads, never a reference to peer-writable memory, except its `unsafe`
//!   `as_slice`, only reached for files sealed `F_SEAL_WRITE` (checked by the caller,
//!   `RegionView`) or by callers who vouch for their producer.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{Advice, Mmap, MmapMut, MmapOptions, MmapRaw};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::FdFlags;
use rustix::process::{Resource, Rlimit};
use rustix::thread::UnshareFlags;
use seccompiler::{BpfProgram, BpfProgramRef};

use crate::shm::SharedBytes;

/// A read-only mapping of a verified region.
#[derive(Debug)]
pub(crate) enum ReadMap {
    /// `PROT_READ, MAP_SHARED`: sees the producer's later writes (FUTURE_WRITE regions).
    Shared(MmapRaw),
    /// `PROT_READ, MAP_PRIVATE`: the fallback for kernels that refuse a shared read-only
    /// mapping of a write-sealed memfd. Only used for write-sealed regions, whose contents
    /// cannot change, so it shows the same bytes.
    Private(Mmap),
}

impl ReadMap {
    /// Maps `len` bytes of `fd` read-only and shared.
    pub(crate) fn shared(fd: impl AsFd, len: usize) -> io::Result<ReadMap> {
        let map = MmapOptions::new()
            .len(len)
            .map_raw_read_only(fd.as_fd().as_raw_fd())?;
        // A hint only, so its failure is ignored. MADV_SEQUENTIAL makes the kernel skip
        // marking every page accessed (an LRU move per page) when the mapping is torn down:
        // measured, it cuts munmap of a read 1 MiB mapping from ~95 to ~40 µs and of 64 MiB
        // from ~8 to ~3.5 ms (BENCHMARKS.md). Faults keep their 64 KiB fault-around.
        let _ = map.advise(Advice::Sequential);
        Ok(ReadMap::Shared(map))
    }

    /// Maps `len` bytes of `fd` read-only and private.
    pub(crate) fn private(fd: impl AsFd, len: usize) -> io::Result<ReadMap> {
        // SAFETY: memmap2's `map_copy_read_only` is unsafe because the file may change
        // underneath the `&[u8]` its `Deref` hands out. That `Deref` is never used: the
        // mapping is read only through `bytes()`, by volatile copies or by the unsafe
        // `SharedBytes::as_slice`, whose caller rules out writers. (Callers use this for
        // files sealed F_SEAL_WRITE and F_SEAL_SHRINK whose size was checked to be `len`.)
        let map = unsafe {
            MmapOptions::new()
                .len(len)
                .map_copy_read_only(fd.as_fd().as_raw_fd())
        }?;
        let _ = map.advise(Advice::Sequential); // a hint, as above
        Ok(ReadMap::Private(map))
    }

    /// The mapped bytes, to read by copy.
    pub(crate) fn bytes(&self) -> SharedBytes<'_> {
        let (ptr, len) = match self {
            ReadMap::Shared(m) => (m.as_ptr(), m.len()),
            ReadMap::Private(m) => (m.as_ptr(), m.len()),
        };
        // SAFETY: ptr..ptr + len is the live mapping owned by self, which memmap2 keeps
        // mapped until drop, so for the borrow of self; this module makes no reference of
        // any kind to it (memmap2's `Deref` of `Private` is never used).
        unsafe { SharedBytes::new(ptr, len) }
    }
}

/// The base page size. From the C library (`sysconf`, which glibc and musl answer from the
/// auxiliary vector they saved at startup: no system call, so it works inside a seccomp
/// sandbox, where reading `/proc/self/auxv` would fail).
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// `cachestat(2)`'s system call number: the same on every Linux architecture (6.5+).
pub(crate) const SYS_CACHESTAT: libc::c_long = 451;

/// Counts the pages of shared-memory file `fd` from byte `from` (page-aligned) to the end
/// of its page cache, *past* its size included, that exist (resident or swapped out), with
/// `cachestat(2)` (Linux 6.5+). The walk costs one step per page found, so for the pages
/// past the end of an honest file (none) it is cheap.
///
/// Returns `Ok(None)` where the kernel cannot answer: no `cachestat` (`ENOSYS`, or `EPERM`
/// from a seccomp filter), or a file it does not support (`EOPNOTSUPP`: hugetlbfs).
pub(crate) fn pages_from(fd: impl AsFd, from: u64) -> io::Result<Option<u64>> {
    #[repr(C)]
    struct CachestatRange {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Cachestat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // len 0: up to the highest page index, not just to the file's size.
    let range = CachestatRange { off: from, len: 0 };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat(fd, range, cstat, flags) reads `range` and writes `stat`, both live
    // #[repr(C)] values laid out as the kernel's `struct cachestat_range` and
    // `struct cachestat`; it touches no other memory, and the descriptor is borrowed for
    // the call.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_fd().as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0u32,
        )
    };
    if rc == 0 {
        // For shared memory, "evicted" entries are pages in swap: still allocated.
        return Ok(Some(stat.nr_cache.saturating_add(stat.nr_evicted)));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP) => Ok(None),
        _ => Err(err),
    }
}

/// Maps `len` bytes of `fd` read-write and shared: the producer's own view of a region it
/// created and has not shared with anyone yet.
pub(crate) fn map_writable(fd: impl AsFd, len: usize) -> io::Result<MmapMut> {
    // SAFETY: memmap2's `map_mut` is unsafe because others could modify or truncate the
    // file. The caller owns a fresh memfd that no other process holds yet, whose size is
    // `len` and whose pages are allocated; once shared, it is sealed against shrinking and
    // against every new writer, so the only writer is this mapping.
    unsafe { MmapOptions::new().len(len).map_mut(fd.as_fd().as_raw_fd()) }
}

/// Polls `fd` for `events` without waiting: the events it reports now (empty if none, or
/// if `poll` fails).
pub(crate) fn poll_now(fd: impl AsFd, events: PollFlags) -> PollFlags {
    let mut fds = [PollFd::new(&fd, events)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(n) if n > 0 => fds[0].revents(),
        _ => PollFlags::empty(),
    }
}

/// Whether the peer's end of socket `sock` is closed or in error (`POLLRDHUP`, `POLLHUP`,
/// `POLLERR`); a pending message (`POLLIN` alone) does not count.
pub(crate) fn peer_hung_up(sock: impl AsFd) -> bool {
    poll_now(sock, PollFlags::RDHUP).intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
}

/// `SO_PASSRIGHTS` (Linux 6.16+): whether a unix socket accepts `SCM_RIGHTS`. With it off,
/// a peer's `sendmsg` with descriptors fails with `EPERM` and nothing is queued.
pub(crate) const SO_PASSRIGHTS: libc::c_int = 83;

/// Sets `SO_PASSRIGHTS` on a unix socket. `ENOPROTOOPT` means the kernel predates it.
///
/// # References
///  - [`socket(7)`](https://man7.org/linux/man-pages/man7/socket.7.html), commit
///    77cbe1a6d873 "af_unix: Introduce SO_PASSRIGHTS" (Linux 6.16)
pub(crate) fn set_pass_rights(fd: impl AsFd, on: bool) -> io::Result<()> {
    let value: libc::c_int = on.into();
    // SAFETY: setsockopt reads `optlen` bytes from `optval`, which points to a live c_int
    // of exactly that size; the descriptor is borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes this socket has sent that its peer has not yet read (`SIOCOUTQ`; for a unix
/// datagram socket, the memory of its queued datagrams, `sk_wmem_alloc`).
///
/// # References
///  - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html), `SIOCOUTQ`
pub(crate) fn unsent_bytes(fd: impl AsFd) -> io::Result<usize> {
    // SIOCOUTQ = TIOCOUTQ.
    const SIOCOUTQ: rustix::ioctl::Opcode = 0x5411;
    // SAFETY: SIOCOUTQ writes one c_int through its argument, which `Getter` provides.
    let n = unsafe {
        rustix::ioctl::ioctl(
            fd.as_fd(),
            rustix::ioctl::Getter::<SIOCOUTQ, libc::c_int>::new(),
        )
    }?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The Landlock ABI version the running kernel supports (0: none, or the call is refused).
///
/// # References
///  - [`landlock_create_ruleset(2)`](https://man7.org/linux/man-pages/man2/landlock_create_ruleset.2.html),
///    `LANDLOCK_CREATE_RULESET_VERSION`
pub(crate) fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: landlock_create_ruleset with a null attribute, size 0 and the VERSION flag
    // only returns the ABI version (or an error); it reads no memory and creates nothing.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}

/// The paths and lines that map this process's own uid and gid in a new user namespace.
pub(crate) struct IdMaps {
    pub(crate) setgroups: &'static CStr,
    pub(crate) uid_map: &'static CStr,
    pub(crate) gid_map: &'static CStr,
    pub(crate) uid_line: Vec<u8>,
    pub(crate) gid_line: Vec<u8>,
}

/// A sandbox built (by `sandbox`) and ready to apply with raw system calls only.
pub(crate) struct RawSandbox {
    /// The Landlock ruleset, if the kernel has Landlock.
    pub(crate) landlock: Option<OwnedFd>,
    /// The seccomp programs, in installation order.
    pub(crate) filters: Vec<BpfProgram>,
    /// Soft and hard limits to set.
    pub(crate) rlimits: Vec<(Resource, u64)>,
    /// The namespaces to create (empty: none).
    pub(crate) ns_flags: UnshareFlags,
    /// With a new user namespace: the id maps to write.
    pub(crate) id_maps: Option<IdMaps>,
}

impl RawSandbox {
    /// Applies the sandbox to the calling thread (and, with TSYNC, the seccomp filter to
    /// every thread). On failure, says which step failed.
    ///
    /// Written to run in a child between `fork` and `exec` ([`pre_exec_sandbox`] relies on
    /// it): it allocates nothing, takes no lock and makes only async-signal-safe calls
    /// (rustix's raw system calls `prlimit64`, `unshare`, `openat`/`write` and `prctl`, raw
    /// `syscall`s for `landlock_restrict_self` and `seccomp`, and `close`), reading only
    /// memory prepared before `fork`; its error is an `io::Error` built from `errno` (no
    /// allocation).
    ///
    /// # References
    ///  - [`signal-safety(7)`](https://man7.org/linux/man-pages/man7/signal-safety.7.html)
    pub(crate) fn apply(
        &self,
        seccomp_flags: libc::c_ulong,
    ) -> Result<(), (&'static str, io::Error)> {
        // Namespaces first: if the kernel refuses them, nothing has been applied yet.
        if !self.ns_flags.is_empty() {
            unshare_namespaces(self.ns_flags).map_err(|e| ("unshare", e))?;
            if let Some(maps) = &self.id_maps {
                write_file(maps.setgroups, b"deny")?;
                write_file(maps.uid_map, &maps.uid_line)?;
                write_file(maps.gid_map, &maps.gid_line)?;
            }
        }
        for &(resource, value) in &self.rlimits {
            let lim = Rlimit {
                current: Some(value),
                maximum: Some(value),
            };
            rustix::process::setrlimit(resource, lim).map_err(|e| ("setrlimit", e.into()))?;
        }
        rustix::thread::set_no_new_privs(true)
            .map_err(|e| ("prctl(PR_SET_NO_NEW_PRIVS)", e.into()))?;
        if let Some(fd) = &self.landlock {
            landlock_restrict_self(fd.as_fd()).map_err(|e| ("landlock_restrict_self", e))?;
        }
        for program in &self.filters {
            seccomp_set_mode_filter(program, seccomp_flags)
                .map_err(|e| ("seccomp(SECCOMP_SET_MODE_FILTER)", e))?;
        }
        Ok(())
    }
}

/// Writes `data` to the file at `path` with raw calls (async-signal-safe: rustix's
/// `openat` with a `&CStr` and `write` allocate nothing; dropping the descriptor is
/// `close`).
fn write_file(path: &CStr, data: &[u8]) -> Result<(), (&'static str, io::Error)> {
    let fd = rustix::fs::openat(
        rustix::fs::CWD,
        path,
        OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ("open(/proc/self/*_map)", e.into()))?;
    match rustix::io::write(&fd, data) {
        Ok(n) if n == data.len() => Ok(()),
        // A short write: the kernel takes an id map whole or not at all, so not expected.
        Ok(_) => Err(("write(/proc/self/*_map)", rustix::io::Errno::IO.into())),
        Err(e) => Err(("write(/proc/self/*_map)", e.into())),
    }
}

/// Restricts the calling thread with the Landlock ruleset `ruleset`, for good.
///
/// Async-signal-safe (one raw system call; the error is made from `errno`).
///
/// # References
///  - [`landlock_restrict_self(2)`](https://man7.org/linux/man-pages/man2/landlock_restrict_self.2.html)
fn landlock_restrict_self(ruleset: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: landlock_restrict_self takes a descriptor, borrowed for the call, and flags
    // (0); it touches no memory of ours.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs the seccomp filter `program` on the calling thread
/// (`seccomp(SECCOMP_SET_MODE_FILTER, flags, program)`); with `SECCOMP_FILTER_FLAG_TSYNC`
/// in `flags`, on every thread of the process.
///
/// Async-signal-safe (one raw system call; the error is made from `errno`).
///
/// # References
///  - [`seccomp(2)`](https://man7.org/linux/man-pages/man2/seccomp.2.html)
fn seccomp_set_mode_filter(program: BpfProgramRef<'_>, flags: libc::c_ulong) -> io::Result<()> {
    // The kernel refuses more than BPF_MAXINSNS (4096) instructions with EINVAL anyway;
    // a length that does not fit must not be truncated into a shorter, weaker filter.
    let Ok(len) = libc::c_ushort::try_from(program.len()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccompiler's `sock_filter` has the kernel's layout (repr(C): u16, u8, u8,
    // u32), `prog` points at `len` instructions of `program`, which is borrowed for the
    // call, and the kernel only reads them (it copies the program before returning).
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    // With TSYNC, a positive value is the id of a thread that could not be synchronized.
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unshare(flags)` for new namespaces only: any flag that is not a `CLONE_NEW*` namespace
/// flag is refused with `EINVAL`, before the call.
///
/// Async-signal-safe (rustix's raw system call; the error is made from its `errno`).
///
/// # References
///  - [`unshare(2)`](https://man7.org/linux/man-pages/man2/unshare.2.html)
fn unshare_namespaces(flags: UnshareFlags) -> io::Result<()> {
    let namespaces = UnshareFlags::NEWCGROUP
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWTIME
        | UnshareFlags::NEWUSER
        | UnshareFlags::NEWUTS;
    if !namespaces.contains(flags) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `unshare_unsafe` is unsafe for `CLONE_FILES`, after which descriptors of
    // other threads would not be valid in this one; `flags` holds namespace flags only
    // (checked above), which change no descriptor table.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// Whether a child process may `unshare(flags)`: forks a child that tries it and exits,
/// and reaps it. This process is not changed.
///
/// # References
///  - [`fork(2)`](https://man7.org/linux/man-pages/man2/fork.2.html),
///    [`signal-safety(7)`](https://man7.org/linux/man-pages/man7/signal-safety.7.html)
pub(crate) fn child_can_unshare(flags: UnshareFlags) -> bool {
    // SAFETY: fork copies only the calling thread of a possibly multi-threaded process, so
    // the child may only make async-signal-safe calls: it runs only `unshare_namespaces`
    // (a raw system call) and `_exit`, which never returns. The parent reaps the child it
    // forked.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = unshare_namespaces(flags).is_ok();
        // SAFETY: _exit ends the child at once, running no exit handlers of the parent's
        // copy of this process.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false; // fork failed
    };
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => return status.exit_status() == Some(0),
            Ok(None) => return false,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Has the child of `cmd` place descriptor `fd` on `target`, without close-on-exec, between
/// `fork` and `exec`: the child inherits it (and this process never makes it inheritable).
///
/// `fd` must stay open until `cmd`'s spawn has returned; otherwise the child's spawn fails
/// (`EBADF`) or the child receives whatever descriptor then has its number.
///
/// # References
///  - [`dup2(2)`](https://man7.org/linux/man-pages/man2/dup2.2.html),
///    [`signal-safety(7)`](https://man7.org/linux/man-pages/man7/signal-safety.7.html)
pub(crate) fn pre_exec_dup_to(cmd: &mut Command, fd: BorrowedFd<'_>, target: RawFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec, so it may only make
    // async-signal-safe calls: `fcntl` and `dup2` (both on POSIX's list) on raw descriptor
    // numbers, and reading errno; it allocates nothing and creates no `OwnedFd` (`target`
    // need not be open, and must never be closed by us). Whatever `raw` names in the child,
    // no memory is touched: the worst outcome is an error or a wrong descriptor on `target`
    // in a process about to exec.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if raw == target {
                // dup2 onto itself would keep FD_CLOEXEC: clear it instead.
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                // dup2 creates the new descriptor without FD_CLOEXEC: the one inherited fd.
                libc::dup2(raw, target)
            };
            if rc == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Has the child of `cmd` apply `sandbox` between `fork` and `exec` (after the
/// hooks registered before), so that its program starts sandboxed. Without
/// `SECCOMP_FILTER_FLAG_TSYNC`: the child of `fork` has one thread.
///
/// # References
///  - [`signal-safety(7)`](https://man7.org/linux/man-pages/man7/signal-safety.7.html)
pub(crate) fn pre_exec_sandbox(cmd: &mut Command, sandbox: RawSandbox) {
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed. `RawSandbox::apply` is written for exactly this
    // (see its documentation): it allocates nothing and takes no lock; it makes only raw
    // system calls (prlimit64, unshare, openat/write/close of /proc/self/*_map, prctl,
    // landlock_restrict_self, seccomp) on memory built before fork and owned by the
    // closure; its error is an io::Error made from errno, which does not allocate.
    unsafe {
        cmd.pre_exec(move || sandbox.apply(0).map_err(|(_, e)| e));
    }
}

/// The environment variable that names the descriptor a spawned worker inherits
/// (`sealpipe::spawn::ENV_VAR`, which a unit test keeps equal to this).
pub(crate) const INHERITED_FD_VAR: &str = "SEALPIPE_FD";

/// Why [`claim_inherited_fd`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unclaimable {
    /// [`INHERITED_FD_VAR`] is not set.
    NotSet,
    /// Not a number, or below 3: not a descriptor, or a standard stream, which the
    /// standard library uses.
    NotADescriptor,
    /// A descriptor was already claimed in this process.
    AlreadyClaimed,
    /// The descriptor is not open.
    NotOpen,
    /// The descriptor is close-on-exec: this process opened it itself.
    NotInherited,
}

/// Takes ownership of the descriptor [`INHERITED_FD_VAR`] names: the one the parent that
/// spawned this process handed it to own, inherited across `exec` (it lacks
/// close-on-exec, unlike every descriptor Rust opens). Succeeds at most once per process:
/// the first call that finds a number of 3 or more claims the right, whatever its outcome.
///
/// # References
///  - [`fcntl(2)`](https://man7.org/linux/man-pages/man2/fcntl.2.html), `F_GETFD`
pub(crate) fn claim_inherited_fd() -> Result<OwnedFd, Unclaimable> {
    let value = std::env::var(INHERITED_FD_VAR).map_err(|_| Unclaimable::NotSet)?;
    // Not a number: -1, refused as not a descriptor.
    let fd: RawFd = value.parse().unwrap_or(-1);
    // SAFETY: `fd` is the number the variable names, which our parent set for exactly this
    // purpose: handing this process a descriptor to own. Nothing else in this process
    // takes ownership of it (Rust's own descriptors are close-on-exec, checked below).
    unsafe { claim_fd(fd) }
}

/// The checks and the claim of [`claim_inherited_fd`], for the descriptor number `fd`.
///
/// # Safety
/// If `fd` is 3 or more, open and inherited, nothing else in this process owns it or will
/// close it: the caller hands its ownership over.
unsafe fn claim_fd(fd: RawFd) -> Result<OwnedFd, Unclaimable> {
    static CLAIMED: AtomicBool = AtomicBool::new(false);
    if fd < 3 {
        return Err(Unclaimable::NotADescriptor);
    }
    if CLAIMED.swap(true, Ordering::AcqRel) {
        return Err(Unclaimable::AlreadyClaimed);
    }
    // SAFETY: fcntl(F_GETFD) on a descriptor number touches no memory; if `fd` is not open
    // the kernel answers EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    let Ok(flags) = u32::try_from(flags) else {
        return Err(Unclaimable::NotOpen);
    };
    if FdFlags::from_bits_retain(flags).contains(FdFlags::CLOEXEC) {
        return Err(Unclaimable::NotInherited);
    }
    // SAFETY: `fd` is open and inherited, and nobody else owns it (the caller's contract);
    // CLAIMED guarantees that this process creates at most one owner for it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claiming_refuses_standard_streams_descriptors_opened_here_and_a_second_claim() {
        // Below 3: refused before the claim is taken.
        for fd in [-1, 0, 2] {
            // SAFETY: numbers below 3 are refused before anything is owned.
            let refused = unsafe { claim_fd(fd) }.err();
            assert_eq!(refused, Some(Unclaimable::NotADescriptor));
        }
        // Rust opens everything close-on-exec: not inherited. This takes the claim.
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        // SAFETY: a close-on-exec descriptor is refused before it is owned (and the second
        // call is refused before anything is looked at).
        unsafe {
            assert_eq!(
                claim_fd(file.as_raw_fd()).err(),
                Some(Unclaimable::NotInherited)
            );
            assert_eq!(
                claim_fd(file.as_raw_fd()).err(),
                Some(Unclaimable::AlreadyClaimed)
            );
        }
        assert_eq!(crate::spawn::ENV_VAR, INHERITED_FD_VAR);
    }

    #[test]
    fn unshare_refuses_flags_other_than_namespaces_before_the_call() {
        let err = unshare_namespaces(UnshareFlags::FILES).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_filter_too_long_for_sock_fprog_is_refused_not_truncated() {
        // SECCOMP_RET_ALLOW everywhere: truncated to 65537 % 65536 = 1 instruction this
        // would be a valid filter (EACCES without no_new_privs, installed as root).
        let allow = seccompiler::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        };
        let long = vec![allow; usize::from(u16::MAX) + 2];
        let err = seccomp_set_mode_filter(&long, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
