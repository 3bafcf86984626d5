"""Durability order, seen from the kernel: the real server runs under strace.

A `250` to the end of the data is a promise that the message survives a
power cut. SIGKILL tests cannot check that (the page cache survives a
killed process), so here the system calls are checked in order: every
file of the message is written, fsynced and renamed into place, and the
folder that names it is fsynced, all BEFORE the `250 ... queued as` reply
is written to the client socket. For the queue, the message (`ID.msg`) is
committed before its envelope (`ID.env`), whose existence commits it.

The strace log is read as one timeline (strace -f interleaves threads; a
call cut by another thread's is joined with its "resumed" line). An fd is
mapped to a path by the result of the `openat` that returned it, until its
`close`; a call finishing (fsync) must come before a later one starting
(the reply's write).
"""

import os
import re
import shutil
import signal
import smtplib
import subprocess
from pathlib import Path

import pytest

import conftest
from conftest import RELAY_SOURCE, free_port

TRACED = "write,writev,sendto,sendmsg,fsync,fdatasync,rename,renameat,renameat2,link,linkat,openat,close"
QUEUED_REPLY = "Ok: queued as"

LINE_RE = re.compile(r"^(\d+)\s+(\S+)\s+(.*)$")
CALL_RE = re.compile(r"^(\w+)\((.*)$")
RESUMED_RE = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
RET_RE = re.compile(r"\)\s+=\s+(-?\d+)(?:<([^>]*)>)?")
STR_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
FD_RE = re.compile(r"^(\d+)")


def strace_usable():
    if not shutil.which("strace"):
        return "strace is not installed (tests/setup.sh installs it)"
    r = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ptrace is not permitted here: {r.stderr.strip()}"
    return None


class Call:
    def __init__(self, start, pid, name, args):
        self.start = start  # index of the line where the call began
        self.end = None     # index of the line where it returned
        self.pid = pid
        self.name = name
        self.args = args
        self.ret = None
        self.ret_path = None
        self.path = None    # the path of its fd argument, from the openat map

    @property
    def fd(self):
        m = FD_RE.match(self.args)
        return int(m.group(1)) if m else None

    def strings(self):
        return [s.encode().decode("unicode_escape") for s in STR_RE.findall(self.args)]

    def __repr__(self):
        return f"#{self.start}-{self.end} {self.name}({self.args[:100]}) = {self.ret} [{self.path}]"


def parse_strace(text):
    """The calls in order of their start, each joined with its return."""
    calls, pending = [], {}
    for i, line in enumerate(text.splitlines()):
        m = LINE_RE.match(line)
        if not m:
            continue
        pid, rest = m.group(1), m.group(3)
        if rest.startswith("+++") or rest.startswith("---"):
            continue
        resumed = RESUMED_RE.match(rest)
        if resumed:
            call = pending.pop((pid, resumed.group(1)), None)
            if call is None:
                continue
            call.args += resumed.group(2)
            finish(call, i)
            continue
        m = CALL_RE.match(rest)
        if not m:
            continue
        call = Call(i, pid, m.group(1), m.group(2))
        calls.append(call)
        if rest.endswith("<unfinished ...>"):
            call.args = call.args[: -len("<unfinished ...>")]
            pending[(pid, call.name)] = call
        else:
            finish(call, i)
    return calls


def finish(call, i):
    call.end = i
    m = RET_RE.search(call.args)
    if m:
        call.ret = int(m.group(1))
        call.ret_path = m.group(2)


def map_fds(calls):
    """Gives every call on an fd the path its openat returned."""
    timeline = []
    for c in calls:
        if c.name == "openat":
            timeline.append((c.end if c.end is not None else c.start, 1, c))
        else:
            timeline.append((c.start, 0, c))
    fds = {}
    for _, _, c in sorted(timeline, key=lambda t: (t[0], t[1])):
        if c.name == "openat":
            if c.ret is not None and c.ret >= 0:
                # -yy prints the opened path beside the result; the string
                # argument is the fallback (absolute paths here).
                fds[c.ret] = os.path.realpath(c.ret_path or c.strings()[0])
        elif c.name == "close":
            fds.pop(c.fd, None)
        else:
            c.path = fds.get(c.fd)


def renames(calls):
    """Renames and hard links: an SMTP delivery and the queue publish by
    rename, a SmartPop delivery its tmp/ file in new/ as a link
    (Maildir::publish_linked)."""
    out = []
    for c in calls:
        if c.name in ("rename", "renameat", "renameat2", "link", "linkat") and c.ret == 0:
            src, dst = c.strings()[:2]
            out.append((c, os.path.realpath(src), os.path.realpath(dst)))
    return out


