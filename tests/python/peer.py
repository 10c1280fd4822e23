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
    ring-consumer         take the consumer side of a byte ring (PROTOCOL.md, Ring): read
                          RING_RECORDS records, parking with the signal bit when empty
    ring-producer         take the producer side of a byte ring: write RING_RECORDS
                          records, waking a parked Rust consumer by futex or signal byte
    pool-consumer         take the consumer side of a region pool (PROTOCOL.md, Region
                          pools): verify each announced memfd once, check every notice and
                          buffer (pattern generation - 1), release in batches of 5
    pool-producer         take the producer side of a region pool: one memfd of 4 buffers,
                          POOL_MESSAGES notices, reusing a buffer only once it is released

Every mode exits 0 on success, 1 on failure (reason on stderr), after the Rust side closes.
Note: Python 3.11's socket.send_fds/recv_fds ignore their `flags` argument, so this peer
calls sendmsg/recvmsg directly to pass MSG_NOSIGNAL and MSG_CMSG_CLOEXEC.
"""

import array
import ctypes
import errno
import fcntl
import mmap
import os
import socket
import select
import struct
import sys
import time

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


# ----- the ring (PROTOCOL.md, section Ring) -----

RING_PAYLOAD = b"sealpipe ring v1"
CONTROL_LEN = 4096
RING_HEADER = struct.Struct("<8sIIIIIIII")  # magic, version, kind, cap, unit, data_at, flags,
#                                              index offset, wait offset
INDEX_AT, WAIT_AT = 128, 256  # x86-64 and aarch64 (PROTOCOL.md)
PARKED, SIGNAL = 1 << 32, 1 << 33
KIND_END, KIND_RECORD, KIND_PAD = 0, 1, 2  # low 3 bits of a record header's tag
RING_VERSION = 2
RING_RECORDS = 3000  # the same constant as the Rust test's


def ring_record(i):
    """Record i: (i * 7) % 300 bytes, byte j = (i + j) % 251; as in the Rust test."""
    return bytes((i + j) % 251 for j in range((i * 7) % 300))


def u32_at(m, at):
    """One 4-byte load of the aligned word at `at`. Through a memoryview cast the item is
    copied with one machine load; `struct.unpack_from` reads byte by byte, which can tear
    against the peer's concurrent store (an index read half old, half new)."""
    return memoryview(m)[at : at + 4].cast("I")[0]


def u64_at(m, at):
    """One 8-byte load of the aligned word at `at` (see u32_at)."""
    return memoryview(m)[at : at + 8].cast("Q")[0]


def store_u32(m, at, value):
    """One 4-byte store to the aligned word at `at`: the peer never sees it half written
    (`struct.pack_into` stores byte by byte)."""
    memoryview(m)[at : at + 4].cast("I")[0] = value


def store_u64(m, at, value):
    """One 8-byte store to the aligned word at `at` (see store_u32)."""
    memoryview(m)[at : at + 8].cast("Q")[0] = value


def ring_memfd(size, header):
    """A memfd mapped read-write, header written, sealed FUTURE_WRITE|SHRINK|GROW|SEAL."""
    fd = new_memfd(size)
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[: RING_HEADER.size] = header
    fcntl.fcntl(fd, F_ADD_SEALS, PRODUCER_WRITABLE)
    return fd, m


