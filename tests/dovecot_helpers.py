"""A private Dovecot POP3 (and optionally IMAP) server on loopback, for
SmartPop's tests and the IMAP store's Dovecot interop tests.

Each `Dovecot` has its own config, base_dir, state_dir, log, free ports,
passwd-file passdb, static userdb and Maildirs under one temp directory,
so tests run in parallel and never touch the system's Dovecot. TLS uses
a test CA made with openssl (`TestCA`); mailgate verifies the server
against it through `ca_file`.

Dovecot must run as root here (it binds, chroots its login processes and
switches to the mail user itself); mail is owned by the unprivileged
`MAIL_USER`, because Dovecot refuses to access mail as root.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DOVECOT = os.environ.get("DOVECOT_BIN", "/usr/sbin/dovecot")

# Dovecot's own users from the Debian package: its internal processes and
# the login processes run as these. Mail is read and written as MAIL_USER.
INTERNAL_USER = "dovecot"
LOGIN_USER = "dovenull"
MAIL_USER = "nobody"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available():
    """Why Dovecot tests cannot run here, or None when they can."""
    if not os.path.exists(DOVECOT):
        return f"{DOVECOT} not installed (tests/setup.sh installs dovecot-pop3d)"
    if os.geteuid() != 0:
        return "Dovecot tests need root"
    for user in (INTERNAL_USER, LOGIN_USER, MAIL_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"user {user} missing"
    if not shutil.which("openssl"):
        return "openssl missing"
    return None


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class TestCA:
    """A throw-away CA and one server certificate for localhost/127.0.0.1."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, names=("localhost",), ips=("127.0.0.1",)):
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.ca_cert = d / "ca.pem"
        self.cert = d / "server.pem"
        self.key = d / "server.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl(
            "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
            "-subj", "/CN=mailgate test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d,
        )
        _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
                 "-subj", f"/CN={names[0]}", cwd=d)
        san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips])
        (d / "ext.cnf").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", "server.pem", "-days", "30", "-extfile", "ext.cnf",
                 cwd=d)


CONFIG = """\
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = mailgate-test-{pop3}
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
shutdown_clients = yes
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 1
last_valid_uid = 0
mail_location = maildir:{dir}/mail/%u
mail_uid = {uid}
mail_gid = {gid}
ssl = {ssl}
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain login
disable_plaintext_auth = {disable_plaintext_auth}
auth_verbose = yes
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
    ssl = yes
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
"""


