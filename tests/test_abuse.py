"""Load and abuse: many idle connections, slow-loris clients, junk floods.

One event loop serves everyone, so a crowd of idle or hostile clients must
neither slow down a real transaction nor keep memory once they are gone,
and a client that trickles bytes without ever finishing a command must be
cut off like a silent one.
"""

import os
import random
import resource
import smtplib
import socket
import statistics
import threading
import time

import pytest

from conftest import Raw

CROWD = 1000
JUNK_CONNECTIONS = 200


def limits(n):
    return {"max_recipients = 20": f"max_recipients = 20\nmax_connections = {n}\n"
                                   f"max_connections_per_ip = {n}"}


def raise_nofile(need):
    """The server inherits our limit: raise the soft one toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {need}")


def server_nofile(server):
    for line in open(f"/proc/{server.proc.pid}/limits"):
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return None


def rss_kib(server):
    for line in open(f"/proc/{server.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def timed_send(server, n):
    start = time.monotonic()
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        s.ehlo("timed.client")
        assert s.sendmail("carol@remote.test", ["bob@example.test"],
                          f"Subject: timed {n}\r\n\r\nbody\r\n".encode()) == {}
    return time.monotonic() - start


def test_idle_crowd_does_not_slow_a_transaction(make_server):
    # Port 25 may hold three quarters of max_connections (the rest is kept
    # for mail clients): leave room for the crowd and the timed sends.
    slots = CROWD * 4 // 3 + 100
    raise_nofile(slots + 100)
    server = make_server(replace=limits(slots))
    assert server_nofile(server) >= slots
    base = [timed_send(server, i) for i in range(5)]

    crowd = []
    try:
        for _ in range(CROWD):
            crowd.append(socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10))
        # Every one of them was accepted and greeted (none refused with 421).
        for c in crowd:
            greeting = c.recv(512)
            assert greeting.startswith(b"220"), greeting
        loaded = [timed_send(server, 100 + i) for i in range(5)]
        # The crowd is still there, and still served.
        for c in random.sample(crowd, 20):
            c.sendall(b"NOOP\r\n")
            assert c.recv(512).startswith(b"250")
    finally:
        for c in crowd:
            c.close()
    print(f"\nabuse/crowd: send median {statistics.median(base) * 1000:.1f} ms alone, "
          f"{statistics.median(loaded) * 1000:.1f} ms beside {CROWD} idle connections "
          f"(max {max(loaded) * 1000:.1f} ms)")
    assert max(loaded) < 1.0, loaded
    assert len(server.wait_messages("bob@example.test", 10)) == 10


def test_slow_loris_is_cut_off(make_server):
    timeout = 3
    server = make_server(replace={"timeout = 30s\n\n[pop3]": f"timeout = {timeout}s\n\n[pop3]"})
    cut = {}

    def trickle(name, prefix, unit):
        r = Raw(server.ports["smtp"])
        r.reply()
        for line in prefix:
            assert r.cmd(line)[:1] in (b"2", b"3"), line
        start = time.monotonic()
        try:
            # One byte a second, never a whole line (or never the end of
            # the data): progress that is no progress.
            while time.monotonic() - start < 4 * timeout:
                r.send(unit)
                r.sock.settimeout(1)
                try:
                    data = r.sock.recv(512)
                except (socket.timeout, TimeoutError):
                    continue
                if not data or data.startswith(b"421"):
                    cut[name] = time.monotonic() - start
                    return
        except (BrokenPipeError, ConnectionResetError):
            cut[name] = time.monotonic() - start
            return
        finally:
            r.close()
        cut[name] = None

    threads = [
        threading.Thread(target=trickle, args=("command", [b"EHLO loris"], b"a")),
        threading.Thread(target=trickle, args=("data", [b"EHLO loris", b"MAIL FROM:<l@remote.test>",
                                                         b"RCPT TO:<bob@example.test>", b"DATA"], b"b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"\nabuse/slow-loris: cut after {cut} s (timeout {timeout} s)")
    assert cut["command"] is not None, "a client trickling a command line is never cut off"
    assert cut["command"] < 2 * timeout + 1
    assert cut["data"] is not None, "a client trickling the data is never cut off"
    assert cut["data"] < 2 * timeout + 1
    # The server is fine.
    assert timed_send(server, 1) < 1.0


def test_junk_connections_leave_memory_near_baseline(make_server):
    raise_nofile(JUNK_CONNECTIONS * 2 + 200)
    server = make_server(replace=limits(JUNK_CONNECTIONS + 50))
    timed_send(server, 0)  # warm up: first delivery, first worker job
    time.sleep(0.2)
    before = rss_kib(server)
    rng = random.Random(42)
    junk = [bytes(rng.getrandbits(8) for _ in range(rng.choice([10, 1000, 70000])))
            + rng.choice([b"", b"\r\n", b"\n" * 50, b"DATA\r\n" + b"x" * 100000])
            for _ in range(16)]
    errors = []

    def flood(k):
        try:
            socks = []
            for i in range(k, JUNK_CONNECTIONS, 10):
                s = socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10)
                socks.append(s)
                try:
                    s.sendall(junk[i % len(junk)])
                except (BrokenPipeError, ConnectionResetError):
                    pass
            for s in socks:
                s.close()
        except OSError as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=flood, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    peak = rss_kib(server)
    assert errors == []
    time.sleep(1.0)
    assert server.proc.poll() is None, "the server died"
    assert timed_send(server, 1) < 1.0
    after = rss_kib(server)
    print(f"\nabuse/junk: VmRSS {before} KiB before, {peak} KiB right after {JUNK_CONNECTIONS} "
          f"junk connections, {after} KiB a second later")
    # Buffers are per connection and bounded; what stays is allocator slack.
    assert after < before + 16 * 1024, (before, after)


def test_pop3_slow_loris_is_cut_off(make_server):
    timeout = 3
    server = make_server(replace={"timeout = 30s\n\n[domain": f"timeout = {timeout}s\n\n[domain"})
    r = Raw(server.ports["pop3"])
    assert r.line().startswith(b"+OK")
    start = time.monotonic()
    closed_after = None
    try:
        while time.monotonic() - start < 4 * timeout:
            r.send(b"U")  # never a whole line
            r.sock.settimeout(1)
            try:
                data = r.sock.recv(512)
            except (socket.timeout, TimeoutError):
                continue
            if not data or data.startswith(b"-ERR"):
                closed_after = time.monotonic() - start
                break
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.monotonic() - start
    finally:
        r.close()
    assert closed_after is not None and closed_after < 2 * timeout, closed_after
