"""Power cuts under load, on every write path (issue 17).

The server's data_dir is a power-cut filesystem (tests/powercut_fs.py):
only what was fsynced (files) and fsyncdir'd (folders) survives a cut.
A cut here: the filesystem freezes at a random instant (now, after a
random delay, or just before the N-th sync from now, so that cuts also
land between the syncs of one transaction); from then on every operation
blocks unapplied, so nothing the server says afterwards can rest on a
write after the cut. Then SIGKILL, the blocked calls fail, the
filesystem keeps only its durable image, and the server starts again on
what is left.

Promises checked (README "How mail flows"): every message that got a
`250` (or a zero `sendmail` exit, or a DELE at the ISP) is present once,
whole, in its mailbox or the queue; nothing half-written in any `new/` or
`cur/`; the queue and the UIDL records parse; a deletion that got QUIT's
`+OK` stays done. Each test prints a line for the per-path table: cuts,
acknowledged, lost, duplicated.

Regression cases, each a cut at a chosen instant, keep what the random
cuts found: the first queued message (queue folders not synced), every
crash point of one SmartPop collection (a record naming a tmp/ copy whose
name was not durable), the records folder, two accounts into one mailbox,
every crash point of a POP3 QUIT and a delivery between its syncs (moves
to cur/), and data_dir made by `serve` (once synced in no parent).

The seed is printed; `POWERCUT_SEED=N` replays the random choices (the
load's timing is not replayed). `POWERCUT_CUTS` sets the cuts per path.
"""

import email
import poplib
import smtplib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN, RELAY_SOURCE, Server, free_port
from powercut import PowerCutMount, skip_unless_usable

SEED = int(os.environ.get("POWERCUT_SEED") or random.SystemRandom().randrange(1 << 32))
CUTS = int(os.environ.get("POWERCUT_CUTS") or 20)

MSGID_RE = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.I | re.M)


def rng_for(name):
    print(f"\npowercut seed {SEED} (replay: POWERCUT_SEED={SEED})")
    return random.Random(f"{SEED}-{name}")


# -- the server on a power-cut filesystem ------------------------------------


def ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def stable_port(taken=set()):
    """A free loopback port below the ephemeral range (see CutServer)."""
    low = ephemeral_low()
    for _ in range(200):
        port = random.randint(max(1024, low - 12000), low - 1)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    return free_port()