def recv_ring_memfd(sock, min_len, max_len):
    """The peer's ring memfd: checked like any region, then mapped read-only."""
    got = recv(sock)
    if got is None:
        raise Fail("channel closed during the ring setup")
    lens, payload, fds = got
    try:
        if payload != RING_PAYLOAD or len(fds) != 1:
            raise Fail("not a ring setup message")
        seals = fcntl.fcntl(fds[0], F_GET_SEALS)
        needed = F_SEAL_SHRINK | F_SEAL_GROW
        if seals & needed != needed or not seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
            raise Fail("ring memfd seals %#x" % seals)
        size = os.fstat(fds[0]).st_size
        if size != lens[0] or not min_len <= size <= max_len:
            raise Fail("ring memfd of %d bytes" % size)
        return mmap.mmap(fds[0], size, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        close_all(fds)


def check_ring_header(m, magic):
    h = RING_HEADER.unpack_from(m, 0)
    if h[0] != magic or h[1] != RING_VERSION or h[7:] != (INDEX_AT, WAIT_AT):
        raise Fail("ring header %r" % (h,))
    return h


def ring_consumer(sock):
    peer = recv_ring_memfd(sock, CONTROL_LEN + 16, CONTROL_LEN + (1 << 24))
    _, _, kind, cap, unit, data_at, peer_flags, _, _ = check_ring_header(peer, b"SPRINGP\x01")
    if kind != 1 or unit != 1 or data_at != CONTROL_LEN or cap & (cap - 1) or cap < 16:
        raise Fail("not a byte ring this consumer can read")
    if len(peer) != CONTROL_LEN + cap:
        raise Fail("ring memfd size does not match its capacity")
    # Flags bit 0: we park, so the producer must look at our wait word.
    header = RING_HEADER.pack(b"SPRINGC\x01", RING_VERSION, 0, 0, 0, 0, 1, INDEX_AT, WAIT_AT)
    fd, own = ring_memfd(CONTROL_LEN, header)
    send(sock, encode([CONTROL_LEN], RING_PAYLOAD), [fd])
    os.close(fd)
    sock.setblocking(False)  # from now on the socket only carries signal bytes

    read = published = 0
    received = 0
    eof = False
    while True:
        write = u32_at(peer, INDEX_AT)  # one load, validated before use
        avail = (write - read) & 0xFFFFFFFF
        if avail > cap or write % 8:
            raise Fail("impossible write index %d (read %d)" % (write, read))
        if avail == 0:
            if published != read:
                ring_publish(sock, own, read, peer, peer_flags)
                published = read
            if eof:
                break
            # Park: announce the value seen and ask for a signal, look again, then wait
            # for the socket (a byte, or end of file). Python has no fence, so a wake can
            # be missed: the timeout bounds the cost of that.
            store_u64(own, WAIT_AT, PARKED | SIGNAL | write)
            if u32_at(peer, INDEX_AT) == write:
                ready, _, _ = select.select([sock], [], [], 0.05)
                if ready:
                    try:
                        while sock.recv(16):
                            pass
                        eof = True  # end of file: the producer is gone; drain, then stop
                    except BlockingIOError:
                        pass
                    except ConnectionResetError:
                        eof = True
            store_u64(own, WAIT_AT, 0)
            continue
        # This consumer reads up to the published write index (every header below it is
        # ready); each header's tag must name its own index.
        while avail:
            pos = read & (cap - 1)
            word = u64_at(peer, CONTROL_LEN + pos)
            length, tag = word & 0xFFFFFFFF, word >> 32
            if tag & ~7 != read:
                raise Fail("header %#x at index %d is tagged for another index" % (word, read))
            rkind = tag & 7
            if rkind == KIND_PAD:
                if pos == 0 or cap - pos > avail:
                    raise Fail("bad padding at %d" % pos)
                span = cap - pos
            elif rkind == KIND_RECORD:
                span = 8 + (length + 7) // 8 * 8
                if length > cap // 2 - 8 or span > avail or span > cap - pos:
                    raise Fail("bad record header %#x at %d" % (word, pos))
                start = CONTROL_LEN + pos + 8
                if peer[start : start + length] != ring_record(received):
                    raise Fail("record %d differs" % received)
                received += 1
            else:
                raise Fail("unknown record kind %d" % rkind)
            read = (read + span) & 0xFFFFFFFF
            avail -= span
        if (read - published) & 0xFFFFFFFF >= cap // 4:
            ring_publish(sock, own, read, peer, peer_flags)
            published = read
    if received != RING_RECORDS:
        raise Fail("got %d records, expected %d" % (received, RING_RECORDS))


def futex_wake(m, at):
    """FUTEX_WAKE (shared) of every waiter on the u32 at `m[at]`."""
    nr = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine)
    if nr is None:
        return  # unknown syscall number: the waiter's 20 ms time slice ends its wait
    word = ctypes.c_uint32.from_buffer(m, at)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(nr, ctypes.c_void_p(ctypes.addressof(word)), 1, 0x7FFFFFFF, None, None, 0)
    del word


def ring_publish(sock, own, value, peer, peer_flags):
    """Stores our index, then wakes the peer if its wait word says it is parked waiting for
    another value: with a byte on the channel if it asked for a signal, else a futex wake.
    (Python has no fence between the store and the load: a wake can be missed, which costs
    the peer at most its time slice, never correctness.)"""
    store_u32(own, INDEX_AT, value)
    if not peer_flags & 1:
        return
    wait = u64_at(peer, WAIT_AT)
    if wait & PARKED and wait & 0xFFFFFFFF != value:
        if wait & SIGNAL:
            try:
                sock.send(b"\x01", socket.MSG_NOSIGNAL)  # the socket is non-blocking
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass  # a wake is already pending, or the peer is gone
        else:
            futex_wake(own, INDEX_AT)


