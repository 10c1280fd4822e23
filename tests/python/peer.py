#!/usr/bin/env python3
"""A sealpipe peer written from PROTOCOL.md with the Python 3 standard library only.

Run by tests/python_interop.rs through `sealpipe::spawn::spawn`, which places one end of
a unix SOCK_SEQPACKET socket pair on the descriptor named by $SEALPIPE_FD (3):

    python3 tests/python/peer.py MODE

Modes:
    send-immutable        send 3 WRITE-sealed regions and a 64 KiB payload in one message
    send-producer-writable
                          send 2 FUTURE_WRITE regions, keep writing one after Rust read it
    recv-check            receive regions from Rust, check seals, size, contents, and that
                          the kernel refuses every write; reply b"ok" or b"fail: ..."
    echo                  receive one message, reply with its raw bytes (prefixed by the
                          number of descriptors that came with it)
    hostile               send messages a receiver must reject, then one valid message

Every mode exits 0 on success, 1 on failure (reason on stderr), after the Rust side closes.
Note: Python 3.11's socket.send_fds/recv_fds ignore their `flags` argument, so this peer
calls sendmsg/recvmsg directly to pass MSG_NOSIGNAL and MSG_CMSG_CLOEXEC.
"""

import array
import errno
import fcntl
import mmap
import os
import socket
import struct
import sys

# fcntl(2) and memfd_create(2) constants; older Python versions lack some of them.
F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SEAL = 0x01
F_SEAL_SHRINK = 0x02
F_SEAL_GROW = 0x04
F_SEAL_WRITE = 0x08
F_SEAL_FUTURE_WRITE = 0x10
MFD_CLOEXEC = 0x01
MFD_ALLOW_SEALING = 0x02
MFD_NOEXEC_SEAL = 0x08

IMMUTABLE = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL
PRODUCER_WRITABLE = F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL

# Wire format v1 (PROTOCOL.md).
HEADER = struct.Struct("<4sHHHHI")  # magic, version, kind, region_count, flags, payload_len
MAGIC = b"SPIP"
VERSION = 1
KIND_REGIONS = 1
MAX_REGIONS = 253
MAX_PAYLOAD = 65536
MAX_MESSAGE_LEN = HEADER.size + 8 * MAX_REGIONS + MAX_PAYLOAD

TIMEOUT_S = 20


class Fail(Exception):
    """A check failed: the verdict is 'fail'."""


