"""SmartPop against a real Dovecot POP3 server on loopback.

Each test starts a private Dovecot (tests/dovecot_helpers.py) and a
mailgate whose `[smartpop ...]` accounts point at it, then checks the
Maildirs on both sides. Polls are triggered by start-up (every account
polls once at start) and by `mailgate fetch`; intervals are long so that
nothing polls behind a test's back, except where the retry itself is
what is tested.
"""

import poplib
import random
import re
import select
import signal
import smtplib
import socket
import ssl
import threading
import time
from email import message_from_bytes
from pathlib import Path

import pytest

from conftest import free_port
from dovecot_helpers import Dovecot, TestCA, available, message

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

SUMMARY = r"smartpop {name}: fetched=(\d+) kept=(\d+) deleted=(\d+) oversized=(\d+) failed=(\d+)(.*)"


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"), names=("localhost", "pop.isp.test"))


@pytest.fixture
def make_dovecot(ca):
    made = []

    def make(users=None, plaintext_auth=True):
        d = Dovecot(users or {"bob123": "secret"}, ca, plaintext_auth=plaintext_auth)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def dovecot(make_dovecot):
    return make_dovecot({"bob123": "secret", "alice77": "rabbit", "family": "shared"})


def account(name, port, user="bob123", password="secret", tls="none", deliver_to="bob@example.test",
            ca_file=None, interval="1h", keep="no", multidrop="no", host="127.0.0.1"):
    text = (
        f"\n[smartpop {name}]\nhost = {host}:{port}\ntls = {tls}\nusername = {user}\n"
        f"password = {password}\ndeliver_to = {deliver_to}\nmultidrop = {multidrop}\n"
        f"interval = {interval}\nkeep = {keep}\n"
    )
    if ca_file:
        text += f"ca_file = {ca_file}\n"
    return text


def summaries(server, name):
    """Every poll summary line of account NAME, as tuples of ints + rest."""
    pat = re.compile(SUMMARY.format(name=re.escape(name)))
    out = []
    for line in server.log_text().splitlines():
        m = pat.search(line)
        if m:
            out.append(tuple(int(x) for x in m.groups()[:5]) + (m.group(6),))
    return out


def wait_polls(server, name, count, timeout=20):
    """Waits until account NAME has finished COUNT polls; returns the summaries."""
    deadline = time.time() + timeout
    while True:
        got = summaries(server, name)
        if len(got) >= count:
            return got
        if server.proc.poll() is not None:
            raise AssertionError(f"mailgate exited:\n{server.log_text()[-4000:]}")
        if time.time() > deadline:
            raise AssertionError(
                f"account {name}: {len(got)} poll(s) after {timeout}s, wanted {count}\n"
                + server.log_text()[-6000:]
            )
        time.sleep(0.05)


def fetch(server, *account):
    r = server.run("fetch", *account)
    assert r.returncode == 0, r.stderr.decode()
    return r


def subjects(msgs):
    return sorted(m["Subject"] for m in msgs)


def raw_messages(server, address):
    path = server.maildir_path(address)
    if not path.exists():
        return []
    return [p.read_bytes() for sub in ("new", "cur") for p in sorted((path / sub).iterdir())]


def assert_no_outbox(server):
    queue = server.data_dir / "queue"
    files = [p for p in queue.rglob("*") if p.is_file()] if queue.exists() else []
    assert files == [], f"collected mail went to the outbox: {files}"


# -- a fault-injecting POP3 proxy --------------------------------------------


