"""Running on a box: privilege drop, start-up checks, logs, service files.

The second-instance refusal is in test_server_ops.py.
"""

import os
import poplib
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, Server

ROOT = Path(__file__).resolve().parent.parent
TEST_USER = "mailgate-test"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the drop starts as root)")


def with_user(name):
    return {"recipient_delimiter = +": f"recipient_delimiter = +\nuser = {name}"}


@pytest.fixture
def open_dir():
    """A folder every user can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="mailgate-box-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def test_user():
    """An unprivileged system user, made once if missing."""
    if subprocess.run(["id", TEST_USER], capture_output=True).returncode != 0:
        if not shutil.which("useradd"):
            pytest.skip("useradd is missing")
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            capture_output=True, text=True,
        )
        # A parallel worker may have made it in between.
        if made.returncode != 0 and subprocess.run(["id", TEST_USER], capture_output=True).returncode != 0:
            pytest.skip(f"cannot create {TEST_USER}: {made.stderr}")
    ids = subprocess.run(["id", "-u", TEST_USER], capture_output=True, text=True, check=True)
    gid = subprocess.run(["id", "-g", TEST_USER], capture_output=True, text=True, check=True)
    groups = subprocess.run(["id", "-G", TEST_USER], capture_output=True, text=True, check=True)
    return int(ids.stdout), int(gid.stdout), sorted(int(g) for g in groups.stdout.split())


def proc_ids(pid):
    """(uids, gids, groups) of a running process from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return (
        [int(x) for x in fields["Uid"]],
        [int(x) for x in fields["Gid"]],
        sorted(int(x) for x in fields.get("Groups", [])),
    )


def wait_serving(server, timeout=15):
    """The ports open before the drop; the loop runs after it."""
    deadline = time.time() + timeout
    while " serving " not in server.log_text():
        assert time.time() < deadline, server.log_text()
        time.sleep(0.05)


def wait_exit(server, timeout=15):
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        raise


@needs_root
def test_drops_to_the_configured_user_and_still_serves(open_dir, test_user):
    uid, gid, groups = test_user
    server = Server(open_dir / "s", replace=with_user(TEST_USER))
    try:
        server.start()
        wait_serving(server)
        uids, gids, held = proc_ids(server.proc.pid)
        assert uids == [uid] * 4, "real, effective, saved and fs uid"
        assert gids == [gid] * 4
        assert held == groups, "exactly the user's groups from /etc/group"

        # data_dir was made by root and given to the user; the rest is the user's.
        st = server.data_dir.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o700)
        for sub in ("tls", "mailgate.pid"):
            assert (server.data_dir / sub).stat().st_uid == uid, sub

        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
            s.sendmail("a@remote.test", ["bob@example.test"], b"Subject: dropped\r\n\r\nhi\r\n")
        p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
        p.user("bob@example.test")
        p.pass_("secret")
        assert p.stat()[0] == 1
        assert b"Subject: dropped" in p.retr(1)[1]
        p.quit()
        for path in server.files_in("cur"):
            assert path.stat().st_uid == uid

        # The config stays readable after the drop, so a reload works.
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while "reloaded" not in server.log_text() and time.time() < deadline:
            time.sleep(0.05)
        assert "reloaded" in server.log_text()
        assert server.stop() == 0
        log = server.log_text()
        assert f"running as {TEST_USER} (uid {uid}" in log
        assert not (server.data_dir / "mailgate.pid").exists()

        # A second start finds everything in place and owned right.
        server.log.write_text("")
        server.start()
        wait_serving(server)
        assert proc_ids(server.proc.pid)[0] == [uid] * 4
    finally:
        server.stop()


