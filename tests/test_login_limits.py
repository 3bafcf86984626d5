"""Password guessing and slot hogging from many connections at once.

The login limit (10 failures in 10 minutes per address, IPv6 per /64)
is counted across every session of the address at the moment of each
try: tries still being checked count too, so twenty connections that
guess at once get ten guesses between them, not sixty. Once the address
is blocked, its open sessions are refused at their next try and closed.
"""

import base64
import re
import socket
import threading
import time

from conftest import Raw

BAD = base64.b64encode(b"\0bob@example.test\0wrong")
GOOD = base64.b64encode(b"\0bob@example.test\0secret")


def guesses_checked(server):
    """Password checks that were made and failed, from the log."""
    return len(re.findall(r"authentication failed for|login failed for", server.log_text()))


def smtp_guesser(port, tries, results):
    try:
        r = Raw(port, timeout=30)
        r.reply()
        r.cmd(b"EHLO guesser")
        for _ in range(tries):
            reply = r.cmd(b"AUTH PLAIN " + BAD)
            results.append(reply[:3])
            if not reply.startswith(b"535"):
                break
        r.close()
    except OSError as e:
        results.append(type(e).__name__.encode())


def test_parallel_smtp_guessing_gets_ten_guesses(server):
    results = []
    threads = [threading.Thread(target=smtp_guesser, args=(server.ports["submission"], 3, results))
               for _ in range(20)]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    checked = guesses_checked(server)
    print(f"\n20 connections x 3 tries: {checked} passwords checked in "
          f"{time.time() - start:.1f}s, replies {sorted(set(results))}")
    assert checked <= 10, checked
    assert "refusing it for 15 minutes" in server.log_text()
    # The right password is refused now too: the block holds for every try.
    r = Raw(server.ports["submission"])
    assert r.reply().startswith(b"421")
    p = Raw(server.ports["pop3"])
    assert p.line().startswith(b"-ERR")


def test_blocked_address_open_sessions_get_the_block(server):
    # A session opened before the block, idle while others guess.
    early = Raw(server.ports["pop3"])
    assert early.line().startswith(b"+OK")
    results = []
    threads = [threading.Thread(target=smtp_guesser, args=(server.ports["submission"], 3, results))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "refusing it for 15 minutes" in server.log_text()
    before = guesses_checked(server)
    early.send(b"USER bob@example.test\r\n")
    assert early.line().startswith(b"+OK")
    early.send(b"PASS secret\r\n")
    reply = early.line()
    assert reply.startswith(b"-ERR"), reply
    assert early.closed(), "the session ends with the block"
    assert guesses_checked(server) == before, "the password was not even checked"


def test_answered_noops_do_not_keep_a_slot_forever(server):
    import smtplib
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
        s.ehlo("keeper")
        codes = [s.noop()[0] for _ in range(100)]
        assert codes == [250] * 100
        code, text = s.noop()
        assert code == 421 and b"too many junk commands" in text, (code, text)
    p = Raw(server.ports["pop3"])
    assert p.line().startswith(b"+OK")
    for _ in range(30):
        p.send(b"USER bob@example.test\r\n")
        assert p.line().startswith(b"+OK")
    p.send(b"USER bob@example.test\r\n")
    assert p.line() == b"-ERR too many commands without logging in"
    assert p.closed()


def test_a_client_port_session_must_log_in_in_time(make_server):
    server = make_server(replace={"timeout = 30s\n\n[pop3]": "timeout = 30s\nlogin_timeout = 2s\n\n[pop3]"})
    pop = Raw(server.ports["pop3"])
    assert pop.line().startswith(b"+OK")
    sub = Raw(server.ports["submission"])
    assert sub.reply().startswith(b"220")
    mx = Raw(server.ports["smtp"])
    assert mx.reply().startswith(b"220")
    start = time.time()
    # Each answers its keep-alives, but none logs in.
    while time.time() - start < 1.5:
        pop.send(b"CAPA\r\n")
        while pop.line() != b".":
            pass
        assert sub.cmd(b"NOOP").startswith(b"250")
        assert mx.cmd(b"NOOP").startswith(b"250")
        time.sleep(0.3)
    assert pop.closed(timeout=5), "POP3 without a login is closed"
    assert sub.closed(timeout=5), "submission without AUTH is closed"
    assert mx.cmd(b"NOOP").startswith(b"250"), "port 25 needs no login"
    # A session that logs in in time stays.
    p = Raw(server.ports["pop3"])
    p.line()
    p.send(b"USER bob@example.test\r\n")
    p.line()
    p.send(b"PASS secret\r\n")
    assert p.line().startswith(b"+OK")
    time.sleep(2.5)
    p.send(b"NOOP\r\n")
    assert p.line().startswith(b"+OK")


def test_port_25_crowd_leaves_slots_for_clients(make_server):
    server = make_server(replace={"max_recipients = 20": "max_recipients = 20\nmax_connections = 8\n"
                                                          "max_connections_per_ip = 8"})
    crowd = []
    for _ in range(6):
        r = Raw(server.ports["smtp"])
        assert r.reply().startswith(b"220")
        crowd.append(r)
    refused = Raw(server.ports["smtp"])
    assert refused.reply().startswith(b"421"), "port 25 has 6 of the 8 slots"
    # The household's POP3 client still gets in.
    import poplib
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    p.user("bob@example.test")
    p.pass_("secret")
    assert p.stat()[0] == 0
    p.quit()
