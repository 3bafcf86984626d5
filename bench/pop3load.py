"""A POP3 load client on raw sockets: one command at a time, or pipelined.

poplib reads line by line through a file object and is slower than either
server; this client reads 256 KiB at a time and finds each response's end
in the buffer. Multi-line responses (RFC 1939 3) end with a line holding
only "."; a line that starts with "." arrives with one more "." in front
(byte-stuffing), which is removed before the size is checked against LIST.

Pipelined (RFC 2449 6.6, PIPELINING): `depth` RETR commands are in
flight. After each read from the socket the client takes every answer
that is wholly in its buffer, then sends the commands those answers freed
in one write, so `depth` are in flight again: what a client that reads
its socket does, and one send per read rather than per message (at one
Python send per answer, the client, not the server, was the limit near
40,000 answers/s). Every message's size is checked against LIST and the
count against STAT, so a wrong or lost answer fails the round instead of
counting as fast.
"""

import socket
import time

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

    def _take_body(self):
        """(start, end) of the data of the next multi-line response when it
        is wholly in the buffer, consumed, else None (nothing consumed).
        The data is buf[start:end], CRLF line ends, still byte-stuffed,
        without the terminating "." line. Raises on -ERR."""
        buf, pos = self.buf, self.pos
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        if not buf.startswith(b"+OK", pos):
            raise Pop3Error(bytes(buf[pos:eol]).decode(errors="replace"))
        start = eol + 2
        if len(buf) - start < 3:
            return None
        if buf[start:start + 3] == b".\r\n":
            self.pos = start + 3
            return start, start
        # Not ".\r\n" at once, so the data has a first line, and the end
        # is the first CRLF "." CRLF after it.
        end = buf.find(b"\r\n.\r\n", start)
        if end < 0:
            return None
        self.pos = end + 5
        return start, end + 2

    def multi(self) -> bytes:
        """A multi-line response: the data, unstuffed, with CRLF line ends
        and without the terminating '.' line."""
        while (body := self._take_body()) is None:
            self._fill()
        data = bytes(self.buf[body[0]:body[1]])
        if data.startswith(b".."):
            data = data[1:]
        return data.replace(b"\r\n..", b"\r\n.")

    def take_multi(self):
        """The size, unstuffed, of the next multi-line response when it is
        wholly in the buffer (consumed), else None (nothing consumed).
        Sizes it without copying: each stuffed '.' is one octet less."""
        body = self._take_body()
        if body is None:
            return None
        start, end = body
        stuffed = self.buf.count(b"\r\n..", start, end) + (1 if self.buf.startswith(b"..", start) else 0)
        return end - start - stuffed

    def command(self, line: str) -> bytes:
        self.send(line.encode() + b"\r\n")
        return self.status()

    def close(self):
        self.sock.close()


def retrieve_all(port, user, password, depth=1):
    """Logs in, STAT, LIST, UIDL, RETR every message (depth in flight), QUIT.
    Returns (messages, bytes, seconds). Raises when anything is off."""
    start = time.perf_counter()
    c = Client(port)
    try:
        c.command(f"USER {user}")
        c.command(f"PASS {password}")
        count = int(c.command("STAT").split()[1])
        c.send(b"LIST\r\n")
        sizes = {}
        for line in c.multi().split(b"\r\n")[:-1]:
            n, size = line.split()
            sizes[int(n)] = int(size)
        c.send(b"UIDL\r\n")
        uids = c.multi().split(b"\r\n")[:-1]
        if len(sizes) != count or len(uids) != count:
            raise Pop3Error(f"STAT says {count}, LIST {len(sizes)}, UIDL {len(uids)}")
        total = 0
        sent = min(depth, count)
        c.send(b"".join(b"RETR %d\r\n" % (i + 1) for i in range(sent)))
        done = 0
        while done < count:
            freed = 0
            while (size := c.take_multi()) is not None:
                done += 1
                if done > sent or size != sizes[done]:
                    raise Pop3Error(f"RETR {done}: {size} octets, LIST said {sizes.get(done)}")
                total += size
                freed += 1
            if not freed:
                c._fill()
                continue
            more = range(sent + 1, min(sent + freed, count) + 1)
            if more:
                c.send(b"".join(b"RETR %d\r\n" % n for n in more))
                sent = more[-1]
        c.command("QUIT")
    finally:
        c.close()
    return count, total, time.perf_counter() - start