def check_durable_before(calls, final, reply):
    """`final` was written, fsynced, renamed into place and its folder
    fsynced, all before the call `reply` started. Returns the rename."""
    moves = [(c, src) for c, src, dst in renames(calls) if dst == final]
    assert moves, f"no rename into {final}"
    rename, src = moves[0]
    assert rename.end < reply.start, f"{final} renamed after the 250: {rename} vs {reply}"
    writes = [c for c in calls if c.name in ("write", "writev") and c.path == src and c.start < rename.start]
    assert writes, f"nothing written to {src} before its rename"
    syncs = [c for c in calls if c.name in ("fsync", "fdatasync") and c.path == src
             and c.ret == 0 and c.start > max(w.end for w in writes) and c.end < rename.start]
    assert syncs, f"{src} not fsynced between its last write and its rename"
    folder = os.path.dirname(final)
    dir_syncs = [c for c in calls if c.name == "fsync" and c.path == folder and c.ret == 0
                 and c.start > rename.end and c.end < reply.start]
    assert dir_syncs, f"{folder} not fsynced between the rename and the 250 ({rename}, {reply})"
    return rename


@pytest.fixture
def traced_server(make_server, tmp_path, monkeypatch):
    why = strace_usable()
    if why:
        pytest.skip(why)
    log = tmp_path / "strace.log"
    wrapper = tmp_path / "mailgate-under-strace"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec strace -f -tt -yy -s 256 -e trace={TRACED} -o {log} {conftest.BIN} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(conftest, "BIN", str(wrapper))
    dead = free_port()
    server = make_server(extra=f"\n[outbox]\nmode = smarthost\nhost = 127.0.0.1:{dead}\n"
                               "tls = none\nretry = 1h\n")

    def finish_trace():
        # strace's own pid is server.proc; stop mailgate itself.
        pid = int((server.data_dir / "mailgate.pid").read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        server.proc.wait(20)
        calls = parse_strace(log.read_text(errors="replace"))
        map_fds(calls)
        return calls

    return server, finish_trace


def send(server, rcpts, source=None):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20,
                      source_address=(source, 0) if source else None) as s:
        s.ehlo("durable.client")
        body = "".join(f"line {i} {'d' * 70}\r\n" for i in range(200))
        assert s.sendmail("carol@remote.test", rcpts,
                          f"Subject: durable\r\nMessage-ID: <d@t>\r\n\r\n{body}".encode()) == {}


def the_reply(calls):
    replies = [c for c in calls if c.name in ("write", "writev", "sendto", "sendmsg")
               and QUEUED_REPLY in c.args]
    assert len(replies) == 1, replies
    assert "250" in replies[0].args
    return replies[0]


def real(p: Path):
    return os.path.realpath(p)


@pytest.mark.parametrize("case", ["local", "queue", "both"])
def test_everything_durable_before_250(traced_server, case):
    server, finish_trace = traced_server
    if case == "local":
        send(server, ["bob@example.test", "alice@example.test"])
    elif case == "queue":
        send(server, ["dan@remote.test"], source=RELAY_SOURCE)
    else:
        send(server, ["bob@example.test", "dan@remote.test"], source=RELAY_SOURCE)
    calls = finish_trace()
    reply = the_reply(calls)

    finals = [real(p) for p in server.files_in("new")]
    assert len(finals) == {"local": 2, "queue": 0, "both": 1}[case], finals
    for f in finals:
        check_durable_before(calls, f, reply)

    qdir = server.data_dir / "queue"
    msgs = sorted(qdir.glob("*.msg"))
    assert len(msgs) == (0 if case == "local" else 1), msgs
    for msg in msgs:
        env = msg.with_suffix(".env")
        assert env.exists()
        m = check_durable_before(calls, real(msg), reply)
        e = check_durable_before(calls, real(env), reply)
        # The envelope commits the message: it is renamed into place last.
        assert m.end < e.start, (m, e)


# The checker itself must be able to fail: a hand-written log where the
# folder is fsynced only after the reply, and one where a thread's fsync is
# cut by the reply (strace's unfinished/resumed lines).
GOOD_LOG = """\
10 01:00:00.000001 openat(AT_FDCWD</>, "/d/tmp/m", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 5</d/tmp/m>
10 01:00:00.000002 write(5</d/tmp/m>, "Subject: x\\n", 11) = 11
10 01:00:00.000003 fsync(5</d/tmp/m>) = 0
10 01:00:00.000004 close(5</d/tmp/m>) = 0
10 01:00:00.000005 rename("/d/tmp/m", "/d/new/m") = 0
10 01:00:00.000006 openat(AT_FDCWD</>, "/d/new", O_RDONLY|O_CLOEXEC) = 5</d/new>
10 01:00:00.000007 fsync(5</d/new>) = 0
10 01:00:00.000008 close(5</d/new>) = 0
9 01:00:00.000009 sendto(5<TCP:[1.2.3.4:25->5.6.7.8:9]>, "250 2.0.0 Ok: queued as X\\r\\n", 27, MSG_NOSIGNAL, NULL, 0) = 27
"""