class CutServer:
    """A mailgate whose data_dir is a power-cut mount."""

    def __init__(self, tmp_path, extra="", replace=None, premade_data_dir=True):
        self.server = s = Server(tmp_path / "s", extra, replace)
        # The server restarts on the same ports some 20 times; between a
        # kill and the restart, any process on the machine may be given a
        # freed port in the ephemeral range as its source port and hold it.
        # Ports below that range are never handed out so.
        for name, port in list(s.ports.items()):
            new_port = stable_port()
            s.config_text = s.config_text.replace(f"127.0.0.1:{port}\n", f"127.0.0.1:{new_port}\n")
            s.ports[name] = new_port
        # data_dir one level inside the mount, over a trap file (see
        # PowerCutMount): mailgate makes data_dir itself, durably.
        mnt = tmp_path / "mnt"
        data_dir = mnt / "data"
        s.config_text = s.config_text.replace(f"data_dir = {s.data_dir}\n", f"data_dir = {data_dir}\n")
        assert str(data_dir) in s.config_text
        s.config.write_text(s.config_text)
        s.data_dir = data_dir
        self.fs = PowerCutMount(mnt, tmp_path / "fs", trap="data").mount()
        if premade_data_dir:
            # As an installer leaves it: made, and its name synced.
            data_dir.mkdir(mode=0o700)
            fd = os.open(mnt, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        self.cut_log = []

    def start(self):
        t0 = time.time()
        for attempt in range(20):
            try:
                self.server.start()
                break
            except RuntimeError:
                # A client's ephemeral port may sit on one of our freed
                # listening ports for a moment (the server was killed).
                if attempt == 19 or "Address already in use" not in self.server.log_text()[-300:]:
                    raise
                time.sleep(0.2)
        self.cut_log.append(f"start {time.time() - t0:.2f}s")

    def power_cut(self, rng, others=(), mode=None, max_syncs=25):
        t0 = time.time()
        self._power_cut(rng, others, mode, max_syncs)
        self.cut_log[-1] += f" [{time.time() - t0:.2f}s]"

    def _power_cut(self, rng, others, mode, max_syncs):
        """Freeze at a random instant (or `mode` "now"), SIGKILL the server
        (and `others`, procs writing to the mount), cut, remount. The
        caller starts the server again."""
        if mode == "frozen":
            self.cut_log.append("set by the caller")
        elif mode == "now":
            self.fs.freeze(0)
            self.cut_log.append("now")
        elif rng.random() < 0.4:
            time.sleep(rng.uniform(0.0, 0.25))
            self.fs.freeze(0)
            self.cut_log.append("now")
        else:
            n = rng.randint(1, max_syncs)
            self.fs.freeze(n)
            how = f"sync {n}"
            if not self.fs.wait_frozen(1.0):
                self.fs.freeze(0)
                how += " (idle: now)"
            self.cut_log.append(how)
        procs = [self.server.proc, *others]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        t0 = time.time()
        self.fs.release()
        for p in procs:
            p.wait(20)
        t1 = time.time()
        self.fs.cut()
        self.cut_log[-1] += f" [wait {t1 - t0:.2f}s cut {time.time() - t1:.2f}s]"

    def close(self):
        # A test that failed while frozen: let blocked calls fail first, or
        # the server could never exit.
        try:
            self.fs.release()
        except OSError:
            pass
        try:
            self.server.stop()
        except RuntimeError:
            pass
        self.fs.close()


@pytest.fixture
def cut_server(tmp_path):
    skip_unless_usable()
    made = []

    def make(extra="", replace=None, premade_data_dir=True):
        s = CutServer(tmp_path / f"c{len(made)}", extra, replace, premade_data_dir)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def more_connections(n=100):
    return {"max_recipients = 20": f"max_recipients = 20\nmax_connections_per_ip = {n}"}


def outbox(port, retry="1h"):
    return (
        "\n[outbox]\nmode = smarthost\n"
        f"host = 127.0.0.1:{port}\ntls = none\nretry = {retry}\ngive_up_after = 1h\n"
    )


# -- load ---------------------------------------------------------------------

# One client process (not a thread: the cut must not wait on our GIL). It
# writes each Message-ID to ACKS only after the 250 (or zero exit), one line
# each, flushed at once; it reconnects when the server goes away and stops
# when STOP appears. Kind "smtp" or "sendmail".
CLIENT_SCRIPT = r"""
import os, random, smtplib, subprocess, sys, time
kind, port, source, rcpts, prefix, acks, stop, bin_, config = sys.argv[1:10]
rcpts = rcpts.split(",")
rng = random.Random(prefix)
n = 0
out = open(acks, "a", buffering=1)

def message():
    global n
    n += 1
    mid = f"{prefix}.{n}"
    lines = rng.choice([1, 3, 20, 200])
    body = "".join(f"{mid} line {i} " + "x" * 60 + "\r\n" for i in range(lines))
    data = (f"From: load@example.test\r\nTo: {', '.join(rcpts)}\r\nSubject: {mid}\r\n"
            f"Message-ID: <{mid}@cut.test>\r\n\r\n{body}last-line {mid}\r\n")
    return mid, data

while not os.path.exists(stop):
    if kind == "sendmail":
        mid, data = message()
        try:
            r = subprocess.run([bin_, "-c", config, "sendmail", "-f", "bob@example.test", *rcpts],
                               input=data.encode(), capture_output=True, timeout=20)
        except subprocess.TimeoutExpired:
            continue
        if r.returncode == 0:
            out.write(mid + "\n")
        else:
            time.sleep(0.05)
        continue
    try:
        s = smtplib.SMTP("127.0.0.1", int(port), timeout=8,
                         source_address=(source, 0) if source else None)
        s.ehlo("cut.client")
        for _ in range(rng.randint(1, 10)):
            if os.path.exists(stop):
                break
            mid, data = message()
            sender = "bob@example.test" if source else "load@remote.test"
            s.sendmail(sender, rcpts, data.encode())
            out.write(mid + "\n")   # only after the 250 to the final dot
        s.quit()
    except (OSError, smtplib.SMTPException):
        time.sleep(0.05)
"""


class Load:
    """Client processes, one per spec (kind, source, rcpts)."""

    def __init__(self, server, workdir: Path, specs):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stop_file = self.dir / "stop"
        self.specs = specs
        self.procs = []
        for i, (kind, source, rcpts) in enumerate(specs):
            acks = self.dir / f"acks{i}"
            self.procs.append((acks, subprocess.Popen(
                [sys.executable, "-c", CLIENT_SCRIPT, kind, str(server.ports["smtp"]),
                 source or "", ",".join(rcpts), f"{workdir.name}-{i}", str(acks),
                 str(self.stop_file), BIN, str(server.config)])))

    def stop(self):
        self.stop_file.touch()
        for _, p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def acked(self, i):
        acks = self.procs[i][0]
        return acks.read_text().split() if acks.exists() else []

    def total(self):
        return sum(len(self.acked(i)) for i in range(len(self.procs)))


WAITS = []


def wait_growth(count, before, more=2, timeout=15):
    t0 = time.time()
    deadline = t0 + timeout
    while count() < before + more and time.time() < deadline:
        time.sleep(0.02)
    WAITS.append(round(time.time() - t0, 2))
    return count() - before


# -- reading what survived ---------------------------------------------------


def message_id(raw: bytes):
    m = MSGID_RE.search(raw)
    return m.group(1).decode().split("@")[0] if m else None


def check_whole(raw: bytes, where):
    mid = message_id(raw)
    assert mid, f"{where}: no Message-ID, a partial file?"
    msg = email.message_from_bytes(raw)
    assert msg["Subject"] == mid, f"{where}: headers do not parse"
    assert raw.rstrip(b"\r\n").endswith(f"last-line {mid}".encode()), \
        f"{where}: cut short ({len(raw)} bytes)"
    return mid


def mailbox_files(server, address):
    root = server.maildir_path(address)
    return [p for sub in ("new", "cur") if (root / sub).is_dir()
            for p in sorted((root / sub).iterdir()) if p.is_file()]


def mailbox_ids(server, address):
    """Message-ID -> copies in ADDRESS's new/ and cur/; every file whole.
    Two names of one file (new/NAME and cur/NAME:2,S, a move cut between
    its two folder syncs) are one copy: the server shows it once."""
    ids, files = {}, set()
    for p in mailbox_files(server, address):
        st = p.stat()
        if (st.st_dev, st.st_ino) in files:
            continue
        files.add((st.st_dev, st.st_ino))
        mid = check_whole(p.read_bytes(), p)
        ids[mid] = ids.get(mid, 0) + 1
    return ids


def queue_entries(server):
    """[(Message-ID, {recipient: state})] for every committed queue entry;
    every envelope must parse (end marker, its message there and whole)."""
    out = []
    qdir = server.data_dir / "queue"
    for env in sorted(qdir.glob("*.env")):
        msg = env.with_suffix(".msg")
        assert msg.exists(), f"{env.name} without its message"
        text = env.read_text()
        assert text.rstrip().endswith("end"), f"{env.name} cut short: {text!r}"
        rcpts, cur = {}, None
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == "recipient":
                cur = value
            elif key == "state" and cur:
                rcpts[cur] = value
        raw = msg.read_bytes()
        out.append((message_id(raw), rcpts, raw))
    return out


def table_line(path, cuts, acked, lost, dup, extra=""):
    line = (f"powercut/{path}: cuts {cuts}, acknowledged {acked}, lost {lost}, "
            f"duplicated {dup}{extra}")
    print("\n" + line)
    return line


# -- SMTP and sendmail intake ----------------------------------------------------


def test_power_cuts_during_intake(cut_server, tmp_path):
    """Local, remote, local+remote, an alias with two local copies, and
    sendmail; the smarthost is down, so remote mail stays queued."""
    rng = rng_for("intake")
    cs = cut_server(outbox(free_port()), more_connections())
    cs.start()
    srv = cs.server
    specs = [
        ("smtp", None, ["bob@example.test"]),                          # local
        ("smtp", RELAY_SOURCE, ["carol@remote.test"]),                 # remote
        ("smtp", RELAY_SOURCE, ["alice@example.test", "dan@remote.test"]),  # both
        ("smtp", None, ["family@example.test"]),                       # alias: bob + alice
        ("sendmail", None, ["info@other.test"]),                       # sendmail, local
    ]
    load = Load(srv, tmp_path / "load", specs)
    try:
        for _ in range(CUTS):
            wait_growth(load.total, load.total())
            cs.power_cut(rng)
            cs.start()
    finally:
        load.stop()
    cs.power_cut(rng)
    cs.start()
    srv.stop()

    r = srv.run("queue")
    assert r.returncode == 0, r.stderr
    boxes = {a: mailbox_ids(srv, a) for a in
             ("bob@example.test", "alice@example.test", "info@other.test")}
    queued = {}
    for mid, rcpts, raw in queue_entries(srv):
        check_whole(raw, f"queue {mid}")
        for rc, state in rcpts.items():
            if state == "pending":
                queued.setdefault(rc, {}).setdefault(mid, 0)
                queued[rc][mid] += 1
    # Where each client's acknowledged messages must be, once each.
    where = [
        [boxes["bob@example.test"]],
        [queued.get("carol@remote.test", {})],
        [boxes["alice@example.test"], queued.get("dan@remote.test", {})],
        [boxes["bob@example.test"], boxes["alice@example.test"]],
        [boxes["info@other.test"]],
    ]
    names = ["local", "remote", "local+remote", "alias (2 copies)", "sendmail"]
    failures, lines = [], []
    for i, name in enumerate(names):
        acked = load.acked(i)
        lost = [m for m in acked if any(m not in place for place in where[i])]
        dup = [m for m in acked if any(place.get(m, 0) > 1 for place in where[i])]
        lines.append(table_line(f"intake {name}", cs.fs.cuts, len(acked), len(lost), len(dup)))
        if not acked:
            failures.append(f"{name}: nothing acknowledged")
        if lost or dup:
            failures.append(f"{name}: lost {lost[:5]} duplicated {dup[:5]}")
    print("cuts:", ", ".join(cs.cut_log))
    print("load waits:", WAITS)
    assert not failures, "\n".join(failures) + "\n" + "\n".join(lines)
    # A crash's leftovers in the queue's tmp/ are cleaned at start.
    assert list((srv.data_dir / "queue" / "tmp").iterdir()) == []


# -- outbound delivery and bounces ---------------------------------------------


class Sink:
    """aiosmtpd smarthost: counts messages by Message-ID; refuses
    `refuse-*` recipients for good (550), so bounces are made."""

    def __init__(self, port):
        from aiosmtpd.controller import Controller

        self.received = {}
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if address.startswith("refuse-"):
                    return "550 5.1.1 no such user"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                import asyncio

                await asyncio.sleep(random.uniform(0, 0.01))
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


def bounced_ids(server, address):
    """Original Message-ID -> bounces for it in ADDRESS's mailbox."""
    out = {}
    for p in mailbox_files(server, address):
        raw = p.read_bytes()
        msg = email.message_from_bytes(raw)
        assert msg.is_multipart(), f"{p}: not a whole bounce ({len(raw)} bytes)"
        assert raw.rstrip().endswith(b"--"), f"{p}: bounce cut short"
        found = re.findall(rb"Message-ID:\s*<([^>@]+)@cut\.test>", raw, re.I)
        for mid in set(found):
            out[mid.decode()] = out.get(mid.decode(), 0) + 1
    return out


def test_power_cuts_during_outbound_delivery_and_bounces(cut_server, tmp_path):
    rng = rng_for("outbound")
    port = free_port()
    sink = Sink(port)
    try:
        cs = cut_server(outbox(port, retry="1s"), more_connections())
        cs.start()
        srv = cs.server
        specs = [("smtp", RELAY_SOURCE, ["carol@remote.test"]),
                 ("smtp", RELAY_SOURCE, ["dan@remote.test"]),
                 ("smtp", RELAY_SOURCE, ["refuse-erin@remote.test"])]
        load = Load(srv, tmp_path / "load", specs)
        try:
            for _ in range(CUTS):
                # Cut while the outbox sends or bounces.
                wait_growth(lambda: sink.total() + load.total(), sink.total() + load.total(), 3)
                cs.power_cut(rng)
                cs.start()
        finally:
            load.stop()
        cs.power_cut(rng)
        cs.start()
        acked_ok = load.acked(0) + load.acked(1)
        acked_refused = load.acked(2)

        def drained():
            try:
                return not any(s == "pending" for _, r, _ in queue_entries(srv) for s in r.values())
            except (FileNotFoundError, AssertionError):
                return False  # the running server removed a file meanwhile
        deadline = time.time() + 30
        while time.time() < deadline and not drained():
            time.sleep(0.2)
        srv.stop()
    finally:
        sink.stop()

    still = {mid for mid, r, _ in queue_entries(srv) if "pending" in r.values()}
    bounces = bounced_ids(srv, "bob@example.test")
    lost = [m for m in acked_ok if m not in sink.received and m not in still]
    lost_b = [m for m in acked_refused if m not in bounces and m not in still]
    twice = [m for m in acked_ok if sink.received.get(m, 0) > 1]
    twice_b = [m for m in acked_refused if bounces.get(m, 0) > 1]
    lines = [
        table_line("outbound delivery", cs.fs.cuts, len(acked_ok), len(lost), len(twice),
                   f"; still queued {len(still)}"),
        table_line("bounce generation", cs.fs.cuts, len(acked_refused), len(lost_b),
                   len(twice_b)),
    ]
    print("cuts:", ", ".join(cs.cut_log))
    print("load waits:", WAITS)
    assert acked_ok and acked_refused, lines
    assert not lost, f"acknowledged, neither delivered nor queued: {lost[:10]}"
    assert not lost_b, f"refused, neither bounced nor queued: {lost_b[:10]}"
    assert not still, f"the queue did not drain: {sorted(still)[:5]}"
    # SMTP is at-least-once: a cut between the sink's 250 and the queue's
    # record of it sends that message again, at most once per session in
    # flight per cut. A bounce is made before its recipient is marked
    # done: the same window.
    extra = sum(c - 1 for c in sink.received.values()) + sum(c - 1 for c in bounces.values())
    assert extra <= 4 * cs.fs.cuts, (twice, twice_b)


# -- regression cases: one cut at a chosen instant ---------------------------


def test_first_queued_message_survives_a_cut(cut_server):
    """The queue folders were made without syncing data_dir: a remote
    message acknowledged before any local delivery lost the whole queue/."""
    cs = cut_server(outbox(free_port()), more_connections())
    cs.start()
    srv = cs.server
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], source_address=(RELAY_SOURCE, 0)) as s:
        s.sendmail("bob@example.test", ["carol@remote.test"],
                   b"Subject: q.1\r\nMessage-ID: <q.1@cut.test>\r\n\r\nlast-line q.1\r\n")
    cs.power_cut(random.Random(0), mode="now")
    cs.start()
    srv.stop()
    assert [m for m, _, _ in queue_entries(srv)] == ["q.1"]


