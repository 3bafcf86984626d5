"""Real servers on loopback for the outbox tests: an SMTP sink (aiosmtpd),
a test certificate authority (openssl), a DNS server (dnslib) and a raw
scripted SMTP server for what aiosmtpd cannot show (pipelining).

Everything binds to loopback only, on free ports or on a random
127.x.y.z address of its own, so tests run in parallel.
"""

import random
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from dnslib import AAAA, MX, QTYPE, RCODE, RR, SOA, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from conftest import free_port


# -- addresses ---------------------------------------------------------------


def random_loopback():
    """A loopback address no other test uses (127.0.0.1 and .2 are taken)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def port25_available(host):
    """Can we bind host:25 (root, nothing else there)?"""
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 25))
        return True
    except OSError:
        return False


def wait_for(predicate, timeout=10.0, step=0.05):
    """Polls predicate until it returns something truthy; returns that (or the last value)."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(step)


# -- SMTP sink ---------------------------------------------------------------


@dataclass
class Received:
    """One message as the sink got it."""

    mail_from: str
    rcpt_tos: list
    content: bytes
    mail_options: list
    ehlo: str
    tls: bool
    auth: object  # (mechanism, login) or None

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")


@dataclass
class Sink:
    """An aiosmtpd server that records what it receives.

    rcpt_replies: lower-case address -> reply for RCPT (e.g. "550 5.1.1 no such user")
    data_reply: a reply for the end of DATA instead of 250
    mail_reply: a reply for MAIL FROM instead of 250
    """

    host: str = "127.0.0.1"
    port: int = 0
    pipelining: bool = False
    rcpt_replies: dict = field(default_factory=dict)
    data_reply: str | None = None
    mail_reply: str | None = None
    messages: list = field(default_factory=list)
    ehlos: list = field(default_factory=list)
    auth_attempts: list = field(default_factory=list)
    controller: object = None

    def start(self, tls_context=None, implicit_tls=None, auth=None, auth_require_tls=True,
              auth_exclude=None, require_starttls=False, smtputf8=True, size_limit=10 * 1024 * 1024):
        """auth: (user, password) the sink accepts; implicit_tls: an ssl
        context for TLS from the first byte (port 465 style)."""
        if not self.port:
            self.port = free_port()
        sink = self

        class Handler:
            async def handle_EHLO(self, server, session, envelope, hostname, responses):
                session.host_name = hostname
                sink.ehlos.append((hostname, _is_tls(server)))
                if sink.pipelining:
                    responses.insert(1, "250-PIPELINING")
                return responses

            async def handle_MAIL(self, server, session, envelope, address, mail_options):
                if sink.mail_reply:
                    return sink.mail_reply
                envelope.mail_from = address
                envelope.mail_options.extend(mail_options)
                return "250 2.1.0 OK"

            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                reply = sink.rcpt_replies.get(address.lower())
                if reply:
                    return reply
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 OK"

            async def handle_DATA(self, server, session, envelope):
                if sink.data_reply:
                    return sink.data_reply
                sink.messages.append(
                    Received(
                        mail_from=envelope.mail_from,
                        rcpt_tos=list(envelope.rcpt_tos),
                        content=envelope.original_content or envelope.content,
                        mail_options=list(envelope.mail_options),
                        ehlo=session.host_name,
                        tls=_is_tls(server),
                        auth=getattr(session, "sink_auth", None),
                    )
                )
                return "250 2.0.0 OK queued as SINK%d" % len(sink.messages)

        def authenticator(server, session, envelope, mechanism, auth_data):
            login = auth_data.login.decode() if auth_data.login else ""
            password = auth_data.password.decode() if auth_data.password else ""
            sink.auth_attempts.append((mechanism, login, password))
            ok = auth is not None and (login, password) == auth
            if ok:
                session.sink_auth = (mechanism, login)
            return AuthResult(success=ok, handled=False)

        kwargs = dict(
            server_hostname="sink.test",
            decode_data=False,
            enable_SMTPUTF8=smtputf8,
            data_size_limit=size_limit,
        )
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
        if auth is not None:
            kwargs.update(
                authenticator=authenticator,
                auth_require_tls=auth_require_tls,
                auth_exclude_mechanism=auth_exclude or [],
            )

        self.controller = Controller(
            Handler(), hostname=self.host, port=self.port, ssl_context=implicit_tls, **kwargs
        )
        self.controller.start()
        return self

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait(self, count=1, timeout=10.0):
        return wait_for(lambda: len(self.messages) >= count and self.messages, timeout) or []


def _is_tls(server):
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


# -- test CA -------------------------------------------------------------------


class CertAuthority:
    """A certificate authority made with openssl, and a server certificate
    it signed for IP 127.0.0.1 and localhost."""

    def __init__(self, directory: Path, ip="127.0.0.1"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_cert = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.cert = self.dir / "server.pem"
        self.key = self.dir / "server.key"
        run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=self.dir)
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(self.ca_key), "-out", str(self.ca_cert), "-days", "2",
            "-subj", "/CN=mailgate test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        csr = self.dir / "server.csr"
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(self.key), "-out", str(csr), "-subj", "/CN=smarthost.test")
        ext = self.dir / "server.ext"
        ext.write_text(
            f"subjectAltName=IP:{ip},DNS:localhost,DNS:smarthost.test\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
        )
        run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey",
            str(self.ca_key), "-CAcreateserial", "-out", str(self.cert), "-days", "2",
            "-extfile", str(ext))

    def server_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


# -- DNS -----------------------------------------------------------------------


