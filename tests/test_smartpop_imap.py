"""SmartPop over IMAP (`protocol = imap`) against a real Dovecot imapd.

Each test starts a private Dovecot (tests/dovecot_helpers.py, IMAP
listener on) and a mailgate collecting from it; Python's imaplib plays
the other clients at the ISP (APPEND, looking at folders).
"""

import imaplib
import os
import random
import re
import signal
import time

import pytest

from dovecot_helpers import Dovecot, TestCA, available, message

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

SUMMARY = r"smartpop {name}: fetched=(\d+) kept=(\d+) deleted=(\d+) oversized=(\d+) failed=(\d+)"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"), names=("localhost",))


@pytest.fixture
def dovecot(ca):
    d = Dovecot({"bob123": "secret"}, ca, imap=True)
    d.start()
    yield d
    d.cleanup()


def account(name, port, keep="no", interval="1h", idle="no", folders="INBOX", tls="none",
            multidrop="no", deliver_to="bob@example.test"):
    return (
        f"\n[smartpop {name}]\nprotocol = imap\nhost = 127.0.0.1:{port}\ntls = {tls}\n"
        f"username = bob123\npassword = secret\ndeliver_to = {deliver_to}\n"
        f"multidrop = {multidrop}\ninterval = {interval}\nkeep = {keep}\nidle = {idle}\n"
        f"folders = {folders}\n"
    )


def imap(dovecot):
    c = imaplib.IMAP4("127.0.0.1", dovecot.imap)
    c.login("bob123", "secret")
    return c


def folder_count(dovecot, folder):
    c = imap(dovecot)
    try:
        typ, data = c.select(folder, readonly=True)
        assert typ == "OK", data
        return int(data[0])
    finally:
        c.logout()


def append(dovecot, folder, raw):
    c = imap(dovecot)
    try:
        c.create(folder)
        typ, data = c.append(folder, None, None, raw.replace(b"\n", b"\r\n"))
        assert typ == "OK", data
    finally:
        c.logout()


def summaries(server, name):
    pat = re.compile(SUMMARY.format(name=re.escape(name)))
    return [tuple(int(x) for x in m.groups()) for m in map(pat.search, server.log_text().splitlines()) if m]


def wait_polls(server, name, count, timeout=30):
    deadline = time.time() + timeout
    while True:
        got = summaries(server, name)
        if len(got) >= count:
            return got
        assert server.proc.poll() is None, server.log_text()[-4000:]
        assert time.time() < deadline, f"{len(got)} polls, wanted {count}\n" + server.log_text()[-6000:]
        time.sleep(0.05)


def wait_messages(server, address, count, timeout=30):
    deadline = time.time() + timeout
    while True:
        msgs = server.messages(address)
        if len(msgs) >= count:
            return msgs
        assert server.proc.poll() is None, server.log_text()[-4000:]
        assert time.time() < deadline, f"{len(msgs)} messages, wanted {count}\n" + server.log_text()[-6000:]
        time.sleep(0.05)


def subjects(msgs):
    return sorted(m["Subject"] for m in msgs)


def test_single_drop_keep_no_expunges_after_delivery(make_server, dovecot):
    bodies = {s: message(s) for s in ("one", "two")}
    bodies["big"] = message("big", size=200_000)
    for b in bodies.values():
        dovecot.add("bob123", b)
    server = make_server(extra=account("isp", dovecot.imap))
    (summary,) = wait_polls(server, "isp", 1)
    assert summary == (3, 0, 3, 0, 0), summary
    msgs = server.messages("bob@example.test")
    assert subjects(msgs) == ["big", "one", "two"]
    for m in msgs:
        assert m.get_payload().replace("\r\n", "\n") in bodies[m["Subject"]].decode()
        assert "smartpop isp" in m["X-Mailgate-Routed"]
        # The trace says how it came (RFC 3848's name), not POP3.
        assert " with IMAP id " in m["Received"], m["Received"]
    assert folder_count(dovecot, "INBOX") == 0
    # Pruned (on a worker, after the summary line): nothing left on the
    # server, nothing remembered.
    records = server.data_dir / "smartpop" / "isp"
    deadline = time.time() + 20
    while "imap:INBOX:" in records.read_text() and time.time() < deadline:
        time.sleep(0.05)
    assert "imap:INBOX:" not in records.read_text()