def ring_producer(sock):
    cap = 4096
    # Flags 0: we never park, so the consumer never needs to wake us.
    header = RING_HEADER.pack(
        b"SPRINGP\x01", RING_VERSION, 1, cap, 1, CONTROL_LEN, 0, INDEX_AT, WAIT_AT
    )
    fd, own = ring_memfd(CONTROL_LEN + cap, header)
    send(sock, encode([CONTROL_LEN + cap], RING_PAYLOAD), [fd])
    os.close(fd)
    peer = recv_ring_memfd(sock, CONTROL_LEN, CONTROL_LEN)
    peer_flags = check_ring_header(peer, b"SPRINGC\x01")[6]
    sock.setblocking(False)  # from now on the socket only carries signal bytes

    write = 0
    read = 0
    deadline = time.monotonic() + TIMEOUT_S
    for i in range(RING_RECORDS):
        rec = ring_record(i)
        span = 8 + (len(rec) + 7) // 8 * 8
        while True:
            new_read = u32_at(peer, INDEX_AT)  # one load, validated before use
            if (new_read - read) & 0xFFFFFFFF > (write - read) & 0xFFFFFFFF or new_read % 8:
                raise Fail("impossible read index %d" % new_read)
            read = new_read
            free = cap - ((write - read) & 0xFFFFFFFF)
            pos = write & (cap - 1)
            pad = 0 if span <= cap - pos else cap - pos
            if pad + span + 8 <= free:  # 8: the end mark after the record
                break
            if time.monotonic() > deadline:
                raise Fail("the consumer stopped reading")
            time.sleep(0.0002)
        # The end mark after the record, the payload, the record's header, and last the
        # header at the old write index (the padding's, if any): the consumer may be
        # waiting on that word. Then the index.
        at = write
        record_at = (write + pad) & 0xFFFFFFFF
        end = (record_at + span) & 0xFFFFFFFF
        store_u64(own, CONTROL_LEN + (end & (cap - 1)), (end | KIND_END) << 32)
        rpos = record_at & (cap - 1)
        own[CONTROL_LEN + rpos + 8 : CONTROL_LEN + rpos + 8 + len(rec)] = rec
        store_u64(own, CONTROL_LEN + rpos, (record_at | KIND_RECORD) << 32 | len(rec))
        if pad:
            store_u64(own, CONTROL_LEN + pos, (at | KIND_PAD) << 32)
        write = end
        ring_publish(sock, own, write, peer, peer_flags)
        if i % 100 == 99:
            time.sleep(0.002)  # let the consumer run dry and park
    del own  # closing the socket (on exit) tells the consumer the stream is over


# ----- region pools (PROTOCOL.md, Region pools) -----

KIND_POOL_ANNOUNCE = 16
KIND_POOL_NOTICE = 17
KIND_POOL_RELEASE = 18
POOL_ANNOUNCE = struct.Struct("<IIQ")  # memfd_id, reserved, len
POOL_NOTICE = struct.Struct("<IIQQQ")  # memfd_id, reserved, offset, len, generation
POOL_RELEASE = struct.Struct("<IIQQ")  # memfd_id, reserved, offset, generation
POOL_MESSAGES = 40
POOL_BUFFER = 256 * 1024


def pool_decode(data, nfds, kinds):
    """Framing of a pool message, as a sealpipe receiver checks it; returns (kind, body)."""
    if len(data) < HEADER.size:
        raise Fail("pool message shorter than the header")
    magic, version, kind, count, flags, plen = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise Fail("bad magic or version")
    if kind not in kinds:
        raise Fail("unexpected pool message kind %d" % kind)
    if count != nfds or flags != 0 or len(data) != HEADER.size + plen:
        raise Fail("pool header does not match the message")
    want_fds = 1 if kind == KIND_POOL_ANNOUNCE else 0
    if nfds != want_fds:
        raise Fail("kind %d with %d descriptors" % (kind, nfds))
    body = data[HEADER.size :]
    size = {KIND_POOL_ANNOUNCE: POOL_ANNOUNCE.size, KIND_POOL_NOTICE: POOL_NOTICE.size}
    if kind in size and len(body) != size[kind]:
        raise Fail("kind %d body of %d bytes" % (kind, len(body)))
    if kind == KIND_POOL_RELEASE and (not body or len(body) % POOL_RELEASE.size):
        raise Fail("release body of %d bytes" % len(body))
    return kind, body


