"""The outbox end to end: mailgate relays to real SMTP servers on loopback
(aiosmtpd sinks, a pipelining probe), resolves through a real DNS server
(dnslib), verifies certificates of a test CA made with openssl, retries,
bounces (RFC 3464), and its commands (queue, flush, sendmail).

Every test has its own server, ports, sink and data_dir; retry intervals
are a second so that nothing waits long.
"""

import email
import email.policy
import os
import re
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, RELAY_SOURCE, Raw, free_port
from outbox_helpers import (
    Dns,
    PipelineProbe,
    ScriptServer,
    plain_answers,
    Sink,
    CertAuthority,
    port25_available,
    random_loopback,
    wait_for,
)

LOCAL_SENDER = "alice@example.test"


# -- helpers --------------------------------------------------------------------


def outbox_config(*hosts, tls="none", retry="1s", give_up_after="4s", extra=""):
    return (
        "\n[outbox]\nmode = smarthost\n"
        f"host = {', '.join(hosts)}\n"
        f"tls = {tls}\n"
        f"retry = {retry}\n"
        f"give_up_after = {give_up_after}\n"
        f"{extra}"
    )


def direct_config(dns, retry="1s", give_up_after="4s"):
    return (
        "\n[outbox]\nmode = direct\n"
        f"nameserver = {dns.address}\n"
        f"retry = {retry}\n"
        f"give_up_after = {give_up_after}\n"
    )


def message(subject="outbox test", body="Hello.\r\n", headers=""):
    return (
        f"From: Alice <{LOCAL_SENDER}>\r\n"
        "To: someone\r\n"
        f"Subject: {subject}\r\n"
        "Message-ID: <test@example.test>\r\n"
        f"{headers}"
        "\r\n"
        f"{body}"
    ).encode()


