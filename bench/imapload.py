"""An IMAP load client on raw sockets for the bench (bench/bench.py imap).

imaplib reads line by line and copies its buffer for each one; this client
reads 256 KiB at a time, finds the tagged answer's end in the buffer and
walks literals by their announced size. Every round is checked: the number
of FETCH answers, each UID and each size against what the Maildir holds,
so a wrong or lost answer fails the round instead of counting as fast.

- select_fetch_all: LOGIN, SELECT INBOX, UID FETCH 1:* (FLAGS RFC822.SIZE),
  LOGOUT (what a client does when it opens a big folder);
- fetch_full: LOGIN, SELECT, FETCH 1:N BODY.PEEK[] (download N messages);
- idle_sessions: N sessions each LOGIN, SELECT INBOX, IDLE, held open.
"""

import re
import resource
import socket
import time

RECV = 1 << 18

FETCH_SIZE = re.compile(rb"\* (\d+) FETCH \(([^\r\n]*)\)\r\n")
UID = re.compile(rb"UID (\d+)")
SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
LITERAL = re.compile(rb"\* (\d+) FETCH \([^\r\n{]*\{(\d+)\}\r\n")


class ImapError(Exception):
    pass


class Client:
    def __init__(self, port, host="127.0.0.1", timeout=120):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.n = 0
        while b"\r\n" not in self.buf:
            self._fill()
        if not self.buf.startswith(b"* OK"):
            raise ImapError(f"greeting {bytes(self.buf[:100])!r}")
        self.buf.clear()

    def _fill(self):
        data = self.sock.recv(RECV)
        if not data:
            raise ImapError("connection closed")
        self.buf += data

    def cmd(self, text: bytes, literals=False) -> bytes:
        """Sends one command, returns every byte up to and including its
        tagged answer (which must be OK). With `literals`, skips over
        announced literals when looking for the tagged line."""
        self.n += 1
        tag = b"b%d " % self.n
        self.sock.sendall(tag + text + b"\r\n")
        pos = 0  # start of the current line in buf
        while True:
            end = self.buf.find(b"\r\n", pos)
            if end < 0:
                self._fill()
                continue
            if self.buf.startswith(tag, pos):
                out = bytes(self.buf[:end + 2])
                del self.buf[:end + 2]
                if not out[pos + len(tag):].startswith(b"OK"):
                    raise ImapError(f"{text[:60]!r}: {out[pos:pos + 200]!r}")
                return out
            if literals and self.buf[end - 1:end] == b"}":
                m = re.search(rb"\{(\d+)\}$", bytes(self.buf[max(pos, end - 24):end]))
                if m:
                    skip = end + 2 + int(m.group(1))
                    while len(self.buf) < skip:
                        self._fill()
                    pos = skip
                    continue
            pos = end + 2

    def login(self, user, password):
        self.cmd(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))

    def close(self):
        try:
            self.sock.sendall(b"z LOGOUT\r\n")
            self.sock.settimeout(10)
            while self.sock.recv(RECV):
                pass
        except OSError:
            pass
        self.sock.close()


def select_fetch_all(port, user, password, sizes):
    """One client opening the folder: returns (messages, seconds).
    `sizes` is {uid: size} or None (the first, untimed run learns it)."""
    t0 = time.perf_counter()
    c = Client(port)
    c.login(user, password)
    c.cmd(b"SELECT INBOX")
    out = c.cmd(b"UID FETCH 1:* (FLAGS RFC822.SIZE)")
    c.close()
    secs = time.perf_counter() - t0
    got = {}
    for m in FETCH_SIZE.finditer(out):
        items = m.group(2)
        u, s = UID.search(items), SIZE.search(items)
        if not u or not s:
            raise ImapError(f"FETCH without UID or size: {m.group(0)[:120]!r}")
        got[int(u.group(1))] = int(s.group(1))
    if sizes is not None and got != sizes:
        raise ImapError(f"{len(got)} answers, {len(sizes)} expected, or sizes differ")
    return got, secs


def fetch_full(port, user, password, count, want_sizes):
    """FETCH 1:count BODY.PEEK[]: (messages, bytes, seconds); every
    literal must have the size of its message (want_sizes[seq - 1])."""
    t0 = time.perf_counter()
    c = Client(port)
    c.login(user, password)
    c.cmd(b"SELECT INBOX")
    out = c.cmd(b"FETCH 1:%d (BODY.PEEK[])" % count, literals=True)
    c.close()
    secs = time.perf_counter() - t0
    n = total = 0
    pos = 0
    while True:
        m = LITERAL.search(out, pos)
        if not m:
            break
        seq, size = int(m.group(1)), int(m.group(2))
        if want_sizes[seq - 1] != size:
            raise ImapError(f"message {seq}: {size} octets, the file has {want_sizes[seq - 1]}")
        n += 1
        total += size
        pos = m.end() + size
    if n != count:
        raise ImapError(f"{n} of {count} messages")
    return n, total, secs


def raise_fd_limit(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))


def idle_sessions(port, user, password, count):
    """`count` sessions in IDLE on INBOX; returns their clients (close them)."""
    raise_fd_limit(count + 256)
    clients = []
    try:
        for _ in range(count):
            c = Client(port)
            c.login(user, password)
            c.cmd(b"SELECT INBOX")
            c.n += 1
            c.sock.sendall(b"b%d IDLE\r\n" % c.n)
            while b"\r\n" not in c.buf:
                c._fill()
            if not c.buf.startswith(b"+"):
                raise ImapError(f"IDLE: {bytes(c.buf[:100])!r}")
            c.buf.clear()
            clients.append(c)
    except BaseException:
        for c in clients:
            c.sock.close()
        raise
    return clients
