"""POP3 with real clients: poplib and fetchmail against the real binary."""

import os
import poplib
import smtplib
import subprocess
import time

import pytest

import conftest
from conftest import Raw


def send(server, rcpt="bob@example.test", subject="hello", body="body line\r\n.leading dot\r\n", n=1):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        for i in range(n):
            subj = subject if n == 1 else f"{subject} {i}"
            s.sendmail("carol@remote.test", [rcpt], f"Subject: {subj}\r\n\r\n{body}".encode())
    server.wait_messages(rcpt, n)


def login(server, user="bob@example.test", password="secret"):
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    p.user(user)
    p.pass_(password)
    return p


def test_list_retrieve_top_delete_quit(server):
    send(server, n=3)
    p = login(server)
    count, size = p.stat()
    assert count == 3
    resp, listing, _ = p.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert sum(sizes) == size
    resp, lines, octets = p.retr(1)
    assert b"Subject: hello 0" in lines
    assert b".leading dot" in lines, "dot-stuffing undone by the client"
    assert octets >= sizes[0] - 3  # poplib's octets exclude the stuffing/CRLFs
    resp, lines, _ = p.top(2, 0)
    assert b"Subject: hello 1" in lines and b"body line" not in lines
    resp, lines, _ = p.top(2, 1)
    assert lines[-1] == b"body line"
    p.dele(1)
    with pytest.raises(poplib.error_proto):
        p.retr(1)
    assert p.stat()[0] == 2
    p.quit()
    msgs = server.messages("bob@example.test")
    assert sorted(m["Subject"] for m in msgs) == ["hello 1", "hello 2"]
    # Retrieved (and TOP'd) messages went to cur/ with :2,S like Dovecot.
    cur = [x.name for x in server.maildir_path("bob@example.test").joinpath("cur").iterdir()]
    new = [x.name for x in server.maildir_path("bob@example.test").joinpath("new").iterdir()]
    assert len(new) + len(cur) == 2
    assert all(name.endswith(":2,S") for name in cur)


def test_rset_undeletes_and_dropped_connection_commits_nothing(server):
    send(server, n=2)
    p = login(server)
    p.dele(1)
    p.rset()
    assert p.stat()[0] == 2
    p.dele(1)
    p.dele(2)
    p.close()  # no QUIT: nothing is deleted
    time.sleep(0.3)
    assert len(server.messages("bob@example.test")) == 2
    p = login(server)
    assert p.stat()[0] == 2
    p.quit()


def test_uidl_stable_across_sessions_moves_and_restart(server):
    send(server, n=3)
    p = login(server)
    first = p.uidl()[1]
    p.retr(1)
    p.quit()
    p = login(server)
    second = p.uidl()[1]
    p.quit()
    assert first == second
    server.restart()
    p = login(server)
    third = p.uidl()[1]
    assert p.uidl(2).split()[2] == second[1].split()[1]
    p.quit()
    assert third == first
    uids = [line.split()[1] for line in first]
    assert len(set(uids)) == 3
    for u in uids:
        assert 0 < len(u) <= 70 and all(0x21 <= c <= 0x7E for c in u)


def test_in_use(server):
    send(server)
    p1 = login(server)
    p2 = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    p2.user("bob@example.test")
    with pytest.raises(poplib.error_proto) as e:
        p2.pass_("secret")
    assert b"[IN-USE]" in e.value.args[0]
    p1.quit()
    p3 = login(server)
    p3.quit()


def test_wrong_password_and_unknown_user_look_the_same(server):
    answers = []
    for user, password in [("bob@example.test", "wrong"), ("nobody@example.test", "secret"),
                           ("bob", "wrong")]:
        p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
        p.user(user)
        start = time.time()
        with pytest.raises(poplib.error_proto) as e:
            p.pass_(password)
        answers.append((e.value.args[0], round(time.time() - start, 1)))
        p.close()
    assert len({a for a, _ in answers}) == 1, answers
    assert answers[0][0].startswith(b"-ERR [AUTH]")
    delays = [d for _, d in answers]
    # Same 1 s pause for both; a debug build's hash check on a loaded
    # machine adds some noise.
    assert max(delays) - min(delays) < 1.0 and min(delays) >= 0.5, delays


def test_bare_local_part_login(server):
    send(server, rcpt="alice@example.test")
    p = login(server, "alice", "wonderland")
    assert p.stat()[0] == 1
    p.quit()


def test_capa_and_commands_out_of_state(server):
    r = Raw(server.ports["pop3"])
    assert r.line().startswith(b"+OK")
    r.send(b"CAPA\r\n")
    caps = []
    assert r.line().startswith(b"+OK")
    while True:
        line = r.line()
        if line == b".":
            break
        caps.append(line)
    for cap in [b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"STLS"]:
        assert any(c.startswith(cap) for c in caps), caps
    assert any(c.startswith(b"SASL") and b"PLAIN" in c for c in caps), caps
    r.send(b"STAT\r\n")
    assert r.line().startswith(b"-ERR")
    r.send(b"PASS x\r\n")
    assert r.line().startswith(b"-ERR")
    r.send(b"x" * 1000 + b"\r\n")
    assert r.line().startswith(b"-ERR")
    r.send(b"QUIT\r\n")
    assert r.line().startswith(b"+OK")
    assert r.closed()