def relay(server, rcpts, msg=None, sender=LOCAL_SENDER, mail_options=()):
    """Submits through the MX port from the relay network; returns the
    refused recipients (smtplib's dict)."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], source_address=(RELAY_SOURCE, 0), timeout=10) as c:
        return c.sendmail(sender, rcpts, msg if msg is not None else message(), mail_options=list(mail_options))


def wait_mail(server, address, count=1, timeout=10):
    """server.wait_messages, tolerating a Maildir caught half created
    (conftest's messages() lists new/ and cur/ once the folder exists)."""
    deadline = time.time() + timeout
    while True:
        try:
            return server.wait_messages(address, count, timeout=max(0.1, deadline - time.time()))
        except FileNotFoundError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def queue_ids(server):
    q = server.data_dir / "queue"
    return sorted(p.stem for p in q.glob("*.env")) if q.exists() else []


def wait_queue_empty(server, timeout=10):
    return wait_for(lambda: not queue_ids(server), timeout)


def envelope(server, qid):
    return (server.data_dir / "queue" / f"{qid}.env").read_text()


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def bounce_parts(msg):
    """(human text, per-message fields, [per-recipient fields], returned headers)."""
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    types = [p.get_content_type() for p in parts]
    assert types[0] == "text/plain" and types[2] == "text/rfc822-headers", types
    # message/global-delivery-status (RFC 6533) when an address is UTF-8.
    assert types[1] in ("message/delivery-status", "message/global-delivery-status"), types
    if types[1] == "message/delivery-status":
        blocks = parts[1].get_payload()
    else:
        # Python takes it for a message/*: its one "message" is the text.
        raw = parts[1].get_payload()[0].as_bytes()
        blocks = [email.message_from_bytes(b.strip() + b"\r\n") for b in re.split(rb"\r?\n\r?\n", raw) if b.strip()]
    return parts[0].get_payload(decode=True).decode(), blocks[0], blocks[1:], parts[2].get_payload()


def field(block, name):
    """A header field of a status block, unfolded."""
    value = block[name]
    return " ".join(value.split()) if value is not None else None


def delivery_lines(server, **fields):
    lines = [l for l in server.log_text().splitlines() if "delivery id=" in l]
    for key, value in fields.items():
        lines = [l for l in lines if f"{key}={value}" in l]
    return lines


@pytest.fixture
def sink():
    sinks = []

    def make(**kwargs):
        start_args = {k: kwargs.pop(k) for k in list(kwargs) if k in (
            "tls_context", "implicit_tls", "auth", "auth_require_tls", "auth_exclude",
            "require_starttls", "smtputf8", "size_limit")}
        s = Sink(**kwargs).start(**start_args)
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.stop()


@pytest.fixture
def dns():
    d = Dns()
    yield d
    d.stop()


@pytest.fixture
def mx_sink(sink):
    """A sink on port 25 of an address of its own, for direct delivery."""

    def make(**kwargs):
        host = random_loopback()
        if not port25_available(host):
            pytest.skip(f"cannot bind {host}:25 (direct mode needs port 25; run as root)")
        return sink(host=host, port=25, **kwargs)

    return make


@pytest.fixture
def script():
    servers = []

    def make(answer, **kwargs):
        srv = ScriptServer(answer, **kwargs)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertAuthority(tmp_path_factory.mktemp("ca"))


# -- the queue ------------------------------------------------------------------


def test_relay_through_smarthost(make_server, sink):
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.mail_from == LOCAL_SENDER
    assert got.rcpt_tos == ["carol@remote.test"]
    assert got.ehlo == "mx.example.test"
    msg = parse(got.content)
    assert msg["Subject"] == "outbox test"
    assert "mx.example.test" in msg["Received"]
    assert wait_queue_empty(server), queue_ids(server)
    # One log line per attempt: id, recipient, relay, status, remote answer.
    line = wait_for(lambda: delivery_lines(server, status="sent"))
    assert line, server.log_text()[-3000:]
    assert "to=<carol@remote.test>" in line[0]
    assert f"127.0.0.1]:{s.port}" in line[0]
    assert "queued as SINK1" in line[0]
    assert re.search(r"delivery id=\S+ ", line[0])
    # One id names the message from intake to delivery (the Received: id,
    # the queue file, every log line), as Postfix's queue id does.
    log = server.log_text()
    (accepted,) = re.findall(r"accepted id=(\S+)", log)
    assert re.findall(r"queued id=(\S+)", log) == [accepted], log[-3000:]
    assert re.search(r"delivery id=(\S+) ", line[0]).group(1) == accepted
    assert f"id {accepted}" in " ".join(msg.get_all("Received")), msg["Received"]


def test_queued_durably_before_250_and_listed(make_server):
    dead = free_port()
    server = make_server(extra=outbox_config(f"127.0.0.1:{dead}", retry="1h", give_up_after="5d"))
    assert relay(server, ["carol@remote.test", "dan@remote.test"]) == {}
    # The 250 came back: both files are there already.
    ids = queue_ids(server)
    assert len(ids) == 1
    qid = ids[0]
    assert (server.data_dir / "queue" / f"{qid}.msg").exists()
    # The first attempt fails (nothing listens) and is recorded.
    wait_for(lambda: "attempts: 1" in envelope(server, qid))
    server.stop()
    out = server.run("queue")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert qid in text
    assert "age " in text and f"<{LOCAL_SENDER}>" in text
    assert "<carol@remote.test>" in text and "<dan@remote.test>" in text
    assert "1 attempt" in text and "next try in" in text
    assert "last error:" in text and str(dead) in text
    assert "1 message in queue" in text


def test_restart_delivers_what_is_queued(make_server, sink):
    port = free_port()
    server = make_server(extra=outbox_config(f"127.0.0.1:{port}", retry="2s", give_up_after="1h"))
    assert relay(server, ["carol@remote.test"]) == {}
    (qid,) = queue_ids(server)
    wait_for(lambda: "attempts: 1" in envelope(server, qid))
    # A crash, not a clean stop: the queue must survive as it is on disk.
    server.stop(signal.SIGKILL)
    s = sink(port=port)
    server.start()
    (got,) = s.wait(1)
    assert got.rcpt_tos == ["carol@remote.test"]
    assert wait_queue_empty(server)


def test_clean_stop_keeps_a_session_in_flight_queued(make_server, sink):
    # The smarthost answers the greeting and then nothing: the session is
    # in flight when the server stops, and the message stays queued.
    import socket

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(4)
    port = hang.getsockname()[1]
    server = make_server(extra=outbox_config(f"127.0.0.1:{port}", retry="1s", give_up_after="1h"))
    assert relay(server, ["carol@remote.test"]) == {}
    conn, _ = hang.accept()
    conn.sendall(b"220 slow.test ESMTP\r\n")
    (qid,) = queue_ids(server)
    assert server.stop() == 0
    hang.close()
    conn.close()
    assert queue_ids(server) == [qid]
    assert "state: pending" in envelope(server, qid)
    s = sink(port=port)
    server.start()
    (got,) = s.wait(1, timeout=10)
    assert got.rcpt_tos == ["carol@remote.test"]


def test_local_and_remote_recipients(make_server, sink):
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    assert relay(server, ["bob@example.test", "carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.rcpt_tos == ["carol@remote.test"]
    (local,) = wait_mail(server, "bob@example.test", 1)
    assert local["Subject"] == "outbox test"
    assert wait_queue_empty(server)
    time.sleep(0.5)
    assert len(s.messages) == 1


def test_forward_and_remote_alias_members_are_queued(make_server, sink):
    s = sink()
    server = make_server(
        extra=outbox_config(f"127.0.0.1:{s.port}"),
        replace={
            "[mailbox alice@example.test]\n": "[mailbox alice@example.test]\nforward = alice@elsewhere.test\n",
            "to = bob@example.test, alice@example.test": "to = bob@example.test, gran@elsewhere.test",
        },
    )
    assert relay(server, ["alice@example.test"], sender="x@remote.test") == {}
    assert len(wait_mail(server, "alice@example.test", 1)) == 1
    (got,) = s.wait(1)
    assert got.rcpt_tos == ["alice@elsewhere.test"]
    assert relay(server, ["family@example.test"], sender="x@remote.test") == {}
    assert len(wait_mail(server, "bob@example.test", 1)) == 1
    got = s.wait(2)[1]
    assert got.rcpt_tos == ["gran@elsewhere.test"]


# -- the SMTP client -----------------------------------------------------------------


def test_dot_stuffing_8bitmime_size(make_server, sink):
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    body = ".leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\nGr\u00fc\u00dfe\r\n. space\r\n"
    msg = message().split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body.encode("utf-8")
    assert relay(server, ["carol@remote.test"], msg, mail_options=["BODY=8BITMIME"]) == {}
    (got,) = s.wait(1)
    assert body.encode("utf-8") in got.content, got.content
    assert got.content.endswith(body.encode("utf-8"))
    assert "BODY=8BITMIME" in got.mail_options
    size = [o for o in got.mail_options if o.startswith("SIZE=")]
    assert size and int(size[0][5:]) >= len(got.content)


def test_smtputf8(make_server, sink):
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    msg = "From: j\u00f6rg@remote.test\r\nTo: zo\u00eb@remote.test\r\nSubject: \u00fcber\r\n\r\nHall\u00f6\r\n".encode()
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], source_address=(RELAY_SOURCE, 0), timeout=10) as c:
        c.ehlo()
        assert c.has_extn("smtputf8")
        c.sendmail("j\u00f6rg@remote.test", ["zo\u00eb@remote.test"], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    (got,) = s.wait(1)
    assert "SMTPUTF8" in got.mail_options
    assert got.mail_from == "j\u00f6rg@remote.test"
    assert got.rcpt_tos == ["zo\u00eb@remote.test"]
    assert "\u00fcber".encode() in got.content


def test_smtputf8_refused_by_server_without_it(make_server, sink):
    s = sink(smtputf8=False)
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    msg = "Subject: x\r\n\r\nx\r\n".encode()
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], source_address=(RELAY_SOURCE, 0), timeout=10) as c:
        c.sendmail(LOCAL_SENDER, ["zo\u00eb@remote.test"], msg, mail_options=["SMTPUTF8"])
    (bounce,) = wait_mail(server, LOCAL_SENDER, 1)
    _, _, (rcpt,), _ = bounce_parts(bounce)
    assert rcpt["Status"] == "5.6.7"
    assert s.messages == []