# -- SmartPop collection and its UIDL records --------------------------------

RECORD_LINE = re.compile(r"^[\x21-\x7e]{1,255} \d+ (-|[dor]+)( staged=\S+)?$")


def records_lines(server, name):
    path = server.data_dir / "smartpop" / name
    if not path.exists():
        return []
    lines = [ln for ln in path.read_text().split("\n") if ln]
    bad = [ln for ln in lines if not RECORD_LINE.match(ln)]
    assert not bad, f"records of {name} do not parse: {bad[:5]}"
    return lines


def smartpop_account(name, port, user, password, deliver_to, keep):
    return (f"\n[smartpop {name}]\nhost = 127.0.0.1:{port}\ntls = none\nusername = {user}\n"
            f"password = {password}\ndeliver_to = {deliver_to}\nmultidrop = no\n"
            f"interval = 1s\nkeep = {keep}\n")


def isp_message(mid):
    body = "".join(f"{mid} line {i} " + "y" * 50 + "\n" for i in range(random.choice([1, 5, 60])))
    return (f"From: friend@isp.test\nTo: someone@isp.test\nSubject: {mid}\n"
            f"Message-ID: <{mid}@cut.test>\n\n{body}last-line {mid}\n")


@pytest.fixture
def isp(tmp_path):
    import dovecot_helpers as dh

    why = dh.available() if callable(getattr(dh, "available", None)) else None
    if isinstance(why, str):
        pytest.skip(why)
    ca = dh.TestCA(tmp_path / "ca", names=("localhost",))
    d = dh.Dovecot({"bob123": "secret", "alice77": "rabbit"}, ca)
    d.start()
    yield d
    d.cleanup()