class Proxy:
    """A TCP proxy on loopback between mailgate and Dovecot that records the
    client's commands and can cut a session at a chosen point.

    `faults` is consumed one per accepted connection; each is None (pass
    through) or a tuple:
      ("mid-retr", n, k)  after the client's n-th RETR, forward k bytes of the
                          reply, then drop both sides;
      ("before", VERB, n) drop both sides instead of forwarding the client's
                          n-th VERB command (e.g. ("before", "QUIT", 1));
      ("answer", VERB, r) answer every VERB command with the line r instead
                          of forwarding it (a man in the middle).
    `server_ssl`: terminate TLS from the client (implicit TLS), so the test
    sees the commands sent inside it; Dovecot is reached in plaintext.
    """

    def __init__(self, target_port, faults=(), server_ssl=None):
        self.target = target_port
        self.faults = list(faults)
        self.server_ssl = server_ssl
        self.sessions = []  # one list of command lines per connection
        self.lock = threading.Lock()
        self.stopping = False
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.accept_loop, daemon=True)
        self.thread.start()

    def accept_loop(self):
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            with self.lock:
                fault = self.faults.pop(0) if self.faults else None
                commands = []
                self.sessions.append(commands)
            threading.Thread(target=self.relay, args=(conn, fault, commands), daemon=True).start()

    def relay(self, client, fault, commands):
        upstream = None
        try:
            client.settimeout(10)
            if self.server_ssl:
                client = self.server_ssl.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            counts = {}
            cut_after = None  # bytes of server output still forwarded
            pending = b""
            deadline = time.time() + 120  # bounded, whatever happens
            while not self.stopping and time.time() < deadline:
                if isinstance(client, ssl.SSLSocket) and client.pending():
                    ready = [client]
                else:
                    ready, _, _ = select.select([client, upstream], [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is upstream:
                        if cut_after is not None:
                            client.sendall(data[:cut_after])
                            cut_after -= len(data[:cut_after])
                            if cut_after <= 0:
                                return
                            continue
                        client.sendall(data)
                        continue
                    pending += data
                    while b"\n" in pending:
                        line, _, pending = pending.partition(b"\n")
                        cmd = line.rstrip(b"\r").decode(errors="replace")
                        commands.append(cmd)
                        verb = cmd.split(" ")[0].upper()
                        counts[verb] = counts.get(verb, 0) + 1
                        if fault and fault[0] == "before" and fault[1] == verb and fault[2] == counts[verb]:
                            commands.append("<cut>")
                            return
                        if fault and fault[0] == "answer" and fault[1] == verb:
                            client.sendall(fault[2].encode() + b"\r\n")
                            continue
                        if fault and fault[0] == "mid-retr" and verb == "RETR" and fault[1] == counts[verb]:
                            cut_after = fault[2]
                            commands.append("<cut mid-retr>")
                        upstream.sendall(line + b"\n")
        except (OSError, ssl.SSLError):
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()

    def verbs(self, session):
        return [c.split(" ")[0].upper() for c in self.sessions[session]]

    def close(self):
        self.stopping = True
        self.listener.close()


class BlackHole:
    """Accepts TCP connections and never says a word."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.conns = []
        self.stopping = False
        self.listener.settimeout(0.2)
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while not self.stopping:
            try:
                c, _ = self.listener.accept()
                self.conns.append(c)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return

    def close(self):
        self.stopping = True
        self.listener.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def proxies():
    made = []
    yield made
    for p in made:
        p.close()


# -- tests -------------------------------------------------------------------


def test_single_drop_plain_deletes_after_delivery(make_server, dovecot):
    bodies = {
        "one": message("one"),
        "two": message("two", body="line\n.leading dot\n..two dots\n.\nend\n"),
        "three": message("three", size=20000),
        "four": message("four", headers={"Return-Path": "<bounces@lists.example>"}),
    }
    for b in bodies.values():
        dovecot.add("bob123", b)
    server = make_server(extra=account("isp", dovecot.pop3))
    (summary,) = wait_polls(server, "isp", 1)
    assert summary[:5] == (4, 0, 4, 0, 0), summary
    msgs = server.messages("bob@example.test")
    assert subjects(msgs) == ["four", "one", "three", "two"]
    assert dovecot.count("bob123") == 0
    for raw in raw_messages(server, "bob@example.test"):
        head, _, body = raw.partition(b"\n\n")
        m = message_from_bytes(raw)
        original = bodies[m["Subject"]]
        # The message itself is unchanged (Maildir keeps LF line ends),
        # but for its Return-Path, which moves to the top.
        assert raw.endswith(original.replace(b"Return-Path: <bounces@lists.example>\n", b"")), m["Subject"]
        want = "<bounces@lists.example>" if m["Subject"] == "four" else "<sender@remote.example>"
        assert m.get_all("Return-Path") == [want], raw[:300]
        assert raw.startswith(b"Return-Path: "), raw[:200]
        assert m.get_all("Delivered-To") == ["bob@example.test"]
        received = m.get_all("Received")[0]
        # The hop from the ISP's server: its name and address, and POP3.
        assert received.startswith("from 127.0.0.1 ([127.0.0.1])"), received
        assert "with POP3 " in received and "for <bob@example.test>" in received, received
        assert "(via smartpop isp)" in received, received
        routed = m["X-Mailgate-Routed"]
        assert routed == f"smartpop isp from 127.0.0.1:{dovecot.pop3}, single-drop to bob@example.test", routed
    assert_no_outbox(server)
    # The UIDLs were recorded, then pruned once the server had deleted them.
    assert (server.data_dir / "smartpop" / "isp").exists()


def test_starttls_and_implicit_tls_with_test_ca(make_server, make_dovecot, ca):
    # Plaintext logins are refused by this Dovecot: success proves TLS.
    d = make_dovecot({"bob123": "secret", "alice77": "rabbit"}, plaintext_auth=False)
    d.add("bob123", message("over stls"))
    d.add("alice77", message("over pop3s"))
    extra = account("stls", d.pop3, tls="starttls", ca_file=ca.ca_cert) + account(
        "implicit", d.pop3s, user="alice77", password="rabbit", tls="tls",
        ca_file=ca.ca_cert, deliver_to="alice@example.test",
    )
    server = make_server(extra=extra)
    assert wait_polls(server, "stls", 1)[0][:5] == (1, 0, 1, 0, 0)
    assert wait_polls(server, "implicit", 1)[0][:5] == (1, 0, 1, 0, 0)
    assert subjects(server.messages("bob@example.test")) == ["over stls"]
    assert subjects(server.messages("alice@example.test")) == ["over pop3s"]
    assert d.count("bob123") == 0 and d.count("alice77") == 0
    log = d.log_text()
    assert re.search(r"Login: user=<bob123>.*TLS", log), log
    assert re.search(r"Login: user=<alice77>.*TLS", log), log
    (m,) = server.messages("alice@example.test")
    assert "with POP3S" in m["Received"] and "(using TLSv1." in m["Received"], m["Received"]


def test_tls_certificate_not_trusted_fetches_nothing(make_server, dovecot):
    dovecot.add("bob123", message("stays"))
    # No ca_file: the test CA is not among the web roots.
    server = make_server(extra=account("untrusted", dovecot.pop3s, tls="tls")
                         + account("untrusted-stls", dovecot.pop3, tls="starttls"))
    for name in ("untrusted", "untrusted-stls"):
        (s,) = wait_polls(server, name, 1)
        assert s[0] == 0 and "error" in s[5], s
    assert dovecot.count("bob123") == 1
    assert server.messages("bob@example.test") == []
    assert not re.search(r"Login: user=<bob123>", dovecot.log_text())


def test_auth_plain_inside_implicit_tls(make_server, dovecot, ca, proxies):
    """A TLS-terminating proxy shows what mailgate sends inside TLS: SASL
    PLAIN (offered by Dovecot's CAPA), not USER/PASS. Over tls = none the
    same server gets USER/PASS."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(ca.cert, ca.key)
    tls_proxy = Proxy(dovecot.pop3, server_ssl=ctx)
    plain_proxy = Proxy(dovecot.pop3)
    proxies.extend([tls_proxy, plain_proxy])
    dovecot.add("bob123", message("via sasl"))
    dovecot.add("alice77", message("via user pass"))
    extra = account("sasl", tls_proxy.port, tls="tls", ca_file=ca.ca_cert) + account(
        "userpass", plain_proxy.port, user="alice77", password="rabbit", deliver_to="alice@example.test"
    )
    server = make_server(extra=extra)
    assert wait_polls(server, "sasl", 1)[0][:5] == (1, 0, 1, 0, 0)
    assert wait_polls(server, "userpass", 1)[0][:5] == (1, 0, 1, 0, 0)
    verbs = tls_proxy.verbs(0)
    assert verbs[:2] == ["CAPA", "AUTH"], tls_proxy.sessions
    assert tls_proxy.sessions[0][1].startswith("AUTH PLAIN ")
    assert "USER" not in verbs and "PASS" not in verbs
    assert verbs[-1] == "QUIT"
    pverbs = plain_proxy.verbs(0)
    assert "USER" in pverbs and "PASS" in pverbs and "AUTH" not in pverbs, plain_proxy.sessions


def test_multidrop_routing(make_server, dovecot):
    cases = {
        # subject: (headers, expected mailboxes, routed-by)
        "delivered-to wins": (
            {"Delivered-To": "alice@example.test", "To": "bob@example.test"},
            ["alice@example.test"], "Delivered-To"),
        "isp delivered-to then x-original-to alias": (
            {"Delivered-To": "bob123@isp.example", "X-Original-To": "robert@example.test",
             "To": "alice@example.test"},
            ["bob@example.test"], "X-Original-To"),
        "envelope-to with delimiter": (
            {"X-Envelope-To": "<alice+lists@example.test>", "To": "bob@example.test"},
            ["alice@example.test"], "Envelope-To"),
        "to family alias": (
            {"To": "Family <family@example.test>"}, ["alice@example.test", "bob@example.test"], "To/Cc"),
        "to and cc each once": (
            {"To": "bob@example.test, stranger@remote.example",
             "Cc": "robert@example.test, Alice <ALICE@example.test>"},
            ["alice@example.test", "bob@example.test"], "To/Cc"),
        "catch-all domain": (
            {"To": "anyone@other.test"}, ["info@other.test"], "To/Cc"),
        "remote only": (
            {"To": "stranger@remote.example"}, ["bob@example.test"], "unmatched"),
        "unknown local user": (
            {"To": "nobody@example.test"}, ["bob@example.test"], "unmatched"),
        "bcc is not a routing header": (
            {"To": "stranger@remote.example", "Bcc": "alice@example.test"}, ["bob@example.test"], "unmatched"),
    }
    for subject, (headers, _, _) in cases.items():
        dovecot.add("family", message(subject, headers=dict(headers)))
    # Forwards and remote alias members are not followed for collected mail:
    # it never goes to the outbox.
    replace = {
        "password = {PLAIN}wonderland": "password = {PLAIN}wonderland\nforward = alice@elsewhere.example",
        "to = bob@example.test, alice@example.test": "to = bob@example.test, alice@example.test, gran@elsewhere.example",
    }
    server = make_server(extra=account("family", dovecot.pop3, user="family", password="shared",
                                       multidrop="yes"), replace=replace)
    (s,) = wait_polls(server, "family", 1)
    assert s[:5] == (len(cases), 0, len(cases), 0, 0), s
    got = {}
    for box in ("bob@example.test", "alice@example.test", "info@other.test"):
        for m in server.messages(box):
            got.setdefault(m["Subject"], []).append(box)
            # Every copy names its own mailbox once, and how it was routed.
            assert m.get_all("Delivered-To")[0] == box
            _, _, by = cases[m["Subject"]]
            routed = m["X-Mailgate-Routed"]
            assert routed.startswith("smartpop family from 127.0.0.1:"), routed
            assert by in routed, (m["Subject"], routed)
    for subject, (_, boxes, _) in cases.items():
        assert sorted(got.get(subject, [])) == sorted(boxes), subject
    assert dovecot.count("family") == 0
    assert_no_outbox(server)


def test_keep_yes_fetches_each_message_once(make_server, dovecot):
    dovecot.add("bob123", message("first"))
    dovecot.add("bob123", message("second"))
    server = make_server(extra=account("kept", dovecot.pop3, keep="yes"))
    assert wait_polls(server, "kept", 1)[0][:5] == (2, 2, 0, 0, 0)
    fetch(server, "kept")
    assert wait_polls(server, "kept", 2)[1][:5] == (0, 2, 0, 0, 0)
    dovecot.add("bob123", message("third"))
    fetch(server)
    assert wait_polls(server, "kept", 3)[2][:5] == (1, 3, 0, 0, 0)
    # The records survive a restart.
    server.restart()
    assert wait_polls(server, "kept", 4)[3][:5] == (0, 3, 0, 0, 0)
    assert subjects(server.messages("bob@example.test")) == ["first", "second", "third"]
    assert dovecot.count("bob123") == 3


def uidls(dovecot, user, password):
    p = poplib.POP3("127.0.0.1", dovecot.pop3, timeout=10)
    p.user(user)
    p.pass_(password)
    _, lines, _ = p.uidl()
    p.quit()
    return [line.split()[1].decode() for line in lines]


def test_keep_for_days(make_server, dovecot):
    dovecot.add("bob123", message("old one"))
    dovecot.add("bob123", message("recent one"))
    dovecot.add("bob123", message("new one"))
    old, recent, new = uidls(dovecot, "bob123", "secret")
    server = make_server(extra=account("week", dovecot.pop3, keep="7d"), start=False)
    records = server.data_dir / "smartpop"
    records.mkdir(parents=True)
    now = int(time.time())
    # Fetched 8 days ago (only the DELE is due) and 1 day ago (kept).
    (records / "week").write_text(f"{old} {now - 8 * 86400} d\n{recent} {now - 86400} d\n")
    server.start()
    assert wait_polls(server, "week", 1)[0][:5] == (1, 2, 1, 0, 0)
    assert subjects(server.messages("bob@example.test")) == ["new one"]
    assert uidls(dovecot, "bob123", "secret") == [recent, new]
    text = (records / "week").read_text()
    assert old not in text and recent in text and new in text


def test_oversized_left_on_server_and_reported_once(make_server, dovecot):
    # BASE_CONFIG has max_message_size = 1M.
    dovecot.add("bob123", message("too big", size=1_500_000))
    dovecot.add("bob123", message("small"))
    server = make_server(extra=account("big", dovecot.pop3))
    assert wait_polls(server, "big", 1)[0][:5] == (1, 0, 1, 1, 0)
    fetch(server, "big")
    assert wait_polls(server, "big", 2)[1][:5] == (0, 0, 0, 1, 0)
    msgs = server.messages("bob@example.test")
    notices = [m for m in msgs if "too large" in (m["Subject"] or "")]
    assert len(notices) == 1, subjects(msgs)
    notice = notices[0]
    assert "account big" in notice.get_payload(), notice.get_payload()
    assert subjects(m for m in msgs if m not in notices) == ["small"]
    assert dovecot.count("bob123") == 1
    assert_no_outbox(server)


@pytest.mark.parametrize("tls", ["none", "tls"])
def test_two_megabyte_message(make_server, dovecot, ca, tls):
    big = message("two megabytes", size=2 * 1024 * 1024)
    dovecot.add("bob123", big)
    port = dovecot.pop3s if tls == "tls" else dovecot.pop3
    server = make_server(extra=account("large", port, tls=tls, ca_file=ca.ca_cert),
                         replace={"max_message_size = 1M": "max_message_size = 3M"})
    assert wait_polls(server, "large", 1, timeout=60)[0][:5] == (1, 0, 1, 0, 0)
    (raw,) = raw_messages(server, "bob@example.test")
    assert raw.endswith(big)
    assert dovecot.count("bob123") == 0


def test_50mb_message_collected_in_bounded_memory(make_server, dovecot):
    """A 50 MB message is staged on disk as it arrives and copied from
    there: the server's peak memory stays far below its size, and the
    Maildir holds it byte for byte."""
    from conftest import peak_rss_kib

    big = message("fifty megabytes", size=50 * 1000 * 1000)
    dovecot.add("bob123", big)
    server = make_server(extra=account("huge", dovecot.pop3),
                         replace={"max_message_size = 1M": "max_message_size = 60M"})
    assert wait_polls(server, "huge", 1, timeout=180)[0][:5] == (1, 0, 1, 0, 0)
    rss = peak_rss_kib(server.proc.pid)
    (raw,) = raw_messages(server, "bob@example.test")
    assert raw.endswith(big)
    trace = raw[: len(raw) - len(big)]
    assert trace.startswith(b"Return-Path: <sender@remote.example>\nDelivered-To: bob@example.test\n")
    assert b"\nX-Mailgate-Routed: smartpop huge" in trace and b"\n\n" not in trace
    assert dovecot.count("bob123") == 0
    # Nothing staged is left behind.
    assert sorted(p.name for p in (server.data_dir / "smartpop").iterdir()) == ["huge"]
    assert rss < 16 * 1024, f"peak RSS {rss} KiB"


def test_wrong_password_logged_and_retried(make_server, dovecot):
    dovecot.add("bob123", message("waits"))
    dovecot.set_password("bob123", "changed")
    server = make_server(extra=account("wrongpw", dovecot.pop3, interval="3s"))
    (s,) = wait_polls(server, "wrongpw", 1)
    assert s[0] == 0 and "login failed" in s[5], s
    assert dovecot.count("bob123") == 1
    # The next interval tries again on its own; once the password is right
    # again the message is collected.
    dovecot.set_password("bob123", "secret")
    deadline = time.time() + 30
    while not server.messages("bob@example.test"):
        assert time.time() < deadline, server.log_text()[-4000:]
        time.sleep(0.1)
    got = wait_polls(server, "wrongpw", 2)
    assert any(x[:5] == (1, 0, 1, 0, 0) for x in got), got
    assert subjects(server.messages("bob@example.test")) == ["waits"]
    assert dovecot.count("bob123") == 0


def test_stuck_server_delays_nobody(make_server, dovecot, proxies):
    hole = BlackHole()
    try:
        dovecot.add("bob123", message("not delayed"))
        extra = (account("stuck", hole.port, deliver_to="alice@example.test")
                 + account("refused", free_port(), deliver_to="alice@example.test")
                 + account("fine", dovecot.pop3))
        t0 = time.time()
        server = make_server(extra=extra)
        assert wait_polls(server, "fine", 1, timeout=10)[0][:5] == (1, 0, 1, 0, 0)
        assert time.time() - t0 < 10
        assert summaries(server, "stuck") == []  # still waiting for a greeting
        (refused,) = wait_polls(server, "refused", 1)
        assert "Connection refused" in refused[5], refused
        # SMTP and POP3 service go on.
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=5) as s:
            s.sendmail("carol@remote.test", ["bob@example.test"], b"Subject: by smtp\r\n\r\nhi\r\n")
        p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=5)
        p.user("bob@example.test")
        p.pass_("secret")
        assert p.stat()[0] == 2
        p.quit()
        # Another poll of the good account while the stuck one still hangs.
        dovecot.add("bob123", message("again"))
        fetch(server, "fine")
        assert wait_polls(server, "fine", 2, timeout=10)[1][:5] == (1, 0, 1, 0, 0)
        assert len(hole.conns) == 1
        # Stopping does not wait for the silent server.
        t0 = time.time()
        assert server.stop() == 0
        assert time.time() - t0 < 10
    finally:
        hole.close()


def test_fault_proxy_no_loss_no_duplicates(make_server, dovecot, proxies):
    subjects_in = ["m1 large", "m2", "m3"]
    dovecot.add("bob123", message("m1 large", size=300_000))
    dovecot.add("bob123", message("m2"))
    dovecot.add("bob123", message("m3"))
    proxy = Proxy(dovecot.pop3, faults=[
        ("mid-retr", 1, 100_000),  # cut inside the first message's body
        ("before", "RETR", 2),  # m1 delivered and DELEd, then cut
        ("before", "QUIT", 1),  # all delivered and DELEd, QUIT never arrives
        None,
    ])
    proxies.append(proxy)
    server = make_server(extra=account("faulty", proxy.port))
    s1 = wait_polls(server, "faulty", 1)[0]
    assert s1[0] == 0 and "error" in s1[5], s1
    assert server.messages("bob@example.test") == []
    assert dovecot.count("bob123") == 3
    fetch(server, "faulty")
    s2 = wait_polls(server, "faulty", 2)[1]
    # One DELE was answered, but without QUIT nothing was deleted.
    assert s2[:3] == (1, 0, 0) and "undeleted=1 error" in s2[5], s2
    assert dovecot.count("bob123") == 3  # the DELE was never committed
    fetch(server, "faulty")
    s3 = wait_polls(server, "faulty", 3)[2]
    assert s3[:3] == (2, 0, 0) and "undeleted=3 error" in s3[5], s3
    assert dovecot.count("bob123") == 3
    fetch(server, "faulty")
    s4 = wait_polls(server, "faulty", 4)[3]
    assert s4[:5] == (0, 0, 3, 0, 0), s4
    # The last session only deleted: nothing was fetched twice.
    assert "RETR" not in proxy.verbs(3), proxy.sessions[3]
    assert subjects(server.messages("bob@example.test")) == sorted(subjects_in)
    assert dovecot.count("bob123") == 0
    # Nothing half-written in tmp/.
    assert server.files_in("tmp") == []


def test_fetch_command_and_one_line_per_poll(make_server, make_dovecot):
    d = make_dovecot({"bob123": "secret", "alice77": "rabbit"})
    extra = account("one", d.pop3) + account("two", d.pop3, user="alice77", password="rabbit",
                                              deliver_to="alice@example.test")
    server = make_server(extra=extra)
    wait_polls(server, "one", 1)
    wait_polls(server, "two", 1)
    d.add("bob123", message("for one"))
    d.add("alice77", message("for two"))
    fetch(server, "one")
    assert wait_polls(server, "one", 2)[1][:5] == (1, 0, 1, 0, 0)
    time.sleep(1)
    assert len(summaries(server, "two")) == 1  # only the named account polled
    fetch(server)
    assert wait_polls(server, "two", 2)[1][:5] == (1, 0, 1, 0, 0)
    wait_polls(server, "one", 3)
    time.sleep(0.5)
    assert len(summaries(server, "one")) == 3 and len(summaries(server, "two")) == 2
    r = server.run("fetch", "nosuch")
    assert r.returncode != 0 and b"nosuch" in r.stderr
    server.stop()
    r = server.run("fetch")
    assert r.returncode != 0 and b"no mailgate server" in r.stderr


def test_delivery_failure_is_never_bounced(make_server, dovecot):
    """A full mailbox: the message stays on the ISP's server, nothing goes to
    the outbox or back to the sender; after the quota is raised (SIGHUP) the
    next poll collects it."""
    dovecot.add("bob123", message("fills the mailbox", size=5000))
    quota = {"aliases = robert, postmaster": "aliases = robert, postmaster\nquota = 2K"}
    server = make_server(extra=account("full", dovecot.pop3), replace=quota)
    (s,) = wait_polls(server, "full", 1)
    assert s[:5] == (0, 0, 0, 0, 0) and "left on the server" in s[5], s
    assert dovecot.count("bob123") == 1
    assert server.messages("bob@example.test") == []
    assert_no_outbox(server)
    server.config.write_text(server.config_text.replace("quota = 2K", "quota = 1M"))
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "reloaded" not in server.log_text():
        assert time.time() < deadline, server.log_text()[-3000:]
        time.sleep(0.05)
    fetch(server, "full")
    assert wait_polls(server, "full", 2)[1][:5] == (1, 0, 1, 0, 0)
    assert subjects(server.messages("bob@example.test")) == ["fills the mailbox"]
    assert dovecot.count("bob123") == 0
    assert_no_outbox(server)


def test_undeliverable_message_does_not_block_the_others(make_server, dovecot):
    """A message mailgate will never store (more Received lines than the hop
    limit) stays on the server, is reported as failed and not fetched again,
    and the messages after it are collected."""
    hops = "".join(f"Received: from hop{i}.example by hop{i + 1}.example; Mon, 1 Jan 2024 00:00:00 +0000\n"
                   for i in range(40))
    poison = hops.encode() + message("looping")
    dovecot.add("bob123", poison)
    dovecot.add("bob123", message("after the loop"))
    server = make_server(extra=account("poison", dovecot.pop3))
    (s,) = wait_polls(server, "poison", 1)
    assert s[:5] == (1, 0, 1, 0, 1), s
    assert subjects(server.messages("bob@example.test")) == ["after the loop"]
    assert dovecot.count("bob123") == 1
    fetch(server, "poison")
    assert wait_polls(server, "poison", 2)[1][:5] == (0, 0, 0, 0, 1)
    assert len(re.findall(r"smartpop poison: .*cannot be stored", server.log_text())) == 1
    assert dovecot.count("bob123") == 1
    assert_no_outbox(server)


class DnsServer:
    """Answers A queries for a few names on a loopback UDP port."""

    def __init__(self, names):
        from dnslib import A, QTYPE, RCODE, RR, DNSRecord

        self.names = {n.rstrip(".").lower() + ".": ip for n, ip in names.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self.stopping = False

        def loop():
            while not self.stopping:
                try:
                    data, peer = self.sock.recvfrom(4096)
                except (socket.timeout, TimeoutError):
                    continue
                except OSError:
                    return
                try:
                    q = DNSRecord.parse(data)
                except Exception:
                    continue
                qname = str(q.q.qname).lower()
                self.queries.append((qname, QTYPE[q.q.qtype]))
                reply = q.reply()
                if qname not in self.names:
                    reply.header.rcode = RCODE.NXDOMAIN
                elif q.q.qtype == QTYPE.A:
                    reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(self.names[qname]), ttl=60))
                self.sock.sendto(reply.pack(), peer)

        threading.Thread(target=loop, daemon=True).start()

    def close(self):
        self.stopping = True
        self.sock.close()