def test_pipelining_one_group(make_server):
    probe = PipelineProbe()
    server = make_server(extra=outbox_config(f"127.0.0.1:{probe.port}"))
    assert relay(server, ["carol@remote.test", "dan@remote.test"]) == {}
    probe.join()
    assert probe.error is None, probe.error
    assert probe.pipelined, probe.commands
    cmds = [c.split(b":")[0].split()[0].upper() for c in probe.commands]
    assert cmds[:5] == [b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA"], probe.commands
    assert b"Subject: outbox test" in probe.body
    assert wait_queue_empty(server)


def test_several_recipients_one_transaction_per_recipient_results(make_server, sink):
    s = sink(pipelining=True, rcpt_replies={"nobody@remote.test": "550 5.1.1 <nobody@remote.test>: no such user"})
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    rcpts = ["carol@remote.test", "nobody@remote.test", "dan@remote.test"]
    assert relay(server, rcpts) == {}
    (got,) = s.wait(1)
    assert got.rcpt_tos == ["carol@remote.test", "dan@remote.test"]
    (bounce,) = wait_mail(server, LOCAL_SENDER, 1)
    _, _, rcpt_blocks, _ = bounce_parts(bounce)
    assert [b["Final-Recipient"] for b in rcpt_blocks] == ["rfc822; nobody@remote.test"]
    assert wait_queue_empty(server)
    assert len(delivery_lines(server, status="sent")) == 2
    assert len(delivery_lines(server, status="bounced")) == 1


def test_size_limit_of_the_remote_server(make_server, sink):
    s = sink(size_limit=2000)
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    assert relay(server, ["carol@remote.test"], message(body=("x" * 70 + "\r\n") * 100)) == {}
    (bounce,) = wait_mail(server, LOCAL_SENDER, 1)
    _, _, (rcpt,), _ = bounce_parts(bounce)
    assert rcpt["Status"] == "5.3.4"
    assert s.messages == []


# -- smarthost mode ------------------------------------------------------------------


def test_second_smarthost_when_first_is_down(make_server, sink):
    s = sink()
    dead = free_port()
    server = make_server(extra=outbox_config(f"127.0.0.1:{dead}", f"127.0.0.1:{s.port}"))
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.rcpt_tos == ["carol@remote.test"]
    assert wait_queue_empty(server)


def test_starttls_verified_with_ca_file_and_auth_plain(make_server, sink, ca):
    s = sink(tls_context=ca.server_context(), require_starttls=True, auth=("isp-user", "s3cret;#x"))
    server = make_server(
        extra=outbox_config(
            f"127.0.0.1:{s.port}",
            tls="starttls",
            extra=f"username = isp-user\npassword = s3cret;#x\nca_file = {ca.ca_cert}\n",
        )
    )
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.tls
    assert got.auth == ("PLAIN", "isp-user")
    assert wait_queue_empty(server)


def test_auth_login(make_server, sink, ca):
    s = sink(tls_context=ca.server_context(), auth=("isp-user", "pw"), auth_exclude=["PLAIN"])
    server = make_server(
        extra=outbox_config(
            f"127.0.0.1:{s.port}",
            tls="starttls",
            extra=f"username = isp-user\npassword = pw\nca_file = {ca.ca_cert}\n",
        )
    )
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.tls and got.auth == ("LOGIN", "isp-user")


def test_implicit_tls(make_server, sink, ca):
    # aiosmtpd offers AUTH over implicit TLS only without its STARTTLS check.
    s = sink(implicit_tls=ca.server_context(), auth=("u", "p"), auth_require_tls=False)
    server = make_server(
        extra=outbox_config(
            f"127.0.0.1:{s.port}", tls="tls", extra=f"username = u\npassword = p\nca_file = {ca.ca_cert}\n"
        )
    )
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.tls and got.auth == ("PLAIN", "u")


def test_unverified_certificate_never_sends(make_server, sink, ca):
    s = sink(tls_context=ca.server_context(), auth=("u", "p"))
    # No ca_file: the test CA is not among the web roots.
    server = make_server(
        extra=outbox_config(
            f"127.0.0.1:{s.port}", tls="starttls", retry="1h", give_up_after="5d",
            extra="username = u\npassword = p\n",
        )
    )
    assert relay(server, ["carol@remote.test"]) == {}
    (qid,) = queue_ids(server)
    assert wait_for(lambda: "attempts: 1" in envelope(server, qid)), envelope(server, qid)
    assert s.messages == [] and s.auth_attempts == []
    text = server.run("queue").stdout.decode()
    assert "last error:" in text
    err = text.split("last error:", 1)[1].splitlines()[0].lower()
    assert "certificate" in err or "issuer" in err or "tls" in err, text


def test_implicit_tls_unverified_never_sends(make_server, sink, ca):
    s = sink(implicit_tls=ca.server_context())
    server = make_server(
        extra=outbox_config(f"127.0.0.1:{s.port}", tls="tls", retry="1h", give_up_after="5d")
    )
    assert relay(server, ["carol@remote.test"]) == {}
    (qid,) = queue_ids(server)
    assert wait_for(lambda: "attempts: 1" in envelope(server, qid)), envelope(server, qid)
    assert s.messages == []
    text = server.run("queue").stdout.decode()
    assert "last error:" in text


def test_starttls_required_but_not_offered(make_server, sink):
    s = sink(auth=("u", "p"), auth_require_tls=False)
    server = make_server(
        extra=outbox_config(
            f"127.0.0.1:{s.port}", tls="starttls", retry="1h", give_up_after="5d",
            extra="username = u\npassword = p\n",
        )
    )
    assert relay(server, ["carol@remote.test"]) == {}
    (qid,) = queue_ids(server)
    assert wait_for(lambda: "attempts: 1" in envelope(server, qid)), envelope(server, qid)
    assert s.messages == [] and s.auth_attempts == []
    assert "STARTTLS" in server.run("queue").stdout.decode()


def test_auth_over_plaintext_only_with_tls_none(make_server, sink):
    s = sink(auth=("u", "p"), auth_require_tls=False)
    server = make_server(
        extra=outbox_config(f"127.0.0.1:{s.port}", tls="none", extra="username = u\npassword = p\n")
    )
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert not got.tls and got.auth == ("PLAIN", "u")


def test_wrong_password_is_retried_not_bounced(make_server, sink):
    s = sink(auth=("u", "right"), auth_require_tls=False)
    server = make_server(
        extra=outbox_config(f"127.0.0.1:{s.port}", retry="1h", give_up_after="5d", extra="username = u\npassword = wrong\n")
    )
    assert relay(server, ["carol@remote.test"]) == {}
    (qid,) = queue_ids(server)
    assert wait_for(lambda: "attempts: 1" in envelope(server, qid)), envelope(server, qid)
    assert "pending" in envelope(server, qid)
    assert s.messages == []
    assert server.messages(LOCAL_SENDER) == []


# -- direct mode --------------------------------------------------------------------


def test_direct_mx_preference_with_unreachable_first(make_server, mx_sink, dns):
    s = mx_sink()
    dead = random_loopback()
    dns.zone.mx["remote.test"] = [(20, "mx2.remote.test"), (10, "mx1.remote.test")]
    dns.zone.a["mx1.remote.test"] = [dead]
    dns.zone.a["mx2.remote.test"] = [s.host]
    server = make_server(extra=direct_config(dns))
    assert relay(server, ["carol@remote.test", "dan@remote.test"]) == {}
    (got,) = s.wait(1)
    # Several recipients of one domain: one transaction.
    assert got.rcpt_tos == ["carol@remote.test", "dan@remote.test"]
    assert wait_queue_empty(server)
    mx_queries = [q for q in dns.zone.queries if q[1] == "A"]
    assert mx_queries[0][0] == "mx1.remote.test", dns.zone.queries
    assert f"[{s.host}]:25" in delivery_lines(server, status="sent")[0]


def test_direct_implicit_mx(make_server, mx_sink, dns):
    s = mx_sink()
    dns.zone.a["plain.test"] = [s.host]
    server = make_server(extra=direct_config(dns))
    assert relay(server, ["carol@plain.test"]) == {}
    (got,) = s.wait(1)
    assert got.rcpt_tos == ["carol@plain.test"]


def test_direct_one_session_per_domain(make_server, mx_sink, dns):
    s1, s2 = mx_sink(), mx_sink()
    dns.zone.a["one.test"] = [s1.host]
    dns.zone.a["two.test"] = [s2.host]
    server = make_server(extra=direct_config(dns))
    assert relay(server, ["a@one.test", "b@two.test", "c@one.test"]) == {}
    assert s1.wait(1)[0].rcpt_tos == ["a@one.test", "c@one.test"]
    assert s2.wait(1)[0].rcpt_tos == ["b@two.test"]
    assert wait_queue_empty(server)


def test_direct_null_mx_bounces_5_1_10(make_server, dns):
    dns.zone.mx["nomail.test"] = [(0, ".")]
    server = make_server(extra=direct_config(dns))
    assert relay(server, ["carol@nomail.test"]) == {}
    (bounce,) = wait_mail(server, LOCAL_SENDER, 1)
    _, _, (rcpt,), _ = bounce_parts(bounce)
    assert rcpt["Status"] == "5.1.10"
    assert rcpt["Final-Recipient"] == "rfc822; carol@nomail.test"
    assert wait_queue_empty(server)


def test_direct_nxdomain_bounces_5_1_2(make_server, dns):
    server = make_server(extra=direct_config(dns))
    assert relay(server, ["carol@nowhere.test"]) == {}
    (bounce,) = wait_mail(server, LOCAL_SENDER, 1)
    _, _, (rcpt,), _ = bounce_parts(bounce)
    assert rcpt["Status"] == "5.1.2"
    assert "nowhere.test" in field(rcpt, "Diagnostic-Code")
    assert wait_queue_empty(server)


# -- retries and bounces -------------------------------------------------------------


def test_5xx_bounces_at_once_rfc3464(make_server, sink):
    s = sink(rcpt_replies={"carol@remote.test": "550 5.1.1 <carol@remote.test>: Recipient address rejected"})
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}", retry="1h", give_up_after="5d"))
    t0 = time.time()
    assert relay(server, ["carol@remote.test"], message(subject="the original")) == {}
    (bounce,) = wait_mail(server, LOCAL_SENDER, 1)
    assert time.time() - t0 < 8
    assert bounce["Return-Path"] == "<>"
    assert "MAILER-DAEMON@mx.example.test" in bounce["From"]
    assert bounce["To"] == f"<{LOCAL_SENDER}>"
    assert bounce["Auto-Submitted"] == "auto-replied"
    human, per_msg, (rcpt,), headers = bounce_parts(bounce)
    assert "carol@remote.test" in human and "Recipient address rejected" in human
    assert per_msg["Reporting-MTA"] == "dns; mx.example.test"
    assert rcpt["Final-Recipient"] == "rfc822; carol@remote.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"].startswith("dns; ") and str(s.port) in rcpt["Remote-MTA"]
    assert field(rcpt, "Diagnostic-Code").startswith("smtp; 550 5.1.1")
    assert "Recipient address rejected" in field(rcpt, "Diagnostic-Code")
    assert "Subject: the original" in headers
    assert "Message-ID: <test@example.test>" in headers
    assert wait_queue_empty(server)
    assert len(delivery_lines(server, status="bounced")) == 1