@needs_root
def test_empty_data_dir_made_by_root_is_given_to_the_user(open_dir, test_user):
    """What `mkdir` or the systemd unit's ExecStartPre leaves."""
    uid, gid, _ = test_user
    server = Server(open_dir / "s", replace=with_user(TEST_USER))
    server.data_dir.mkdir(mode=0o700)
    try:
        server.start()
        wait_serving(server)
        st = server.data_dir.stat()
        assert (st.st_uid, st.st_gid) == (uid, gid)
    finally:
        server.stop()


def test_unknown_user_is_refused_before_binding(make_server):
    server = make_server(replace=with_user("no-such-user-here"), start=False)
    server.start(wait=False)
    assert wait_exit(server) != 0
    log = server.log_text()
    assert "user = no-such-user-here: no such user in /etc/passwd" in log
    assert "listening on" not in log
    assert not server.data_dir.exists()


@needs_root
def test_non_root_start_cannot_switch_users(open_dir, test_user):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is missing")
    server = Server(open_dir / "s", replace=with_user(TEST_USER))
    out = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         BIN, "-c", str(server.config), "serve"],
        capture_output=True, text=True, timeout=15,
    )
    assert out.returncode != 0
    assert f"cannot switch to uid {test_user[0]}" in out.stderr, out.stderr


def test_world_readable_config_with_passwords_warned(make_server):
    server = make_server()
    assert stat.S_IMODE(server.config.stat().st_mode) & 0o004
    warning = f"{server.config} holds passwords and is readable by every user: chmod 640 {server.config}"
    assert warning in server.log_text()
    server.stop()

    quiet = make_server(start=False)
    quiet.config.chmod(0o640)
    quiet.start()
    assert "readable by every user" not in quiet.log_text()


def test_group_or_world_writable_data_dir_refused(make_server):
    server = make_server(start=False)
    server.data_dir.mkdir()
    server.data_dir.chmod(0o777)
    server.start(wait=False)
    assert wait_exit(server) != 0
    assert f"data_dir {server.data_dir} is writable by its group or by everyone (mode 0777)" in server.log_text()


@needs_root
def test_data_dir_left_by_root_is_refused_after_the_drop(open_dir, test_user):
    """Files of an earlier run as root: a clear error naming the fix, no half start."""
    uid, gid, _ = test_user
    server = Server(open_dir / "s", replace=with_user(TEST_USER))
    (server.data_dir / "mail").mkdir(parents=True)
    server.start(wait=False)
    assert wait_exit(server) != 0
    log = server.log_text()
    want = f"data_dir {server.data_dir} belongs to uid 0, not to uid {uid} ({TEST_USER}) that mailgate runs as"
    assert want in log, log
    assert f"chown -R {TEST_USER}: {server.data_dir}" in log

    # data_dir given to the user, but not what is inside.
    os.chown(server.data_dir, uid, gid)
    server.start(wait=False)
    assert wait_exit(server) != 0
    log = server.log_text()
    assert f"{server.data_dir / 'mail'} belongs to uid 0, not to uid {uid} ({TEST_USER})" in log, log
    assert "listening on" in log, "refused after binding, as the user"

    subprocess.run(["chown", "-R", f"{TEST_USER}:", str(server.data_dir)], check=True)
    server.start()
    server.stop()


LINE_STAMPED = re.compile(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (TRACE|DEBUG|INFO |WARN |ERROR)\] \S")
LINE_BARE = re.compile(r"^(TRACE|DEBUG|INFO |WARN |ERROR) \S")
LINE_JOURNAL = re.compile(r"^<[3467]>(TRACE|DEBUG|INFO |WARN |ERROR) \S")


def test_log_lines_one_event_each_with_a_level(make_server):
    server = make_server()
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        # A client's junk must not break a log line in two.
        s.docmd("EHLO", "evil\x1b[31m\x00host")
        s.sendmail("a@remote.test", ["bob@example.test"], b"Subject: x\r\n\r\nx\r\n")
    server.stop()
    lines = server.log_text().splitlines()
    assert lines
    for line in lines:
        assert LINE_STAMPED.match(line), line
        assert "\x1b" not in line and "\x00" not in line