def test_keep_yes_collects_each_message_once(make_server, dovecot):
    dovecot.add("bob123", message("kept"))
    server = make_server(extra=account("isp", dovecot.imap, keep="yes"))
    wait_polls(server, "isp", 1)
    dovecot.add("bob123", message("later"))
    server.run("fetch", "isp")
    polls = wait_polls(server, "isp", 2)
    assert polls[0] == (1, 1, 0, 0, 0) and polls[1] == (1, 2, 0, 0, 0), polls
    assert subjects(server.messages("bob@example.test")) == ["kept", "later"]
    assert folder_count(dovecot, "INBOX") == 2
    keys = (server.data_dir / "smartpop" / "isp").read_text()
    assert len(re.findall(r"imap:INBOX:\d+:\d+", keys)) == 2, keys


def test_keep_move_to_archive(make_server, dovecot):
    for s in ("a", "b"):
        dovecot.add("bob123", message(s))
    append(dovecot, "Archive", message("old"))
    server = make_server(extra=account("isp", dovecot.imap, keep="move:Archive"))
    (summary,) = wait_polls(server, "isp", 1)
    assert summary[:3] == (2, 0, 2), summary
    assert subjects(server.messages("bob@example.test")) == ["a", "b"]
    assert folder_count(dovecot, "INBOX") == 0
    assert folder_count(dovecot, "Archive") == 3


def test_several_folders(make_server, dovecot):
    dovecot.add("bob123", message("inbox"))
    append(dovecot, "Lists", message("list-mail"))
    server = make_server(extra=account("isp", dovecot.imap, folders="INBOX, Lists"))
    (summary,) = wait_polls(server, "isp", 1)
    assert summary[:3] == (2, 0, 2), summary
    assert subjects(server.messages("bob@example.test")) == ["inbox", "list-mail"]
    assert folder_count(dovecot, "Lists") == 0


def test_idle_push_under_five_seconds(make_server, dovecot):
    dovecot.add("bob123", message("first"))
    server = make_server(extra=account("isp", dovecot.imap, idle="yes", interval="1h"))
    wait_messages(server, "bob@example.test", 1)
    time.sleep(1)  # let it reach IDLE
    for i in range(3):
        start = time.time()
        append(dovecot, "INBOX", message(f"pushed-{i}"))
        wait_messages(server, "bob@example.test", 2 + i, timeout=30)
        latency = time.time() - start
        assert latency < 5, f"push {i} took {latency:.1f}s"
    assert folder_count(dovecot, "INBOX") == 0
    # No poll ended: all of it came over the one IDLE connection.
    assert summaries(server, "isp") == []


def test_idle_reconnects_after_server_restart(make_server, dovecot):
    server = make_server(extra=account("isp", dovecot.imap, idle="yes", interval="1h"))
    time.sleep(2)
    # The whole Dovecot goes, its imap process (our IDLE connection) too.
    pid = dovecot.proc.pid
    dovecot.stop()
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(1)
    dovecot.start()
    append(dovecot, "INBOX", message("after-restart"))
    msgs = wait_messages(server, "bob@example.test", 1, timeout=60)
    assert subjects(msgs) == ["after-restart"]
    assert "reconnecting in" in server.log_text()


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_starttls_and_imaps_with_test_ca(make_server, ca, mode):
    # Plaintext logins are refused by this Dovecot: success proves TLS.
    d = Dovecot({"bob123": "secret"}, ca, plaintext_auth=False, imap=True)
    d.start()
    try:
        d.add("bob123", message("secure"))
        port = d.imap if mode == "starttls" else d.imaps
        extra = account("isp", port, tls=mode) + f"ca_file = {ca.ca_cert}\n"
        server = make_server(extra=extra.replace("host = 127.0.0.1:", "host = localhost:"))
        (summary,) = wait_polls(server, "isp", 1)
        assert summary[:3] == (1, 0, 1), server.log_text()[-3000:]
        (m,) = server.messages("bob@example.test")
        assert "(using TLSv1." in m["Received"], m["Received"]
        assert " with IMAPS id " in m["Received"], m["Received"]
        assert re.search(r"imap-login: Info: Login: user=<bob123>.*TLS", d.log_text()), d.log_text()
    finally:
        d.cleanup()