def test_4xx_retries_then_gives_up_and_bounces(make_server, sink):
    s = sink(rcpt_replies={"carol@remote.test": "451 4.3.0 <carol@remote.test>: try again later"})
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}", retry="1s", give_up_after="4s"))
    assert relay(server, ["carol@remote.test"]) == {}
    (qid,) = queue_ids(server)
    assert wait_for(lambda: qid in queue_ids(server) and "attempts: 1" in envelope(server, qid), 5)
    text = server.run("queue").stdout.decode()
    assert "try again later" in text
    (bounce,) = wait_mail(server, LOCAL_SENDER, 1, timeout=15)
    _, _, (rcpt,), _ = bounce_parts(bounce)
    assert rcpt["Status"] == "5.3.0"
    assert "try again later" in field(rcpt, "Diagnostic-Code")
    assert wait_queue_empty(server)
    deferred = delivery_lines(server, status="deferred")
    assert len(deferred) >= 2, server.log_text()[-3000:]
    assert all("451 4.3.0" in l for l in deferred)


def test_4xx_then_success(make_server, sink):
    s = sink(data_reply="452 4.3.1 insufficient system storage")
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}", retry="1s", give_up_after="1h"))
    assert relay(server, ["carol@remote.test"]) == {}
    assert wait_for(lambda: delivery_lines(server, status="deferred"))
    s.data_reply = None
    (got,) = s.wait(1)
    assert got.rcpt_tos == ["carol@remote.test"]
    assert wait_queue_empty(server)
    assert server.messages(LOCAL_SENDER) == []


