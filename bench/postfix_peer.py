"""A private Postfix on a loopback port, delivering to a virtual Maildir.

The peer for durable SMTP intake. Everything lives under one temporary
directory: config (`postfix -c DIR`), queue, data, and the virtual mailbox
base. Nothing of the system's /etc/postfix is used or changed, and the
packaged Postfix stays stopped (bench/setup.sh).

Postfix as it normally runs: the Debian master.cf (every service at its
default process limits), with only these changes:
- smtpd listens on 127.0.0.1:PORT instead of *:25;
- no chroot (a chroot needs a copy of /etc and the libraries inside a queue
  directory that lives for a minute);
- mail goes to virtual(8) Maildirs (virtual_mailbox_maps), owned by
  `nobody`, with Postfix's usual durability: cleanup fsyncs the queue file
  before smtpd answers 250, virtual fsyncs each Maildir file before it
  renames it into new/;
- no DNS and no peer name lookup (the tests' and the bench's rule: no query
  leaves the machine), and no syslog (the machine has none; mailgate runs
  with warnings only, too). BENCH_POSTFIX_LOG=1 writes Postfix's log to
  DIR/maillog (through postlogd, which costs CPU: for debugging only).
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
SMTP_SOURCE = "/usr/sbin/smtp-source"
MASTER_PROTO = "/etc/postfix/master.cf.proto"
MAIL_USER = "nobody"


def available():
    for path in (POSTFIX, SMTP_SOURCE, MASTER_PROTO):
        if not os.path.exists(path):
            return f"{path} missing (bench/setup.sh installs postfix)"
    if os.geteuid() != 0:
        return "a private Postfix needs root"
    return None


def _master_cf(port):
    """Debian's master.cf with smtpd on 127.0.0.1:port and no chroot."""
    out = []
    for line in Path(MASTER_PROTO).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if not line[0].isspace() and len(f) >= 8:
            if f[0] == "smtp" and f[1] == "inet":
                f[0] = f"127.0.0.1:{port}"
            elif f[1] == "inet":
                continue  # submission and friends stay off
            f[4] = "n"
            line = "  ".join(f)
        out.append(line)
    return "\n".join(out) + "\n"


class Postfix:
    def __init__(self, domain, recipients, port, parent=None):
        self.dir = Path(tempfile.mkdtemp(prefix="postfix-", dir=parent))
        os.chmod(self.dir, 0o755)
        self.port = port
        self.domain = domain
        self.conf = self.dir / "conf"
        self.vmail = self.dir / "vmail"
        pw = pwd.getpwnam(MAIL_USER)
        for sub in ("conf", "queue", "data", "vmail"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "data", "postfix")
        os.chown(self.vmail, pw.pw_uid, pw.pw_gid)
        log = os.environ.get("BENCH_POSTFIX_LOG") == "1"
        d = self.dir
        main = f"""\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
myhostname = mx.{domain}
mydomain = {domain}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
alias_maps =
alias_database =
biff = no
message_size_limit = 1048576
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {d}/vmail
virtual_mailbox_maps = texthash:{d}/conf/vmailbox
virtual_uid_maps = static:{pw.pw_uid}
virtual_gid_maps = static:{pw.pw_gid}
virtual_minimum_uid = 1
"""
        if log:
            main += f"maillog_file_prefixes = {d}\nmaillog_file = {d}/maillog\n"
        (self.conf / "main.cf").write_text(main)
        (self.conf / "master.cf").write_text(_master_cf(port))
        (self.conf / "vmailbox").write_text(
            "".join(f"{r}@{domain} {domain}/{r}/\n" for r in recipients))

    def maildir(self, local):
        return self.vmail / self.domain / local

    def _postfix(self, *args):
        return subprocess.run([POSTFIX, "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=60)

    def start(self, meter, timeout=20):
        out = self._postfix("start")
        if out.returncode != 0:
            raise RuntimeError(f"postfix start failed ({out.returncode}): {out.stdout}{out.stderr}"
                               " (run with BENCH_POSTFIX_LOG=1 and read the maillog)")
        pidfile = self.dir / "queue" / "pid" / "master.pid"
        deadline = time.time() + timeout
        while True:
            try:
                pid = int(pidfile.read_text().split()[0])
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except (OSError, ValueError, IndexError):
                if time.time() > deadline:
                    raise RuntimeError("postfix never listened")
                time.sleep(0.05)
        self.pid = pid
        meter.adopt(pid)
        return self

    def stop(self):
        self._postfix("stop")
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            self._postfix("abort")

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
