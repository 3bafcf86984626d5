"""OAuth2 end to end: `mailgate oauth login` (device grant and code flow
with PKCE) against a local authorization server (tests/oauth_server.py),
the running server's refresh before expiry, a revoked grant, bad provider
answers, and the bearer tokens meeting real servers: Dovecot's IMAP and
POP3 with its oauth2 passdb validating them at the authorization server's
introspection endpoint, and an aiosmtpd smarthost accepting XOAUTH2.
"""

import base64
import os
import re
import select
import smtplib
import subprocess
import time

import pytest

from conftest import BIN
from dovecot_helpers import Dovecot, TestCA, available, message
from oauth_server import AuthServer

CLIENT = "mailgate-test"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("ca"), names=("localhost",))


@pytest.fixture
def auth(ca):
    a = AuthServer(ca.cert, ca.key)
    yield a
    a.stop()


def oauth_keys(auth, ca, flow="device"):
    keys = (
        "auth = oauth2\nprovider = custom\n"
        f"client_id = {CLIENT}\n"
        f"token_url = {auth.base}/token\n"
        f"authorize_url = {auth.base}/authorize\n"
        "scope = mail offline_access\n"
        f"ca_file = {ca.ca_cert}\n"
    )
    if flow == "device":
        keys += f"device_url = {auth.base}/devicecode\n"
    return keys


def smartpop(name, auth, ca, port, protocol="imap", tls="tls", flow="device", interval="1h",
             user="bob123"):
    return (
        f"\n[smartpop {name}]\nprotocol = {protocol}\nhost = 127.0.0.1:{port}\ntls = {tls}\n"
        f"username = {user}\n" + ("idle = no\n" if protocol == "imap" else "") + f"deliver_to = bob@example.test\ninterval = {interval}\nkeep = no\n"
        + oauth_keys(auth, ca, flow)
    )


def token_file(server, name):
    return server.data_dir / "oauth" / name


def read_tokens(server, name):
    text = token_file(server, name).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def write_tokens(server, name, t):
    """An account signed in before the server starts (as `oauth login` leaves it)."""
    d = server.data_dir / "oauth"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / name
    path.write_text(
        f"access_token={t['access_token']}\nrefresh_token={t['refresh_token']}\n"
        f"expires_at={int(time.time()) + t['expires_in']}\nlast_error=\n"
    )
    os.chmod(path, 0o600)


def no_token_in_log(server, auth):
    log = server.log_text()
    for table in (auth.access, auth.refresh):
        for tok in list(table):
            assert tok not in log
    # Nor any base64 of a SASL message carrying one.
    assert "auth=Bearer" not in log
    for line in log.splitlines():
        for word in re.findall(r"[A-Za-z0-9+/=]{40,}", line):
            try:
                assert b"auth=Bearer" not in base64.b64decode(word + "==")
            except ValueError:
                pass