def test_power_cuts_during_smartpop_collection(cut_server, isp):
    """keep = no (bob): every message the ISP was told to delete is in the
    mailbox, once. keep = yes (alice): the UIDL records alone stop a second
    fetch, so a lost record is a duplicate."""
    rng = rng_for("smartpop")
    extra = (smartpop_account("drop", isp.pop3, "bob123", "secret", "bob@example.test", "no")
             + smartpop_account("keeper", isp.pop3, "alice77", "rabbit", "alice@example.test", "yes"))
    cs = cut_server(extra)
    srv = cs.server
    added = {"bob123": [], "alice77": []}

    def refill(n):
        for user in added:
            for _ in range(n):
                mid = f"{user}.{len(added[user]) + 1}"
                isp.add(user, isp_message(mid))
                added[user].append(mid)

    def pending():
        return isp.count("bob123") + len(added["alice77"]) - len(
            mailbox_files(srv, "alice@example.test"))

    # Each start polls at once: cut anywhere in that collection (about
    # four syncs per message: the copy, tmp/, the record, new/).
    refill(10)
    for _ in range(CUTS):
        cs.start()
        cs.power_cut(rng, max_syncs=4 * pending() + 4)
        refill(rng.randint(3, 8))
    cs.start()
    total_keep = len(added["alice77"])
    deadline = time.time() + 40
    while time.time() < deadline and (isp.count("bob123") or
                                      len(mailbox_files(srv, "alice@example.test")) < total_keep):
        time.sleep(0.2)
    srv.stop()

    left_at_isp = {message_id(p.read_bytes()) for p in isp.files("bob123")}
    deleted_at_isp = [m for m in added["bob123"] if m not in left_at_isp]
    bob = mailbox_ids(srv, "bob@example.test")
    alice = mailbox_ids(srv, "alice@example.test")
    lost = [m for m in deleted_at_isp if m not in bob]
    dup = [m for m, c in bob.items() if c > 1]
    lost_k = [m for m in added["alice77"] if m not in alice]
    dup_k = [m for m, c in alice.items() if c > 1]
    records_lines(srv, "drop")
    records_lines(srv, "keeper")
    lines = [
        table_line("smartpop keep=no", cs.fs.cuts, len(deleted_at_isp), len(lost), len(dup),
                   f"; left at the ISP {len(left_at_isp)}"),
        table_line("smartpop keep=yes (records)", cs.fs.cuts, len(added["alice77"]),
                   len(lost_k), len(dup_k)),
    ]
    print("cuts:", ", ".join(cs.cut_log))
    print("load waits:", WAITS)
    assert not lost, f"deleted at the ISP, not in the mailbox: {lost[:10]}\n{lines}"
    assert not left_at_isp, f"never collected: {sorted(left_at_isp)[:5]}"
    assert not lost_k, f"kept at the ISP, never collected: {lost_k[:10]}"
    assert not dup and not dup_k, f"collected twice: {dup[:5]} {dup_k[:5]}\n{lines}"


