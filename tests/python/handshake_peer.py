#!/usr/bin/env python3
"""A sealpipe peer in Python 3 (standard library only): performs the handshake of
PROTOCOL.md (`## Handshake`) against the Rust side, then exchanges one message.

    handshake_peer.py client PATH SECRET_HEX|-   connect, handshake, send a message with a
                                                 sealed memfd region, print the reply
    handshake_peer.py server PATH SECRET_HEX|-   bind, accept one, handshake, answer one
                                                 message with b"pong:" + its payload
    handshake_peer.py lenient-client PATH SECRET_HEX
                                                 as client, but accepts any server proof
                                                 (to show the server's own check failing)
    handshake_peer.py relay PATH                 the attack of PROTOCOL.md (## Handshake,
                                                 Binding): rename the listener's socket at
                                                 PATH to PATH.real, bind its own at PATH,
                                                 and relay one client's datagrams verbatim
                                                 in both directions; prints "relayed N"
    handshake_peer.py vectors                    print the known-answer vectors of
                                                 PROTOCOL.md, computed here

SECRET_HEX is the shared secret in hex, or "-" for none. Exit status: 0 on success, 2 when
the handshake fails (the reason is printed), 1 on anything else.

BLAKE3 is not in the standard library, so a compact implementation of it follows (after
the reference implementation in the BLAKE3 specification); it is checked against the
published test value at start.
"""
import array
import fcntl
import hmac
import os
import socket
import struct
import sys

# ----- BLAKE3 (hash, keyed_hash, derive_key), pure Python -----

IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
      0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
PERM = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]
CHUNK_START, CHUNK_END, PARENT, ROOT = 1, 2, 4, 8
KEYED_HASH, DERIVE_KEY_CONTEXT, DERIVE_KEY_MATERIAL = 16, 32, 64
M32 = 0xFFFFFFFF


def _g(s, a, b, c, d, x, y):
    s[a] = (s[a] + s[b] + x) & M32
    s[d] ^= s[a]; s[d] = ((s[d] >> 16) | (s[d] << 16)) & M32
    s[c] = (s[c] + s[d]) & M32
    s[b] ^= s[c]; s[b] = ((s[b] >> 12) | (s[b] << 20)) & M32
    s[a] = (s[a] + s[b] + y) & M32
    s[d] ^= s[a]; s[d] = ((s[d] >> 8) | (s[d] << 24)) & M32
    s[c] = (s[c] + s[d]) & M32
    s[b] ^= s[c]; s[b] = ((s[b] >> 7) | (s[b] << 25)) & M32


def _compress(cv, block, counter, block_len, flags):
    s = list(cv) + IV[:4] + [counter & M32, (counter >> 32) & M32, block_len, flags]
    m = list(block)
    for r in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1]); _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5]); _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9]); _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13]); _g(s, 3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in PERM]
    for i in range(8):
        s[i] ^= s[i + 8]
        s[i + 8] ^= cv[i]
    return s


