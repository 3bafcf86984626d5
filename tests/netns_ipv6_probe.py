"""Runs inside a network namespace (tests/test_ipv6_prefix.py makes it):
starts mailgate on [fd00:64::1], then connects from several addresses of
one IPv6 /64 and from another /64, and prints what happened as JSON.

Real IPv6 clients of one household or one attacker share a /64 and may
use a new address for every connection (RFC 4941 privacy addresses), so
the per-client limits must count the /64, not the address."""

import base64
import json
import socket
import subprocess
import sys
import time

BIN, CONFIG, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
SMTP, POP3 = int(sys.argv[4]), int(sys.argv[5])
SERVER = "fd00:64::1"
SAME_64 = [f"fd00:64::{i:x}" for i in range(0x10, 0x18)]
OTHER_64 = "fd00:65::10"


def connect(source, port):
    s = socket.create_connection((SERVER, port), timeout=10, source_address=(source, 0))
    s.settimeout(10)
    return s


def line(s):
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = s.recv(1)
        if not chunk:
            return buf
        buf += chunk
    return buf.rstrip(b"\r\n")


def wait_port(port, proc):
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mailgate exited {proc.returncode}")
        try:
            socket.create_connection((SERVER, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def pop3_login(source, password):
    s = connect(source, POP3)
    greeting = line(s)
    if not greeting.startswith(b"+OK"):
        # Refused at connect (a blocked client gets "-ERR" and the end).
        s.close()
        return greeting.decode(errors="replace")
    token = base64.b64encode(b"\0bob@example.test\0" + password)
    s.sendall(b"AUTH PLAIN " + token + b"\r\n")
    reply = line(s)
    s.close()
    return reply.decode(errors="replace")


def limits(out):
    # max_connections_per_ip = 2: two addresses of the /64 take both.
    held = [connect(a, SMTP) for a in SAME_64[:2]]
    out["held"] = [line(s).decode() for s in held]
    third = connect(SAME_64[2], SMTP)
    out["third_same_64"] = line(third).decode()
    third.close()
    other = connect(OTHER_64, SMTP)
    out["other_64"] = line(other).decode()
    other.close()
    for s in held:
        s.close()
    time.sleep(0.3)
    # Login failures: each address of the /64 guesses twice; after ten
    # the /64 is blocked, even for an address that never guessed.
    out["guesses"] = [pop3_login(SAME_64[i // 2], b"wrong") for i in range(10)]
    out["right_password_same_64"] = pop3_login(SAME_64[6], b"secret")
    out["right_password_other_64"] = pop3_login(OTHER_64, b"secret")


def plaintext(out):
    # SMTP here is the submission port (the test points it there).
    out["pop3"] = pop3_login(OTHER_64, b"secret")
    s = connect(OTHER_64, SMTP)
    line(s)
    s.sendall(b"EHLO probe\r\n")
    ehlo = []
    while not (ehlo and ehlo[-1][3:4] == b" "):
        ehlo.append(line(s))
    out["ehlo"] = [x.decode() for x in ehlo]
    token = base64.b64encode(b"\0bob@example.test\0secret")
    s.sendall(b"AUTH PLAIN " + token + b"\r\n")
    out["smtp_auth"] = line(s).decode()
    s.close()


def main():
    log = open(CONFIG + ".log", "ab")
    proc = subprocess.Popen([BIN, "-c", CONFIG, "serve"], stdout=log, stderr=log)
    out = {}
    try:
        wait_port(SMTP, proc)
        wait_port(POP3, proc)
        time.sleep(0.3)  # the probes' own connections are gone
        {"limits": limits, "plaintext": plaintext}[MODE](out)
    finally:
        proc.terminate()
        proc.wait(15)
    print(json.dumps(out))


main()
