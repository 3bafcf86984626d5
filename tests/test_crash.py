"""Crash safety: SIGKILL the real server at random moments under load.

The promise (README "How mail flows"): a message is acknowledged only once
it is written, fsynced, renamed into place and its folder fsynced, so a
crash at any moment leaves every acknowledged message exactly once in a
mailbox or the queue, and no half message in any `new/`.

Load comes from several client *processes* (not threads: the kill must
not depend on the test's own GIL scheduling). Each writes the Message-ID of
every message that got its `250` to its own file, one line each, flushed
at once; that file is the list of promises to check.
"""

import email
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import RELAY_SOURCE, free_port

KILLS = 3
# How long the load runs before each kill (random within).
KILL_AFTER = (0.4, 1.6)
CLIENTS = 4

MSGID_RE = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.I | re.M)

# The load generator, run as `python -c CLIENT_SCRIPT ...`. It reconnects
# whenever the server goes away and stops when the stop file appears.
CLIENT_SCRIPT = r"""
import os, random, smtplib, sys, time
port, source, rcpt, prefix, acks, stop = sys.argv[1:7]
rng = random.Random(prefix)
n = 0
out = open(acks, "a", buffering=1)
while not os.path.exists(stop):
    try:
        s = smtplib.SMTP("127.0.0.1", int(port), timeout=5,
                         source_address=(source, 0) if source else None)
        s.ehlo("crash.client")
        for _ in range(rng.randint(1, 15)):
            if os.path.exists(stop):
                break
            n += 1
            mid = f"{prefix}.{n}"
            lines = rng.choice([1, 5, 40, 400, 3000])
            body = "".join(f"{mid} line {i} " + "x" * 60 + "\r\n" for i in range(lines))
            data = (f"From: load@remote.test\r\nTo: {rcpt}\r\nSubject: {mid}\r\n"
                    f"Message-ID: <{mid}@crash.test>\r\n\r\n{body}last-line {mid}\r\n")
            s.sendmail("load@remote.test", [rcpt], data.encode())
            out.write(mid + "\n")   # only after the 250 to the final dot
        s.quit()
    except (OSError, smtplib.SMTPException):
        time.sleep(0.05)
"""


def outbox(port, retry="1h"):
    return (
        "\n[outbox]\nmode = smarthost\n"
        f"host = 127.0.0.1:{port}\ntls = none\nretry = {retry}\ngive_up_after = 1h\n"
    )


def more_connections(n=100):
    return {"max_recipients = 20": f"max_recipients = 20\nmax_connections_per_ip = {n}"}


class Load:
    """CLIENTS processes sending to `rcpts` (cycled) until stopped."""

    def __init__(self, server, workdir: Path, specs):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stop_file = self.dir / "stop"
        self.procs = []
        for i, (source, rcpt) in enumerate(specs):
            acks = self.dir / f"acks{i}"
            self.procs.append((acks, subprocess.Popen(
                [sys.executable, "-c", CLIENT_SCRIPT, str(server.ports["smtp"]), source or "",
                 rcpt, f"{workdir.name}-{i}", str(acks), str(self.stop_file)])))

    def stop(self):
        self.stop_file.touch()
        for _, p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def acked(self, which=None):
        ids = []
        for i, (acks, _) in enumerate(self.procs):
            if which is None or i in which:
                ids += acks.read_text().split() if acks.exists() else []
        return ids


def kill9(server):
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()


def crash_cycles(server, seen_acks):
    """Kills the server KILLS times at random moments and restarts it.
    `seen_acks()` must grow between kills: the load really ran."""
    counts = []
    for _ in range(KILLS):
        before = seen_acks()
        deadline = time.time() + 10
        # Kill only once this round's load is under way.
        while seen_acks() <= before + 2 and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(random.uniform(*KILL_AFTER))
        kill9(server)
        counts.append(seen_acks() - before)
        server.start()
    assert all(c > 0 for c in counts), f"no acknowledged mail between kills: {counts}"
    return counts


def message_id(raw: bytes):
    m = MSGID_RE.search(raw)
    return m.group(1).decode().split("@")[0] if m else None


def check_whole(raw: bytes, where: Path):
    """A stored message parses and ends with its body's last line."""
    mid = message_id(raw)
    assert mid, f"{where}: no Message-ID, a partial file?"
    msg = email.message_from_bytes(raw)
    assert msg["Subject"] == mid, f"{where}: headers do not parse"
    tail = f"last-line {mid}".encode()
    assert raw.rstrip(b"\r\n").endswith(tail), f"{where}: cut short ({len(raw)} bytes)"
    return mid


def maildir_ids(server):
    """Message-ID -> count over every mailbox's new/ and cur/."""
    ids = {}
    for sub in ("new", "cur"):
        for path in server.files_in(sub):
            mid = check_whole(path.read_bytes(), path)
            ids[mid] = ids.get(mid, 0) + 1
    return ids