def test_null_sender_is_never_bounced(make_server, sink):
    s = sink(rcpt_replies={"carol@remote.test": "550 5.1.1 no such user"})
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    assert relay(server, ["carol@remote.test"], sender="") == {}
    assert wait_for(lambda: delivery_lines(server, status="bounced"))
    assert wait_queue_empty(server)
    time.sleep(1)
    assert queue_ids(server) == []
    assert server.files_in("new") == []
    assert s.messages == []


def test_bounce_to_remote_sender_is_queued(make_server, sink):
    s = sink(rcpt_replies={"carol@remote.test": "550 5.1.1 no such user"})
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    assert relay(server, ["carol@remote.test"], sender="dave@elsewhere.test") == {}
    (got,) = s.wait(1)
    assert got.mail_from in ("", "<>")  # aiosmtpd reports the null path as "<>"
    assert got.rcpt_tos == ["dave@elsewhere.test"]
    _, _, (rcpt,), _ = bounce_parts(parse(got.content))
    assert rcpt["Final-Recipient"] == "rfc822; carol@remote.test"
    assert wait_queue_empty(server)


def test_mail_loop_bounces_5_4_6(make_server, sink):
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    hops = "".join(f"Received: from h{i}.test by h{i + 1}.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n" for i in range(31))
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], source_address=(RELAY_SOURCE, 0), timeout=10) as c:
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail(LOCAL_SENDER, ["carol@remote.test"], hops.encode() + message())
    assert e.value.smtp_code == 554 and b"5.4.6" in e.value.smtp_error
    # 30 hops are accepted; ours makes 31: the outbox refuses to send it on.
    hops30 = "".join(hops.splitlines(keepends=True)[:30])
    assert relay(server, ["carol@remote.test"], hops30.encode() + message()) == {}
    (bounce,) = wait_mail(server, LOCAL_SENDER, 1)
    _, _, (rcpt,), _ = bounce_parts(bounce)
    assert rcpt["Status"] == "5.4.6"
    assert s.messages == []
    assert wait_queue_empty(server)


