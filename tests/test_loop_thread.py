"""Nothing slow on the loop thread, seen from the kernel.

The server runs under `strace -f -yy`; after the loop thread's first
`epoll_wait` (start-up is over), the test drives every path that touches
the disk: SMTP in (local and queued), POP3 login, RETR and QUIT with
deletions, an IMAP session (login with the special-use folders made,
SELECT, FETCH, STORE, APPEND, COPY, MOVE, EXPUNGE, CREATE/RENAME/DELETE,
STATUS, IDLE hearing of an SMTP delivery), outbound delivery to a
smarthost (aiosmtpd), SmartPop polls from Dovecot over POP3 and over IMAP
(in IDLE), a maildrop pickup at the bell, `mailgate flush`, `mailgate fetch` and a SIGHUP reload.
Then it reads the trace of the loop thread alone (its thread id is the
process id) and fails on any system call that names a path, or that works
on a descriptor of a regular file or folder (`-yy` prints `3</path>` for
those, `3<TCP:[...]>` for sockets, `3<anon_inode:[eventpoll]>` for epoll).

Descriptors 1 and 2 are excluded: they carry the log, which systemd and
procd connect to a pipe (here the harness points them at a file).
"""

import os
import poplib
import sys
from pathlib import Path
import re
import signal
import socket
import smtplib
import subprocess
import time

import imapclient
import pytest

import conftest
from conftest import RELAY_SOURCE
from outbox_helpers import Sink, wait_for
from test_durability import strace_usable

# System calls that take a path: any of these on the loop thread is disk work.
PATH_CALLS = {
    "open", "openat", "openat2", "creat", "stat", "lstat", "newfstatat", "statx",
    "access", "faccessat", "faccessat2", "rename", "renameat", "renameat2", "unlink",
    "unlinkat", "mkdir", "mkdirat", "rmdir", "link", "linkat", "symlink", "symlinkat",
    "readlink", "readlinkat", "truncate", "chmod", "fchmodat", "chown", "fchownat",
    "utimensat", "execve",
}
# System calls on a descriptor: disk work when the descriptor is a file.
FD_CALLS = {
    "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev",
    "fsync", "fdatasync", "sync_file_range", "getdents64", "lseek", "ftruncate",
    "fstat", "sendfile", "copy_file_range", "fallocate", "flock", "fcntl", "close",
}
TRACED = ",".join(sorted(PATH_CALLS | FD_CALLS | {"epoll_wait", "epoll_pwait"}))