def check_log(text):
    calls = parse_strace(text)
    map_fds(calls)
    check_durable_before(calls, "/d/new/m", the_reply(calls))


def test_checker_accepts_the_right_order():
    check_log(GOOD_LOG)


@pytest.mark.parametrize("bad", [
    # the folder fsync comes after the reply
    lambda t: t.replace('10 01:00:00.000007 fsync(5</d/new>) = 0\n', '')
    + "10 01:00:00.000010 fsync(5</d/new>) = 0\n",
    # the folder fsync only returns after the reply started
    lambda t: t.replace("fsync(5</d/new>) = 0", "fsync(5</d/new> <unfinished ...>")
    + "10 01:00:00.000010 <... fsync resumed>) = 0\n",
    # no fsync of the file before its rename
    lambda t: t.replace("fsync(5</d/tmp/m>) = 0", "fdatasync(7</x>) = 0"),
    # the fd was closed and reused for a socket: that fsync is not the file's
    lambda t: t.replace('10 01:00:00.000003 fsync(5</d/tmp/m>) = 0\n10 01:00:00.000004 close(5</d/tmp/m>) = 0\n',
                        '10 01:00:00.000004 close(5</d/tmp/m>) = 0\n10 01:00:00.000003 fsync(5) = 0\n'),
])
def test_checker_refuses_a_wrong_order(bad):
    with pytest.raises(AssertionError):
        check_log(bad(GOOD_LOG))


def test_full_disk_queue_answers_452_and_leaves_no_partial_entry(make_server, tmp_path):
    """Queueing (and a transaction with local and remote recipients, which
    is all or nothing) on a full disk: 452 4.3.1, and nothing half-written
    under a final name in queue/ or new/."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    server = None
    try:
        dead = free_port()
        server = make_server(
            replace={"data_dir = ": f"data_dir = {mnt}/data\n# was: "},
            extra=f"\n[outbox]\nmode = smarthost\nhost = 127.0.0.1:{dead}\ntls = none\nretry = 1h\n")
        server.data_dir = mnt / "data"
        codes = {}
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20,
                          source_address=(RELAY_SOURCE, 0)) as s:
            s.ehlo("full.client")
            for i in range(14):
                rcpts = ["dan@remote.test"] if i % 2 else ["bob@example.test", "dan@remote.test"]
                body = "".join(f"{i} {'q' * 900}\r\n" for _ in range(70))  # ~64 KiB
                data = f"Subject: full {i}\r\nMessage-ID: <full{i}@t>\r\n\r\n{body}last {i}\r\n"
                try:
                    s.sendmail("carol@remote.test", rcpts, data.encode())
                    codes[i] = 250
                except smtplib.SMTPDataError as e:
                    assert e.smtp_code == 452 and e.smtp_error.startswith(b"4.3.1"), e
                    codes[i] = 452
        print(f"\nfull disk: replies {codes}")
        assert 452 in codes.values(), codes
        qdir = server.data_dir / "queue"
        queued = {}
        for msg in qdir.glob("*.msg"):
            assert msg.with_suffix(".env").exists(), f"{msg.name} without its envelope"
            raw = msg.read_bytes()
            n = int(re.search(rb"Subject: full (\d+)", raw).group(1))
            assert raw.endswith(f"last {n}\n".encode()), f"{msg.name} cut short"
            queued[n] = queued.get(n, 0) + 1
        for env in qdir.glob("*.env"):
            assert env.with_suffix(".msg").exists(), f"{env.name} without its message"
            assert env.read_text().rstrip().endswith("end"), f"{env.name} cut short"
        assert list((qdir / "tmp").iterdir()) == [], "a half-written file stays in queue/tmp"
        local = {}
        for p in server.files_in("new"):
            raw = p.read_bytes()
            n = int(re.search(rb"Subject: full (\d+)", raw).group(1))
            assert raw.endswith(f"last {n}\n".encode()), f"{p.name} cut short"
            local[n] = local.get(n, 0) + 1
        assert server.files_in("tmp") == []
        accepted = {i for i, c in codes.items() if c == 250}
        assert queued == {i: 1 for i in accepted}, (codes, queued)
        assert local == {i: 1 for i in accepted if i % 2 == 0}, (codes, local)
    finally:
        try:
            if server:
                server.stop()
        finally:
            subprocess.run(["umount", "-l", str(mnt)])