def test_host_names_resolved_without_blocking(make_server, make_dovecot, ca):
    d = make_dovecot({"bob123": "secret", "alice77": "rabbit", "carol": "x"})
    d.add("bob123", message("by dns name"))
    d.add("alice77", message("by localhost"))
    d.add("carol", message("never"))
    dns = DnsServer({"pop.isp.test": "127.0.0.1"})
    try:
        extra = (
            f"\n[outbox]\nmode = direct\nnameserver = 127.0.0.1:{dns.port}\n"
            + account("named", d.pop3s, host="pop.isp.test", tls="tls", ca_file=ca.ca_cert)
            + account("local", d.pop3, host="localhost", tls="starttls", ca_file=ca.ca_cert,
                      user="alice77", password="rabbit", deliver_to="alice@example.test")
            + account("unknown", d.pop3, host="no-such-host.test", user="carol", password="x")
        )
        server = make_server(extra=extra)
        assert wait_polls(server, "named", 1)[0][:5] == (1, 0, 1, 0, 0)
        assert wait_polls(server, "local", 1)[0][:5] == (1, 0, 1, 0, 0)
        (s,) = wait_polls(server, "unknown", 1)
        assert s[0] == 0 and "cannot resolve no-such-host.test" in s[5], s
        assert ("pop.isp.test.", "A") in dns.queries
        assert not any(q[0].startswith("localhost") for q in dns.queries), dns.queries
        assert subjects(server.messages("bob@example.test")) == ["by dns name"]
        assert subjects(server.messages("alice@example.test")) == ["by localhost"]
        assert d.count("carol") == 1
    finally:
        dns.close()


