#!/usr/bin/env python3
"""mailgate benchmark: prints a table, never fails on timing.

  make bench            (builds the release binary first)

Each section starts a fresh server on free loopback ports with its data in a
temporary directory, drives it with real clients (smtplib, poplib) from
several processes, and reads CPU time and peak RSS from /proc.
"""

import multiprocessing as mp
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Server  # noqa: E402

MESSAGE = (b"From: bench@remote.test\r\nTo: bob@example.test\r\nSubject: bench\r\n\r\n"
           + (b"x" * 76 + b"\r\n") * 52)  # ~4 KiB


def proc_stats(pid):
    """(cpu seconds, peak RSS KiB, current RSS KiB, threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.strip()
    return cpu, int(status["VmHWM"].split()[0]), int(status["VmRSS"].split()[0]), int(status["Threads"])


def smtp_worker(port, count, rcpt):
    s = smtplib.SMTP("127.0.0.1", port, timeout=60)
    for _ in range(count):
        s.sendmail("bench@remote.test", [rcpt], MESSAGE)
    s.quit()


def run_parallel(port, sessions, total, rcpt="bob@example.test"):
    per = total // sessions
    procs = [mp.Process(target=smtp_worker, args=(port, per, rcpt)) for _ in range(sessions)]
    start = time.time()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.time() - start, per * sessions


def new_server(tmp, extra=""):
    limits = {"max_recipients = 20": "max_recipients = 20\nmax_connections = 1000\nmax_connections_per_ip = 1000"}
    s = Server(Path(tempfile.mkdtemp(dir=tmp)), extra, limits)
    return s.start(env={"RUST_LOG": "warn"})


def row(name, n, secs, cpu, hwm, note=""):
    print(f"| {name:<42} | {n:>6} | {n / secs:>9.0f} | {cpu:>7.2f} | {hwm / 1024:>8.1f} | {note}")


def bench_smtp(tmp):
    for sessions in (10, 50):
        s = new_server(tmp)
        secs, n = run_parallel(s.ports["smtp"], sessions, 5000)
        cpu, hwm, _, _ = proc_stats(s.proc.pid)
        got = len(list((s.maildir_path("bob@example.test") / "new").iterdir()))
        s.stop()
        row(f"SMTP in, durable Maildir, {sessions} sessions", n, secs, cpu, hwm, f"{got} stored")


def bench_pop3(tmp):
    s = new_server(tmp)
    run_parallel(s.ports["smtp"], 10, 5000)
    s.restart()
    count, secs = pop3_retr_all(s.ports["pop3"], "bob@example.test", "secret")
    cpu, hwm, _, _ = proc_stats(s.proc.pid)
    s.stop()
    row("POP3 login, UIDL, RETR all of 5000", count, secs, cpu, hwm)


def pop3_retr_all(port, user, password):
    """Log in, UIDL, RETR every message; (messages, seconds)."""
    start = time.time()
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    p.user(user)
    p.pass_(password)
    count, _ = p.stat()
    p.uidl()
    for i in range(1, count + 1):
        p.retr(i)
    p.quit()
    return count, time.time() - start


def tree_stats(pid):
    """CPU seconds and summed peak RSS of a process and its children."""
    pids = [pid]
    out = subprocess.run(["pgrep", "-s", str(os.getsid(pid))], capture_output=True, text=True)
    pids += [int(x) for x in out.stdout.split() if int(x) != pid]
    cpu = hwm = 0
    for p in pids:
        try:
            c, h, _, _ = proc_stats(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
        cpu += c
        hwm += h
    return cpu, hwm


def start_dovecot(tmp, count):
    import dovecot_helpers as dh
    why = dh.available()
    if why:
        print(f"| Dovecot: {why}, skipped")
        return None
    ca = dh.TestCA(Path(tempfile.mkdtemp(dir=tmp)))
    dove = dh.Dovecot({"bob": "secret"}, ca)
    body = MESSAGE.replace(b"\r\n", b"\n")
    for i in range(count):
        dove.add("bob", body.replace(b"Subject: bench", b"Subject: bench %d" % i))
    return dove.start()


def bench_pop3_dovecot(tmp):
    dove = start_dovecot(tmp, 5000)
    if dove is None:
        return
    try:
        count, secs = pop3_retr_all(dove.pop3, "bob", "secret")
        cpu, hwm = tree_stats(dove.proc.pid)
        row("reference: Dovecot POP3, same 5000", count, secs, cpu, hwm, "all its processes")
    finally:
        dove.cleanup()


def bench_smartpop(tmp):
    dove = start_dovecot(tmp, 2000)
    if dove is None:
        return
    try:
        s = new_server(tmp, extra=(
            f"\n[smartpop isp]\nhost = 127.0.0.1:{dove.pop3}\ntls = none\nusername = bob\n"
            "password = secret\ndeliver_to = bob@example.test\ninterval = 1h\n"))
        start = time.time()
        new = s.maildir_path("bob@example.test") / "new"
        while time.time() - start < 300:
            if new.exists() and len(os.listdir(new)) >= 2000:
                break
            time.sleep(0.05)
        secs = time.time() - start
        got = len(os.listdir(new)) if new.exists() else 0
        cpu, hwm, _, _ = proc_stats(s.proc.pid)
        s.stop()
        row("SmartPop: collect 2000 from local Dovecot", got, secs, cpu, hwm, "durable + UIDL record each")
    finally:
        dove.cleanup()


def bench_outbound(tmp):
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        print("| outbound: aiosmtpd missing, skipped")
        return
    received = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            received.append(1)
            return "250 2.0.0 ok"

    port = free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port)
    ctl.start()
    s = new_server(tmp, extra=f"\n[outbox]\nmode = smarthost\nhost = 127.0.0.1:{port}\ntls = none\nretry = 1s\n")
    start = time.time()
    procs = [mp.Process(target=smtp_worker_relay, args=(s.ports["smtp"], 200)) for _ in range(10)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    while len(received) < 2000 and time.time() - start < 300:
        time.sleep(0.05)
    secs = time.time() - start
    cpu, hwm, _, _ = proc_stats(s.proc.pid)
    s.stop()
    ctl.stop()
    row("relay 2000 to a smarthost sink (in + out)", len(received), secs, cpu, hwm)


def smtp_worker_relay(port, count):
    s = smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=("127.0.0.2", 0))
    for _ in range(count):
        s.sendmail("bench@example.test", ["someone@remote.test"], MESSAGE)
    s.quit()


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def bench_memory(tmp):
    s = new_server(tmp)
    time.sleep(0.5)
    _, _, idle, threads = proc_stats(s.proc.pid)
    socks = []
    for _ in range(500):
        c = socket.create_connection(("127.0.0.1", s.ports["smtp"]))
        c.recv(100)
        socks.append(c)
    time.sleep(0.5)
    _, _, with_smtp, _ = proc_stats(s.proc.pid)
    for c in socks:
        c.close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = []
    for _ in range(100):
        c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.ports["smtps"])))
        c.recv(100)
        tls.append(c)
    time.sleep(0.5)
    _, _, with_tls, threads_busy = proc_stats(s.proc.pid)
    for c in tls:
        c.close()
    s.stop()
    print()
    print("| memory                              | RSS MiB |")
    print("|-------------------------------------|---------|")
    print(f"| idle                                | {idle / 1024:>7.1f} |")
    print(f"| 500 idle SMTP sessions              | {with_smtp / 1024:>7.1f} |")
    print(f"| 100 idle TLS sessions (smtps)       | {with_tls / 1024:>7.1f} |")
    print(f"| threads (idle / busy)               | {threads} / {threads_busy} |")


def main():
    binary = os.environ.get("MAILGATE_BIN", "")
    size = os.path.getsize(binary) if binary else 0
    print(f"mailgate benchmark: {binary} ({size / 1048576:.2f} MiB), {os.cpu_count()} CPUs")
    print()
    print(f"| {'test':<42} | {'msgs':>6} | {'msgs/s':>9} | {'CPU s':>7} | {'peak MiB':>8} | note")
    print(f"|{'-' * 44}|{'-' * 8}|{'-' * 11}|{'-' * 9}|{'-' * 10}|------")
    tmp = tempfile.mkdtemp(prefix="mailgate-bench-")
    try:
        only = sys.argv[1:] or ["smtp", "pop3", "pop3_dovecot", "outbound", "smartpop", "memory"]
        for name in only:
            globals()[f"bench_{name}"](tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