def test_untrusted_certificate_fetches_nothing(make_server, dovecot):
    dovecot.add("bob123", message("stays"))
    server = make_server(extra=account("isp", dovecot.imaps, tls="tls"))
    (summary,) = wait_polls(server, "isp", 1)
    assert summary[0] == 0
    assert "UnknownIssuer" in server.log_text() or "certificate" in server.log_text()
    assert server.messages("bob@example.test") == []
    assert folder_count(dovecot, "INBOX") == 1


@pytest.mark.parametrize("keep", ["no", "move:Archive"])
def test_sigkill_three_times_loses_and_doubles_nothing(make_server, dovecot, keep):
    """SIGKILL mailgate three times while it collects over IMAP: every
    message ends up in the local mailbox exactly once."""
    total = 600
    for i in range(total):
        dovecot.add("bob123", message(f"crash {i}", body=f"body {i}\n" * 40))
    server = make_server(extra=account("isp", dovecot.imap, keep=keep, interval="1h"))
    new = server.maildir_path("bob@example.test") / "new"
    count = lambda: len(list(new.iterdir())) if new.exists() else 0  # noqa: E731
    rng = random.Random(11)
    left_at_kill = []
    for _ in range(3):
        before = count()
        deadline = time.time() + 30
        while time.time() < deadline and count() <= before + 5:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.01, 0.1))
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        left_at_kill.append(folder_count(dovecot, "INBOX"))
        server.start()
    assert all(n > 0 for n in left_at_kill), f"every kill hit a run: {left_at_kill}"
    deadline = time.time() + 120
    while time.time() < deadline and folder_count(dovecot, "INBOX") > 0:
        server.run("fetch", "isp")
        time.sleep(0.5)
    assert folder_count(dovecot, "INBOX") == 0, server.log_text()[-3000:]
    subjects_ = [m["Subject"] for m in server.messages("bob@example.test")]
    missing = {f"crash {i}" for i in range(total)} - set(subjects_)
    assert not missing, f"lost: {sorted(missing)[:5]}"
    duplicates = len(subjects_) - len(set(subjects_))
    print(f"\nimap crash ({keep}): {total} messages, kills with {left_at_kill} left, "
          f"{duplicates} delivered twice")
    assert duplicates == 0
    if keep.startswith("move:"):
        assert folder_count(dovecot, "Archive") == total


def test_multidrop_routes_by_headers(make_server, dovecot):
    dovecot.add("bob123", message("to-alice", headers={"Delivered-To": "alice@example.test"}))
    dovecot.add("bob123", message("to-both", headers={"To": "bob@example.test, alice@example.test"}))
    dovecot.add("bob123", message("nobody", headers={"To": "stranger@remote.test"}))
    server = make_server(extra=account("isp", dovecot.imap, multidrop="yes"))
    (summary,) = wait_polls(server, "isp", 1)
    assert summary[:3] == (3, 0, 3), summary
    assert subjects(server.messages("alice@example.test")) == ["to-alice", "to-both"]
    assert subjects(server.messages("bob@example.test")) == ["nobody", "to-both"]


def uidvalidity(dovecot, folder="INBOX"):
    c = imap(dovecot)
    try:
        typ, data = c.status(folder, "(UIDVALIDITY)")
        assert typ == "OK", data
        return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
    finally:
        c.logout()


