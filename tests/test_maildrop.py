"""`sendmail` for every local user: the maildrop and the server's pickup.

The server runs as one account (`[server] user`); sendmail runs as
`nobody` through setpriv (util-linux), as a cron job of another user would.
"""

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, Server
from outbox_helpers import Sink, wait_for
from test_box import TEST_USER, open_dir, test_user, wait_serving, with_user  # noqa: F401
from test_outbox import outbox_config

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs sendmail as other users)"),
    pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is missing"),
]

NOBODY = 65534
# A uid with no passwd entry and no groups: "another local user".
STRANGER = 54321


def as_uid(uid, gid, *cmd, **kw):
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *map(str, cmd)],
        capture_output=True, timeout=30, **kw,
    )


def sendmail_as_nobody(server, args, data, argv0=None):
    cmd = [argv0, "-C", server.config] if argv0 else [BIN, "sendmail", "-C", server.config]
    # MAILGATE_CONFIG names a missing file: -C must win.
    env = dict(os.environ, MAILGATE_CONFIG="/nonexistent/mailgate.ini")
    return as_uid(NOBODY, NOBODY, *cmd, *args, input=data, env=env)


def drop_files(server):
    """What waits in the maildrop (the bell and rejected/ aside)."""
    return sorted(p for p in server.maildrop.iterdir() if p.name not in ("pickup", "rejected"))


def make(open_dir, sink_port=None):
    extra = outbox_config(f"127.0.0.1:{sink_port}", retry="1h", give_up_after="5d") if sink_port else ""
    server = Server(open_dir / "s", extra=extra, replace=with_user(TEST_USER))
    server.config.chmod(0o644)
    return server


def test_nobody_sends_local_and_remote(open_dir, test_user):
    uid, gid, _ = test_user
    sink = Sink()
    sink.start()
    try:
        server = make(open_dir, sink.port)
        server.start()
        wait_serving(server)
        md = server.maildrop.stat()
        assert (md.st_uid, md.st_gid) == (uid, gid)
        assert stat.S_IMODE(md.st_mode) == 0o3733
        link = open_dir / "sendmail"
        link.symlink_to(BIN)
        started = time.time()
        out = sendmail_as_nobody(server, ["bob@example.test", "carol@remote.test"],
                                 b"Subject: from cron\n\nhello\n", argv0=link)
        assert out.returncode == 0, out.stderr
        (local,) = server.wait_messages("bob@example.test", 1, timeout=10)
        # The bell, not the minute's scan, brought it in.
        assert time.time() - started < 5
        assert local["X-Authenticated-Uid"] == str(NOBODY)
        assert local["Return-Path"] == "<nobody@example.test>"
        assert local["From"] == "nobody@example.test"
        assert "authenticated as nobody" in local["Received"]
        (remote,) = sink.wait(1, timeout=10)
        assert remote.mail_from == "nobody@example.test"
        assert remote.rcpt_tos == ["carol@remote.test"]
        assert b"X-Authenticated-Uid: 65534" in remote.content
        assert wait_for(lambda: not drop_files(server), timeout=5)
        # The queue and the mailboxes stay the server user's alone.
        dd = server.data_dir.stat()
        assert dd.st_uid == uid and stat.S_IMODE(dd.st_mode) == 0o700
        # An unknown local recipient is refused at once, nothing dropped.
        out = sendmail_as_nobody(server, ["nosuch@example.test"], b"x\n")
        assert out.returncode == 67, out.stderr
        assert not drop_files(server)
        server.stop()
    finally:
        sink.stop()


def test_waits_in_maildrop_until_the_server_starts_and_others_cannot_read_it(open_dir, test_user):
    uid, gid, _ = test_user
    server = make(open_dir)
    server.start()  # makes the maildrop, as root before the drop
    wait_serving(server)
    server.stop()
    out = sendmail_as_nobody(server, ["alice@example.test"], b"Subject: offline\n\nwaiting\n")
    assert out.returncode == 0, out.stderr
    (dropped,) = drop_files(server)
    st = dropped.stat()
    assert (st.st_uid, st.st_gid) == (NOBODY, gid)
    assert stat.S_IMODE(st.st_mode) == 0o640
    # Another user can neither list the maildrop nor read the file, even by name.
    listing = as_uid(STRANGER, STRANGER, "ls", server.maildrop)
    assert listing.returncode != 0 and b"Permission denied" in listing.stderr
    reading = as_uid(STRANGER, STRANGER, "cat", dropped)
    assert reading.returncode != 0 and b"Permission denied" in reading.stderr
    # ...nor remove it (sticky).
    removing = as_uid(STRANGER, STRANGER, "rm", "-f", dropped)
    assert removing.returncode != 0 and dropped.exists()
    assert server.messages("alice@example.test") == []
    server.start()
    (msg,) = server.wait_messages("alice@example.test", 1, timeout=10)
    assert msg["Subject"] == "offline"
    assert wait_for(lambda: not drop_files(server), timeout=5)
    server.stop()