# -- POP3 deletions at QUIT --------------------------------------------------

POP3_SCRIPT = r"""
import os, poplib, random, re, sys, time
port, user, password, prefix, out_path, stop = sys.argv[1:7]
rng = random.Random(prefix)
out = open(out_path, "a", buffering=1)
# DELEs sent whose QUIT may not have been answered: either outcome is right.
maybe = open(out_path + ".maybe", "a", buffering=1)
retr = open(out_path + ".retr", "a", buffering=1)
mid_re = re.compile(rb"^Message-ID:\s*<([^>@]+)@", re.I | re.M)
while not os.path.exists(stop):
    try:
        p = poplib.POP3("127.0.0.1", int(port), timeout=8)
        p.user(user)
        p.pass_(password)
        _, listing, _ = p.list()
        nums = [int(l.split()[0]) for l in listing]
        deleted = []
        for n in rng.sample(nums, min(len(nums), rng.randint(0, 4))):
            _, lines, _ = p.retr(n)
            m = mid_re.search(b"\n".join(lines))
            if m:
                retr.write(f"{m.group(1).decode()} {n} {len(nums)}\n")
            if rng.random() < 0.7 and m:
                maybe.write(m.group(1).decode() + "\n")
                p.dele(n)
                deleted.append(m.group(1).decode())
        p.quit()   # +OK: the deletions are done (RFC 1939 6)
        for mid in deleted:
            out.write(mid + "\n")
    except (OSError, poplib.error_proto, EOFError):
        pass
    time.sleep(0.02)
"""