def renumber(dovecot, user="bob123"):
    """Makes Dovecot give INBOX a new UIDVALIDITY, as a server does after
    a rebuild or a migration: its UID list and indexes go, and Dovecot
    (restarted) makes new ones, UIDs from 1 again and a new, time-based
    UIDVALIDITY."""
    before = uidvalidity(dovecot)
    dovecot.stop()
    md = dovecot.maildir(user)
    for p in md.iterdir():
        if p.name.startswith("dovecot") and p.is_file():
            p.unlink()
    # UIDVALIDITY is the clock's seconds: make sure they moved on.
    while int(time.time()) <= before:
        time.sleep(0.1)
    dovecot.start()
    after = uidvalidity(dovecot)
    assert after != before, (before, after)
    return before, after


def test_changed_uidvalidity_collects_only_what_is_new(make_server, dovecot):
    """A new UIDVALIDITY with keep = yes: the messages collected before
    are recognized by Message-ID and size and not collected again; only
    the new one (and one that shares an ID but not the size) is."""
    for s in ("one", "two", "three"):
        dovecot.add("bob123", message(s))
    server = make_server(extra=account("isp", dovecot.imap, keep="yes"))
    assert wait_polls(server, "isp", 1)[0][:2] == (3, 3)
    records = server.data_dir / "smartpop" / "isp"
    assert len(re.findall(r"id=[0-9a-f]{16}/\d+", records.read_text())) == 3, records.read_text()
    old, new = renumber(dovecot)
    dovecot.add("bob123", message("four"))
    # Same Message-ID as "one", another size: another message.
    dovecot.add("bob123", message("one", body="a longer body this time\n"))
    server.run("fetch", "isp")
    polls = wait_polls(server, "isp", 2)
    assert polls[1][:2] == (2, 5), polls
    assert subjects(server.messages("bob@example.test")) == ["four", "one", "one", "three", "two"]
    log = server.log_text()
    assert (f"UIDVALIDITY of INBOX changed to {new}: 3 message(s) matched by Message-ID and size "
            "are not collected again, 2 are collected as new") in log, log[-3000:]
    # The records now know the new keys only (the old ones pruned), so a
    # third poll fetches nothing and does not match again.
    deadline = time.time() + 20
    while f"imap:INBOX:{old}:" in records.read_text() and time.time() < deadline:
        time.sleep(0.05)
    text = records.read_text()
    assert f"imap:INBOX:{old}:" not in text and len(re.findall(rf"imap:INBOX:{new}:\d+ ", text)) == 5, text
    server.run("fetch", "isp")
    polls = wait_polls(server, "isp", 3)
    assert polls[2][:2] == (0, 5), polls
    assert server.log_text().count("matched by Message-ID") == 1
    assert len(server.messages("bob@example.test")) == 5


def test_changed_uidvalidity_with_keep_no_expunges_without_fetching(make_server, dovecot):
    """keep = no, and the connection was cut after the messages were
    stored and recorded but before they were expunged: after the change
    they are matched and expunged, not delivered twice."""
    for s in ("a", "b"):
        dovecot.add("bob123", message(s))
    # keep = yes for the first run stands for "stored, not yet expunged".
    server = make_server(extra=account("isp", dovecot.imap, keep="yes"))
    wait_polls(server, "isp", 1)
    server.stop()
    renumber(dovecot)
    server.config.write_text(server.config.read_text().replace("keep = yes", "keep = no"))
    server.start()
    polls = wait_polls(server, "isp", 2)
    assert polls[-1][:3] == (0, 0, 2), polls
    assert subjects(server.messages("bob@example.test")) == ["a", "b"]
    assert folder_count(dovecot, "INBOX") == 0


def uids(dovecot, folder="INBOX"):
    """(UIDVALIDITY, [UID...]) of a folder, as Dovecot numbers it."""
    c = imap(dovecot)
    try:
        typ, data = c.select(folder, readonly=True)
        assert typ == "OK", data
        typ, data = c.uid("SEARCH", None, "ALL")
        assert typ == "OK", data
        return uidvalidity(dovecot, folder), [int(u) for u in data[0].split()]
    finally:
        c.logout()


