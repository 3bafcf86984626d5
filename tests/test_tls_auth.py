"""TLS everywhere, SMTP AUTH, submission, password hashes, brute force."""

import base64
import hashlib
import poplib
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import time

import pytest

from conftest import BIN, Raw


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def submission(server):
    s = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=10)
    s.ehlo("laptop.example")
    return s


def test_submission_requires_auth_and_relays_after_it(server):
    with submission(server) as s:
        assert s.has_extn("starttls")
        code, text = s.mail("bob@example.test")
        assert code == 530 and text.startswith(b"5.7.0"), (code, text)
        s.rset()
        s.starttls(context=tls_context())
        s.ehlo("laptop.example")
        assert not s.has_extn("starttls"), "STARTTLS is not offered twice"
        assert "PLAIN" in s.esmtp_features.get("auth", "").upper()
        s.login("bob@example.test", "secret")
        assert s.sendmail("bob@example.test", ["alice@example.test", "friend@elsewhere.example"],
                          b"Subject: via submission\r\n\r\nhi\r\n") == {}
    msg = server.wait_messages("alice@example.test", 1)[0]
    received = msg["Received"]
    assert "ESMTPSA" in received and "TLSv1.3" in received, received
    assert "authenticated as bob@example.test" in received
    out = server.run("queue").stdout.decode()
    assert "friend@elsewhere.example" in out, out


def test_smtps_implicit_tls(server):
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["smtps"], context=tls_context(), timeout=10) as s:
        assert s.sock.version() == "TLSv1.3"
        s.login("alice@example.test", "wonderland")
        s.sendmail("alice@example.test", ["bob@example.test"], b"Subject: smtps\r\n\r\nx\r\n")
    assert [m["Subject"] for m in server.wait_messages("bob@example.test", 1)] == ["smtps"]


def test_mx_starttls_received_says_esmtps(server):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        s.starttls(context=tls_context())
        s.sendmail("carol@remote.test", ["bob@example.test"], b"Subject: tls\r\n\r\nx\r\n")
    received = server.wait_messages("bob@example.test", 1)[0]["Received"]
    assert "with ESMTPS" in received and "TLSv1.3" in received, received


def test_tls12_works_and_tls11_refused(server):
    ctx = tls_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["smtps"], context=ctx, timeout=10) as s:
        assert s.sock.version() == "TLSv1.2"
    ctx = tls_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionError, smtplib.SMTPServerDisconnected)):
        smtplib.SMTP_SSL("127.0.0.1", server.ports["smtps"], context=ctx, timeout=10)


def test_openssl_s_client_starttls(server):
    for proto, port in [("smtp", server.ports["smtp"]), ("pop3", server.ports["pop3"])]:
        res = subprocess.run(["openssl", "s_client", "-starttls", proto, "-connect", f"127.0.0.1:{port}",
                              "-brief"], input=b"QUIT\r\n", capture_output=True, timeout=20)
        text = (res.stdout + res.stderr).decode(errors="replace")
        assert "Protocol version: TLSv1.3" in text, text


def test_starttls_injection_ignored(server):
    raw = socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10)
    f = raw.makefile("rb")
    assert f.readline().startswith(b"220")
    raw.sendall(b"EHLO x\r\n")
    while True:
        line = f.readline()
        if line[3:4] == b" ":
            break
    # STARTTLS with a command pipelined behind it, in one packet.
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n")
    assert f.readline().startswith(b"220")
    tls = tls_context().wrap_socket(raw)
    tf = tls.makefile("rb")
    tls.sendall(b"RCPT TO:<bob@example.test>\r\n")
    reply = tf.readline()
    # Had the injected MAIL been obeyed, RCPT would get 250.
    assert reply.startswith(b"503"), reply
    tls.sendall(b"QUIT\r\n")
    tls.close()


def test_auth_failures_delay_then_cut(server):
    r = Raw(server.ports["submission"])
    r.reply()
    r.cmd(b"EHLO x")
    bad = base64.b64encode(b"\0bob@example.test\0wrong")
    start = time.time()
    reply = r.cmd(b"AUTH PLAIN " + bad)
    assert reply.startswith(b"535 5.7.8"), reply
    assert time.time() - start >= 0.8, "failures are answered after a delay"
    assert r.cmd(b"AUTH PLAIN " + bad).startswith(b"535")
    reply = r.cmd(b"AUTH PLAIN " + bad)
    assert reply.startswith(b"535") or reply.startswith(b"421"), reply
    if reply.startswith(b"535"):
        assert r.reply().startswith(b"421")
    assert r.closed()