# -- commands -------------------------------------------------------------------------


def test_flush_retries_now(make_server, sink):
    port = free_port()
    server = make_server(extra=outbox_config(f"127.0.0.1:{port}", retry="1h", give_up_after="5d"))
    assert relay(server, ["carol@remote.test"]) == {}
    (qid,) = queue_ids(server)
    assert wait_for(lambda: "attempts: 1" in envelope(server, qid))
    s = sink(port=port)
    time.sleep(1)
    assert s.messages == []
    out = server.run("flush")
    assert out.returncode == 0, out.stderr
    (got,) = s.wait(1, timeout=5)
    assert got.rcpt_tos == ["carol@remote.test"]
    assert wait_queue_empty(server)
    assert "flush requested" in server.log_text()


def test_flush_without_server_fails(make_server):
    server = make_server(start=False)
    out = server.run("flush")
    assert out.returncode != 0
    assert b"no mailgate server" in out.stderr


def test_queue_empty_listing(make_server):
    server = make_server(start=False)
    # data_dir made (as a first start makes it), queue never used: empty.
    server.data_dir.mkdir(mode=0o700)
    out = server.run("queue")
    assert out.returncode == 0
    assert b"empty" in out.stdout.lower()


def sendmail(server, args, data: bytes, argv0=None, env=None):
    cmd = [argv0 or BIN] + ([] if argv0 else ["sendmail"]) + list(args)
    e = dict(os.environ)
    e["MAILGATE_CONFIG"] = str(server.config)
    e.update(env or {})
    return subprocess.run(cmd, input=data, capture_output=True, timeout=30, env=e)


def test_sendmail_to_remote_and_local(make_server, sink):
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}", retry="1h", give_up_after="5d"))
    out = sendmail(server, ["-f", LOCAL_SENDER, "carol@remote.test", "bob@example.test"],
                   b"Subject: cron\n\nline one\n.hidden\n")
    assert out.returncode == 0, out.stderr
    (got,) = s.wait(1, timeout=5)
    assert got.mail_from == LOCAL_SENDER
    assert got.rcpt_tos == ["carol@remote.test"]
    assert b"\r\n.hidden\r\n" in got.content
    (local,) = wait_mail(server, "bob@example.test", 1)
    assert local["Subject"] == "cron"


def test_sendmail_dot_ends_message_unless_i(make_server, sink):
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    assert sendmail(server, ["-f", LOCAL_SENDER, "carol@remote.test"], b"Subject: a\n\nbefore\n.\nafter\n").returncode == 0
    assert sendmail(server, ["-i", "-f", LOCAL_SENDER, "dan@remote.test"], b"Subject: b\n\nbefore\n.\nafter\n").returncode == 0
    got = s.wait(2, timeout=5)
    by_rcpt = {m.rcpt_tos[0]: m.content for m in got}
    assert b"after" not in by_rcpt["carol@remote.test"]
    assert b"before\r\n.\r\nafter\r\n" in by_rcpt["dan@remote.test"]


def test_sendmail_t_takes_to_cc_bcc_and_removes_bcc(make_server, sink, tmp_path):
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    msg = (
        b"From: alice@example.test\n"
        b"To: Carol <carol@remote.test>\n"
        b"Cc: dan@remote.test, bob@example.test\n"
        b"Bcc: secret@hidden.test\n"
        b"Subject: with bcc\n\nbody\n"
    )
    # Invoked as `sendmail` through a symlink.
    link = tmp_path / "sendmail"
    link.symlink_to(BIN)
    out = sendmail(server, ["-t", "-f", LOCAL_SENDER], msg, argv0=str(link))
    assert out.returncode == 0, out.stderr
    (got,) = s.wait(1, timeout=5)
    assert sorted(got.rcpt_tos) == ["carol@remote.test", "dan@remote.test", "secret@hidden.test"]
    assert b"Bcc" not in got.content and b"secret@hidden.test" not in got.content
    (local,) = wait_mail(server, "bob@example.test", 1)
    assert local["Bcc"] is None