def test_keep_seven_days_expunges_only_what_is_a_week_old(make_server, dovecot):
    for s in ("old one", "recent one", "new one"):
        dovecot.add("bob123", message(s))
    uv, (old, recent, new) = uids(dovecot)
    server = make_server(extra=account("week", dovecot.imap, keep="7d"), start=False)
    records = server.data_dir / "smartpop"
    records.mkdir(parents=True)
    now = int(time.time())
    # Collected 8 days ago (only the expunge is due) and 1 day ago (kept).
    (records / "week").write_text(
        f"imap:INBOX:{uv}:{old} {now - 8 * 86400} d\nimap:INBOX:{uv}:{recent} {now - 86400} d\n"
    )
    server.start()
    assert wait_polls(server, "week", 1)[0][:5] == (1, 2, 1, 0, 0)
    assert subjects(server.messages("bob@example.test")) == ["new one"]
    assert uids(dovecot) == (uv, [recent, new])
    text = (records / "week").read_text()
    assert f":{old} " not in text and f":{recent} " in text and f":{new} " in text, text


def imap_processes(dovecot):
    """PIDs of this Dovecot's imap processes (one per logged-in session),
    found by parent: other Dovecots on the machine are not touched."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            status = open(f"/proc/{d}/status").read()
            cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")[0]
        except OSError:
            continue
        ppid = int(re.search(r"PPid:\s+(\d+)", status).group(1))
        if ppid == dovecot.proc.pid and cmd.endswith(b"/imap"):
            found.append(int(d))
    return found


def test_idle_reconnects_when_its_connection_is_killed(make_server, dovecot):
    server = make_server(extra=account("isp", dovecot.imap, idle="yes", interval="1h"))
    deadline = time.time() + 15
    while not imap_processes(dovecot):
        assert time.time() < deadline, "no IMAP session at Dovecot"
        time.sleep(0.1)
    time.sleep(0.5)  # in IDLE
    (pid,) = imap_processes(dovecot)
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 15
    while "reconnecting in 1s" not in server.log_text():
        assert time.time() < deadline, server.log_text()[-3000:]
        time.sleep(0.05)
    # Back in IDLE on a new session: pushed mail arrives within seconds.
    deadline = time.time() + 15
    while imap_processes(dovecot) in ([], [pid]):
        assert time.time() < deadline, "no new IMAP session"
        time.sleep(0.1)
    time.sleep(0.5)
    start = time.time()
    append(dovecot, "INBOX", message("after-kill"))
    wait_messages(server, "bob@example.test", 1, timeout=15)
    assert time.time() - start < 5
    assert server.log_text().count("reconnecting in") == 1


def test_without_idle_offered_polls_at_the_interval(make_server, ca):
    # Dovecot's announced capabilities, IDLE left out (it still accepts
    # the command: only what is offered counts).
    d = Dovecot({"bob123": "secret"}, ca, imap=True,
                extra_conf="imap_capability = IMAP4rev1 LITERAL+ UIDPLUS MOVE\n")
    d.start()
    try:
        d.add("bob123", message("first"))
        server = make_server(extra=account("isp", d.imap, idle="yes", interval="2s"))
        assert wait_polls(server, "isp", 1)[0][:3] == (1, 0, 1)
        append(d, "INBOX", message("second"))
        # A second poll (a session that ended: no IDLE) collects it.
        polls = wait_polls(server, "isp", 3, timeout=20)
        assert sum(p[0] for p in polls) == 2, polls
        assert subjects(server.messages("bob@example.test")) == ["first", "second"]
        assert folder_count(d, "INBOX") == 0
    finally:
        d.cleanup()


def test_idle_push_with_several_folders(make_server, dovecot):
    """idle = yes with two folders: one watcher connection per folder in
    IDLE; mail APPENDed to either is in the local Maildir within 5 s."""
    append(dovecot, "Lists", message("list-old"))
    server = make_server(extra=account("isp", dovecot.imap, idle="yes", interval="1h",
                                       folders="INBOX, Lists"))
    assert wait_polls(server, "isp", 1)[0][:3] == (1, 0, 1)
    deadline = time.time() + 15
    while len(imap_processes(dovecot)) < 2:
        assert time.time() < deadline, f"sessions: {imap_processes(dovecot)}"
        time.sleep(0.1)
    time.sleep(1)  # both in IDLE
    for i, folder in enumerate(["Lists", "INBOX", "Lists"]):
        start = time.time()
        append(dovecot, folder, message(f"pushed-{i}"))
        wait_messages(server, "bob@example.test", 2 + i, timeout=30)
        latency = time.time() - start
        assert latency < 5, f"push {i} to {folder} took {latency:.1f}s"
    assert folder_count(dovecot, "INBOX") == 0 and folder_count(dovecot, "Lists") == 0
    # Each push was a run of its own (the watchers collect nothing); the
    # two watchers are still there, and nothing came twice.
    assert len(summaries(server, "isp")) >= 4
    deadline = time.time() + 10  # the last run's session may still be ending
    while len(imap_processes(dovecot)) != 2:
        assert time.time() < deadline, f"sessions: {imap_processes(dovecot)}"
        time.sleep(0.05)
    assert "push for" not in server.log_text()
    assert subjects(server.messages("bob@example.test")) == [
        "list-old", "pushed-0", "pushed-1", "pushed-2"]


def test_several_folders_without_idle_offered_poll(make_server, ca):
    d = Dovecot({"bob123": "secret"}, ca, imap=True,
                extra_conf="imap_capability = IMAP4rev1 LITERAL+ UIDPLUS MOVE\n")
    d.start()
    try:
        server = make_server(extra=account("isp", d.imap, idle="yes", interval="2s",
                                           folders="INBOX, Lists"))
        wait_polls(server, "isp", 1)
        deadline = time.time() + 15
        while "offers no IDLE; polling every interval" not in server.log_text():
            assert time.time() < deadline, server.log_text()[-3000:]
            time.sleep(0.05)
        append(d, "Lists", message("polled"))
        wait_messages(server, "bob@example.test", 1, timeout=20)
        time.sleep(2)
        # Each watcher ended once; none is started again.
        log = server.log_text()
        assert log.count("offers no IDLE") == 1 and log.count("push for") == 2, log[-3000:]
    finally:
        d.cleanup()


@pytest.mark.parametrize("folders", ["INBOX", "INBOX, Lists"])
def test_idle_is_reissued_and_push_still_works(make_server, dovecot, folders):
    """IDLE is ended and re-issued at the refresh (25 min; 1 s by the
    hidden test knob), on the run's own connection (one folder) and on
    the watchers (several); push still works on the same connections."""
    append(dovecot, "Lists", message("list-mail"))
    server = make_server(extra=account("isp", dovecot.imap, idle="yes", interval="1h",
                                       folders=folders),
                         env={"MAILGATE_TEST_IDLE_REFRESH": "1"})
    want = len(folders.split(","))
    deadline = time.time() + 15
    while server.log_text().count("re-issuing IDLE") < 3 * want:
        assert time.time() < deadline, server.log_text()[-3000:]
        time.sleep(0.1)
    sessions = imap_processes(dovecot)
    start = time.time()
    append(dovecot, "INBOX", message("after-refresh"))
    # Lists' message (collected by the first run) counts with two folders.
    wait_messages(server, "bob@example.test", want, timeout=15)
    assert time.time() - start < 5
    log = server.log_text()
    assert "reconnecting in" not in log and "push for" not in log, log[-3000:]
    # The same connections idle on (the run's own one, or the watchers).
    assert len(sessions) == want and set(sessions) <= set(imap_processes(dovecot)), sessions