LINE_RE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)(?:\(| resumed>)(.*)$")
FD_ARG_RE = re.compile(r"^(\d+)<([^>]*)>")

pytestmark = pytest.mark.skipif(strace_usable() is not None, reason=str(strace_usable()))


def loop_thread_disk_calls(trace: str, pid: int):
    """The loop thread's calls that touch the disk, from its first epoll_wait
    (start-up is over) to the SIGTERM (after it, removing the pid file is
    part of stopping)."""
    started = False
    found = []
    for line in trace.splitlines():
        if re.match(rf"^{pid}\s+--- SIGTERM", line):
            break
        m = LINE_RE.match(line)
        if not m or int(m.group(1)) != pid:
            continue
        name, rest = m.group(2), m.group(3)
        if name in ("epoll_wait", "epoll_pwait"):
            started = True
            continue
        if not started or "resumed>" in line:
            continue
        if name in PATH_CALLS:
            found.append(line)
        elif name in FD_CALLS:
            fd = FD_ARG_RE.match(rest)
            if fd and int(fd.group(1)) > 2 and fd.group(2).startswith("/") \
                    and not fd.group(2).startswith("/dev/"):
                found.append(line)
    return found


def test_classifier_table():
    pid = 100
    trace = "\n".join([
        '100 openat(AT_FDCWD</x>, "/etc/passwd", O_RDONLY) = 3</etc/passwd>',  # start-up
        '100 epoll_wait(3<anon_inode:[eventpoll]>, [], 256, 10) = 0',
        '100 read(7<TCP:[127.0.0.1:25->127.0.0.1:4000]>, "EHLO", 16384) = 4',
        '100 write(2</tmp/log>, "INFO", 4) = 4',
        '101 openat(AT_FDCWD</x>, "/data/mail/new/1", O_RDONLY) = 9</data/mail/new/1>',
        '101 fsync(9</data/mail/new/1>) = 0',
        '100 read(9</data/mail/new/1>, "", 65536) = 0',
        '100 renameat2(AT_FDCWD</x>, "a", AT_FDCWD</x>, "b", 0) = 0',
        '100 read(5</dev/urandom<char 1:9>>, "", 16) = 16',
        '100 close(9</data/mail/new/1>) = 0',
        '100 --- SIGTERM {si_signo=SIGTERM, si_code=SI_USER} ---',
        '100 unlink("/data/mailgate.pid") = 0',
    ])
    found = loop_thread_disk_calls(trace, pid)
    assert found == [
        '100 read(9</data/mail/new/1>, "", 65536) = 0',
        '100 renameat2(AT_FDCWD</x>, "a", AT_FDCWD</x>, "b", 0) = 0',
        '100 close(9</data/mail/new/1>) = 0',
    ]


def test_loop_thread_touches_no_file_after_start(make_server, tmp_path, monkeypatch):
    from dovecot_helpers import Dovecot, TestCA, available, message
    log = tmp_path / "strace.log"
    wrapper = tmp_path / "mailgate-under-strace"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec strace -f -yy -s 64 -e trace={TRACED} -o {log} {conftest.BIN} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    sink = Sink().start()
    dovecot = None
    extra = (f"\n[outbox]\nmode = smarthost\nhost = 127.0.0.1:{sink.port}\ntls = none\n"
             "retry = 1h\n")
    if available() is None:
        ca = TestCA(tmp_path / "ca", names=("localhost",))
        dovecot = Dovecot({"bob123": "secret", "carol9": "secret"}, ca, imap=True).start()
        dovecot.add("bob123", message("collected"))
        dovecot.add("carol9", message("collected over imap"))
        extra += (f"\n[smartpop isp]\nhost = 127.0.0.1:{dovecot.pop3}\ntls = none\n"
                  "username = bob123\npassword = secret\ndeliver_to = alice@example.test\n"
                  "interval = 1h\n")
        extra += (f"\n[smartpop isp-imap]\nprotocol = imap\nhost = 127.0.0.1:{dovecot.imap}\n"
                  "tls = none\nusername = carol9\npassword = secret\n"
                  "deliver_to = info@other.test\ninterval = 1h\nidle = yes\nkeep = no\n")
    try:
        monkeypatch.setattr(conftest, "BIN", str(wrapper))
        server = make_server(extra=extra)
        monkeypatch.undo()
        pid = int(wait_for(lambda: (server.data_dir / "mailgate.pid").exists()
                           and (server.data_dir / "mailgate.pid").read_text().split()[0]))

        # SMTP in: local, and relayed (queued, then delivered to the sink).
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
            for i in range(3):
                s.sendmail("carol@remote.test", ["bob@example.test"],
                           f"Subject: local {i}\r\n\r\n{'x' * 300}\r\n".encode())
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20,
                          source_address=(RELAY_SOURCE, 0)) as s:
            s.sendmail("bob@example.test", ["dave@remote.test", "bob@example.test"],
                       b"Subject: relayed\r\n\r\nout and in\r\n")
        assert sink.wait(1, timeout=20), "the relayed message reached the smarthost"
        assert len(server.wait_messages("bob@example.test", 4)) == 4

        # POP3: login, LIST, RETR every message, DELE one, QUIT (commit).
        p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=20)
        p.user("bob@example.test")
        p.pass_("secret")
        count, _ = p.stat()
        for n in range(1, count + 1):
            p.retr(n)
        p.dele(1)
        p.quit()

        # IMAP: every command that reads or writes the store.
        imap = imapclient.IMAPClient("127.0.0.1", port=server.ports["imap"], ssl=False, timeout=20)
        imap.login("bob@example.test", "secret")
        imap.select_folder("INBOX")
        assert imap.fetch(imap.search("ALL"), ["FLAGS", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "BODY.PEEK[]"])
        imap.add_flags([1], [imapclient.SEEN, imapclient.FLAGGED], silent=True)
        imap.append("Sent", b"Subject: sent\r\n\r\nmine\r\n", flags=[imapclient.SEEN])
        imap.copy([1], "Archive")
        imap.move([2], "Trash")
        assert imap.search(["TEXT", "local"])
        imap.create_folder("Projects")
        imap.rename_folder("Projects", "Done")
        imap.delete_folder("Done")
        assert imap.folder_status("Sent", ["MESSAGES", "UIDNEXT", "UNSEEN"])[b"MESSAGES"] == 1
        assert imap.list_folders()
        imap.add_flags([1], [imapclient.DELETED], silent=True)
        imap.expunge()
        # IDLE, and a message arriving over SMTP meanwhile.
        imap.idle()
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
            s.sendmail("carol@remote.test", ["bob@example.test"], b"Subject: pushed\r\n\r\nx\r\n")
        assert any(r[1:] == (b"EXISTS",) for r in imap.idle_check(timeout=20))
        imap.idle_done()
        imap.logout()

        # SmartPop at start-up already polled; `fetch` polls again.
        if dovecot is not None:
            assert server.wait_messages("alice@example.test", 1, timeout=20)
            dovecot.add("bob123", message("second"))
            assert server.run("fetch").returncode == 0
            assert len(server.wait_messages("alice@example.test", 2, timeout=20)) == 2
            # The IMAP account collected at start-up and waits in IDLE.
            assert server.wait_messages("info@other.test", 1, timeout=20)
            dovecot.add("carol9", message("pushed over imap"))
            assert len(server.wait_messages("info@other.test", 2, timeout=20)) == 2

        # The maildrop: a dropped file, the bell, the pickup on a worker.
        dropped = server.maildrop / ("ab" * 16)
        dropped.write_bytes(b"mailgate-maildrop 1\nR bob@example.test\n\nSubject: dropped\r\n\r\nx\r\n")
        bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bell.sendto(b"!", str(server.maildrop / "pickup"))
        bell.close()
        assert wait_for(lambda: not dropped.exists(), timeout=10)
        assert f"maildrop: {dropped.name} from uid 0 (root) is message" in server.log_text()

        # The control requests and a reload.
        assert server.run("flush").returncode == 0
        os.kill(pid, signal.SIGHUP)
        assert wait_for(lambda: "reloaded" in server.log_text(), timeout=10)
        time.sleep(0.5)

        os.kill(pid, signal.SIGTERM)
        server.proc.wait(20)
        trace = log.read_text(errors="replace")
        assert "epoll_wait" in trace or "epoll_pwait" in trace, trace[:2000]
        found = loop_thread_disk_calls(trace, pid)
        assert not found, "the loop thread touched the disk:\n" + "\n".join(found[:30])
    finally:
        sink.stop()
        if dovecot is not None:
            dovecot.cleanup()