def pool_release_message(entries):
    body = b"".join(POOL_RELEASE.pack(i, 0, off, gen) for i, off, gen in entries)
    return HEADER.pack(MAGIC, VERSION, KIND_POOL_RELEASE, 0, 0, len(body)) + body


def pool_consumer(sock):
    memfds = {}  # id -> read-only mapping
    last_gen = 0
    pending = []
    received = 0
    while True:
        got = recv_raw(sock)
        if got is None:
            break
        data, fds = got
        try:
            kind, body = pool_decode(data, len(fds), (KIND_POOL_ANNOUNCE, KIND_POOL_NOTICE))
        except Fail:
            close_all(fds)
            raise
        if kind == KIND_POOL_ANNOUNCE:
            memfd_id, reserved, size = POOL_ANNOUNCE.unpack(body)
            fd = fds[0]
            try:
                if reserved != 0 or memfd_id in memfds:
                    raise Fail("bad announcement of memfd %d" % memfd_id)
                seals = fcntl.fcntl(fd, F_GET_SEALS)
                need = F_SEAL_SHRINK | F_SEAL_GROW
                if seals & need != need or not seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
                    raise Fail("announced memfd has seals %#x" % seals)
                st = os.fstat(fd)
                if st.st_size != size or st.st_blocks * 512 < size:
                    raise Fail("announced memfd: size or committed pages wrong")
                memfds[memfd_id] = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
            continue
        memfd_id, reserved, offset, length, gen = POOL_NOTICE.unpack(body)
        m = memfds.get(memfd_id)
        if m is None or reserved or length == 0 or offset + length > len(m):
            raise Fail("bad notice %r" % ((memfd_id, offset, length, gen),))
        if gen <= last_gen:
            raise Fail("generation %d not above %d" % (gen, last_gen))
        last_gen = gen
        copy = m[offset : offset + length]  # copy out, then validate the copy
        if copy != pattern(gen - 1, length):
            raise Fail("buffer of generation %d differs from its pattern" % gen)
        received += 1
        pending.append((memfd_id, offset, gen))
        if len(pending) == 5:
            send(sock, pool_release_message(pending))
            pending = []
        if received == POOL_MESSAGES:
            if pending:
                send(sock, pool_release_message(pending))
                pending = []
    if received != POOL_MESSAGES:
        raise Fail("received %d buffers, expected %d" % (received, POOL_MESSAGES))


def pool_producer(sock):
    memfd_id = 7
    size = 4 * POOL_BUFFER
    fd = new_memfd(size)
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    fcntl.fcntl(fd, F_ADD_SEALS, PRODUCER_WRITABLE)
    body = POOL_ANNOUNCE.pack(memfd_id, 0, size)
    send(sock, HEADER.pack(MAGIC, VERSION, KIND_POOL_ANNOUNCE, 1, 0, len(body)) + body, [fd])
    os.close(fd)
    free = [3 * POOL_BUFFER, 2 * POOL_BUFFER, POOL_BUFFER, 0]
    held = {}  # offset -> generation the consumer holds it under

    def take_releases():
        got = recv_raw(sock)
        if got is None:
            raise Fail("consumer closed before releasing everything")
        data, fds = got
        close_all(fds)
        _, body = pool_decode(data, len(fds), (KIND_POOL_RELEASE,))
        for k in range(0, len(body), POOL_RELEASE.size):
            rid, reserved, off, gen = POOL_RELEASE.unpack_from(body, k)
            if rid != memfd_id or reserved or held.get(off) != gen:
                raise Fail("bad release %r" % ((rid, off, gen),))
            del held[off]
            free.append(off)

    for i in range(POOL_MESSAGES):
        while not free:
            take_releases()
        off = free.pop()
        length = POOL_BUFFER - 1000 * i
        gen = i + 1
        m[off : off + length] = pattern(i, length)
        held[off] = gen
        body = POOL_NOTICE.pack(memfd_id, 0, off, length, gen)
        send(sock, HEADER.pack(MAGIC, VERSION, KIND_POOL_NOTICE, 0, 0, len(body)) + body)
    while held:
        take_releases()


MODES = {
    "send-immutable": send_immutable,
    "send-producer-writable": send_producer_writable,
    "recv-check": recv_check,
    "echo": echo,
    "hostile": hostile,
    "ring-consumer": ring_consumer,
    "ring-producer": ring_producer,
    "pool-consumer": pool_consumer,
    "pool-producer": pool_producer,
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
