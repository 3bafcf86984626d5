#!/usr/bin/env python3
"""One real mail session against an ARM build of mailgate under qemu-user.

usage: cross_session.py QEMU BINARY      (make cross-test runs it per target)

Starts BINARY through QEMU (qemu-aarch64-static, qemu-arm-static) with the
test config of conftest.Server on free loopback ports, hashes a password
with the emulated `mailgate passwd`, sends a message in by SMTP with
STARTTLS, takes it out by POP3 with STLS and deletes it, stops the server
with SIGTERM and checks it exits 0 with no ERROR in its log. Prints a short
transcript with timings; exits non-zero on any failure.
"""

import os
import poplib
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402  (the Server class of the integration tests)

# ELF e_machine values (System V ABI): what each emulator runs.
MACHINES = {"qemu-aarch64-static": (183, "aarch64"), "qemu-arm-static": (40, "arm")}


def step(start, text):
    print(f"  {time.monotonic() - start:7.2f}s  {text}", flush=True)


def elf_machine(path):
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        raise SystemExit(f"{path} is not an ELF file")
    return int.from_bytes(head[18:20], "little")


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    qemu, binary = sys.argv[1], os.path.abspath(sys.argv[2])
    want, arch = MACHINES.get(os.path.basename(qemu), (None, "?"))
    machine = elf_machine(binary)
    if want is not None and machine != want:
        raise SystemExit(f"{binary} is ELF machine {machine}, not {arch} for {qemu}")

    with tempfile.TemporaryDirectory(prefix="mailgate-cross-") as tmp:
        tmp = Path(tmp)
        # conftest.Server runs conftest.BIN; a wrapper puts qemu in front.
        wrapper = tmp / "mailgate"
        wrapper.write_text(f'#!/bin/sh\nexec {qemu} "{binary}" "$@"\n')
        wrapper.chmod(0o755)
        conftest.BIN = str(wrapper)

        start = time.monotonic()
        print(f"{os.path.basename(binary)} ({arch}, {os.path.getsize(binary)} bytes) under {qemu}")
        version = subprocess.run([wrapper, "--version"], capture_output=True, text=True, check=True)
        step(start, version.stdout.strip())
        hashed = subprocess.run(
            [wrapper, "passwd"], input="s3cret arm\n", capture_output=True, text=True, check=True
        ).stdout.strip()
        if not hashed.startswith("$6$"):
            raise SystemExit(f"passwd printed {hashed!r}")
        step(start, f"passwd: {hashed[:20]}...")

        server = conftest.Server(
            tmp / "s", replace={"password = {PLAIN}secret": f"password = {hashed}"}
        )
        server.start(env={"RUST_LOG": "info"})
        step(start, f"serving (smtp {server.ports['smtp']}, pop3 {server.ports['pop3']})")
        try:
            session(server, start)
        finally:
            code = server.stop()
        log = server.log_text()
        step(start, f"SIGTERM: exit {code}")
        if code != 0 or "ERROR" in log:
            print(log[-4000:])
            raise SystemExit("the emulated server failed")
        print(f"ok: {arch} session in {time.monotonic() - start:.1f}s")


def session(server, start):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = f"Subject: from an ARM box\r\nMessage-ID: <arm.{os.getpid()}@example.test>\r\n\r\nhello from qemu\r\n"

    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60) as s:
        code, _ = s.ehlo("client.test")
        step(start, f"SMTP EHLO {code}")
        code, _ = s.starttls(context=ctx)
        step(start, f"SMTP STARTTLS {code} ({s.sock.version()}, {s.sock.cipher()[0]})")
        s.ehlo("client.test")
        refused = s.sendmail("alice@remote.test", ["bob@example.test"], body)
        if refused:
            raise SystemExit(f"refused: {refused}")
        step(start, "SMTP MAIL/RCPT/DATA 250")

    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=60)
    step(start, f"POP3 {p.getwelcome().decode()[:40]}")
    p.stls(context=ctx)
    step(start, f"POP3 STLS ({p.sock.version()})")
    p.user("bob@example.test")
    p.pass_("s3cret arm")
    count, size = p.stat()
    step(start, f"POP3 login (SHA-512 crypt verified on the emulated CPU), STAT {count} {size}")
    if count != 1:
        raise SystemExit(f"expected 1 message, got {count}")
    lines = p.retr(1)[1]
    if b"hello from qemu" not in lines or not any(line.startswith(b"Received:") for line in lines):
        raise SystemExit(f"unexpected message: {lines[:10]}")
    p.dele(1)
    p.quit()
    step(start, f"POP3 RETR ({len(lines)} lines), DELE, QUIT")
    if server.messages("bob@example.test"):
        raise SystemExit("the message is still in the Maildir after DELE+QUIT")


if __name__ == "__main__":
    main()