def test_many_messages_in_one_poll(make_server, dovecot, ca):
    for i in range(150):
        dovecot.add("bob123", message(f"n{i:03}", size=200 + 97 * i))
    server = make_server(extra=account("many", dovecot.pop3, tls="starttls", ca_file=ca.ca_cert))
    assert wait_polls(server, "many", 1, timeout=60)[0][:5] == (150, 0, 150, 0, 0)
    assert subjects(server.messages("bob@example.test")) == [f"n{i:03}" for i in range(150)]
    assert dovecot.count("bob123") == 0


def test_stls_stripped_by_a_man_in_the_middle(make_server, dovecot, ca, proxies):
    """tls = starttls never falls back to plaintext: when STLS is refused
    (here by a proxy playing STRIPTLS), no credentials are sent."""
    mitm = Proxy(dovecot.pop3, faults=[("answer", "STLS", "-ERR STLS not available")])
    proxies.append(mitm)
    dovecot.add("bob123", message("stays"))
    server = make_server(extra=account("stripped", mitm.port, tls="starttls", ca_file=ca.ca_cert))
    (s,) = wait_polls(server, "stripped", 1)
    assert s[0] == 0 and "STLS" in s[5], s
    verbs = mitm.verbs(0)
    assert "STLS" in verbs
    assert not {"USER", "PASS", "AUTH", "APOP"} & set(verbs), mitm.sessions
    assert not any("secret" in c for c in mitm.sessions[0])
    assert dovecot.count("bob123") == 1


