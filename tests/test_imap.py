"""IMAP listeners and login (issue 13, item 1) with real clients: Python's
imaplib and imapclient against the real binary."""
import imaplib
import socket
import ssl

import imapclient
import pytest

from conftest import Raw


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_login_capability_logout_imaplib(server):
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=10)
    assert m.welcome.startswith(b"* OK [CAPABILITY IMAP4rev1")
    caps = m.capabilities
    assert "STARTTLS" in caps and "AUTH=PLAIN" in caps and "SASL-IR" in caps
    typ, data = m.login("bob@example.test", "secret")
    assert typ == "OK" and b"Logged in" in data[0]
    typ, data = m.noop()
    assert typ == "OK"
    typ, data = m.logout()
    assert typ == "BYE"
    assert "bob@example.test logged in" in server.log_text()


def test_wrong_password_and_unknown_user(server):
    for user, pw in (("bob@example.test", "wrong"), ("nobody@example.test", "secret")):
        m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=10)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.login(user, pw)
        m.logout()


def test_authenticate_plain_sasl_ir_and_continuation(server):
    # imapclient sends AUTHENTICATE PLAIN with the response on the line
    # (SASL-IR is advertised).
    c = imapclient.IMAPClient("127.0.0.1", port=server.ports["imap"], ssl=False, timeout=10)
    assert b"SASL-IR" in c.capabilities()
    c.plain_login("bob@example.test", "secret")
    assert c.noop()[0].startswith(b"NOOP")
    c.logout()
    # Without SASL-IR: `+ ` then the response line.
    r = Raw(server.ports["imap"])
    assert r.line().startswith(b"* OK")
    r.send(b"a AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ "
    r.send(b"AGFsaWNlQGV4YW1wbGUudGVzdAB3b25kZXJsYW5k\r\n")  # \0alice@...\0wonderland
    assert r.line().startswith(b"a OK [CAPABILITY")
    r.send(b"b LOGOUT\r\n")
    assert r.line().startswith(b"* BYE")
    assert r.line() == b"b OK LOGOUT completed"
    r.close()


def test_starttls_and_imaps(server):
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=10)
    m.starttls(ssl_context=tls_context())
    assert m.sock.version() in ("TLSv1.3", "TLSv1.2")
    typ, data = m.capability()
    caps = data[0].split()
    assert b"STARTTLS" not in caps and b"AUTH=PLAIN" in caps
    m.login("bob@example.test", "secret")
    m.logout()
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls_context(), timeout=10)
    assert m.sock.version() == "TLSv1.3"
    assert "STARTTLS" not in m.capabilities
    m.login("alice@example.test", "wonderland")
    m.logout()
    # imapclient over TLS from the first byte.
    c = imapclient.IMAPClient("127.0.0.1", port=server.ports["imaps"], ssl=True,
                              ssl_context=tls_context(), timeout=10)
    c.login("bob@example.test", "secret")
    c.logout()


def test_starttls_command_injection_is_dropped(server):
    """Plaintext sent after STARTTLS in the same packet is never run."""
    s = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"* OK")
    s.sendall(b"a STARTTLS\r\nb LOGIN bob@example.test secret\r\n")
    assert f.readline() == b"a OK Begin TLS negotiation now\r\n"
    tls = tls_context().wrap_socket(s, server_hostname="localhost")
    tls.sendall(b"c NOOP\r\n")
    tf = tls.makefile("rb")
    assert tf.readline() == b"c OK NOOP completed\r\n"
    tls.close()


def test_bad_commands_and_state(server):
    r = Raw(server.ports["imap"])
    assert r.line().startswith(b"* OK")
    r.send(b"a SELECT INBOX\r\n")
    assert r.line() == b"a BAD Log in first"
    r.send(b"b NOOP\r\n")
    assert r.line() == b"b OK NOOP completed"
    # A literal nobody can send is refused without a `+`.
    r.send(b"c LOGIN {4000000000}\r\n")
    assert r.line().startswith((b"c BAD", b"* BAD"))
    r.close()
    # Three BADs in a row end the session.
    r = Raw(server.ports["imap"])
    r.line()
    for t in (b"x", b"y", b"z"):
        r.send(t + b" FROBNICATE\r\n")
    lines = [r.line() for _ in range(4)]
    assert all(l.startswith(t + b" BAD") for l, t in zip(lines, (b"x", b"y", b"z")))
    assert lines[3].startswith(b"* BYE")
    assert r.closed()


def test_id_and_not_yet_implemented_is_clear(server):
    c = imapclient.IMAPClient("127.0.0.1", port=server.ports["imap"], ssl=False, timeout=10)
    c.login("bob@example.test", "secret")
    ident = c.id_({"name": "pytest"})
    assert (b"name", b"mailgate") in ident, ident
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="CANNOT"):
        c.select_folder("INBOX")
    c.logout()
