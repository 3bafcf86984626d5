"""A starting server must not die of the signals its pid file invites.

`mailgate sendmail` (after queueing) and `mailgate flush`/`fetch` read
data_dir/mailgate.pid and send SIGUSR1/SIGUSR2. The pid is written before
the event loop installs its handlers (queue recovery runs in between), and
both signals terminate by default: a cron job's sendmail during a restart
killed the server. Found by the power-cut intake test (sendmail under load
while the server restarts after each cut).
"""

import os
import signal
import time

from conftest import Server


def test_request_signals_during_start_do_not_kill(tmp_path):
    for round_ in range(3):
        s = Server(tmp_path / f"s{round_}")
        pid_file = s.data_dir / "mailgate.pid"
        s.start(wait=False)
        try:
            sent = 0
            deadline = time.time() + 15
            while time.time() < deadline and s.proc.poll() is None:
                try:
                    pid = int(pid_file.read_text().strip() or 0)
                except (FileNotFoundError, ValueError):
                    pid = 0
                if pid == s.proc.pid:
                    os.kill(pid, signal.SIGUSR1 if sent % 2 else signal.SIGUSR2)
                    sent += 1
                    if sent >= 200:
                        break
                time.sleep(0.0005)
            assert s.proc.poll() is None, \
                f"server died of a request signal during start (rc {s.proc.returncode})"
            assert sent > 0, "never saw the pid file"
            s.wait_ready()
        finally:
            s.stop()
