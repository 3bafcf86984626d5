"""IMAP's memory bounds (issue 13 item 7) against the real binary, with
Python's imaplib.

A FETCH of a 50 MB message streams the file to the socket in pieces, so
the server's resident set grows by less than 16 MiB however the message is
asked for (BODY[], RFC822, BODY[TEXT], a partial BODY[]<o.n>); the bytes
the client gets are checked against the file. RSS is the server's own
VmHWM (peak) from /proc, read before and after.
"""

import hashlib
import imaplib
import os
import socket
import time

import pytest

from conftest import peak_rss_kib, rss_kib

USER, PASSWORD = "bob@example.test", "secret"
BIG = 50 << 20
LIMIT_KIB = 16 << 10


def big_message():
    """About 50 MB with LF line ends (as mail is stored); IMAP presents
    it with CRLF."""
    head = b"From: alice@example.test\nTo: bob@example.test\nSubject: big\n\n"
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-=\n"
    body = line * (BIG // len(line))
    return head, body


def crlf(b):
    return b.replace(b"\n", b"\r\n")


@pytest.fixture
def big(make_server):
    s = make_server(replace={"max_message_size = 1M": "max_message_size = 64M"})
    m = imaplib.IMAP4("127.0.0.1", s.ports["imap"], timeout=60)
    m.login(USER, PASSWORD)  # makes the Maildir
    m.logout()
    head, body = big_message()
    md = s.maildir_path(USER)
    tmp = md / "tmp" / "big.tmp"
    tmp.write_bytes(head + body)
    os.rename(tmp, md / "new" / f"{int(time.time())}.big.mx")
    return s, head, body


def fetch_one(m, item):
    typ, data = m.fetch("1", f"({item})")
    assert typ == "OK", data
    return data[0][1]


def test_fetch_of_50mb_message_streams(big):
    s, head, body = big
    m = imaplib.IMAP4("127.0.0.1", s.ports["imap"], timeout=120)
    m.login(USER, PASSWORD)
    typ, data = m.select("INBOX")
    assert typ == "OK" and data[0] == b"1"
    whole = crlf(head + body)
    typ, data = m.fetch("1", "(RFC822.SIZE)")
    assert f"RFC822.SIZE {len(whole)}".encode() in data[0], data
    before = peak_rss_kib(s.proc.pid)
    now = rss_kib(s.proc.pid, "VmRSS")

    got = fetch_one(m, "BODY.PEEK[]")
    assert len(got) == len(whole) and hashlib.sha256(got).digest() == hashlib.sha256(whole).digest()
    del got
    got = fetch_one(m, "BODY.PEEK[TEXT]")
    assert got == crlf(body)
    del got
    got = fetch_one(m, "BODY.PEEK[]<30000000.5000000>")
    assert got == whole[30000000:35000000]
    del got
    # RFC822 sets \Seen: the flag comes with the message, after the body.
    typ, data = m.fetch("1", "(RFC822)")
    assert typ == "OK"
    assert data[0][1] == whole
    assert b"\\Seen" in data[1], data[1]
    del data
    # The literal is followed by the message's other items, in order.
    typ, data = m.fetch("1", "(BODY.PEEK[HEADER] BODY.PEEK[]<0.10> UID RFC822.SIZE)")
    assert data[0][1] == crlf(head) and data[1][1] == b"From: alic"
    assert data[2] == f" UID 1 RFC822.SIZE {len(whole)})".encode(), data
    m.logout()

    after = peak_rss_kib(s.proc.pid)
    grew = after - before
    print(f"RSS before {now} KiB, peak before {before} KiB, peak after {after} KiB: +{grew} KiB")
    assert grew < LIMIT_KIB, f"peak RSS grew {grew} KiB fetching a 50 MB message"


def test_fetch_of_big_message_waits_for_the_socket(big):
    """A client that reads nothing: the server stops reading the file
    once a few pieces are queued (back-pressure), and RSS stays flat."""
    s, head, body = big
    before = peak_rss_kib(s.proc.pid)
    sock = socket.create_connection(("127.0.0.1", s.ports["imap"]), timeout=30)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(f"a LOGIN {USER} {PASSWORD}\r\nb SELECT INBOX\r\nc FETCH 1 BODY.PEEK[]\r\n".encode())
    time.sleep(3)
    stalled = peak_rss_kib(s.proc.pid)
    # Then read it all: the stream resumes where it stopped.
    got = bytearray()
    while not got.endswith(b"c OK FETCH completed\r\n"):
        chunk = f.read1(1 << 20)
        assert chunk, got[-200:]
        got += chunk
    sock.close()
    assert crlf(head + body) in got
    assert stalled - before < LIMIT_KIB, f"stalled client: peak RSS grew {stalled - before} KiB"


@pytest.fixture
def roomy(make_server):
    return make_server(replace={"max_message_size = 1M": "max_message_size = 64M"})


def raw_login(s):
    sock = socket.create_connection(("127.0.0.1", s.ports["imap"]), timeout=60)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(f"a LOGIN {USER} {PASSWORD}\r\n".encode())
    assert f.readline().startswith(b"a OK")
    return sock, f


def leftovers(s):
    root = s.maildir_path(USER)
    return [p for p in root.rglob("*") if p.is_file() and p.parent.name == "tmp"]


def test_append_of_30mb_streams_to_disk(roomy):
    s = roomy
    m = imaplib.IMAP4("127.0.0.1", s.ports["imap"], timeout=120)
    m.login(USER, PASSWORD)
    before = peak_rss_kib(s.proc.pid)
    line = b"appended line of a big message, 0123456789 abcdefghijklmnopqrstuvwxyz\r\n"
    msg = b"From: me@example.test\r\nSubject: big append\r\n\r\n" + line * ((30 << 20) // len(line))
    typ, data = m.append("INBOX", "(\\Seen)", None, msg)
    assert typ == "OK" and b"APPENDUID" in data[0], data
    grew = peak_rss_kib(s.proc.pid) - before
    print(f"APPEND of {len(msg)} octets: peak RSS grew {grew} KiB")
    typ, data = m.select("INBOX")
    assert data[0] == b"1"
    typ, data = m.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[]<0.200>)")
    assert f"RFC822.SIZE {len(msg)}".encode() in data[0][0] and b"\\Seen" in data[0][0], data
    assert data[0][1] == msg[:200]
    m.logout()
    # Stored as Maildir keeps it (LF), and nothing is left in any tmp/.
    files = [p for p in s.maildir_path(USER).glob("cur/*")]
    assert len(files) == 1 and files[0].stat().st_size == len(msg.replace(b"\r\n", b"\n"))
    assert leftovers(s) == []
    assert grew < LIMIT_KIB, f"peak RSS grew {grew} KiB appending 30 MB"


def test_client_gone_mid_big_append_leaves_no_file(roomy):
    s = roomy
    sock, f = raw_login(s)
    sock.sendall(b"b APPEND INBOX {20000000}\r\n")
    assert f.readline().startswith(b"+")
    sock.sendall(b"x" * 3_000_000)
    # Wait until chunks are on disk: the file exists mid-APPEND ...
    deadline = time.time() + 20
    while not leftovers(s) and time.time() < deadline:
        time.sleep(0.05)
    assert leftovers(s), "no spool file while the literal came in"
    f.close()
    sock.close()
    # ... and goes when the client does.
    deadline = time.time() + 20
    while leftovers(s) and time.time() < deadline:
        time.sleep(0.05)
    assert leftovers(s) == []
    m = imaplib.IMAP4("127.0.0.1", s.ports["imap"], timeout=30)
    m.login(USER, PASSWORD)
    typ, data = m.select("INBOX")
    assert data[0] == b"0"
    m.logout()
    root = s.maildir_path(USER)
    assert [p for p in root.glob("*/*") if p.is_file() and p.parent.name in ("new", "cur")] == []


def test_append_over_the_limit_costs_no_memory(server):
    """max_message_size = 1M: {4000000000} is refused at once; a 20 MB
    LITERAL+ (sent whatever the server says) is read and dropped."""
    s = server
    sock, f = raw_login(s)
    sock.sendall(b"b CAPABILITY\r\n")
    caps = f.readline()
    assert b"APPENDLIMIT=1048576" in caps, caps
    f.readline()
    sock.sendall(b"c APPEND INBOX {4000000000}\r\n")
    assert f.readline().startswith(b"c NO [TOOBIG]")
    before = peak_rss_kib(s.proc.pid)
    n = 20_000_000
    sock.sendall(b"d APPEND INBOX {%d+}\r\n" % n)
    chunk = b"y" * (1 << 20)
    for _ in range(n // len(chunk)):
        sock.sendall(chunk)
    sock.sendall(b"y" * (n % len(chunk)) + b"\r\ne NOOP\r\n")
    assert f.readline().startswith(b"d NO [TOOBIG]")
    assert f.readline().startswith(b"e OK")
    grew = peak_rss_kib(s.proc.pid) - before
    sock.close()
    assert grew < 4 << 10, f"a refused literal grew peak RSS by {grew} KiB"
    assert leftovers(s) == []
