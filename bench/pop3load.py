"""POP3 clients for the bench: the C load client's builder and runner
(bench/pop3load.c: what the POP3 figures are measured with), and a
Python client on raw sockets (Client) for tests that script a session.

poplib reads line by line through a file object and is slower than either
server; Client reads 256 KiB at a time and finds each response's end
in the buffer. Multi-line responses (RFC 1939 3) end with a line holding
only "."; a line that starts with "." arrives with one more "." in front
(byte-stuffing), which multi() removes.
"""

import shutil
import socket
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().with_suffix(".c")

RECV = 1 << 18
# Compact the buffer when this much of it has been consumed.
COMPACT = 1 << 20


class Pop3Error(Exception):
    pass


class Client:
    def __init__(self, port, host="127.0.0.1", timeout=60, sock=None):
        if sock is None:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock  # or any object with recv() and sendall()
        self.buf = bytearray()
        self.pos = 0
        self.status()  # greeting

    def _fill(self):
        data = self.sock.recv(RECV)
        if not data:
            raise Pop3Error("connection closed")
        if self.pos > COMPACT:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    def send(self, data: bytes):
        self.sock.sendall(data)

    def status(self) -> bytes:
        """One status line; raises on -ERR."""
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                break
            self._fill()
        line = bytes(self.buf[self.pos:i])
        self.pos = i + 2
        if not line.startswith(b"+OK"):
            raise Pop3Error(line.decode(errors="replace"))
        return line

    def multi(self) -> bytes:
        """A multi-line response: the data, unstuffed, with CRLF line ends
        and without the terminating '.' line. Raises on -ERR."""
        self.status()
        while True:
            if self.buf.startswith(b".\r\n", self.pos):
                self.pos += 3
                return b""
            # Not "." at once, so the data has a first line, and the end
            # is the first CRLF "." CRLF after it.
            end = self.buf.find(b"\r\n.\r\n", self.pos)
            if end >= 0:
                break
            self._fill()
        data = bytes(self.buf[self.pos:end + 2])
        self.pos = end + 5
        if data.startswith(b".."):
            data = data[1:]
        return data.replace(b"\r\n..", b"\r\n.")

    def command(self, line: str) -> bytes:
        self.send(line.encode() + b"\r\n")
        return self.status()

    def close(self):
        self.sock.close()


def build(out_dir) -> Path:
    """Compiles the pipelined load client (bench/pop3load.c) into out_dir."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise Pop3Error("no C compiler for bench/pop3load.c")
    exe = Path(out_dir) / "pop3load"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(SOURCE)],
                   check=True)
    return exe


def retrieve_all(exe, port, user, password, depth=1, sessions=1):
    """`sessions` sessions one after another, each: login, STAT, LIST,
    UIDL, RETR every message (`depth` in flight), QUIT, by the C client.
    Returns (messages, octets, seconds), summed; raises Pop3Error with the
    client's reason when anything is off."""
    p = subprocess.run([str(exe), str(port), user, password, str(depth), str(sessions)],
                       capture_output=True, timeout=600)
    if p.returncode != 0:
        raise Pop3Error(p.stderr.decode(errors="replace").strip() or f"exit {p.returncode}")
    n, octets, secs = p.stdout.split()
    return int(n), int(octets), float(secs)