class Zone(BaseResolver):
    """Answers from a dict; everything else is NXDOMAIN.

    mx:   name -> [(preference, host)]   ([(0, ".")] is a null MX)
    a:    name -> [ip]
    nxdomain names are simply absent from both.
    """

    def __init__(self):
        self.mx = {}
        self.a = {}
        self.queries = []

    def _exists(self, name):
        return name in self.mx or name in self.a

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.queries.append((qname, qtype))
        if not self._exists(qname):
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(RR("test", QTYPE.SOA, ttl=60, rdata=SOA("ns.test", "hostmaster.test")))
            return reply
        if qtype == "MX":
            for pref, host in self.mx.get(qname, []):
                reply.add_answer(RR(qname, QTYPE.MX, ttl=60, rdata=MX(host, pref)))
        elif qtype == "A":
            for ip in self.a.get(qname, []):
                reply.add_answer(RR(qname, QTYPE.A, ttl=60, rdata=A(ip)))
        elif qtype == "AAAA":
            pass  # NODATA: IPv4 only in tests
        if not reply.rr:
            reply.add_auth(RR("test", QTYPE.SOA, ttl=60, rdata=SOA("ns.test", "hostmaster.test")))
        return reply


class Dns:
    """A UDP DNS server on 127.0.0.1:free port answering from a Zone."""

    def __init__(self):
        self.zone = Zone()
        quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", logf=lambda s: None)
        self.server = DNSServer(self.zone, address="127.0.0.1", port=0, logger=quiet)
        self.port = self.server.server.server_address[1]
        self.server.start_thread()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self.server.stop()


# -- raw scripted SMTP server -----------------------------------------------------


class PipelineProbe:
    """A one-connection SMTP server that offers PIPELINING and, after EHLO,
    answers nothing until it has read up to DATA: if the client waits for
    the MAIL reply (no pipelining), the probe notices and answers anyway
    after a pause. Records whether MAIL..DATA came as one group."""

    def __init__(self, host="127.0.0.1"):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.pipelined = None
        self.commands = []
        self.body = b""
        self.error = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.sock.settimeout(20)
            conn, _ = self.sock.accept()
            conn.settimeout(10)
            with conn:
                f = conn.makefile("rb")
                conn.sendall(b"220 probe.test ESMTP\r\n")
                line = f.readline()
                self.commands.append(line)
                conn.sendall(b"250-probe.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n")
                group = []
                conn.settimeout(2)
                try:
                    while True:
                        line = f.readline()
                        if not line:
                            return
                        group.append(line)
                        if line.upper().startswith(b"DATA"):
                            break
                    self.pipelined = True
                except (socket.timeout, TimeoutError):
                    self.pipelined = False
                    return
                conn.settimeout(10)
                self.commands.extend(group)
                replies = b""
                for cmd in group:
                    if cmd.upper().startswith(b"MAIL"):
                        replies += b"250 2.1.0 ok\r\n"
                    elif cmd.upper().startswith(b"RCPT"):
                        replies += b"250 2.1.5 ok\r\n"
                    elif cmd.upper().startswith(b"DATA"):
                        replies += b"354 go ahead\r\n"
                conn.sendall(replies)
                while True:
                    line = f.readline()
                    if not line or line == b".\r\n":
                        break
                    self.body += line
                conn.sendall(b"250 2.0.0 probe got it\r\n")
                line = f.readline()
                if line:
                    self.commands.append(line)
                    conn.sendall(b"221 2.0.0 bye\r\n")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.sock.close()

    def join(self, timeout=15):
        self.thread.join(timeout)


class ScriptServer:
    """A threaded SMTP server whose every reply comes from `answer(conn_no,
    line) -> bytes | None` (None: close the connection). The greeting is
    `answer(n, None)`. After a 354 it reads the message up to the final
    dot and asks `answer(n, b".")`. Records every line per connection."""

    def __init__(self, answer, host="127.0.0.1", port=0):
        self.answer = answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        self.sessions = []  # one list of lines per connection
        self.bodies = []
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            n = len(self.sessions)
            self.sessions.append([])
            threading.Thread(target=self._serve, args=(n, conn), daemon=True).start()

    def _serve(self, n, conn):
        lines = self.sessions[n]
        try:
            conn.settimeout(10)
            with conn:
                f = conn.makefile("rb")
                reply = self.answer(n, None)
                if reply is None:
                    return
                conn.sendall(reply)
                while True:
                    line = f.readline()
                    if not line:
                        return
                    lines.append(line)
                    reply = self.answer(n, line)
                    if reply is None:
                        return
                    conn.sendall(reply)
                    if reply.startswith(b"354"):
                        body = b""
                        while True:
                            data = f.readline()
                            if not data:
                                return
                            if data == b".\r\n":
                                break
                            body += data
                        self.bodies.append(body)
                        reply = self.answer(n, b".")
                        if reply is None:
                            return
                        conn.sendall(reply)
        except OSError:
            pass

    def stop(self):
        self.running = False
        self.sock.close()


def plain_answers(greeting=b"220 script.test ESMTP\r\n", ehlo=b"250-script.test\r\n250 8BITMIME\r\n",
                  final=b"250 2.0.0 ok\r\n"):
    """A well-behaved server's replies, overridable piece by piece."""

    def answer(n, line):
        if line is None:
            return greeting
        if line == b".":
            return final
        verb = line.split()[0].upper() if line.split() else b""
        return {
            b"EHLO": ehlo,
            b"HELO": b"250 script.test\r\n",
            b"MAIL": b"250 2.1.0 ok\r\n",
            b"RCPT": b"250 2.1.5 ok\r\n",
            b"DATA": b"354 go ahead\r\n",
            b"RSET": b"250 ok\r\n",
            b"NOOP": b"250 ok\r\n",
            b"QUIT": b"221 bye\r\n",
        }.get(verb, b"500 5.5.1 unknown\r\n")

    return answer