def test_brute_force_address_blocked(server):
    bad = base64.b64encode(b"\0bob@example.test\0wrong")
    failures = 0
    while failures < 10:
        r = Raw(server.ports["submission"])
        greeting = r.reply()
        assert greeting.startswith(b"220"), greeting
        r.cmd(b"EHLO x")
        for _ in range(3):
            if failures >= 10:
                break
            reply = r.cmd(b"AUTH PLAIN " + bad)
            if not reply.startswith(b"535"):
                break
            failures += 1
        r.close()
    r = Raw(server.ports["submission"])
    assert r.reply().startswith(b"421")
    assert "refusing it for 15 minutes" in server.log_text()
    # POP3 shares the penalty.
    p = Raw(server.ports["pop3"])
    assert p.line().startswith(b"-ERR")


def test_pop3_stls_and_pop3s(server):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.sendmail("carol@remote.test", ["bob@example.test"], b"Subject: pop tls\r\n\r\nx\r\n")
    server.wait_messages("bob@example.test", 1)
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    assert "STLS" in p.capa()
    p.stls(context=tls_context())
    assert "STLS" not in p.capa()
    p.user("bob@example.test")
    p.pass_("secret")
    assert p.stat()[0] == 1
    p.quit()
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=tls_context(), timeout=10)
    assert p.sock.version() == "TLSv1.3"
    assert "STLS" not in p.capa()
    p.user("bob@example.test")
    p.pass_("secret")
    assert b"pop tls" in b"\n".join(p.retr(1)[1])
    p.quit()


def test_self_signed_certificate_made_once(server):
    tls_dir = server.data_dir / "tls"
    key = tls_dir / "key.pem"
    cert = tls_dir / "cert.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = cert.read_bytes()
    der = ssl.PEM_cert_to_DER_cert(first.decode())
    fp = hashlib.sha256(der).hexdigest().upper()
    fp = ":".join(fp[i:i + 2] for i in range(0, len(fp), 2))
    assert fp in server.log_text()
    server.restart()
    assert cert.read_bytes() == first
    pem = ssl.get_server_certificate(("127.0.0.1", server.ports["smtps"]))
    assert ssl.PEM_cert_to_DER_cert(pem) == der


def test_bad_certificate_is_a_named_error(make_server, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    server = make_server(start=False, extra=f"\n[tls]\ncert = {bad}\nkey = {bad}\n")
    res = subprocess.run([BIN, "-c", str(server.config), "serve"], capture_output=True, text=True, timeout=10)
    assert res.returncode != 0
    assert str(bad) in res.stderr, res.stderr


def test_passwd_hash_logs_in_and_mkpasswd_hash_accepted(make_server):
    res = subprocess.run([BIN, "passwd"], input=b"s3cret pass\n", capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    made = res.stdout.decode().strip()
    assert made.startswith("$6$")
    mk = subprocess.run(["mkpasswd", "-m", "sha-512", "other pass"], capture_output=True, text=True)
    if mk.returncode != 0:
        pytest.skip("mkpasswd (package whois) not available")
    theirs = mk.stdout.strip()
    server = make_server(replace={"password = {PLAIN}secret": f"password = {made}",
                                  "password = {PLAIN}wonderland": f"password = {theirs}"})
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    p.user("bob@example.test")
    p.pass_("s3cret pass")
    p.quit()
    with submission(server) as s:
        s.starttls(context=tls_context())
        s.login("alice@example.test", "other pass")


def test_plain_password_warned(server):
    assert "{PLAIN}" in server.log_text() or "PLAIN" in server.log_text()


def test_sighup_loads_a_new_certificate(server, tmp_path):
    before = ssl.get_server_certificate(("127.0.0.1", server.ports["smtps"]))
    cert, key = tmp_path / "new-cert.pem", tmp_path / "new-key.pem"
    res = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-nodes", "-subj", "/CN=mx.example.test", "-addext", "subjectAltName=DNS:mx.example.test",
                          "-days", "30", "-keyout", str(key), "-out", str(cert)], capture_output=True)
    assert res.returncode == 0, res.stderr
    server.config.write_text(server.config_text + f"\n[tls]\ncert = {cert}\nkey = {key}\n")
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    after = ssl.get_server_certificate(("127.0.0.1", server.ports["smtps"]))
    assert ssl.PEM_cert_to_DER_cert(after) == ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert after != before
    # A broken certificate on reload keeps the running one.
    cert.write_text("junk\n")
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert "keeping the running certificate" in server.log_text()
    still = ssl.get_server_certificate(("127.0.0.1", server.ports["smtps"]))
    assert ssl.PEM_cert_to_DER_cert(still) == ssl.PEM_cert_to_DER_cert(after)