def test_sasl_plain_and_pipelining(server):
    send(server, n=2)
    import base64
    token = base64.b64encode(b"\0bob@example.test\0secret")
    r = Raw(server.ports["pop3"])
    r.line()
    r.send(b"AUTH PLAIN " + token + b"\r\nSTAT\r\nUIDL\r\nQUIT\r\n")
    assert r.line().startswith(b"+OK")
    assert r.line().startswith(b"+OK 2 ")
    assert r.line().startswith(b"+OK")
    assert r.line().startswith(b"1 ")
    assert r.line().startswith(b"2 ")
    assert r.line() == b"."
    assert r.line().startswith(b"+OK")


def test_pipelined_retr_read_ahead_serves_each_message_whole(make_server):
    """A client with every RETR in flight at once: the server reads the
    next small messages ahead of it. Each answer must still be exactly its
    own message, across a message too big to read ahead, a TOP in the
    middle, a jump backwards, and a DELE'd one."""
    server = make_server(replace={"max_message_size = 1M": "max_message_size = 2M"})
    bodies = []
    for i in range(40):
        size = 250_000 if i == 20 else 200 + 97 * i
        line = f".dot line of message {i} " + "z" * 60 + "\r\n"
        body = (line * (size // len(line) + 1))[:size].rsplit("\r\n", 1)[0] + "\r\n"
        bodies.append(body)
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        for i, body in enumerate(bodies):
            s.sendmail("carol@remote.test", ["bob@example.test"], f"Subject: m{i}\r\n\r\n{body}".encode())
            # One delivery per second-tick at most would be slow; the names
            # order them anyway (the listing is in delivery order).
    server.wait_messages("bob@example.test", 40)

    r = Raw(server.ports["pop3"])
    r.line()
    order = list(range(1, 41)) + [5, 3]
    cmds = b"USER bob@example.test\r\nPASS secret\r\nDELE 30\r\n"
    for n in order[:10]:
        cmds += b"RETR %d\r\n" % n
    cmds += b"TOP 12 0\r\n"
    for n in order[10:]:
        cmds += b"RETR %d\r\n" % n
    cmds += b"QUIT\r\n"
    r.send(cmds)
    assert r.line().startswith(b"+OK")
    assert r.line().startswith(b"+OK")
    assert r.line().startswith(b"+OK")  # DELE 30

    def multiline():
        lines = []
        while True:
            line = r.line()
            if line == b".":
                return lines
            lines.append(line[1:] if line.startswith(b".") else line)

    def check_retr(n):
        status = r.line()
        if n == 30:
            assert status.startswith(b"-ERR"), status
            return
        assert status.startswith(b"+OK"), (n, status)
        lines = multiline()
        text = b"\r\n".join(lines) + b"\r\n"
        head, _, body = text.partition(b"\r\n\r\n")
        assert b"Subject: m%d" % (n - 1) in head, (n, head[-200:])
        assert body == bodies[n - 1].encode(), n

    for n in order[:10]:
        check_retr(n)
    assert r.line().startswith(b"+OK")  # TOP 12 0
    top = multiline()
    assert b"Subject: m11" in top and top[-1] == b""
    for n in order[10:]:
        check_retr(n)
    assert r.line().startswith(b"+OK")  # QUIT
    assert len(server.messages("bob@example.test")) == 39


def test_timeout_and_junk(make_server):
    server = make_server(replace={"timeout = 30s\n\n[domain": "timeout = 2s\n\n[domain"})
    r = Raw(server.ports["pop3"])
    r.line()
    r.send(b"\x00\xff\xfe\r\n" * 3)
    for _ in range(3):
        assert r.line().startswith(b"-ERR")
    start = time.time()
    assert r.closed(timeout=10)
    assert 1.5 < time.time() - start < 10


def test_large_message_streams(make_server):
    server = make_server(replace={"max_message_size = 1M": "max_message_size = 60M"})
    body = ("y" * 998 + "\r\n") * 50_000  # ~50 MB
    send(server, body=body)
    # A fresh process: its peak memory is the POP3 side's alone.
    server.restart()
    p = login(server)
    resp, listing, _ = p.list()
    size = int(listing[0].split()[1])
    assert size > 50_000_000
    resp, lines, octets = p.retr(1)
    assert len(lines) > 50_000
    p.quit()
    rss_kb = conftest.rss_kib(server.proc.pid)
    # The 50 MB message went out in 64 KiB chunks, never whole in memory.
    assert rss_kb < 16_000, rss_kb


def test_fetchmail_downloads_and_deletes(server, tmp_path):
    send(server, n=3)
    out = tmp_path / "fetched.mbox"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 protocol pop3 port {server.ports['pop3']} uidl\n"
        f"  user 'bob@example.test' password 'secret' is root here\n"
        f"  mda 'cat >> {out}' sslproto '' no keep\n"
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))
    res = subprocess.run(["fetchmail", "-f", str(rc), "-v", "--nodetach", "--nosyslog"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    text = out.read_text()
    assert text.count("Subject: hello") == 3
    assert server.messages("bob@example.test") == []
