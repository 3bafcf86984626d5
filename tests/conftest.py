"""Test harness: starts the real mailgate binary on free loopback ports.

Every test gets its own data_dir and ports, so tests run in parallel
(pytest -n). Clients are the real ones: smtplib, poplib, swaks, fetchmail,
openssl s_client.
"""

import os
import signal
import socket
import subprocess
import time
import mailbox
from pathlib import Path

import pytest

BIN = os.environ.get("MAILGATE_BIN") or str(
    Path(__file__).resolve().parent.parent / "target" / "debug" / "mailgate"
)

# Loopback 127.0.0.1 is NOT a relay network in tests; 127.0.0.2 is, so a
# test can be either kind of client by choosing its source address.
RELAY_SOURCE = "127.0.0.2"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n):
    """n distinct free ports: all held bound until each is chosen."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


BASE_CONFIG = """\
[server]
hostname = mx.example.test
data_dir = {data_dir}
maildrop = {maildrop}
recipient_delimiter = +

[smtp]
listen = 127.0.0.1:{smtp}
submission = 127.0.0.1:{submission}
smtps = 127.0.0.1:{smtps}
relay_networks = 127.0.0.2/32
max_message_size = 1M
max_recipients = 20
mail_auth = no
timeout = 30s

[pop3]
listen = 127.0.0.1:{pop3}
pop3s = 127.0.0.1:{pop3s}
timeout = 30s

[domain example.test]

[imap]
listen = 127.0.0.1:{imap}
imaps = 127.0.0.1:{imaps}
timeout = 30m

[mailbox bob@example.test]
password = {{PLAIN}}secret
aliases = robert, postmaster

[mailbox alice@example.test]
password = {{PLAIN}}wonderland

[alias family@example.test]
to = bob@example.test, alice@example.test

[domain other.test]
catch_all = info

[mailbox info@other.test]
password = {{PLAIN}}info
"""


class Server:
    """One running mailgate with its own config, ports and data_dir."""

    def __init__(self, tmp_path: Path, extra: str = "", replace: dict | None = None):
        self.dir = tmp_path
        self.data_dir = tmp_path / "data"
        # Each server its own maildrop (the default is one for the box).
        self.maildrop = tmp_path / "maildrop"
        self.config = tmp_path / "mailgate.ini"
        self.extra, self.replace = extra, replace or {}
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.choose_ports()
        self.log = tmp_path / "mailgate.log"
        self.proc = None

    def choose_ports(self):
        """Free loopback ports for the server's listeners, and the config
        file that names them."""
        names = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")
        self.ports = dict(zip(names, free_ports(len(names))))
        text = BASE_CONFIG.format(data_dir=self.data_dir, maildrop=self.maildrop, **self.ports)
        for old, new in self.replace.items():
            assert old in text, f"config has no {old!r}"
            text = text.replace(old, new)
        self.config_text = text + self.extra
        self.config.write_text(self.config_text)

    # -- lifecycle -------------------------------------------------------
    def start(self, wait=True, env=None):
        e = dict(os.environ)
        e.setdefault("RUST_LOG", "debug")
        e.update(env or {})
        for attempt in range(3):
            with open(self.log, "ab") as logf:
                self.proc = subprocess.Popen(
                    [BIN, "-c", str(self.config), "serve"], stdout=logf, stderr=logf, env=e
                )
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except RuntimeError:
                # A port chosen free was taken before the server bound it
                # (tests run in parallel, and clients' own ports come from
                # the same range): choose again, at most twice, unless the
                # test wrote a config of its own.
                clash = self.proc.poll() is not None and "Address already in use" in self.log_text()[-300:]
                if attempt == 2 or not clash or self.config.read_text() != self.config_text:
                    raise
                self.choose_ports()
        return self

    def wait_ready(self, timeout=15):
        deadline = time.time() + timeout
        for name, port in self.ports.items():
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mailgate exited {self.proc.returncode}:\n{self.log_text()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(f"port {name} never opened:\n{self.log_text()}")
                    time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"mailgate did not stop on {sig}:\n{self.log_text()[-4000:]}")
        return self.proc.returncode if self.proc else None

    def restart(self):
        self.stop()
        return self.start()

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def run(self, *args, input=None, check=False, timeout=30, env=None):
        """Runs another mailgate subcommand against this server's config."""
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run(
            [BIN, "-c", str(self.config), *args],
            input=input,
            capture_output=True,
            check=check,
            timeout=timeout,
            env=e,
        )

    # -- mail ------------------------------------------------------------
    def maildir_path(self, address):
        local, domain = address.split("@")
        return self.data_dir / "mail" / domain / local

    def maildir(self, address):
        return mailbox.Maildir(self.maildir_path(address), create=False)

    def messages(self, address):
        path = self.maildir_path(address)
        # A Maildir being created has new/ before cur/: not there yet.
        if not (path / "cur").exists() or not (path / "new").exists():
            return []
        md = mailbox.Maildir(path, create=False)
        return [md[k] for k in sorted(md.keys(), key=lambda k: md.get_file(k)._file.name)]

    def wait_messages(self, address, count, timeout=10):
        deadline = time.time() + timeout
        while True:
            msgs = self.messages(address)
            if len(msgs) >= count or time.time() > deadline:
                return msgs
            time.sleep(0.05)

    def files_in(self, sub):
        """All files under data_dir/mail/*/*/SUB (tmp, new or cur)."""
        root = self.data_dir / "mail"
        return sorted(p for p in root.glob(f"*/*/{sub}/*") if p.is_file()) if root.exists() else []


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(extra="", replace=None, start=True, env=None):
        s = Server(tmp_path / f"s{len(servers)}", extra, replace)
        servers.append(s)
        if start:
            s.start(env=env)
        return s

    yield make
    for s in servers:
        try:
            s.stop()
        except RuntimeError:
            pass


@pytest.fixture
def server(make_server):
    return make_server()


class Raw:
    """A raw line-oriented client, for what smtplib/poplib refuse to send."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=10):
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> bytes:
        """One SMTP reply (all lines of a multi-line reply, joined by \\n)."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"\n".join(lines)

    def cmd(self, data: bytes) -> bytes:
        self.send(data + b"\r\n")
        return self.reply()

    def closed(self, timeout=5) -> bool:
        """True when the server closed the connection (EOF) in time."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


# The static release binary is at most this big (Makefile CROSS_MAX_BYTES).
RELEASE_BINARY_KIB = 4096


def rss_kib(pid, field="VmHWM"):
    """The server's resident memory in KiB (VmHWM: peak, VmRSS: now) as
    the product would have it. Tests run a debug build whose code alone
    keeps ~12 MiB of file pages resident (VmExe ~9.6 MiB) where the
    static release binary is at most 4 MiB: file-backed pages beyond that
    are not counted. Heap and stack (RssAnon) always count in full."""
    with open(f"/proc/{pid}/status") as f:
        st = {l.split(":")[0]: l.split()[1] for l in f if l.startswith(("Vm", "Rss"))}
    excess = max(0, int(st["RssFile"]) - RELEASE_BINARY_KIB)
    return int(st[field]) - excess


def peak_rss_kib(pid):
    """The process's peak resident set (VmHWM) in KiB, as `rss_kib`."""
    return rss_kib(pid, "VmHWM")
