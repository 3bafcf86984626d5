"""The bench's POP3 load client (bench/pop3load.py) reads responses right.

Its figures are only worth something if it neither loses nor invents data:
a scripted server sends answers in awkward pieces (one byte at a time, the
terminator split across reads, a buffer compaction in the middle) with
byte-stuffed lines, and the client must hand back each message exactly.
"""

import socket
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import pop3load  # noqa: E402

MESSAGES = [
    b"Subject: one\r\n\r\nplain body\r\n",
    b".starts with a dot\r\n..two dots\r\nmiddle\r\n.\r\n",  # '.' alone is data here
    b"",
    b"x" * 70000 + b"\r\n" + b".y\r\n",  # larger than a read; stuffing at the end
]


def stuff(msg: bytes) -> bytes:
    lines = msg.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)


def serve(sock, chunk, messages):
    """A scripted POP3 server: answers in the order asked, in `chunk`-byte
    pieces. Handles USER, PASS, STAT, LIST, UIDL, RETR n, QUIT."""
    def out(data):
        for i in range(0, len(data), chunk):
            sock.sendall(data[i:i + chunk])

    out(b"+OK ready\r\n")
    buf = b""
    while True:
        while b"\r\n" not in buf:
            data = sock.recv(4096)
            if not data:
                return
            buf += data
        line, _, buf = buf.partition(b"\r\n")
        cmd = line.split()
        if cmd[0] in (b"USER", b"PASS"):
            out(b"+OK\r\n")
        elif cmd[0] == b"STAT":
            out(b"+OK %d %d\r\n" % (len(messages), sum(map(len, messages))))
        elif cmd[0] == b"LIST":
            out(b"+OK\r\n" + b"".join(b"%d %d\r\n" % (i + 1, len(m)) for i, m in enumerate(messages)) + b".\r\n")
        elif cmd[0] == b"UIDL":
            out(b"+OK\r\n" + b"".join(b"%d u%d\r\n" % (i + 1, i) for i in range(len(messages))) + b".\r\n")
        elif cmd[0] == b"RETR":
            m = messages[int(cmd[1]) - 1]
            out(b"+OK %d octets\r\n" % len(m) + stuff(m) + b".\r\n")
        elif cmd[0] == b"QUIT":
            out(b"+OK bye\r\n")
            return
        else:
            out(b"-ERR what\r\n")


def run(chunk, depth, messages=MESSAGES):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def accept():
        conn, _ = lsock.accept()
        with conn:
            serve(conn, chunk, messages)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        return pop3load.retrieve_all(port, "u", "p", depth)
    finally:
        t.join(10)
        lsock.close()


class Pieces:
    """A socket stand-in whose recv() hands out a byte stream in pieces of
    exactly `chunk` bytes: every split point is hit, deterministically."""

    def __init__(self, data, chunk):
        self.data, self.chunk, self.pos = data, chunk, 0

    def recv(self, n):
        piece = self.data[self.pos:self.pos + min(n, self.chunk)]
        self.pos += len(piece)
        return piece

    def sendall(self, data):
        pass


@pytest.mark.parametrize("chunk", range(1, 12))
def test_multi_line_split_anywhere(chunk, monkeypatch):
    monkeypatch.setattr(pop3load, "COMPACT", 5)  # compact often, too
    stream = b"+OK hi\r\n" + b"".join(
        b"+OK %d\r\n" % len(m) + stuff(m) + b".\r\n" for m in MESSAGES) + b"+OK bye\r\n"
    c = pop3load.Client(0, sock=Pieces(stream, chunk))
    assert [c.multi() for _ in MESSAGES] == MESSAGES
    assert c.status() == b"+OK bye"
    with pytest.raises(pop3load.Pop3Error, match="closed"):
        c.status()


@pytest.mark.parametrize("chunk", range(1, 12))
def test_pipelined_sizes_split_anywhere(chunk, monkeypatch):
    # The pipelined path sizes answers in place: a partial answer must
    # consume nothing, and stuffed dots must not count.
    monkeypatch.setattr(pop3load, "COMPACT", 5)
    stream = b"+OK hi\r\n" + b"".join(
        b"+OK %d\r\n" % len(m) + stuff(m) + b".\r\n" for m in MESSAGES) + b"-ERR no such message\r\n"
    c = pop3load.Client(0, sock=Pieces(stream, chunk))
    sizes = []
    while len(sizes) < len(MESSAGES):
        size = c.take_multi()
        if size is None:
            c._fill()
        else:
            sizes.append(size)
    assert sizes == [len(m) for m in MESSAGES]
    with pytest.raises(pop3load.Pop3Error, match="no such message"):
        while c.take_multi() is None:
            c._fill()


@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 1 << 16])
@pytest.mark.parametrize("depth", [1, 16])
def test_reads_every_message_exactly(chunk, depth):
    n, total, _ = run(chunk, depth)
    assert n == len(MESSAGES)
    assert total == sum(map(len, MESSAGES))


def test_buffer_compaction_keeps_the_data(monkeypatch):
    # Compact after every read: offsets must survive the buffer moving.
    monkeypatch.setattr(pop3load, "COMPACT", 3)
    n, total, _ = run(7, 16, MESSAGES * 3)
    assert (n, total) == (len(MESSAGES) * 3, 3 * sum(map(len, MESSAGES)))


def test_wrong_size_fails_the_round():
    # A server whose RETR answer is shorter than LIST said must not count.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def accept():
        conn, _ = lsock.accept()
        with conn:
            conn.sendall(b"+OK\r\n")
            f = conn.makefile("rb")
            for reply in (b"+OK\r\n", b"+OK\r\n", b"+OK 1 10\r\n", b"+OK\r\n1 10\r\n.\r\n",
                          b"+OK\r\n1 a\r\n.\r\n", b"+OK\r\nshort\r\n.\r\n"):
                f.readline()
                conn.sendall(reply)
            f.readline()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    with pytest.raises(pop3load.Pop3Error, match="RETR 1: 7 octets, LIST said 10"):
        pop3load.retrieve_all(port, "u", "p", 1)
    t.join(10)
    lsock.close()


def test_err_reply_raises():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def accept():
        conn, _ = lsock.accept()
        with conn:
            conn.sendall(b"+OK\r\n")
            conn.recv(100)
            conn.sendall(b"+OK\r\n")
            conn.recv(100)
            conn.sendall(b"-ERR [AUTH] no\r\n")

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    with pytest.raises(pop3load.Pop3Error, match="AUTH"):
        pop3load.retrieve_all(port, "u", "p", 1)
    t.join(10)
    lsock.close()
