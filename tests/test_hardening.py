"""Hardening (issue 12): what an attacker and a new user found, each with a
real client against the real binary."""

import smtplib

from conftest import Raw


def _session(server, mail_from=b"MAIL FROM:<c@remote.test>"):
    r = Raw(server.ports["smtp"])
    assert r.reply().startswith(b"220")
    assert b"CHUNKING" in r.cmd(b"EHLO chunky")
    assert r.cmd(mail_from).startswith(b"250")
    assert r.cmd(b"RCPT TO:<bob@example.test>").startswith(b"250")
    return r


def _body(raw: bytes) -> bytes:
    return raw.split(b"\n\n", 1)[1]


def test_bdat_body_is_stored_like_data(server):
    """Item 7: bare CR and bare LF in a BDAT message become line ends, as
    DATA makes them; the Maildir files of both bodies are the same."""
    body = b"one\rtwo\nthree\r\nsplit CR"
    # DATA: the same body (dot-stuffing not needed), then CRLF.CRLF.
    r = _session(server)
    assert r.cmd(b"DATA").startswith(b"354")
    r.send(b"Subject: data\r\n\r\n" + body + b"\r\nend\r\n.\r\n")
    assert r.reply().startswith(b"250")
    r.cmd(b"QUIT")
    # BDAT: the same, in two chunks that split a CRLF between them.
    r = _session(server)
    part1 = b"Subject: bdat\r\n\r\n" + body + b"\r"
    part2 = b"\nend\r\n"
    r.send(b"BDAT %d\r\n" % len(part1) + part1)
    assert r.reply().startswith(b"250")
    r.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert r.reply().startswith(b"250")
    r.cmd(b"QUIT")
    assert len(server.wait_messages("bob@example.test", 2)) == 2
    raws = {}
    for p in server.files_in("new"):
        raw = p.read_bytes()
        raws[b"Subject: bdat" in raw] = raw
    data, bdat = raws[False], raws[True]
    assert b"\r" not in bdat, bdat
    assert _body(bdat) == _body(data) == b"one\ntwo\nthree\nsplit CR\nend\n"