def test_power_cuts_during_pop3_deletions(cut_server, tmp_path):
    rng = rng_for("pop3")
    cs = cut_server(replace=more_connections())
    cs.start()
    srv = cs.server
    boxes = [("bob@example.test", "secret"), ("alice@example.test", "wonderland"),
             ("info@other.test", "info")]
    specs = [("smtp", None, [a]) for a, _ in boxes]
    load = Load(srv, tmp_path / "load", specs)
    wait_growth(load.total, 0, 20)
    stop = tmp_path / "pop-stop"
    pops = []
    for i, (address, password) in enumerate(boxes):
        out = tmp_path / f"deleted{i}"
        pops.append((out, subprocess.Popen(
            [sys.executable, "-c", POP3_SCRIPT, str(srv.ports["pop3"]), address, password,
             f"pop{i}", str(out), str(stop)])))

    def deletions():
        return sum(len(o.read_text().split()) for o, _ in pops if o.exists())
    try:
        for _ in range(CUTS):
            wait_growth(deletions, deletions(), 2, timeout=10)
            cs.power_cut(rng)
            cs.start()
    finally:
        stop.touch()
        load.stop()
        for _, p in pops:
            p.wait(30)
    cs.power_cut(rng)
    cs.start()
    srv.stop()

    lines, failures = [], []
    for i, (address, _) in enumerate(boxes):
        present = mailbox_ids(srv, address)
        out = pops[i][0]
        deleted = set(out.read_text().split()) if out.exists() else set()
        maybe = Path(f"{out}.maybe")
        maybe = set(maybe.read_text().split()) if maybe.exists() else set()
        acked = load.acked(i)
        kept = [m for m in acked if m not in deleted and m not in maybe]
        lost = [m for m in kept if m not in present]
        dup = [m for m in kept if present.get(m, 0) > 1]
        back = [m for m in deleted if m in present]
        lines.append(table_line(f"pop3 {address}", cs.fs.cuts, len(acked), len(lost),
                                len(dup), f"; deleted at QUIT {len(deleted)}, back after a cut {len(back)}"))
        if lost or dup or back:
            failures.append(f"{address}: lost {lost[:5]} duplicated {dup[:5]} deleted but back {back[:5]}")
        if not deleted:
            failures.append(f"{address}: no deletion acknowledged")
    print("cuts:", ", ".join(cs.cut_log))
    print("load waits:", WAITS)
    assert not failures, "\n".join(failures + lines)