def test_sigkill_during_polls_loses_nothing(make_server, dovecot):
    """SIGKILL mailgate three times while it collects (issue: crash tests):
    every message ends up in the mailbox exactly once. The UIDL is recorded
    with the names of the copies staged in tmp/ before they are renamed
    into new/, and a start finishes renames that a kill cut short."""
    total = 1500
    for i in range(total):
        dovecot.add("bob123", message(f"crash {i}", body=f"body {i}\n" * 40))
    server = make_server(extra=account("isp", dovecot.pop3))
    new = server.maildir_path("bob@example.test") / "new"
    rng = random.Random(7)
    left_at_kill = []
    for _ in range(3):
        # Wait until this run is collecting, then kill at a random moment.
        before = len(list(new.iterdir())) if new.exists() else 0
        deadline = time.time() + 20
        while time.time() < deadline and (len(list(new.iterdir())) if new.exists() else 0) <= before:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.01, 0.1))
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        left_at_kill.append(dovecot.count("bob123"))
        server.start()
    assert all(n > 0 for n in left_at_kill), f"every kill hit a poll: {left_at_kill}"
    deadline = time.time() + 60
    while time.time() < deadline and dovecot.count("bob123") > 0:
        server.run("fetch", "isp")
        time.sleep(0.5)
    assert dovecot.count("bob123") == 0, "the last poll collected everything"
    msgs = server.messages("bob@example.test")
    subjects = [m["Subject"] for m in msgs]
    missing = {f"crash {i}" for i in range(total)} - set(subjects)
    assert not missing, f"lost: {sorted(missing)[:5]}"
    duplicates = len(subjects) - len(set(subjects))
    print(f"\nsmartpop crash: {total} messages, kills with {left_at_kill} left at the ISP, "
          f"{duplicates} delivered twice")
    assert duplicates == 0
    # A kill may leave a file in tmp/ (the Maildir convention: readers
    # ignore it), never a partial one in new/ or cur/.
    for m in msgs:
        n = m["Subject"].split()[-1]
        assert m.get_payload().rstrip().endswith(f"body {n}"), "no partial message"