def test_junk_in_the_maildrop_is_set_aside_once(open_dir, test_user):
    server = make(open_dir)
    server.start()
    wait_serving(server)
    junk = {
        "0123456789abcdef0123456789abcdef": b"not a maildrop file at all\n",
        "fedcba9876543210fedcba9876543210": b"mailgate-maildrop 1\nR bob\x1b[2J\n\nx\r\n",
        "00000000000000000000000000000000": b"mailgate-maildrop 1\nR nosuch@example.test\n\nx\r\n",
        "a-name-sendmail-never-makes": b"mailgate-maildrop 1\nR bob\n\nx\r\n",
    }
    for name, data in junk.items():
        out = as_uid(NOBODY, NOBODY, "sh", "-c", f"cat > {server.maildrop / name}", input=data)
        assert out.returncode == 0, out.stderr
    # A name that is not UTF-8 (made by root here).
    with open(os.fsencode(server.maildrop) + b"/\xff\xfe", "wb") as f:
        f.write(b"junk")
    good = sendmail_as_nobody(server, ["bob@example.test"], b"Subject: good\n\nok\n")
    assert good.returncode == 0
    (msg,) = server.wait_messages("bob@example.test", 1, timeout=10)
    assert msg["Subject"] == "good"
    assert wait_for(lambda: not drop_files(server), timeout=5), drop_files(server)
    log = server.log_text()
    for name in junk:
        assert log.count(f"maildrop: {name} from uid {NOBODY} set aside") == 1, log[-3000:]
    assert len(list((server.maildrop / "rejected").iterdir())) == len(junk) + 1
    # Another scan (SIGUSR1) does not try them again.
    server.proc.send_signal(signal.SIGUSR1)
    time.sleep(1)
    assert server.log_text().count("set aside") == len(junk) + 1
    server.stop()


def test_dash_capital_c_selects_the_config_as_root(make_server, tmp_path):
    server = make_server()
    link = tmp_path / "sendmail"
    link.symlink_to(BIN)
    env = dict(os.environ, MAILGATE_CONFIG=str(tmp_path / "missing.ini"))
    for args in (["-C", str(server.config)], [f"-C{server.config}"], ["-c", str(server.config)]):
        out = subprocess.run([str(link), *args, "bob@example.test"], input=b"Subject: c\n\nx\n",
                             capture_output=True, timeout=30, env=env)
        assert out.returncode == 0, out.stderr
    assert len(server.wait_messages("bob@example.test", 3)) == 3
    # Without it, the missing MAILGATE_CONFIG is used: EX_CONFIG.
    out = subprocess.run([str(link), "bob@example.test"], input=b"x\n", capture_output=True, env=env)
    assert out.returncode == 78


def test_links_and_other_kinds_are_set_aside(open_dir, test_user):
    server = make(open_dir)
    server.start()
    wait_serving(server)
    server.stop()
    victim = open_dir / "victim"
    victim.write_text("mailgate-maildrop 1\nR bob\n\nsecret\r\n")
    victim.chmod(0o644)
    (server.maildrop / ("1" * 32)).symlink_to(victim)
    os.link(victim, server.maildrop / ("2" * 32))
    os.mkfifo(server.maildrop / ("3" * 32))
    server.start()
    wait_serving(server)
    assert wait_for(lambda: not drop_files(server), timeout=5), drop_files(server)
    log = server.log_text()
    assert "has other hard links" in log and "not a regular file" in log and "cannot open" in log
    assert server.messages("bob@example.test") == []
    server.stop()


def test_config_unreadable_uses_the_default_maildrop(open_dir, test_user):
    """make install leaves the config 0640 root: users still send."""
    server = make(open_dir)
    text = server.config.read_text().replace(f"maildrop = {server.maildrop}\n", "")
    server.config.write_text(text)
    server.config.chmod(0o600)
    server.maildrop = Path("/var/spool/mailgate/maildrop")
    server.start()
    wait_serving(server)
    try:
        out = sendmail_as_nobody(server, ["bob@example.test"], b"Subject: no config\n\nx\n")
        assert out.returncode == 0, out.stderr
        (msg,) = server.wait_messages("bob@example.test", 1, timeout=10)
        assert msg["X-Authenticated-Uid"] == str(NOBODY)
        # A bad recipient can only be found by the server: set aside, logged.
        out = sendmail_as_nobody(server, ["nosuch@example.test"], b"x\n")
        assert out.returncode == 0, out.stderr
        assert wait_for(lambda: "nosuch@example.test: no such user here" in server.log_text(), timeout=10), server.log_text()[-2500:]
    finally:
        server.stop()


@pytest.mark.skipif(not shutil.which("strace"), reason="strace is missing")
def test_exit_zero_only_after_the_file_and_its_name_are_synced(open_dir, test_user):
    server = make(open_dir)
    server.start()
    wait_serving(server)
    server.stop()
    trace = open_dir / "sendmail.strace"
    out = subprocess.run(
        ["strace", "-f", "-o", str(trace), "-e", "trace=openat,fsync,fdatasync,rename,renameat,renameat2,syncfs,exit_group",
         "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         BIN, "sendmail", "-C", str(server.config), "bob@example.test"],
        input=b"Subject: synced\n\nx\n", capture_output=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if " " in line]

    def first(pred, after=-1):
        return next(i for i, c in enumerate(calls) if i > after and pred(c))

    opened = first(lambda c: c.startswith("openat(") and "/.tmp." in c and "O_CREAT" in c)
    synced = first(lambda c: c.startswith(("fsync(", "fdatasync(")), after=opened)
    renamed = first(lambda c: c.startswith("rename") and "/.tmp." in c, after=synced)
    # nobody may not open the folder to fsync it: syncfs(2) instead.
    named = first(lambda c: c.startswith("syncfs("), after=renamed)
    exited = first(lambda c: c.startswith("exit_group("), after=named)
    assert opened < synced < renamed < named < exited, calls
    (dropped,) = drop_files(server)
    assert not dropped.name.startswith(".tmp.")


def test_a_used_folder_of_another_user_is_not_taken_over(open_dir, test_user):
    server = make(open_dir)
    server.maildrop.mkdir()
    (server.maildrop / "someone's file").write_text("x")
    server.maildrop.chmod(0o1777)
    server.start()
    wait_serving(server)
    st = server.maildrop.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o1777)
    assert "refusing to take it over; other local users cannot use sendmail" in server.log_text()
    server.stop()