def test_sendmail_without_server_queues(make_server, sink):
    port = free_port()
    server = make_server(start=False, extra=outbox_config(f"127.0.0.1:{port}"))
    out = sendmail(server, ["-f", LOCAL_SENDER, "carol@remote.test"], b"Subject: offline\n\nx\n")
    assert out.returncode == 0, out.stderr
    assert len(queue_ids(server)) == 1
    assert b"carol@remote.test" in server.run("queue").stdout
    s = sink(port=port)
    server.start()
    (got,) = s.wait(1)
    assert b"Subject: offline" in got.content


def test_sendmail_exit_codes(make_server, tmp_path):
    server = make_server(start=False, extra=outbox_config(f"127.0.0.1:{free_port()}"))
    out = sendmail(server, ["nobody@example.test"], b"Subject: x\n\nx\n")
    assert out.returncode == 67, out
    out = sendmail(server, [], b"Subject: x\n\nx\n")
    assert out.returncode == 64
    out = sendmail(server, ["carol@remote.test"], b"x\n", env={"MAILGATE_CONFIG": str(tmp_path / "missing.ini")})
    assert out.returncode == 78
    # The queue cannot be written: never exit 0.
    server.data_dir.mkdir(parents=True, exist_ok=True)
    (server.data_dir / "queue").write_text("not a folder")
    out = sendmail(server, ["-f", LOCAL_SENDER, "carol@remote.test"], b"Subject: x\n\nx\n")
    assert out.returncode == 75, out
    assert queue_ids(server) == []


# -- servers that misbehave, and load -------------------------------------------------


def test_helo_when_ehlo_is_refused(make_server, script):
    base = plain_answers()

    def answer(n, line):
        if line and line.upper().startswith(b"EHLO"):
            return b"502 5.5.1 EHLO not implemented\r\n"
        return base(n, line)

    srv = script(answer)
    server = make_server(extra=outbox_config(f"127.0.0.1:{srv.port}"))
    assert relay(server, ["carol@remote.test"]) == {}
    assert wait_for(lambda: srv.bodies)
    verbs = [l.split()[0].upper() for l in srv.sessions[0]]
    assert verbs[:2] == [b"EHLO", b"HELO"], srv.sessions[0]
    assert b"BODY=8BITMIME" not in b"".join(srv.sessions[0])
    assert wait_queue_empty(server)


def test_greeting_554_tries_next_host(make_server, script, sink):
    busy = script(lambda n, line: b"554 5.3.2 not accepting mail now\r\n" if line is None else b"221 bye\r\n")
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{busy.port}", f"127.0.0.1:{s.port}"))
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.rcpt_tos == ["carol@remote.test"]
    assert len(busy.sessions) == 1
    assert wait_queue_empty(server)


def test_connection_lost_after_data_is_retried(make_server, script):
    base = plain_answers()

    def answer(n, line):
        if n == 0 and line == b".":
            return None  # gone before the final reply
        return base(n, line)

    srv = script(answer)
    server = make_server(extra=outbox_config(f"127.0.0.1:{srv.port}", retry="1s", give_up_after="1h"))
    assert relay(server, ["carol@remote.test"]) == {}
    assert wait_for(lambda: len(srv.bodies) >= 2, 10), srv.sessions
    assert srv.bodies[0] == srv.bodies[1]
    assert wait_queue_empty(server)
    assert delivery_lines(server, status="deferred") and delivery_lines(server, status="sent")


def test_only_deferred_recipients_are_retried(make_server, sink):
    s = sink(rcpt_replies={"dan@remote.test": "451 4.2.1 mailbox busy"})
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}", retry="1s", give_up_after="1h"))
    assert relay(server, ["carol@remote.test", "dan@remote.test"]) == {}
    (first,) = s.wait(1)
    assert first.rcpt_tos == ["carol@remote.test"]
    assert wait_for(lambda: delivery_lines(server, status="deferred"))
    del s.rcpt_replies["dan@remote.test"]
    got = s.wait(2)
    assert len(got) == 2 and got[1].rcpt_tos == ["dan@remote.test"]
    assert wait_queue_empty(server)
    time.sleep(1.2)
    assert len(s.messages) == 2


def test_more_messages_than_sessions(make_server, sink):
    s = sink()
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], source_address=(RELAY_SOURCE, 0), timeout=10) as c:
        for i in range(12):
            c.sendmail(LOCAL_SENDER, [f"user{i}@remote.test"], message(subject=f"n{i}"))
    got = s.wait(12, timeout=15)
    assert sorted(m.rcpt_tos[0] for m in got) == sorted(f"user{i}@remote.test" for i in range(12))
    assert wait_queue_empty(server)


