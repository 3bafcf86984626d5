"""The bench's POP3 clients (bench/pop3load.c, the load client the POP3
figures are measured with, and pop3load.Client, the Python one tests script
sessions with) read responses right.

Their figures are only worth something if they neither lose nor invent
data: a scripted server sends answers in awkward pieces (one byte at a
time, the terminator split across reads, messages larger than the buffer)
with byte-stuffed lines, and the load client must count each message's
exact size, and fail on a wrong size, a short count, -ERR or a cut.
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


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    try:
        return pop3load.build(tmp_path_factory.mktemp("pop3load"))
    except pop3load.Pop3Error as e:
        pytest.skip(str(e))


def scripted(script, sessions=1):
    """A listening port whose connections, one after another, are handed to
    script(conn); returns (port, join)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)

    def accept():
        for _ in range(sessions):
            conn, _ = lsock.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                script(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()

    def join():
        t.join(30)
        lsock.close()
    return lsock.getsockname()[1], join


def run(client, chunk, depth, messages=MESSAGES, sessions=1):
    port, join = scripted(lambda conn: serve(conn, chunk, messages), sessions)
    try:
        return pop3load.retrieve_all(client, port, "u", "p", depth, sessions)
    finally:
        join()


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


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 6, 7, 1 << 16])
@pytest.mark.parametrize("depth", [1, 16])
def test_load_client_sizes_every_message_exactly(client, chunk, depth):
    n, total, secs = run(client, chunk, depth)
    assert n == len(MESSAGES)
    assert total == sum(map(len, MESSAGES))
    assert secs > 0


def test_load_client_buffer_grows_and_compacts(client):
    # One message larger than the client's 1 MiB buffer (it must grow),
    # then enough to make it move what is left to the front many times;
    # two sessions, summed.
    big = (b"." + b"y" * 998 + b"\r\n") * 3000
    messages = [big] + MESSAGES * 20
    n, total, _ = run(client, 1 << 16, 16, messages, sessions=2)
    assert (n, total) == (2 * len(messages), 2 * sum(map(len, messages)))


def answers(replies):
    """A script that sends a greeting, then one reply per command line,
    then closes."""
    def script(conn):
        conn.sendall(b"+OK\r\n")
        f = conn.makefile("rb")
        for reply in replies:
            if not f.readline():
                return
            conn.sendall(reply)
    return script


def fails(client, replies, match):
    port, join = scripted(answers(replies))
    try:
        with pytest.raises(pop3load.Pop3Error, match=match):
            pop3load.retrieve_all(client, port, "u", "p", 16)
    finally:
        join()


def test_wrong_size_fails_the_round(client):
    # A server whose RETR answer is shorter than LIST said must not count.
    fails(client, [b"+OK\r\n", b"+OK\r\n", b"+OK 1 10\r\n", b"+OK\r\n1 10\r\n.\r\n",
                   b"+OK\r\n1 a\r\n.\r\n", b"+OK\r\nshort\r\n.\r\n"],
          "RETR 1: 7 octets, LIST said 10")


def test_listing_short_of_stat_fails(client):
    fails(client, [b"+OK\r\n", b"+OK\r\n", b"+OK 2 20\r\n", b"+OK\r\n1 10\r\n.\r\n",
                   b"+OK\r\n1 a\r\n.\r\n"],
          "STAT says 2, LIST 1, UIDL 1")


def test_garbled_listing_fails(client):
    fails(client, [b"+OK\r\n", b"+OK\r\n", b"+OK 1 10\r\n", b"+OK\r\n1 ten\r\n.\r\n"],
          "LIST line 1: 1 ten")


def test_err_reply_fails(client):
    fails(client, [b"+OK\r\n", b"-ERR [AUTH] no\r\n"], r"PASS p: -ERR \[AUTH\] no")


def test_cut_mid_answer_fails(client):
    fails(client, [b"+OK\r\n", b"+OK\r\n", b"+OK 1 10\r\n", b"+OK\r\n1 10\r\n.\r\n",
                   b"+OK\r\n1 a\r\n.\r\n", b"+OK\r\n0123"], "connection closed")