@pytest.mark.parametrize("journal", [False, True], ids=["pipe", "journald"])
def test_log_lines_without_timestamps_on_a_pipe(make_server, journal):
    """procd/logd and journald stamp each line themselves."""
    server = make_server(start=False)
    read_end, write_end = os.pipe()
    env = dict(os.environ, RUST_LOG="info")
    if journal:
        st = os.fstat(write_end)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    proc = subprocess.Popen([BIN, "-c", str(server.config), "serve"], stderr=write_end, env=env)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "r", errors="replace") as r:
            lines = []
            while not lines or " serving " not in lines[-1]:
                line = r.readline()
                assert line, f"mailgate exited early: {lines}"
                lines.append(line.rstrip("\n"))
            proc.send_signal(signal.SIGTERM)
            lines += r.read().splitlines()
    finally:
        proc.wait(15)
    pattern = LINE_JOURNAL if journal else LINE_BARE
    for line in lines:
        assert pattern.match(line), line
    if journal:
        # The {PLAIN} password warning, then the start.
        assert any(line.startswith("<4>WARN  ") for line in lines), lines
        assert any(line.startswith("<6>INFO  listening on") for line in lines), lines


def test_systemd_unit_verifies(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart exists: point it at the binary under test.
    unit = tmp_path / "mailgate.service"
    unit.write_text((ROOT / "etc" / "mailgate.service").read_text().replace("/usr/sbin/mailgate", BIN))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ours = [line for line in (out.stdout + out.stderr).splitlines() if "mailgate" in line]
    assert not ours, "\n".join(ours)


def test_openwrt_init_script_is_procd_shell():
    text = (ROOT / "etc" / "mailgate.init").read_text()
    assert text.startswith("#!/bin/sh /etc/rc.common\n")
    assert "USE_PROCD=1" in text and "procd_send_signal mailgate" in text
    assert re.search(r'procd_set_param command "\$PROG" -c "\$CONF" serve', text)
    out = subprocess.run(["sh", "-n", str(ROOT / "etc" / "mailgate.init")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_make_install_stages_a_box(tmp_path):
    if not shutil.which("make"):
        pytest.skip("make is missing")
    stage = tmp_path / "stage"

    def install():
        return subprocess.run(
            ["make", "-s", "-C", str(ROOT), "install", "PREFIX=/usr", f"DESTDIR={stage}", f"INSTALL_BIN={BIN}"],
            capture_output=True, text=True, timeout=120,
        )

    out = install()
    assert out.returncode == 0, out.stdout + out.stderr
    sbin = stage / "usr/sbin"
    assert os.access(sbin / "mailgate", os.X_OK)
    assert os.readlink(sbin / "sendmail") == "mailgate"
    conf = stage / "etc/mailgate/mailgate.ini"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    unit = (stage / "usr/lib/systemd/system/mailgate.service").read_text()
    assert "ExecStart=/usr/sbin/mailgate -c /etc/mailgate/mailgate.ini serve" in unit
    init = stage / "etc/init.d/mailgate"
    assert os.access(init, os.X_OK)

    # A second install keeps the edited config.
    conf.write_text("; edited\n")
    out = install()
    assert out.returncode == 0, out.stdout + out.stderr
    assert conf.read_text() == "; edited\n"

    # Another prefix: the service files name its paths.
    local = tmp_path / "local"
    out = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "install", "PREFIX=/usr/local", f"DESTDIR={local}", f"INSTALL_BIN={BIN}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    unit = (local / "usr/local/lib/systemd/system/mailgate.service").read_text()
    assert "ExecStart=/usr/local/sbin/mailgate -c /usr/local/etc/mailgate/mailgate.ini serve" in unit
    init = (local / "usr/local/etc/init.d/mailgate").read_text()
    assert "PROG=/usr/local/sbin/mailgate" in init
