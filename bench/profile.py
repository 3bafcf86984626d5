#!/usr/bin/env python3
"""Profiles mailgate under the bench's load (make bench-profile).

  MAILGATE_BIN=target/profile/release/mailgate python3 bench/profile.py [pop3] [strace] [perf]

Starts mailgate with the bench's config, warms it up, then for each tool
attaches it to the running server, loads it, detaches and prints the
figures below. The load is SMTP intake by smtp-source (50 sessions, 3000 x
4 KiB, one connection per message, as `make bench`), or with `pop3`, RETR
of the bench's POP3 mailbox by the pipelined client (16 in flight, 5
sessions one after another); the per-message figures count RETRs then.
What is printed:
- strace: `strace -c -f` over all of mailgate's threads, as calls per
  message (reads, writes, fsyncs, renames, epoll calls...); strace slows
  the server down many times, the counts per message stay right;
- perf: `perf record -g` (frame pointers: make bench-profile builds a
  binary with them and with symbols), then the top functions by self time
  and by time including callees.
Every command is printed as run, so it can be rerun by hand.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import pop3load  # noqa: E402
from meter import Meter  # noqa: E402
import scratchfs  # noqa: E402

SESSIONS = int(os.environ.get("PROFILE_SESSIONS", "50"))
MESSAGES = int(os.environ.get("PROFILE_MESSAGES", "3000"))
# The syscalls the issue asks about, in this order, then the rest by count.
NAMED = ["read", "recvfrom", "write", "writev", "sendto", "fsync", "fdatasync", "rename",
         "renameat", "renameat2", "openat", "close", "epoll_wait", "epoll_ctl", "accept4",
         "futex", "statx", "getrandom"]


def run(cmd, **kw):
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, **kw)


def attach(cmd):
    print("$ " + " ".join(cmd) + " &", flush=True)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let it attach to every thread
    return p


def detach(p):
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    return err.decode(errors="replace")


POP3_SESSIONS = 5


def pop3_load(s, client):
    """RETR the POP3 mailbox POP3_SESSIONS times with the C load client
    (pop3load.build); returns (RETRs, seconds)."""
    start = time.perf_counter()
    n = pop3load.retrieve_all(client, s.ports["pop3"], f"bob@{bench.DOMAIN}", "secret",
                              bench.POP3_DEPTH, POP3_SESSIONS)[0]
    return n, time.perf_counter() - start


def load(port, rcpt):
    cmd = [bench.postfix_peer.SMTP_SOURCE, "-s", str(SESSIONS), "-m", str(MESSAGES), "-l", "4096",
           "-f", bench.SENDER, "-t", rcpt, f"127.0.0.1:{port}"]
    start = time.perf_counter()
    run(cmd, check=True, timeout=1800)
    return time.perf_counter() - start


# client: the POP3 load client to profile under, or None for SMTP.
def strace_profile(s, out_dir, client):
    out = out_dir / "strace.txt"
    p = attach(["strace", "-c", "-f", "-qq", "-o", str(out), "-p", str(s.proc.pid)])
    if client:
        messages, secs = pop3_load(s, client)
        err = detach(p)
        got = messages
    else:
        messages = MESSAGES
        secs = load(s.ports["smtp"], f"r0@{bench.DOMAIN}")
        err = detach(p)
        got = bench.wait_count(s.maildir_path(f"r0@{bench.DOMAIN}"), MESSAGES, 60)
    print(f"strace: {got} messages in {secs:.1f} s (slowed down by strace) {err.strip()}")
    counts = {}
    for line in out.read_text().splitlines():
        f = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(f) >= 5 and f[0][0].isdigit() and not line.startswith("100.00"):
            name = f[-1]
            calls = int(f[3])
            errors = int(f[4]) if len(f) == 6 else 0
            counts[name] = (calls, errors, float(f[1]))
    total = sum(c for c, _, _ in counts.values())
    print(f"\nsyscalls per message ({messages} messages), all threads:")
    print(f"| {'syscall':<14} | {'per msg':>8} | {'errors/msg':>10} | {'sys s':>6} |")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 12}|{'-' * 8}|")
    order = [n for n in NAMED if n in counts]
    order += sorted((n for n in counts if n not in NAMED), key=lambda n: -counts[n][0])
    for name in order:
        c, e, t = counts[name]
        print(f"| {name:<14} | {c / messages:>8.2f} | {e / messages:>10.2f} | {t:>6.3f} |")
    print(f"| {'total':<14} | {total / messages:>8.2f} | {'':>10} | {'':>6} |")
    print(f"(raw table: {out})")


def perf_profile(s, out_dir, client):
    data = out_dir / "perf.data"
    p = attach(["perf", "record", "-g", "-F", "999", "-o", str(data), "-p", str(s.proc.pid)])
    if client:
        messages, secs = pop3_load(s, client)
    else:
        messages = MESSAGES
        secs = load(s.ports["smtp"], f"r1@{bench.DOMAIN}")
    detach(p)
    print(f"perf: {messages} messages in {secs:.1f} s ({messages / secs:.0f} msg/s under perf)")
    for title, extra in (("self time", ["--no-children"]), ("including callees", ["--children"])):
        out = run(["perf", "report", "-i", str(data), "--stdio", *extra, "-g", "none",
                   "--sort", "symbol", "--percent-limit", "1"],
                  capture_output=True, text=True, timeout=600)
        lines = [l for l in out.stdout.splitlines() if l.strip() and not l.startswith("#")]
        print(f"\ntop functions, {title}:")
        for l in lines[:30]:
            print("  " + l.rstrip())
    print(f"(perf data: {data}; e.g. perf report -i {data} --no-children)")


def main():
    args = sys.argv[1:]
    pop3 = "pop3" in args
    tools = [a for a in args if a != "pop3"] or ["strace", "perf"]
    out_dir = Path(tempfile.mkdtemp(prefix="mailgate-profile-"))
    os.chmod(out_dir, 0o755)
    # The server's files on a fresh file system, as in `make bench`.
    with scratchfs.fresh_ext4() as (mnt, why):
        print(f"mailgate's files on {mnt or out_dir}: {bench.fs_of(mnt or out_dir)}"
              + (f" (no fresh file system: {why})" if why else ""))
        profile(str(mnt or out_dir), out_dir, pop3, tools)
    print(f"\noutputs kept in {out_dir} (delete it when done)")


def profile(where, out_dir, pop3, tools):
    meter = Meter("profile")
    s = bench.mailgate_server(where, ["warmup", "r0", "r1"], meter)
    try:
        print(f"mailgate {bench.BIN if hasattr(bench, 'BIN') else os.environ.get('MAILGATE_BIN')} "
              f"pid {s.proc.pid}, SMTP on 127.0.0.1:{s.ports['smtp']}")
        bench.smtp_source(s.ports["smtp"], SESSIONS, bench.WARMUP_MESSAGES, f"warmup@{bench.DOMAIN}")
        client = None
        if pop3:
            bench.smtp_source(s.ports["smtp"], 10, bench.POP3_MESSAGES, f"bob@{bench.DOMAIN}")
            md = s.maildir_path(f"bob@{bench.DOMAIN}")
            if bench.wait_count(md, bench.POP3_MESSAGES, 120) != bench.POP3_MESSAGES:
                raise RuntimeError("the POP3 mailbox did not fill")
            client = pop3load.build(out_dir)
            pop3_load(s, client)  # untimed: new/ moves to cur/ once
        if "strace" in tools:
            strace_profile(s, out_dir, client)
        if "perf" in tools:
            perf_profile(s, out_dir, client)
    finally:
        s.stop()
        meter.close()


if __name__ == "__main__":
    main()