def test_pipelined_retr_answers_read_ahead_leave_in_few_writes(make_server, tmp_path, monkeypatch):
    """20 RETRs sent in one packet, of messages the worker reads ahead in
    batches: the answers of a batch leave the loop thread in one write
    (up to 64 KiB), not one write each (issue 16: strace showed 0.97
    sendto per message with 16 in flight, 0.15 after)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import pop3load
    log = tmp_path / "strace.log"
    wrapper = tmp_path / "mailgate-under-strace"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec strace -f -yy -e trace=sendto,write,writev -o {log} {conftest.BIN} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(conftest, "BIN", str(wrapper))
    server = make_server()
    monkeypatch.undo()
    pid = int(wait_for(lambda: (server.data_dir / "mailgate.pid").exists()
                       and (server.data_dir / "mailgate.pid").read_text().split()[0]))
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as s:
        for i in range(20):
            s.sendmail("carol@remote.test", ["bob@example.test"],
                       f"Subject: m{i}\r\n\r\n{'x' * 2000}\r\n".encode())
    assert len(server.wait_messages("bob@example.test", 20)) == 20
    c = pop3load.Client(server.ports["pop3"])
    c.command("USER bob@example.test")
    c.command("PASS secret")
    c.send(b"LIST\r\n")
    sizes = [int(line.split()[1]) for line in c.multi().split(b"\r\n")[:-1]]
    c.send(b"NOOP\r\n")
    c.status()
    with open(log, errors="replace") as f:
        before = len(f.readlines())
    c.send(b"".join(b"RETR %d\r\n" % (n + 1) for n in range(20)))
    for n in range(20):
        assert len(c.multi()) == sizes[n], f"RETR {n + 1}"
    c.command("QUIT")
    os.kill(pid, signal.SIGTERM)
    server.proc.wait(20)
    lines = open(log, errors="replace").read().splitlines()[before:]
    sends = [line for line in lines
             if line.startswith(f"{pid} ") and "TCP:" in line
             and re.search(r"\b(sendto|write|writev)\(", line)]
    # First RETR read on its own, then its batch; 20 separate writes before.
    assert 1 <= len(sends) <= 6, "\n".join(sends)
