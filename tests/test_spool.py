"""Bounded memory for any message size on the way in: SMTP bodies stream to
data_dir/spool/ as they arrive and every copy is written from there, so the
server's memory does not grow with the messages it is receiving.

Raw sockets send the bytes (no client library buffers or reorders them);
the server's peak RSS is read from /proc.
"""

import hashlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Raw, rss_kib

MIB = 1 << 20
# The whole server, however many large messages it is receiving.
RSS_LIMIT_KIB = 16 * 1024
BIG = 20_000_000
HOLD = 10


def body_of(size, tag):
    """`size` octets of CRLF lines (some dot-stuffed on the wire), and the
    wire bytes of it for DATA. Returns (message, data_wire)."""
    head = f"Subject: {tag}\r\nMessage-ID: <{tag}@spool.test>\r\n\r\n".encode()
    line = b"0123456789" * 9 + b"abcdef\r\n"  # 98 octets
    dot = b".starts with a dot" + b"-" * 78 + b"\r\n"  # 98 octets
    unit = line * 99 + dot
    n, rest = divmod(size - len(head), len(unit))
    tail = b"y" * (rest - 2) + b"\r\n" if rest >= 2 else b"z" * rest
    msg = head + unit * n + tail
    assert len(msg) == size
    wire = msg.replace(b"\r\n.", b"\r\n..")
    return msg, wire


def stored(msg):
    return msg.replace(b"\r\n", b"\n")


def start_txn(port, tag):
    c = Raw(port, timeout=300)
    assert c.reply().startswith(b"220")
    assert c.cmd(b"EHLO spool.test").startswith(b"250")
    assert c.cmd(b"MAIL FROM:<sender@remote.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<bob@example.test>").startswith(b"250")
    return c


def spool_files(server):
    d = server.data_dir / "spool"
    return sorted(d.iterdir()) if d.exists() else []


def wait_for(what, cond, timeout=60):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def delivered_by_subject(server):
    out = {}
    for p in (server.maildir_path("bob@example.test") / "new").iterdir():
        data = p.read_bytes()
        head = data[:4096]
        i = head.find(b"Subject: ")
        tag = head[i + 9:head.index(b"\n", i)].decode()
        out[tag] = data
    return out


