#!/usr/bin/env python3
"""Runs Dovecot's imaptest (github.com/dovecot/imaptest, built beside the
project, never part of it) against mailgate's IMAP server, optionally
against Dovecot too for a baseline, and prints the counts and failures.

  IMAPTEST_DIR=/work/imaptest MAILGATE_BIN=target/debug/mailgate \\
      python3 bench/imaptest.py [--dovecot] [--secs 30] [--clients 10]

Building imaptest (not packaged for Debian): check out its 2022 sources
(commit 924f619), `./autogen.sh && ./configure --with-dovecot=/usr/lib/dovecot`
against Debian's dovecot-dev 2.3, after adding the fourth argument (NULL,
the parser parameters) to the three imap_parser_create() calls; run it
with LD_LIBRARY_PATH=/usr/lib/dovecot.

Scripted tests: every group in src/tests; imaptest skips groups whose
capabilities the server does not advertise and says how many. Stress:
`clients` concurrent clients for `secs` seconds on INBOX (default.mbox
messages), counted by its "Error:" lines.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import dovecot_helpers as dh  # noqa: E402
import imap_interop as ii  # noqa: E402

IMAPTEST_DIR = Path(os.environ.get("IMAPTEST_DIR", "/work/imaptest"))


def imaptest(*args, timeout=900):
    env = dict(os.environ, LD_LIBRARY_PATH="/usr/lib/dovecot")
    r = subprocess.run([str(IMAPTEST_DIR / "src" / "imaptest"), *args], capture_output=True,
                       text=True, errors="replace", timeout=timeout, env=env, cwd=IMAPTEST_DIR)
    return r.returncode, r.stdout + r.stderr


def scripted(port, user, password, only=None):
    tests = str(IMAPTEST_DIR / "src" / "tests" / only) if only else str(IMAPTEST_DIR / "src" / "tests")
    rc, out = imaptest("host=127.0.0.1", f"port={port}", f"user={user}", f"pass={password}",
                       f"test={tests}")
    summary = [line for line in out.splitlines()
               if re.search(r"test groups:|base protocol:|extensions:", line)]
    return rc, out, summary


def stress(port, user, password, clients, secs):
    rc, out = imaptest("host=127.0.0.1", f"port={port}", f"user={user}", f"pass={password}",
                       f"mbox={IMAPTEST_DIR / 'src' / 'tests' / 'default.mbox'}",
                       f"clients={clients}", f"secs={secs}", timeout=secs + 300)
    errors = [line for line in out.splitlines() if "Error:" in line or "error" in line.lower()]
    return rc, out, errors


def report(name, port, user, password, args):
    print(f"== {name}")
    rc, out, summary = scripted(port, user, password, args.only)
    (Path(args.out) / f"{name}-scripted.txt").write_text(out)
    print("\n".join(summary) or out[-3000:])
    if args.secs:
        rc, out, errors = stress(port, user, password, args.clients, args.secs)
        (Path(args.out) / f"{name}-stress.txt").write_text(out)
        totals = out[out.find("Totals:"):] if "Totals:" in out else out[-1500:]
        print(f"stress, {args.clients} clients, {args.secs} s: exit {rc}, {len(errors)} error lines")
        print(totals.strip())
        for e in errors[:30]:
            print("  " + e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dovecot", action="store_true", help="run against Dovecot as well")
    ap.add_argument("--secs", type=int, default=30, help="stress seconds (0: no stress)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--only", help="one script of src/tests")
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="imaptest-"), help="full outputs here")
    args = ap.parse_args()
    if not (IMAPTEST_DIR / "src" / "imaptest").exists():
        sys.exit(f"{IMAPTEST_DIR}/src/imaptest missing: build it (see this file's docstring)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"full outputs under {args.out}")
    tmp = Path(tempfile.mkdtemp(prefix="imaptest-mg-"))
    try:
        mg = ii.mailgate_with_imap(tmp)
    except BaseException as e:  # pytest.skip outside pytest
        sys.exit(f"mailgate: {e}")
    mg.start(env={"RUST_LOG": "warn"})
    try:
        report("mailgate", mg.ports["imap"], ii.USER, ii.PASSWORD, args)
    finally:
        mg.stop()
    if args.dovecot:
        ca = dh.TestCA(tmp / "ca")
        d = dh.Dovecot({"bob": ii.PASSWORD}, ca, imap=True)
        d.start()
        try:
            report("dovecot", d.imap, "bob", ii.PASSWORD, args)
        finally:
            d.cleanup()
    time.sleep(0.1)


if __name__ == "__main__":
    main()