def test_smartpop_every_crash_point_of_one_message(cut_server, isp):
    """A cut before each sync of one collection in turn (ALICE-style: the
    durable state changes only at syncs, so this is every state a cut can
    leave). Found: a record naming a copy whose tmp/ name was not durable
    made the UIDL count as delivered and DELEd, with no copy anywhere."""
    account = smartpop_account("drop", isp.pop3, "bob123", "secret", "bob@example.test", "no")
    cs = cut_server(account.replace("interval = 1s", "interval = 1h"))
    cs.start()
    srv = cs.server
    sent = []

    def polls():
        return srv.log_text().count("smartpop drop: fetched=")

    before_start = 0
    for n in range(1, 10):
        # The poll at start is over (its syncs would be counted, and a
        # freeze could strike it before our fetch request is written).
        deadline = time.time() + 10
        while time.time() < deadline and polls() <= before_start:
            time.sleep(0.02)
        mid = f"point.{n}"
        isp.add("bob123", isp_message(mid))
        sent.append(mid)
        cs.fs.freeze(n)
        srv.run("fetch", "drop", timeout=10)
        if not cs.fs.wait_frozen(1.5):
            cs.fs.freeze(0)
        cs.power_cut(None, mode="frozen")
        before_start = polls()
        cs.start()  # the poll at start finishes or redoes the collection
        deadline = time.time() + 10
        while time.time() < deadline and isp.count("bob123"):
            time.sleep(0.05)
        got = mailbox_ids(srv, "bob@example.test")
        assert not isp.count("bob123"), f"cut before sync {n}: not collected"
        lost = [m for m in sent if m not in got]
        assert not lost, f"cut before sync {n}: deleted at the ISP, not in the mailbox: {lost}"
        assert all(c == 1 for c in got.values()), f"cut before sync {n}: {got}"
    srv.stop()
    records_lines(srv, "drop")


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_smartpop_records_folder_survives_a_cut(cut_server, isp):
    """The runner makes data_dir/smartpop/ with a plain mkdir; when nothing
    else syncs data_dir afterwards (the mailbox already exists), the
    records went with the folder in a cut, and keep = yes fetched every
    message again."""
    account = smartpop_account("keeper", isp.pop3, "alice77", "rabbit", "alice@example.test", "yes")
    cs = cut_server(account.replace("interval = 1s", "interval = 1h"))
    srv = cs.server
    # alice's Maildir exists, durably, before the first start.
    md = srv.maildir_path("alice@example.test")
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True, mode=0o700)
    for d in (md, md.parent, md.parent.parent, srv.data_dir):
        fsync_path(d)
    for i in range(3):
        isp.add("alice77", isp_message(f"kept.{i}"))
    cs.start()
    deadline = time.time() + 10
    while time.time() < deadline and len(mailbox_files(srv, "alice@example.test")) < 3:
        time.sleep(0.05)
    assert len(mailbox_files(srv, "alice@example.test")) == 3
    time.sleep(0.3)  # the poll's QUIT and its records compaction
    cs.power_cut(None, mode="now")
    cs.start()
    time.sleep(1.0)  # the poll at start
    srv.stop()
    got = mailbox_ids(srv, "alice@example.test")
    assert got == {f"kept.{i}": 1 for i in range(3)}, f"fetched again after a cut: {got}"


def test_pop3_every_crash_point_of_quit(cut_server):
    """A cut before each sync of one QUIT that moves a retrieved message to
    cur/ and deletes another. Found: new/ was synced before cur/, so a cut
    between the two left the retrieved message under neither name."""
    cs = cut_server()
    cs.start()
    srv = cs.server
    for n in range(1, 4):
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"]) as s:
            for which in ("keep", "drop"):
                mid = f"{which}.{n}"
                s.sendmail("a@remote.test", ["bob@example.test"],
                           f"Subject: {mid}\r\nMessage-ID: <{mid}@cut.test>\r\n\r\n"
                           f"last-line {mid}\r\n".encode())
        p = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=5)
        p.user("bob@example.test")
        p.pass_("secret")
        ids = {}
        for i in range(1, len(p.list()[1]) + 1):
            ids[message_id(b"\n".join(p.retr(i)[1]))] = i
        p.dele(ids[f"drop.{n}"])
        cs.fs.freeze(n)
        p.sock.sendall(b"QUIT\r\n")  # its +OK never comes once frozen
        if not cs.fs.wait_frozen(1.0):
            cs.fs.freeze(0)
        cs.power_cut(None, mode="frozen")
        p.close()
        cs.start()
        got = mailbox_ids(srv, "bob@example.test")
        want = {f"keep.{k}" for k in range(1, n + 1)}
        assert want <= got.keys(), f"cut before sync {n} of QUIT: lost {want - got.keys()}"
        assert all(c == 1 for c in got.values()), f"cut before sync {n} of QUIT: {got}"
        # What the server shows: each message once.
        p = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=5)
        p.user("bob@example.test")
        p.pass_("secret")
        shown = [message_id(b"\n".join(p.retr(i)[1])) for i in range(1, len(p.list()[1]) + 1)]
        p.quit()
        assert len(shown) == len(set(shown)), shown
    srv.stop()