@pytest.fixture
def ram_data_dir():
    """A data_dir in RAM (tmpfs) when the machine has one: the 800 MB this
    test writes (spool, then copies) and their fsyncs would otherwise slow
    every other test running beside it. tmpfs pages are not the server's
    RSS. Elsewhere: the test's own tmp folder."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix="mailgate-spool-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_twenty_unfinished_20mb_messages_stay_under_16_mib(make_server, ram_data_dir):
    # Sending 400 MB one connection after the other takes a while on a busy
    # machine: the first client must not time out meanwhile.
    server = make_server(replace={"max_message_size = 1M": "max_message_size = 25M",
                                  "timeout = 30s": "timeout = 15m",
                                  "data_dir = ": f"data_dir = {ram_data_dir}/data\n# was: "},
                         start=False)
    server.data_dir = ram_data_dir / "data"
    server.start()
    pid = server.proc.pid
    idle = rss_kib(pid, "VmRSS")
    port = server.ports["smtp"]
    want = {}
    conns = []
    # 10 DATA transactions: everything but the final dot.
    for i in range(HOLD):
        tag = f"data-{i}"
        msg, wire = body_of(BIG, tag)
        c = start_txn(port, tag)
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(wire)
        conns.append((c, b".\r\n"))
        want[tag] = hashlib.sha256(stored(msg)).hexdigest()
    # 10 BDAT transactions: a first chunk, then all of the LAST but 1 octet.
    for i in range(HOLD):
        tag = f"bdat-{i}"
        msg, _ = body_of(BIG, tag)
        c = start_txn(port, tag)
        first, last = msg[:7_000_000], msg[7_000_000:]
        c.send(b"BDAT %d\r\n" % len(first) + first)
        assert c.reply().startswith(b"250 2.0.0 7000000 octets")
        c.send(b"BDAT %d LAST\r\n" % len(last) + last[:-1])
        conns.append((c, last[-1:]))
        want[tag] = hashlib.sha256(stored(msg)).hexdigest()
    # The server has read (almost) all of it: it is on disk, not in memory.
    expect = len(stored(msg)) * 2 * HOLD
    wait_for("the spool to fill",
             lambda: sum(p.stat().st_size for p in spool_files(server)) > expect - 2 * HOLD * 256 * 1024,
             300)
    assert len(spool_files(server)) == 2 * HOLD
    held = rss_kib(pid, "VmRSS")
    print(f"\nRSS idle {idle} KiB; holding {2 * HOLD} x {BIG} octets: {held} KiB (peak {rss_kib(pid)} KiB)")
    assert held < RSS_LIMIT_KIB, f"RSS {held} KiB while receiving"
    # Finish them all; every one is stored whole.
    for c, end in conns:
        c.send(end)
    for c, _ in conns:
        reply = c.reply()
        assert reply.startswith(b"250 2.0.0 Ok: queued as"), reply
        assert c.cmd(b"QUIT").startswith(b"221")
    got = delivered_by_subject(server)
    assert sorted(got) == sorted(want)
    for tag, data in got.items():
        i = data.index(b"\nSubject: ") + 1
        assert hashlib.sha256(data[i:]).hexdigest() == want[tag], f"{tag} not stored whole"
    assert spool_files(server) == []
    assert server.files_in("tmp") == []
    peak = rss_kib(pid)
    print(f"peak RSS after delivering them: {peak} KiB")
    assert peak < RSS_LIMIT_KIB, f"peak RSS {peak} KiB"


def test_exactly_max_message_size_and_one_octet_over(make_server):
    server = make_server()  # max_message_size = 1M
    port = server.ports["smtp"]
    limit = 1 << 20
    for verb in ("DATA", "BDAT"):
        for size, ok in ((limit, True), (limit + 1, False)):
            tag = f"{verb}-{size}"
            msg, wire = body_of(size, tag)
            c = start_txn(port, tag)
            if verb == "DATA":
                assert c.cmd(b"DATA").startswith(b"354")
                c.send(wire + b".\r\n")
            else:
                half = size // 2
                c.send(b"BDAT %d\r\n" % half + msg[:half])
                first = c.reply()
                c.send(b"BDAT %d LAST\r\n" % (size - half) + msg[half:])
                if ok:
                    assert first.startswith(b"250 2.0.0"), first
            reply = c.reply()
            if ok:
                assert reply.startswith(b"250 2.0.0 Ok: queued as"), (tag, reply)
            else:
                assert reply.startswith(b"552 5.3.4"), (tag, reply)
            assert c.cmd(b"QUIT").startswith(b"221")
    got = delivered_by_subject(server)
    assert sorted(got) == sorted(f"{v}-{limit}" for v in ("DATA", "BDAT"))
    for tag, data in got.items():
        msg, _ = body_of(limit, tag)
        assert data.endswith(stored(msg)), f"{tag} not stored whole"
    wait_for("an empty spool", lambda: spool_files(server) == [], 10)
    assert server.files_in("tmp") == []


@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_client_vanishing_mid_message_leaves_nothing(make_server, verb):
    server = make_server(replace={"max_message_size = 1M": "max_message_size = 25M"})
    msg, wire = body_of(5 * MIB, "vanish")
    c = start_txn(server.ports["smtp"], "vanish")
    if verb == "DATA":
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(wire[: 4 * MIB])
    else:
        c.send(b"BDAT %d LAST\r\n" % len(msg) + msg[: 4 * MIB])
    wait_for("a spool file", lambda: spool_files(server) != [], 20)
    # Gone without a word (RST).
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.sock.close()
    wait_for("the spool file to go", lambda: spool_files(server) == [], 20)
    assert server.files_in("tmp") == [] and server.files_in("new") == []
    # The server carries on.
    c = start_txn(server.ports["smtp"], "after")
    assert c.cmd(b"DATA").startswith(b"354")
    assert c.cmd(b"Subject: after\r\n\r\nhi\r\n.").startswith(b"250 2.0.0 Ok: queued as")
    assert len(server.wait_messages("bob@example.test", 1)) == 1


def test_spool_files_left_by_a_crash_are_removed_at_start(make_server):
    server = make_server(start=False)
    spool = server.data_dir / "spool"
    spool.mkdir(parents=True)
    (spool / "4242.7").write_bytes(b"half a message")
    server.start()
    assert spool_files(server) == []
    assert "removed 1 unfinished message bodies" in server.log_text()
