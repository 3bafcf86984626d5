"""A slow disk slows the messages waiting on it, never the other sessions.

The server runs with an LD_PRELOAD shim (tests/native/slow_fsync.c) that
makes every fsync and fdatasync take 200 ms, as on a USB stick. While a
dozen SMTP deliveries to alice wait on their fsyncs, a POP3 session on
bob's mailbox (logged in before) keeps answering: STAT, LIST, UIDL, RETR
and NOOP each come back in well under the 200 ms an fsync takes, because
fsyncs run on the worker pool's write lane and never on the loop thread,
and RETR reads go through the quick lane that never waits behind them.
"""

import os
import poplib
import shutil
import smtplib
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

SHIM_SOURCE = Path(__file__).resolve().parent / "native" / "slow_fsync.c"
FSYNC_MS = 200
DELIVERIES = 12


@pytest.fixture
def slow_fsync(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the slow-fsync shim")
    lib = tmp_path / "slow_fsync.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(SHIM_SOURCE), "-ldl"],
                   check=True)
    return {"LD_PRELOAD": str(lib), "SLOW_FSYNC_MS": str(FSYNC_MS)}


def send(port, rcpt, subject):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.sendmail("carol@remote.test", [rcpt], f"Subject: {subject}\r\n\r\nbody\r\n".encode())


def test_pop3_answers_while_deliveries_wait_on_fsync(make_server, slow_fsync):
    server = make_server(env=slow_fsync)
    start = time.monotonic()
    send(server.ports["smtp"], "bob@example.test", "for bob")
    one_delivery = time.monotonic() - start
    # File fsync and folder fsync at least: the shim is in effect.
    assert one_delivery >= 2 * FSYNC_MS / 1000, one_delivery

    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
    p.user("bob@example.test")
    p.pass_("secret")

    done = []
    threads = [threading.Thread(target=lambda i=i: (send(server.ports["smtp"], "alice@example.test",
                                                         f"slow {i}"), done.append(i)))
               for i in range(DELIVERIES)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # let the deliveries reach the workers

    latencies = []
    during = []
    for _ in range(5):
        for command in (lambda: p.stat(), lambda: p.list(), lambda: p.uidl(),
                        lambda: p.retr(1), lambda: p.noop()):
            t0 = time.monotonic()
            command()
            latencies.append(time.monotonic() - t0)
            during.append(len(done))
    for t in threads:
        t.join(120)
    p.quit()

    assert len(done) == DELIVERIES
    assert len(server.wait_messages("alice@example.test", DELIVERIES)) == DELIVERIES
    # The commands were answered while deliveries were still waiting.
    assert min(during) < DELIVERIES, during
    median = statistics.median(latencies)
    worst = max(latencies)
    print(f"\nslow disk ({FSYNC_MS} ms per fsync): one delivery {one_delivery * 1000:.0f} ms; "
          f"POP3 answers median {median * 1000:.1f} ms, worst {worst * 1000:.1f} ms "
          f"over {len(latencies)} commands")
    assert median < 0.050, latencies
    # Not one answer waited for an fsync.
    assert worst < FSYNC_MS / 1000, latencies