class Login:
    """`mailgate oauth login NAME` running, its output read as it comes."""

    def __init__(self, server, name):
        self.proc = subprocess.Popen(
            [BIN, "-c", str(server.config), "oauth", "login", name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.out = b""

    def wait_for(self, pattern, timeout=15):
        deadline = time.time() + timeout
        while True:
            m = re.search(pattern, self.out)
            if m:
                return m
            left = deadline - time.time()
            assert left > 0, self.out
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, (self.out, self.proc.stderr.read())
                self.out += chunk

    def finish(self, timeout=30):
        out, err = self.proc.communicate(timeout=timeout)
        self.out += out
        return self.proc.returncode, self.out.decode(), err.decode()


# -- mailgate oauth login ------------------------------------------------------


def test_device_flow_login_polls_as_rfc8628_says(make_server, auth, ca):
    server = make_server(extra=smartpop("ms", auth, ca, 1), start=False)
    auth.slow_down_at = 3
    login = Login(server, "ms")
    m = login.wait_for(rb"open (\S+) on any device and enter the code (\S+)")
    assert m.group(1).decode() == f"{auth.base}/device"
    user_code = m.group(2).decode()
    # The user is slow: two polls meet authorization_pending, the third
    # slow_down.
    time.sleep(3.5)
    auth.approve(user_code, "bob123")
    code, out, err = login.finish()
    assert code == 0, (out, err)
    assert "signed in: ms (bob123)" in out
    polls = [t for t, _ in auth.polls]
    assert len(polls) == 4, polls
    # Polls come at the interval (1 s), then 5 s later after slow_down.
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    assert 0.9 <= gaps[0] < 3 and 0.9 <= gaps[1] < 3 and gaps[2] >= 5.9, gaps
    t = read_tokens(server, "ms")
    assert t["access_token"] in auth.access and t["refresh_token"] in auth.refresh
    assert int(t["expires_at"]) > time.time() + 3000
    assert os.stat(token_file(server, "ms")).st_mode & 0o777 == 0o600
    assert os.stat(token_file(server, "ms").parent).st_mode & 0o777 == 0o700
    assert t["access_token"] not in out + err and t["refresh_token"] not in out + err
    # The device request carried the client and scope.
    path, form = auth.requests[0]
    assert path == "/devicecode" and form == {"client_id": CLIENT, "scope": "mail offline_access"}
    status = server.run("oauth", "status")
    assert status.returncode == 0, status.stderr
    text = status.stdout.decode()
    assert "ms (bob123):" in text and "refresh token: yes" in text
    assert "last refresh error: none" in text and re.search(r"expires: .*\(in (59|60) min\)", text), text
    assert t["access_token"] not in text


def test_code_flow_login_with_pkce(make_server, auth, ca):
    server = make_server(extra=smartpop("gm", auth, ca, 1, flow="code"), start=False)
    login = Login(server, "gm")
    url = login.wait_for(rb"(https://127\.0\.0\.1:\d+/authorize\?\S+)").group(1).decode()
    login.wait_for(rb"paste it here:")
    for want in ("response_type=code", f"client_id={CLIENT}", "code_challenge_method=S256",
                 "redirect_uri=http%3A%2F%2F127.0.0.1%3A", "state="):
        assert want in url, url
    landed = auth.authorize(url, "bob123")
    login.proc.stdin.write(landed.encode() + b"\n")
    login.proc.stdin.flush()
    code, out, err = login.finish()
    assert code == 0, (out, err)
    t = read_tokens(server, "gm")
    assert t["access_token"] in auth.access
    # The token endpoint checked the verifier against the challenge (the
    # server refuses a wrong one); it came in the exchange.
    path, form = auth.requests[-1]
    assert path == "/token" and form["grant_type"] == "authorization_code"
    assert len(form["code_verifier"]) == 43


def test_code_flow_refuses_a_foreign_state(make_server, auth, ca):
    server = make_server(extra=smartpop("gm", auth, ca, 1, flow="code"), start=False)
    login = Login(server, "gm")
    url = login.wait_for(rb"(https://\S+/authorize\?\S+)").group(1).decode()
    landed = auth.authorize(url, "bob123")
    forged = re.sub(r"state=[^&]+", "state=someone-elses", landed)
    login.proc.stdin.write(forged.encode() + b"\n")
    login.proc.stdin.flush()
    code, out, err = login.finish()
    assert code != 0
    assert "state does not match" in err and "nothing stored" in err, err
    assert not token_file(server, "gm").exists()
    assert not [p for p in auth.requests if p[0] == "/token"], "no code exchanged"


def test_expired_device_code(make_server, auth, ca):
    auth.device_ttl = 3
    server = make_server(extra=smartpop("ms", auth, ca, 1), start=False)
    login = Login(server, "ms")
    login.wait_for(rb"enter the code")
    code, out, err = login.finish()
    assert code != 0
    assert "expired" in err and "run the login again" in err, err
    assert not token_file(server, "ms").exists()


@pytest.mark.parametrize("mode,want", [
    ("garbage", "not valid JSON"),
    ("html", "an HTML page"),
    ("big", "over the 64 KiB limit"),
    ("redirect", "redirects (not followed)"),
    ("error500", "HTTP 500"),
])
def test_bad_provider_answers_store_nothing(make_server, auth, ca, mode, want):
    server = make_server(extra=smartpop("ms", auth, ca, 1), start=False)
    auth.mode = mode
    r = server.run("oauth", "login", "ms", timeout=40)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert want in err and "nothing stored" in err, err
    assert len(err) < 600, err
    assert not (server.data_dir / "oauth" / "ms").exists()
    # One request: a redirect is never followed.
    assert len(auth.requests) == 1, auth.requests


def test_login_names_the_oauth2_accounts(make_server, auth, ca):
    server = make_server(extra=smartpop("ms", auth, ca, 1), start=False)
    r = server.run("oauth", "login", "nosuch")
    assert r.returncode != 0 and b"(these are: ms)" in r.stderr, r.stderr
    r = server.run("oauth", "status")
    assert b"not signed in: run mailgate oauth login ms" in r.stdout, r.stdout


# -- Dovecot's IMAP and POP3 with the oauth2 passdb ------------------------------------

pytestmark_dovecot = pytest.mark.skipif(available() is not None, reason=str(available()))

OAUTH2_PASSDB = """
passdb {{
  driver = oauth2
  mechanisms = {mechs}
  args = {conf}
}}
"""


@pytest.fixture
def oauth_dovecot(ca, auth, request):
    """Dovecot whose XOAUTH2/OAUTHBEARER logins are checked at the
    authorization server's introspection endpoint (RFC 7662)."""
    mechs = getattr(request, "param", "xoauth2 oauthbearer")
    d = Dovecot({"bob123": "password-not-used", "carol": "not-used"}, ca, imap=True)
    conf = d.dir / "dovecot-oauth2.conf.ext"
    conf.write_text(
        f"introspection_url = http://127.0.0.1:{auth.introspect_port}/introspect\n"
        "introspection_mode = post\nforce_introspection = yes\n"
        "username_attribute = username\nactive_attribute = active\nactive_value = true\n"
    )
    text = d.config.read_text().replace(
        "auth_mechanisms = plain login", f"auth_mechanisms = plain login {mechs}")
    d.config.write_text(text + OAUTH2_PASSDB.format(mechs=mechs, conf=conf))
    d.start()
    yield d
    d.cleanup()


def summaries(server, name):
    pat = re.compile(rf"smartpop {re.escape(name)}: fetched=(\d+)")
    return [int(m.group(1)) for m in map(pat.search, server.log_text().splitlines()) if m]


def wait_for(predicate, what, server, timeout=30):
    deadline = time.time() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert server.proc.poll() is None, server.log_text()[-4000:]
        assert time.time() < deadline, f"{what}\n" + server.log_text()[-6000:]
        time.sleep(0.1)


def dovecot_mechs(d):
    return re.findall(r"((?:imap|pop3))-login: Info: Login: .*?method=(\w+)", d.log_text())


@pytestmark_dovecot
@pytest.mark.parametrize("oauth_dovecot", ["xoauth2", "oauthbearer"], indirect=True)
def test_collect_over_imap_and_pop3_with_bearer_tokens(make_server, auth, ca, oauth_dovecot):
    d = oauth_dovecot
    d.add("bob123", message("first"))
    d.add("carol", message("second"))
    extra = smartpop("ms-imap", auth, ca, d.imaps) + smartpop(
        "ms-pop", auth, ca, d.pop3s, protocol="pop3", user="carol")
    server = make_server(extra=extra, start=False)
    write_tokens(server, "ms-imap", auth.issue("bob123"))
    write_tokens(server, "ms-pop", auth.issue("carol"))
    server.start()
    wait_for(lambda: summaries(server, "ms-imap"), "imap run", server)
    wait_for(lambda: summaries(server, "ms-pop"), "pop3 run", server)
    msgs = wait_for(lambda: len(server.messages("bob@example.test")) >= 2 and server.messages("bob@example.test"),
                    "two messages", server)
    assert sorted(m["Subject"] for m in msgs) == ["first", "second"]
    # The one mechanism this Dovecot offers, in both protocols.
    want = "OAUTHBEARER" if "auth_mechanisms = plain login oauthbearer" in d.config.read_text() else "XOAUTH2"
    mechs = dovecot_mechs(d)
    assert sorted(mechs) == [("imap", want), ("pop3", want)], (mechs, d.log_text()[-3000:])
    # Both logins were checked at the introspection endpoint.
    assert len(auth.introspections) >= 2
    no_token_in_log(server, auth)


@pytestmark_dovecot
def test_refresh_before_expiry_rotates_and_uses_the_new_token(make_server, auth, ca, oauth_dovecot):
    d = oauth_dovecot
    server = make_server(extra=smartpop("ms", auth, ca, d.imaps, interval="1h"), start=False)
    # Valid for 5 min and 8 s: refresh is due 5 min before expiry.
    first = auth.issue("bob123", ttl=308)
    write_tokens(server, "ms", first)
    server.start()
    wait_for(lambda: "access token refreshed" in server.log_text(), "a refresh", server, timeout=30)
    t = read_tokens(server, "ms")
    assert t["refresh_token"] != first["refresh_token"], "rotated"
    assert t["refresh_token"] in auth.refresh and first["refresh_token"] not in auth.refresh
    assert t["access_token"] != first["access_token"] and first["access_token"] not in auth.access
    assert int(t["expires_at"]) > time.time() + 3000
    refreshes = [f for p, f in auth.requests if f.get("grant_type") == "refresh_token"]
    assert len(refreshes) == 1 and refreshes[0]["refresh_token"] == first["refresh_token"]
    # A run now signs in with the new token (the old one is dead at the
    # introspection endpoint).
    d.add("bob123", message("after refresh"))
    n = len(summaries(server, "ms"))
    assert server.run("fetch", "ms").returncode == 0
    wait_for(lambda: len(summaries(server, "ms")) > n and any(
        m["Subject"] == "after refresh" for m in server.messages("bob@example.test")),
        "collected with the new token", server)
    assert t["access_token"] in auth.introspections
    no_token_in_log(server, auth)


@pytestmark_dovecot
def test_revoked_grant_stops_the_account_once(make_server, auth, ca, oauth_dovecot):
    d = oauth_dovecot
    server = make_server(extra=smartpop("ms", auth, ca, d.imaps, interval="2s"), start=False)
    first = auth.issue("bob123", ttl=305)
    write_tokens(server, "ms", first)
    auth.revoke("bob123")
    server.start()
    wait_for(lambda: "oauth ms: stopped" in server.log_text(), "the stop", server)
    stops = [l for l in server.log_text().splitlines() if "oauth ms: stopped" in l]
    assert len(stops) == 1 and "invalid_grant" in stops[0] and "mailgate oauth login" in stops[0], stops
    # The postmaster (here bob, by deliver_to) is told once.
    notices = wait_for(lambda: [m for m in server.messages("bob@example.test")
                                if "revoked" in (m["Subject"] or "")], "the notice", server)
    assert len(notices) == 1 and "mailgate oauth login ms" in notices[0].get_payload()
    # Runs started before the refresh (the access token looked valid)
    # end; no run starts after it.
    time.sleep(4)
    runs = len(summaries(server, "ms"))
    time.sleep(3)
    assert len(summaries(server, "ms")) == runs, "no collection without a token"
    assert "smartpop ms: no OAuth2 access token now" in server.log_text()
    refreshes = [f for p, f in auth.requests if f.get("grant_type") == "refresh_token"]
    assert len(refreshes) == 1, "no retry storm"
    status = server.run("oauth", "status").stdout.decode()
    assert "last refresh error: revoked:" in status and "invalid_grant" in status, status
    # A restart neither refreshes nor notifies again.
    server.restart()
    time.sleep(3)
    assert len([f for p, f in auth.requests if f.get("grant_type") == "refresh_token"]) == 1
    assert len([m for m in server.messages("bob@example.test") if "revoked" in (m["Subject"] or "")]) == 1
    # A new login brings it back without a restart (`mailgate fetch`
    # reads the token file again at once, else within 30 s).
    write_tokens(server, "ms", auth.issue("bob123"))
    d.add("bob123", message("back"))
    assert server.run("fetch", "ms").returncode == 0
    wait_for(lambda: any(m["Subject"] == "back" for m in server.messages("bob@example.test")),
             "collected after the new login", server, timeout=20)
    assert "oauth ms: signed in again" in server.log_text()
    no_token_in_log(server, auth)


@pytestmark_dovecot
def test_bad_refresh_answer_keeps_the_tokens_and_backs_off(make_server, auth, ca, oauth_dovecot):
    d = oauth_dovecot
    server = make_server(extra=smartpop("ms", auth, ca, d.imaps), start=False)
    first = auth.issue("bob123", ttl=305)
    write_tokens(server, "ms", first)
    auth.mode = "html"
    server.start()
    wait_for(lambda: "oauth ms: refresh failed" in server.log_text(), "the failure", server)
    line = [l for l in server.log_text().splitlines() if "refresh failed" in l][0]
    assert "an HTML page" in line and "trying again in 60 s" in line, line
    t = read_tokens(server, "ms")
    assert t["access_token"] == first["access_token"] and t["refresh_token"] == first["refresh_token"]
    assert "HTML" in t["last_error"]
    time.sleep(3)
    assert len(auth.requests) == 1, "one try, then a pause"
    # The access token is still good: the account still collects.
    d.add("bob123", message("still"))
    assert server.run("fetch", "ms").returncode == 0
    wait_for(lambda: any(m["Subject"] == "still" for m in server.messages("bob@example.test")),
             "collected", server)


# -- the smarthost over XOAUTH2 ---------------------------------------------------


def test_smarthost_xoauth2(make_server, auth, ca):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from outbox_helpers import free_port, wait_for as wait_until

    got = []
    port = free_port()

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append((session.auth_data, envelope.content))
            return "250 2.0.0 OK"

        async def auth_XOAUTH2(self, server, args):
            raw = base64.b64decode(args[1]) if len(args) > 1 else b""
            m = re.fullmatch(rb"user=([^\x01]+)\x01auth=Bearer ([^\x01]+)\x01\x01", raw)
            a = m and auth.access.get(m.group(2).decode())
            if a and a["user"] == m.group(1).decode():
                return AuthResult(success=True, auth_data=LoginPassword(m.group(1), b""))
            return AuthResult(success=False, handled=False)

    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(ca.cert), str(ca.key))
    c = Controller(Handler(), hostname="127.0.0.1", port=port, server_hostname="sink.test",
                   tls_context=ctx, require_starttls=True, auth_require_tls=True,
                   authenticator=lambda *a: AuthResult(success=False))
    c.start()
    try:
        extra = (f"\n[outbox]\nmode = smarthost\nhost = 127.0.0.1:{port}\ntls = starttls\n"
                 "username = bob123\nretry = 1s\n" + oauth_keys(auth, ca))
        server = make_server(extra=extra, start=False)
        write_tokens(server, "outbox", auth.issue("bob123"))
        server.start()
        s = smtplib.SMTP("127.0.0.1", server.ports["submission"])
        s.starttls(context=ssl._create_unverified_context())
        s.login("bob@example.test", "secret")
        s.sendmail("bob@example.test", ["someone@far.example"], b"Subject: via oauth\r\n\r\nhi\r\n")
        s.quit()
        assert wait_until(lambda: got, 15), server.log_text()[-4000:]
        assert got[0][0].login == b"bob123"
        assert b"via oauth" in got[0][1]
        no_token_in_log(server, auth)
    finally:
        c.stop()


# -- nothing slow on the loop thread ------------------------------------------------


def test_refresh_and_revocation_touch_no_file_on_the_loop_thread(make_server, auth, ca, tmp_path,
                                                                 monkeypatch):
    """Under strace (as tests/test_loop_thread.py): a refresh with rotation,
    then a revoked grant with its notice, and the token files read again;
    the loop thread touches no file for any of it."""
    import conftest
    from test_durability import strace_usable
    from test_loop_thread import TRACED, loop_thread_disk_calls

    if strace_usable() is not None:
        pytest.skip(str(strace_usable()))
    log = tmp_path / "strace.log"
    wrapper = tmp_path / "mailgate-under-strace"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec strace -f -yy -s 64 -e trace={TRACED} -o {log} {conftest.BIN} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    # Two accounts: one refreshed (rotation), one revoked; no mail server
    # is needed for the refresh, the collection is far off (interval 1h)
    # and its first run fails to connect (port 1).
    extra = smartpop("fresh", auth, ca, 1) + smartpop("gone", auth, ca, 1, user="carol")
    server = make_server(extra=extra, start=False)
    write_tokens(server, "fresh", auth.issue("bob123", ttl=302))
    write_tokens(server, "gone", auth.issue("carol", ttl=302))
    auth.revoke("carol")
    monkeypatch.setattr(conftest, "BIN", str(wrapper))
    server.start()
    monkeypatch.undo()
    pid = int(wait_for(lambda: (server.data_dir / "mailgate.pid").exists()
                       and (server.data_dir / "mailgate.pid").read_text().split()[0], "pid", server))
    wait_for(lambda: "oauth fresh: access token refreshed" in server.log_text(), "refresh", server)
    wait_for(lambda: "oauth gone: stopped" in server.log_text(), "revocation", server)
    wait_for(lambda: [m for m in server.messages("bob@example.test") if "revoked" in (m["Subject"] or "")],
             "notice", server)
    # `mailgate fetch` makes the server read the stopped account's file.
    assert server.run("fetch").returncode == 0
    time.sleep(1)
    os.kill(pid, 15)
    server.proc.wait(20)
    trace = log.read_text(errors="replace")
    assert "epoll_wait" in trace or "epoll_pwait" in trace, trace[:2000]
    assert "data/oauth/fresh" in trace and "data/oauth/gone" in trace, "the files were touched"
    found = loop_thread_disk_calls(trace, pid)
    assert not found, "the loop thread touched the disk:\n" + "\n".join(found[:30])