class Dovecot:
    """One private Dovecot with POP3 (plain + STLS) and POP3S listeners.

    `users` maps POP3 user name -> password. Messages are put straight into
    the user's Maildir `new/` (as an MTA would), owned by MAIL_USER.
    """

    def __init__(self, users: dict, ca: TestCA, plaintext_auth=True, imap=False, extra_conf=""):
        # Not under pytest's tmp_path: that is mode 0700 and Dovecot's mail
        # processes (MAIL_USER) must reach the Maildirs.
        self.dir = Path(tempfile.mkdtemp(prefix="mailgate-dovecot-"))
        os.chmod(self.dir, 0o755)
        self.users = dict(users)
        self.ca = ca
        self.pop3 = free_port()
        self.pop3s = free_port()
        # IMAP (plain + STARTTLS) only when asked: the POP3 tests stay as they were.
        self.imap = free_port() if imap else 0
        self.imaps = free_port() if imap else 0
        pw = pwd.getpwnam(MAIL_USER)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        for sub in ("run", "state", "mail", "home"):
            (self.dir / sub).mkdir()
        for sub in ("mail", "home"):
            os.chown(self.dir / sub, self.uid, self.gid)
        self.write_passwd()
        # Dovecot reads the key as root before dropping privileges.
        self.config = self.dir / "dovecot.conf"
        self.config.write_text(
            CONFIG.format(
                dir=self.dir,
                internal=INTERNAL_USER,
                login=LOGIN_USER,
                uid=self.uid,
                gid=self.gid,
                ssl="yes",
                cert=ca.cert,
                key=ca.key,
                disable_plaintext_auth="no" if plaintext_auth else "yes",
                pop3=self.pop3,
                pop3s=self.pop3s,
                imap=self.imap,
                imaps=self.imaps,
                protocols="pop3 imap" if imap else "pop3",
            )
            # More settings (namespaces, special-use folders) for a test.
            + extra_conf
        )
        self.log = self.dir / "dovecot.log"
        self.proc = None
        self._seq = 0

    def write_passwd(self):
        lines = [f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()]
        (self.dir / "passwd").write_text("".join(lines))

    def set_password(self, user, password):
        """Changes a password; passwd-file is re-read when it changes."""
        self.users[user] = password
        self.write_passwd()

    # -- lifecycle -------------------------------------------------------
    def start(self, timeout=15):
        out = open(self.dir / "dovecot.stdout", "ab")
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config)], stdout=out, stderr=out,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        for port in [p for p in (self.pop3, self.pop3s, self.imap, self.imaps) if p]:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"dovecot exited {self.proc.returncode}:\n{self.log_text()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(f"dovecot port {port} never opened:\n{self.log_text()}")
                    time.sleep(0.05)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                # Dovecot's children are in its session: end them all.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self):
        text = ""
        for name in ("dovecot.stdout", "dovecot.log"):
            try:
                text += (self.dir / name).read_text(errors="replace")
            except FileNotFoundError:
                pass
        return text

    def chown_mail(self):
        """Hands every file under mail/ to MAIL_USER (after a tool that
        runs as root wrote there)."""
        for dirpath, dirnames, filenames in os.walk(self.dir / "mail"):
            os.chown(dirpath, self.uid, self.gid)
            for n in filenames:
                os.chown(os.path.join(dirpath, n), self.uid, self.gid)

    # -- mail ------------------------------------------------------------
    def maildir(self, user) -> Path:
        return self.dir / "mail" / user

    def _ensure_maildir(self, user):
        md = self.maildir(user)
        for sub in ("", "tmp", "new", "cur"):
            p = md / sub
            if not p.exists():
                p.mkdir()
                os.chown(p, self.uid, self.gid)
        return md

    def add(self, user, message: bytes | str) -> str:
        """Drops one message into USER's Maildir new/ (LF or CRLF line ends
        as given; Dovecot serves CRLF). Returns the file name."""
        if isinstance(message, str):
            message = message.encode()
        md = self._ensure_maildir(user)
        self._seq += 1
        name = f"{int(time.time())}.M{self._seq}P{os.getpid()}.test"
        tmp = md / "tmp" / name
        tmp.write_bytes(message)
        os.chown(tmp, self.uid, self.gid)
        os.rename(tmp, md / "new" / name)
        return name

    def files(self, user):
        md = self.maildir(user)
        return sorted(
            p for sub in ("new", "cur") if (md / sub).exists() for p in (md / sub).iterdir()
            if p.is_file()
        )

    def count(self, user) -> int:
        """Messages in the maildrop (what POP3 would list)."""
        return len(self.files(user))

    def contents(self, user):
        return [p.read_bytes() for p in self.files(user)]


def message(subject, body="hello\n", headers=None, size=None):
    """A small RFC 5322 message (LF line ends, as Maildir files usually
    are). `size` pads the body with lines to about that many bytes."""
    head = {"From": "sender@remote.example", "To": "bob123@isp.example",
            "Subject": subject, "Message-ID": f"<{subject.replace(' ', '.')}@remote.example>",
            "Date": "Mon, 1 Jan 2024 00:00:00 +0000"}
    if headers:
        for k, v in headers.items():
            if v is None:
                head.pop(k, None)
            else:
                head[k] = v
    text = "".join(f"{k}: {v}\n" for k, v in head.items()) + "\n" + body
    if size is not None and len(text) < size:
        line = "x" * 75 + "\n"
        # Dot-stuffing matters: make some lines start with a dot.
        lines = []
        n = 0
        while len(text) + n < size:
            l = ("." + line[1:]) if len(lines) % 50 == 0 else line
            lines.append(l)
            n += len(l)
        text += "".join(lines)
    return text.encode()
