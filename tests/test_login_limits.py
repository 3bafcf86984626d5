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