def test_large_message_through_starttls(make_server, sink, ca):
    s = sink(tls_context=ca.server_context())
    server = make_server(
        extra=outbox_config(f"127.0.0.1:{s.port}", tls="starttls", extra=f"ca_file = {ca.ca_cert}\n")
    )
    body = "".join(f"{i:06d} " + "abcdefghij" * 7 + "\r\n" for i in range(11000))
    assert len(body) > 800_000
    assert relay(server, ["carol@remote.test"], message(body=body)) == {}
    (got,) = s.wait(1, timeout=20)
    assert got.tls
    assert got.content.endswith(body.encode())


def test_smarthost_by_name_verified(make_server, sink, ca, dns):
    s = sink(tls_context=ca.server_context(), auth=("u", "p"))
    dns.zone.a["smarthost.test"] = ["127.0.0.1"]
    server = make_server(
        extra=outbox_config(
            f"smarthost.test:{s.port}",
            tls="starttls",
            extra=f"username = u\npassword = p\nca_file = {ca.ca_cert}\nnameserver = {dns.address}\n",
        )
    )
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.tls and got.auth == ("PLAIN", "u")
    assert ("smarthost.test", "A") in dns.zone.queries
    assert "relay=smarthost.test[127.0.0.1]" in delivery_lines(server, status="sent")[0]


def test_direct_opportunistic_starttls(make_server, mx_sink, dns, ca):
    # The MX's certificate names another host and chains to an unknown CA:
    # opportunistic TLS (RFC 7435) takes it rather than send in plaintext.
    s = mx_sink(tls_context=ca.server_context())
    dns.zone.mx["remote.test"] = [(10, "mx.remote.test")]
    dns.zone.a["mx.remote.test"] = [s.host]
    server = make_server(extra=direct_config(dns))
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.tls


def test_direct_failed_starttls_falls_back_to_plaintext(make_server, mx_sink, dns, ca):
    import ssl

    broken = ca.server_context()
    # rustls has no CBC cipher suites: this handshake cannot succeed.
    broken.maximum_version = ssl.TLSVersion.TLSv1_2
    broken.set_ciphers("ECDHE-ECDSA-AES128-SHA")
    s = mx_sink(tls_context=broken)
    dns.zone.a["remote.test"] = [s.host]
    server = make_server(extra=direct_config(dns, retry="1s", give_up_after="1h"))
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1, timeout=10)
    assert not got.tls
    assert delivery_lines(server, status="deferred")


def test_bounce_for_unknown_local_sender_is_not_sent_out(make_server, sink):
    s = sink(rcpt_replies={"carol@remote.test": "550 5.1.1 no such user"})
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}"))
    assert relay(server, ["carol@remote.test"], sender="ghost@example.test") == {}
    assert wait_for(lambda: delivery_lines(server, status="bounced"))
    assert wait_queue_empty(server)
    time.sleep(1)
    assert s.messages == [], [m.rcpt_tos for m in s.messages]
    assert queue_ids(server) == []


def test_ipv6_smarthost(make_server, sink):
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    s = sink(host="::1", port=free_port())
    server = make_server(extra=outbox_config(f"[::1]:{s.port}"))
    assert relay(server, ["carol@remote.test"]) == {}
    (got,) = s.wait(1)
    assert got.rcpt_tos == ["carol@remote.test"]
    assert f"[::1]:{s.port}" in delivery_lines(server, status="sent")[0]


def test_50mb_message_relayed_in_bounded_memory(make_server, sink):
    """A 50 MB queued message goes to the smarthost streamed from its file:
    the server's peak memory stays far below the message's size, and the
    sink gets it byte for byte (dot-stuffing undone, 8-bit intact)."""
    from conftest import peak_rss_kib

    s = sink(pipelining=True, size_limit=60 * 1024 * 1024)
    server = make_server(extra=outbox_config(f"127.0.0.1:{s.port}", retry="1h", give_up_after="5d"),
                         replace={"max_message_size = 1M": "max_message_size = 60M"}, start=False)
    head = (f"From: {LOCAL_SENDER}\nTo: carol@remote.test\nSubject: fifty megabytes\n"
            "Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <big@example.test>\n\n").encode()
    lines = []
    for i in range(640_000):
        if i % 97 == 0:
            lines.append(b".%07d starts with a dot, \xc3\xa9t\xc3\xa9\n" % i)
        else:
            lines.append(b"%07d " % i + b"x" * 70 + b"\n")
    msg = head + b"".join(lines)
    assert len(msg) > 50_000_000
    # Queued by sendmail (its own process) while the server is down, so
    # the server's peak memory is the outbound side's alone.
    out = sendmail(server, ["-f", LOCAL_SENDER, "carol@remote.test"], msg)
    assert out.returncode == 0, out.stderr
    server.start()
    (got,) = s.wait(1, timeout=180)
    rss = peak_rss_kib(server.proc.pid)
    want = msg.replace(b"\n", b"\r\n")
    assert got.content.endswith(want), len(got.content)
    trace = got.content[: len(got.content) - len(want)]
    assert trace.startswith(b"Received: ") and b"\r\n\r\n" not in trace, trace[:500]
    assert f"SIZE={len(got.content)}" in got.mail_options, got.mail_options
    assert "BODY=8BITMIME" in got.mail_options
    assert wait_queue_empty(server)
    assert rss < 16 * 1024, f"peak RSS {rss} KiB"