def test_data_dir_made_by_serve_survives_a_cut(cut_server):
    cs = cut_server(premade_data_dir=False)
    cs.start()
    srv = cs.server
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"]) as s:
        s.sendmail("a@remote.test", ["bob@example.test"],
                   b"Subject: d.1\r\nMessage-ID: <d.1@cut.test>\r\n\r\nlast-line d.1\r\n")
    cs.power_cut(None, mode="now")
    assert srv.data_dir.is_dir(), "data_dir itself is gone after the cut"
    cs.start()
    srv.stop()
    assert mailbox_ids(srv, "bob@example.test") == {"d.1": 1}


def test_pop3_move_survives_a_delivery_between_its_syncs(cut_server):
    """QUIT moves a retrieved message new/ -> cur/. A delivery that syncs
    new/ while the move waits for its cur/ sync made the message's
    removal from new/ durable before its name in cur/ was: a cut then
    lost it (found by test_power_cuts_during_pop3_deletions)."""
    cs = cut_server()
    cs.start()
    srv = cs.server

    def deliver(mid):
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"]) as s:
            s.sendmail("a@remote.test", ["bob@example.test"],
                       f"Subject: {mid}\r\nMessage-ID: <{mid}@cut.test>\r\n\r\n"
                       f"last-line {mid}\r\n".encode())

    deliver("moved")
    p = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=5)
    p.user("bob@example.test")
    p.pass_("secret")
    p.retr(1)
    cs.fs.hold(1)  # QUIT's first sync waits
    p.sock.sendall(b"QUIT\r\n")
    assert cs.fs.wait_holding(5), "QUIT made no sync"
    deliver("meanwhile")  # syncs new/ while the move waits
    cs.fs.freeze(0)
    cs.power_cut(None, mode="frozen")
    p.close()
    cs.start()
    srv.stop()
    got = mailbox_ids(srv, "bob@example.test")
    assert got == {"moved": 1, "meanwhile": 1}, got


def test_two_accounts_into_one_mailbox_lose_nothing(cut_server, isp):
    """Account a's copy is renamed tmp/ -> new/ and waits for its new/
    sync; account b (same mailbox) syncs tmp/ for its own staged copy,
    which makes a's copy's removal from tmp/ durable: a cut then left a's
    record saying "delivered, staged in tmp/" with no copy anywhere, and
    the next poll DELEd it at the ISP."""
    extra = (smartpop_account("a", isp.pop3, "bob123", "secret", "bob@example.test", "no")
             + smartpop_account("b", isp.pop3, "alice77", "rabbit", "bob@example.test", "no"))
    cs = cut_server(extra.replace("interval = 1s", "interval = 1h"))
    srv = cs.server

    def polls(name):
        return srv.log_text().count(f"smartpop {name}: fetched=")

    def wait_polls(name, n):
        deadline = time.time() + 10
        while time.time() < deadline and polls(name) < n:
            time.sleep(0.02)
        assert polls(name) >= n, srv.log_text()[-3000:]

    # A first collection each, so the records files exist (their first
    # append syncs more).
    isp.add("bob123", isp_message("warm.a"))
    isp.add("alice77", isp_message("warm.b"))
    cs.start()
    wait_polls("a", 1)
    wait_polls("b", 1)
    isp.add("bob123", isp_message("race.a"))
    isp.add("alice77", isp_message("race.b"))
    # a: copy fsync, tmp/ fsync, record fsync, then new/ fsync: held.
    cs.fs.hold(4)
    srv.run("fetch", "a", timeout=10)
    assert cs.fs.wait_holding(5), "account a never reached its new/ sync"
    # b: copy fsync, tmp/ fsync, then the cut at its record.
    cs.fs.freeze(3)
    srv.run("fetch", "b", timeout=10)
    if not cs.fs.wait_frozen(2):
        cs.fs.freeze(0)
    cs.power_cut(None, mode="frozen")
    cs.start()
    deadline = time.time() + 15
    while time.time() < deadline and (isp.count("bob123") or isp.count("alice77")):
        srv.run("fetch", timeout=10)
        time.sleep(0.3)
    srv.stop()
    got = mailbox_ids(srv, "bob@example.test")
    assert set(got) == {"warm.a", "warm.b", "race.a", "race.b"}, got
    assert all(c == 1 for c in got.values()), got