def test_collected_mail_wakes_imap_idle(make_server, dovecot):
    """A message SmartPop delivers reaches an IMAP session in IDLE within
    1 s, as one delivered over SMTP does (the mailbox's change notice)."""
    import imapclient

    server = make_server(extra=account("isp", dovecot.pop3))
    wait_polls(server, "isp", 1)
    watcher = imapclient.IMAPClient("127.0.0.1", port=server.ports["imap"], ssl=False, timeout=30)
    watcher.login("bob@example.test", "secret")
    assert watcher.select_folder("INBOX")[b"EXISTS"] == 0
    watcher.idle()
    dovecot.add("bob123", message("collected"))
    fetch(server, "isp")
    delivered = seen = None
    deadline = time.time() + 20
    while seen is None and time.time() < deadline:
        if delivered is None and server.messages("bob@example.test"):
            delivered = time.time()
        if any(r[1:] == (b"EXISTS",) and r[0] == 1 for r in watcher.idle_check(timeout=0.05)):
            seen = time.time()
    watcher.idle_done()
    watcher.logout()
    assert seen is not None, "the IDLE session never heard of the collected message"
    delivered = delivered or seen
    assert seen - delivered < 1.0, f"EXISTS came {seen - delivered:.2f} s after the delivery"
    assert subjects(server.messages("bob@example.test")) == ["collected"]