def _words(b):
    return list(struct.unpack("<%dI" % (len(b) // 4), b))


class _Output:
    def __init__(self, cv, block, counter, block_len, flags):
        self.args = (cv, block, counter, block_len, flags)

    def cv(self):
        return _compress(*self.args)[:8]

    def root(self):
        cv, block, _, block_len, flags = self.args
        return struct.pack("<16I", *_compress(cv, block, 0, block_len, flags | ROOT))[:32]


class _Chunk:
    def __init__(self, key, counter, flags):
        self.cv, self.counter, self.flags = key, counter, flags
        self.buf, self.blocks, self.total = b"", 0, 0

    def start(self):
        return CHUNK_START if self.blocks == 0 else 0

    def update(self, data):
        while data:
            if len(self.buf) == 64:
                self.cv = _compress(self.cv, _words(self.buf), self.counter, 64,
                                    self.flags | self.start())[:8]
                self.blocks += 1
                self.buf = b""
            take = data[:64 - len(self.buf)]
            self.buf += take
            self.total += len(take)
            data = data[len(take):]

    def output(self):
        block = _words(self.buf.ljust(64, b"\0"))
        return _Output(self.cv, block, self.counter, len(self.buf),
                       self.flags | self.start() | CHUNK_END)


def _blake3(data, key=IV, flags=0):
    chunk, stack, n = _Chunk(key, 0, flags), [], 0
    while True:
        take = data[:1024 - chunk.total]
        chunk.update(take)
        data = data[len(take):]
        if not data:
            break
        cv = chunk.output().cv()
        n += 1
        total = n
        while total & 1 == 0:
            cv = _Output(key, stack.pop() + cv, 0, 64, PARENT | flags).cv()
            total >>= 1
        stack.append(cv)
        chunk = _Chunk(key, n, flags)
    out = chunk.output()
    while stack:
        out = _Output(key, stack.pop() + out.cv(), 0, 64, PARENT | flags)
    return out.root()


def keyed_hash(key, data):
    return _blake3(data, _words(key), KEYED_HASH)


def derive_key(context, material):
    context_key = _blake3(context.encode(), IV, DERIVE_KEY_CONTEXT)
    return _blake3(material, _words(context_key), DERIVE_KEY_MATERIAL)


assert _blake3(b"").hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"

# ----- the sealpipe wire format and handshake -----

MAGIC, VERSION = b"SPIP", 1
KIND_REGIONS, HELLO, CHALLENGE, PROOF, ACCEPT, REJECT = 1, 2, 3, 4, 5, 6
BODY_LEN = {HELLO: 36, CHALLENGE: 68, PROOF: 32, ACCEPT: 0, REJECT: 2}
FEATURE_SECRET, FEATURE_BOUND = 1, 2
KEY_CONTEXT = "sealpipe 2026-11 handshake v1 shared secret"
SERVER_LABEL, CLIENT_LABEL = b"sealpipe server\0", b"sealpipe client\0"
BAD_PROOF, SECRET_PRESENCE, PROTOCOL, PEER_NOT_ALLOWED, INCOMPATIBLE = 4, 3, 5, 1, 2


class HandshakeFailed(Exception):
    pass


def frame(kind, body=b"", region_lens=()):
    head = MAGIC + struct.pack("<HHHHI", VERSION, kind, len(region_lens), 0, len(body))
    return head + b"".join(struct.pack("<Q", n) for n in region_lens) + body


def send_hs(sock, kind, body=b"", credentials=False):
    anc = []
    if credentials:  # the kernel checks these: they must be our own pid, uid and gid
        anc = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS,
                struct.pack("3i", os.getpid(), os.geteuid(), os.getegid()))]
    sock.sendmsg([frame(kind, body)], anc)


def recv_hs(sock):
    data, anc, flags, _ = sock.recvmsg(200, socket.CMSG_SPACE(4 * 4))
    for level, typ, payload in anc:  # never accept descriptors here
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            for fd in array.array("i", payload[:len(payload) - len(payload) % 4]):
                os.close(fd)
            raise HandshakeFailed("descriptors during the handshake")
    if not data:
        raise HandshakeFailed("peer closed")
    if len(data) < 16 or data[:4] != MAGIC:
        raise HandshakeFailed("malformed")
    version, kind, count, fl, n = struct.unpack("<HHHHI", data[4:16])
    body = data[16:]
    if version != VERSION or count or fl or n != len(body) or BODY_LEN.get(kind) != n:
        raise HandshakeFailed("malformed")
    if kind == REJECT:
        raise HandshakeFailed("refused %d" % struct.unpack("<H", body)[0])
    return kind, body


def reject(sock, reason, why):
    try:
        send_hs(sock, REJECT, struct.pack("<H", reason))
    finally:
        raise HandshakeFailed(why)


def peer_creds(sock):
    """(pid, uid, gid) of the other end, as the kernel recorded it (SO_PEERCRED)."""
    return struct.unpack("3I", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3I")))


def own_creds():
    return os.getpid(), os.geteuid(), os.getegid()


def check_peer(sock):
    pid, uid, gid = peer_creds(sock)
    if uid != os.geteuid():  # same-user policy
        reject(sock, PEER_NOT_ALLOWED, "peer uid %d not allowed" % uid)


def ends(server, client):
    """The connection binding: server pid, uid, gid, then the client's (u32 LE each)."""
    return struct.pack("<6I", *server, *client)


def proofs(key, transcript):
    if key is None:
        return bytes(32), bytes(32)
    return keyed_hash(key, SERVER_LABEL + transcript), keyed_hash(key, CLIENT_LABEL + transcript)


def features(key):
    return FEATURE_BOUND | (FEATURE_SECRET if key is not None else 0)


def check_features(sock, key, theirs):
    if not theirs & FEATURE_BOUND:
        reject(sock, INCOMPATIBLE, "unbound proofs")
    if bool(theirs & FEATURE_SECRET) != (key is not None):
        reject(sock, SECRET_PRESENCE, "secret presence differs")


def client_handshake(sock, key, worker=False, lenient=False, me=None):
    """The connecting side. A spawned worker (`worker=True`) trusts the descriptor it
    inherited, so it skips the identity check, and sends its credentials with HELLO.
    `me`: this process as it was at connect (default: as it is now)."""
    if not worker:
        check_peer(sock)
    binding = ends(peer_creds(sock), me or own_creds())
    hello = struct.pack("<I", features(key)) + os.urandom(32)
    send_hs(sock, HELLO, hello, credentials=worker)
    kind, body = recv_hs(sock)
    if kind != CHALLENGE:
        reject(sock, PROTOCOL, "expected CHALLENGE")
    check_features(sock, key, struct.unpack("<I", body[:4])[0])
    server_proof, client_proof = proofs(key, hello + body[:36] + binding)
    if not hmac.compare_digest(server_proof, body[36:]) and not lenient:
        reject(sock, BAD_PROOF, "bad proof")
    send_hs(sock, PROOF, client_proof)
    kind, _ = recv_hs(sock)
    if kind != ACCEPT:
        reject(sock, PROTOCOL, "expected ACCEPT")


def worker_handshake(sock):
    """The handshake of a worker started by `sealpipe::spawn::spawn` (no secret)."""
    client_handshake(sock, None, worker=True)


def server_handshake(sock, key, me):
    """The accepting side; `me` is this process as it was when it called listen."""
    check_peer(sock)
    binding = ends(me, peer_creds(sock))
    kind, hello = recv_hs(sock)
    if kind != HELLO:
        reject(sock, PROTOCOL, "expected HELLO")
    check_features(sock, key, struct.unpack("<I", hello[:4])[0])
    mine = struct.pack("<I", features(key)) + os.urandom(32)
    server_proof, client_proof = proofs(key, hello + mine + binding)
    send_hs(sock, CHALLENGE, mine + server_proof)
    kind, body = recv_hs(sock)
    if kind != PROOF:
        reject(sock, PROTOCOL, "expected PROOF")
    if not hmac.compare_digest(client_proof, body):
        reject(sock, BAD_PROOF, "bad proof")
    send_hs(sock, ACCEPT)


def sealed_region(data):
    fd = os.memfd_create("python-region", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK
                | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    return fd


def send_message(sock, payload, fds=(), lens=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([frame(KIND_REGIONS, payload, lens)], anc)


def recv_payload(sock):
    data, _, _, _ = sock.recvmsg(70000)
    version, kind, count, fl, n = struct.unpack("<HHHHI", data[4:16])
    assert data[:4] == MAGIC and kind == KIND_REGIONS and count == 0, "unexpected message"
    return data[16:16 + n]


# ----- known-answer vectors (PROTOCOL.md, "Known-answer vectors") -----

def vectors():
    """The documented inputs and what they give; checked against PROTOCOL.md's text by
    tests/handshake.rs, and against the Rust implementation by its unit test."""
    secret = bytes(range(32))
    key = derive_key(KEY_CONTEXT, secret)
    f = struct.pack("<I", FEATURE_BOUND | FEATURE_SECRET)
    base = f + bytes([0x11]) * 32 + f + bytes([0x22]) * 32
    t = base + ends((1000, 1001, 1002), (2000, 1001, 1002))
    t_relayed = base + ends((3000, 1001, 1002), (2000, 1001, 1002))
    return [
        ("S", secret.hex()),
        ("K", key.hex()),
        ("T", t.hex()),
        ("proof_s", proofs(key, t)[0].hex()),
        ("proof_c", proofs(key, t)[1].hex()),
        ("T'", t_relayed.hex()),
        ("proof_s'", proofs(key, t_relayed)[0].hex()),
    ]


def relay(path):
    """Takes the listener's path, then forwards one client's datagrams to the real
    listener and back, byte for byte, until either side closes."""
    import select
    real = path + ".real"
    os.rename(path, real)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(1)
    print("listening", flush=True)
    listener.settimeout(20)
    client, _ = listener.accept()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.connect(real)
    n, ends_of = 0, {client: server, server: client}
    while True:
        ready, _, _ = select.select([client, server], [], [], 20)
        if not ready:
            break
        for s in ready:
            data = s.recv(70000)
            if not data:
                print("relayed %d" % n)
                return
            ends_of[s].send(data)
            n += 1
    print("relayed %d" % n)


def main():
    mode = sys.argv[1]
    if mode == "vectors":
        for name, value in vectors():
            print("%s = %s" % (name, value))
        return 0
    path = sys.argv[2]
    if mode == "relay":
        relay(path)
        return 0
    secret = sys.argv[3]
    key = None if secret == "-" else derive_key(KEY_CONTEXT, bytes.fromhex(secret))
    try:
        if mode in ("client", "lenient-client"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(20)
            me = own_creds()
            sock.connect(path)
            client_handshake(sock, key, lenient=mode == "lenient-client", me=me)
            region = b"python region"
            fd = sealed_region(region)
            send_message(sock, b"hello from python", [fd], [len(region)])
            os.close(fd)
            print(recv_payload(sock).decode())
        else:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            listener.settimeout(20)
            # Bind under a temporary name and rename once listening, so that the path
            # appears only when connecting to it works.
            listener.bind(path + ".tmp")
            os.chmod(path + ".tmp", 0o600)
            me = own_creds()
            listener.listen(1)
            os.rename(path + ".tmp", path)
            sock, _ = listener.accept()
            sock.settimeout(20)
            server_handshake(sock, key, me)
            sock.sendmsg([frame(KIND_REGIONS, b"pong:" + recv_payload(sock))])
        return 0
    except HandshakeFailed as e:
        print(e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