def queue_ids(server):
    """Message-ID -> count over committed queue entries (an .msg with its .env)."""
    ids = {}
    qdir = server.data_dir / "queue"
    for env in qdir.glob("*.env"):
        msg = env.with_suffix(".msg")
        assert msg.exists(), f"{env.name} without its message"
        text = env.read_text()
        assert text.rstrip().endswith("end"), f"{env.name} cut short"
        if "state: pending" not in text:
            continue  # finished; recovery removes it
        mid = check_whole(msg.read_bytes(), msg)
        ids[mid] = ids.get(mid, 0) + 1
    return ids


def test_sigkill_under_load_keeps_every_acknowledged_message(make_server, tmp_path):
    dead = free_port()  # the smarthost is down: remote mail stays queued
    server = make_server(extra=outbox(dead), replace=more_connections())
    specs = [(None, "bob@example.test"), (None, "alice@example.test"),
             (RELAY_SOURCE, "carol@remote.test"), (RELAY_SOURCE, "dan@remote.test")][:CLIENTS]
    load = Load(server, tmp_path / "load", specs)
    try:
        per_round = crash_cycles(server, lambda: len(load.acked()))
    finally:
        load.stop()
    # One more start: recovery runs; then a clean stop, and read the disk.
    server.restart()
    server.stop()

    local = set(load.acked({0, 1}))
    remote = set(load.acked({2, 3}))
    in_maildir = maildir_ids(server)
    in_queue = queue_ids(server)
    lost_local = sorted(local - in_maildir.keys())
    lost_remote = sorted(remote - in_queue.keys())
    dup = {k: v for k, v in {**in_maildir, **in_queue}.items() if v > 1}
    both = in_maildir.keys() & in_queue.keys()
    print(f"\ncrash/inbound: acknowledged {len(local)} local + {len(remote)} queued "
          f"over {KILLS} kills (per round {per_round}); lost {len(lost_local) + len(lost_remote)}; "
          f"stored but unacknowledged {len(in_maildir.keys() - local) + len(in_queue.keys() - remote)}")
    assert not lost_local, f"acknowledged, not in a mailbox: {lost_local[:10]}"
    assert not lost_remote, f"acknowledged, not in the queue: {lost_remote[:10]}"
    assert not dup, f"stored more than once: {dup}"
    assert not both
    # Every local message went to its own mailbox.
    for rcpt, ids in (("bob@example.test", set(load.acked({0}))),
                      ("alice@example.test", set(load.acked({1})))):
        got = {message_id(server.maildir(rcpt).get_bytes(k)) for k in server.maildir(rcpt).keys()}
        assert ids <= got, rcpt
    # Whatever the crash left in the queue's tmp/ was cleaned at start.
    assert list((server.data_dir / "queue" / "tmp").iterdir()) == []


class Sink:
    """A plain aiosmtpd smarthost that counts what it receives by Message-ID."""

    def __init__(self, port):
        from aiosmtpd.controller import Controller

        self.received = {}
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                import asyncio

                await asyncio.sleep(random.uniform(0, 0.02))  # widen the window
                mid = message_id(envelope.content)
                with sink.lock:
                    sink.received[mid] = sink.received.get(mid, 0) + 1
                return "250 2.0.0 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        self.controller.start()

    def stop(self):
        self.controller.stop()

    def total(self):
        with self.lock:
            return sum(self.received.values())


def test_sigkill_during_outbound_delivery_loses_nothing(make_server, tmp_path):
    port = free_port()
    sink = Sink(port)
    try:
        server = make_server(extra=outbox(port, retry="1s"), replace=more_connections())
        load = Load(server, tmp_path / "load", [(RELAY_SOURCE, "carol@remote.test"),
                                                (RELAY_SOURCE, "dan@remote.test")])
        try:
            # Kill while the outbox is sending: count what the sink got.
            per_round = crash_cycles(server, sink.total)
        finally:
            load.stop()
        acked = set(load.acked())
        # Restart: recovery, then the queue drains to the sink.
        server.restart()
        deadline = time.time() + 30
        while time.time() < deadline and not acked <= sink.received.keys():
            time.sleep(0.1)
        time.sleep(0.5)
        server.stop()
    finally:
        sink.stop()

    in_queue = queue_ids(server)
    lost = sorted(m for m in acked if m not in sink.received and m not in in_queue)
    twice = {m: c for m, c in sink.received.items() if c > 1}
    print(f"\ncrash/outbound: acknowledged {len(acked)}, sink got {sink.total()} "
          f"({len(twice)} twice) over {KILLS} kills (per round {per_round}); "
          f"still queued {len(in_queue)}; lost {len(lost)}")
    assert not lost, f"acknowledged, neither delivered nor queued: {lost[:10]}"
    assert all(c <= 2 for c in sink.received.values()), f"delivered more than twice: {twice}"
    # A message is re-sent only when a kill cut it between the sink's 250
    # and the queue's record of it: at most one per session in flight.
    assert len(twice) <= KILLS * 4, twice