def pattern(seed, n):
    """Byte i is (i % 251 + 17 * seed) % 251, the same function as the Rust test's."""
    table = bytes((j + 17 * seed) % 251 for j in range(251))
    return (table * (n // 251 + 1))[:n]


# ----- encoding, sending, receiving -----


def encode(lens, payload, version=VERSION, kind=KIND_REGIONS, flags=0, count=None):
    """Header + region lengths + payload. `count` overrides region_count (for hostile tests)."""
    count = len(lens) if count is None else count
    head = HEADER.pack(MAGIC, version, kind, count, flags, len(payload))
    return head + struct.pack("<%dQ" % len(lens), *lens) + payload


def send(sock, message, fds=()):
    """One datagram, the descriptors in one SCM_RIGHTS message, never SIGPIPE."""
    anc = []
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    sent = sock.sendmsg([message], anc, socket.MSG_NOSIGNAL)
    if sent != len(message):
        raise Fail("short send: %d of %d bytes" % (sent, len(message)))


def recv_raw(sock):
    """One datagram: (bytes, fds). Returns None on EOF. Closes fds and fails on truncation."""
    fds = array.array("i")
    data, anc, flags, _ = sock.recvmsg(
        MAX_MESSAGE_LEN + 1,
        socket.CMSG_SPACE(MAX_REGIONS * fds.itemsize),
        socket.MSG_CMSG_CLOEXEC,
    )
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    fds = list(fds)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(data) > MAX_MESSAGE_LEN:
        close_all(fds)
        raise Fail("truncated message (flags %#x)" % flags)
    if not data and not fds:
        return None
    return data, fds


def decode(data, fds):
    """Checks framing exactly as a sealpipe receiver does; returns (lens, payload)."""
    if len(data) < HEADER.size:
        raise Fail("message shorter than the header")
    magic, version, kind, count, flags, plen = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Fail("bad magic %r" % magic)
    if version != VERSION:
        raise Fail("unsupported version %d" % version)
    if kind != KIND_REGIONS:
        raise Fail("unknown kind %d" % kind)
    if count > MAX_REGIONS or flags != 0 or plen > MAX_PAYLOAD:
        raise Fail("header out of range")
    if len(data) != HEADER.size + 8 * count + plen:
        raise Fail("length %d does not match header" % len(data))
    if count != len(fds):
        raise Fail("header declares %d regions, %d fds arrived" % (count, len(fds)))
    lens = list(struct.unpack_from("<%dQ" % count, data, HEADER.size))
    return lens, data[HEADER.size + 8 * count :]


def recv(sock):
    """(lens, payload, fds), or None on EOF; fds are closed on any framing error."""
    got = recv_raw(sock)
    if got is None:
        return None
    data, fds = got
    try:
        lens, payload = decode(data, fds)
    except Fail:
        close_all(fds)
        raise
    return lens, payload, fds


def close_all(fds):
    for fd in fds:
        os.close(fd)


def wait_for_close(sock):
    """Waits until the Rust side closes its end; anything else is a failure."""
    got = recv(sock)
    if got is not None:
        close_all(got[2])
        raise Fail("expected the channel to close, got another message")


# ----- regions -----


def new_memfd(size):
    """A sealable, non-executable, close-on-exec memfd of `size` bytes, memory committed."""
    try:
        fd = os.memfd_create("peer", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)
    except OSError as e:
        if e.errno != errno.EINVAL:  # kernel before 6.3: no MFD_NOEXEC_SEAL
            raise
        fd = os.memfd_create("peer", MFD_CLOEXEC | MFD_ALLOW_SEALING)
        os.fchmod(fd, 0o600)
    os.ftruncate(fd, size)
    os.posix_fallocate(fd, 0, size)
    return fd


def pwrite_all(fd, data, offset=0):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def immutable_region(seed, size):
    """Filled with pwrite (no mapping exists), then sealed WRITE|SHRINK|GROW|SEAL."""
    fd = new_memfd(size)
    pwrite_all(fd, pattern(seed, size))
    fcntl.fcntl(fd, F_ADD_SEALS, IMMUTABLE)
    return fd


def producer_writable_region(seed, size):
    """Mapped shared read-write, filled, sealed FUTURE_WRITE|SHRINK|GROW|SEAL; the mapping
    stays writable for this process only. Returns (fd, mapping)."""
    fd = new_memfd(size)
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[:] = pattern(seed, size)
    fcntl.fcntl(fd, F_ADD_SEALS, PRODUCER_WRITABLE)
    return fd, m


def expect_errno(what, want, fn, *args):
    try:
        fn(*args)
    except OSError as e:
        if e.errno != want:
            raise Fail("%s: errno %d, expected %d" % (what, e.errno, want))
        return
    raise Fail("%s succeeded; the kernel should have refused it" % what)


def check_region(fd, declared, seals_needed, seals_absent, seed):
    """Verifies a received region like a careful receiver; returns a read-only mapping."""
    seals = fcntl.fcntl(fd, F_GET_SEALS)
    if seals & seals_needed != seals_needed:
        raise Fail("seals %#x lack %#x" % (seals, seals_needed & ~seals))
    if seals & seals_absent:
        raise Fail("seals %#x include %#x" % (seals, seals_absent))
    size = os.fstat(fd).st_size
    if size != declared:
        raise Fail("fstat size %d, header declares %d" % (size, declared))
    try:
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    except PermissionError:
        # Kernels before 6.7 refuse MAP_SHARED of write-sealed memfds; same bytes.
        m = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ)
    if m[:] != pattern(seed, size):
        raise Fail("contents differ from pattern %d" % seed)
    # Every way to change the region must be refused by the kernel.
    expect_errno("write()", errno.EPERM, os.write, fd, b"x")
    expect_errno("pwrite()", errno.EPERM, os.pwrite, fd, b"x", size - 1)
    expect_errno("ftruncate(0)", errno.EPERM, os.ftruncate, fd, 0)
    expect_errno("ftruncate(grow)", errno.EPERM, os.ftruncate, fd, size + 4096)
    expect_errno(
        "mmap(PROT_WRITE, MAP_SHARED)",
        errno.EPERM,
        mmap.mmap,
        fd,
        size,
        mmap.MAP_SHARED,
        mmap.PROT_READ | mmap.PROT_WRITE,
    )
    expect_errno("F_ADD_SEALS", errno.EPERM, fcntl.fcntl, fd, F_ADD_SEALS, F_SEAL_WRITE)
    return m


# ----- modes -----


def send_immutable(sock):
    sizes = [4096, (1 << 20) + 13, 3]
    fds = [immutable_region(seed, size) for seed, size in zip((1, 2, 3), sizes)]
    send(sock, encode(sizes, pattern(9, MAX_PAYLOAD)), fds)
    close_all(fds)
    wait_for_close(sock)


def send_producer_writable(sock):
    sizes = [8192, 65536 + 7]
    regions = [producer_writable_region(seed, size) for seed, size in zip((4, 5), sizes)]
    fds = [fd for fd, _ in regions]
    send(sock, encode(sizes, b"live"), fds)
    close_all(fds)
    got = recv(sock)
    if got is None or got[1] != b"read":
        raise Fail("expected b'read' from Rust")
    # The producer keeps writing through the mapping it made before the seal.
    regions[0][1][:] = pattern(6, sizes[0])
    send(sock, encode([], b"updated"))
    wait_for_close(sock)


def recv_check(sock):
    got = recv(sock)
    if got is None:
        raise Fail("channel closed before the regions arrived")
    lens, payload, fds = got
    try:
        if payload != b"rust->python" or len(fds) != 2:
            raise Fail("unexpected message: %d regions, payload %r" % (len(fds), payload))
        check_region(fds[0], lens[0], IMMUTABLE, F_SEAL_FUTURE_WRITE, 11)
        live = check_region(fds[1], lens[1], PRODUCER_WRITABLE, F_SEAL_WRITE, 12)
    except Fail as e:
        close_all(fds)
        send(sock, encode([], b"fail: " + str(e).encode()))
        raise
    close_all(fds)  # the mapping keeps the region alive
    send(sock, encode([], b"ok"))
    got = recv(sock)
    if got is None or got[1] != b"updated":
        raise Fail("expected b'updated' from Rust")
    if live[:] != pattern(13, len(live)):
        send(sock, encode([], b"fail: producer update not visible"))
        raise Fail("producer update not visible")
    send(sock, encode([], b"ok"))
    wait_for_close(sock)


def echo(sock):
    got = recv_raw(sock)
    if got is None:
        raise Fail("channel closed before the message arrived")
    data, fds = got
    close_all(fds)
    send(sock, encode([], bytes([len(fds)]) + data))
    wait_for_close(sock)


def hostile(sock):
    good = 4096
    # 1. An unsealed memfd.
    fd = new_memfd(good)
    send(sock, encode([good], b"unsealed"), [fd])
    os.close(fd)
    # 2. An unknown protocol version, with a perfectly good region.
    fd = immutable_region(1, good)
    send(sock, encode([good], b"v2", version=2), [fd])
    os.close(fd)
    # 3. A declared length larger than the file.
    fd = immutable_region(1, good)
    send(sock, encode([2 * good], b"size"), [fd])
    os.close(fd)
    # 4. Two regions declared, one descriptor sent.
    fd = immutable_region(1, good)
    send(sock, encode([good, good], b"count"), [fd])
    os.close(fd)
    # 5. A reserved flag set.
    fd = immutable_region(1, good)
    send(sock, encode([good], b"flags", flags=1), [fd])
    os.close(fd)
    # 6. A FUTURE_WRITE region where the receiver requires immutable.
    fd, m = producer_writable_region(1, good)
    send(sock, encode([good], b"future-write"), [fd])
    os.close(fd)
    m.close()
    # 7. A sealed memfd reopened write-only: it can never be mapped for reading.
    fd = immutable_region(1, good)
    wronly = os.open("/proc/self/fd/%d" % fd, os.O_WRONLY | os.O_CLOEXEC)
    send(sock, encode([good], b"write-only"), [wronly])
    os.close(wronly)
    os.close(fd)
    # 8. A valid message: the channel must still work.
    fd = immutable_region(7, good)
    send(sock, encode([good], b"still here"), [fd])
    os.close(fd)
    wait_for_close(sock)


MODES = {
    "send-immutable": send_immutable,
    "send-producer-writable": send_producer_writable,
    "recv-check": recv_check,
    "echo": echo,
    "hostile": hostile,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in MODES:
        print("usage: peer.py {%s}" % "|".join(MODES), file=sys.stderr)
        return 2
    fd = int(os.environ["SEALPIPE_FD"])
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        print("peer.py: SEALPIPE_FD is not a unix SOCK_SEQPACKET socket", file=sys.stderr)
        return 2
    sock.settimeout(TIMEOUT_S)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import handshake_peer  # the handshake of PROTOCOL.md, which spawn() requires

    try:
        handshake_peer.worker_handshake(sock)
    except (handshake_peer.HandshakeFailed, OSError) as e:
        print("peer.py: handshake failed: %s" % e, file=sys.stderr)
        return 1
    try:
        MODES[sys.argv[1]](sock)
    except (Fail, OSError) as e:
        print("peer.py %s: %s" % (sys.argv[1], e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
