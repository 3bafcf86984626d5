#!/usr/bin/env python3
"""mailgate benchmark, side by side with its peers: prints tables, never
fails on timing (it does fail when a server loses or garbles mail).

  make bench                 (builds the release binary, installs the peers)
  python3 bench/bench.py smtp pop3      (only these sections)

Side by side (one table, the peer measured in the same run):
- durable SMTP intake: mailgate vs Postfix (private instance, virtual
  Maildir), both loaded by Postfix's own smtp-source, SMTP_MESSAGES
  messages of 4 KiB at 10 and at 50 sessions, one connection per message;
- POP3: mailgate vs Dovecot serving the same Maildir files (POP3_MESSAGES
  x 4 KiB), one command at a time and 16 RETR in flight.
Rounds alternate mailgate / peer, ROUNDS each; each figure is the median.
A round counts only when every message arrived (SMTP: every file is in the
Maildir; POP3: every RETR had LIST's size).

- SMTP intake with the MX checks on (SPF, DKIM, DMARC, a DNSBL; DNS from
  a local dnslib server) in the "mailgate" column beside checks off in
  the "peer" column, both mailgate, at the first SMTP_SESSIONS count.

Then mailgate alone: relay to a smarthost sink, SmartPop collection, memory.
"""

import multiprocessing as mp
import os
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from conftest import Server  # noqa: E402
import dovecot_helpers as dh  # noqa: E402
import postfix_peer  # noqa: E402
import pop3load  # noqa: E402
import imapload  # noqa: E402
from meter import Meter  # noqa: E402
import scratchfs  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SMTP_MESSAGES = int(os.environ.get("BENCH_SMTP_MESSAGES", "3000"))
SMTP_SESSIONS = [int(x) for x in os.environ.get("BENCH_SMTP_SESSIONS", "10,50").split(",")]
POP3_MESSAGES = int(os.environ.get("BENCH_POP3_MESSAGES", "5000"))
POP3_DEPTH = 16
# Sessions one after another in each POP3 round, per depth: one pipelined
# session of 5000 takes mailgate ~0.07 s, short enough that one hiccup of
# this VM moved a round by a third; a round of about a second does not.
POP3_PASSES = {1: 3, POP3_DEPTH: 10}
IMAP_MESSAGES = int(os.environ.get("BENCH_IMAP_MESSAGES", "20000"))
IMAP_FULL = int(os.environ.get("BENCH_IMAP_FULL", "1000"))
IMAP_IDLE = int(os.environ.get("BENCH_IMAP_IDLE", "1000"))
# smtp-source -l: body bytes per message (plus its few header lines).
MESSAGE_BYTES = 4096
# Untimed messages before the timed rounds, so that neither server is
# measured while it forks its first processes or faults its first pages.
WARMUP_MESSAGES = 200
# How long all messages may take to reach the Maildir after smtp-source
# is done (Postfix delivers after it answers 250).
DELIVERY_TIMEOUT = 120
DOMAIN = "example.test"
SENDER = "from@remote.test"

MESSAGE = (b"From: bench@remote.test\r\nTo: bob@example.test\r\nSubject: bench\r\n\r\n"
           + (b"x" * 76 + b"\r\n") * 52)  # ~4 KiB


def proc_stats(pid):
    """(cpu seconds, peak RSS KiB, current RSS KiB, threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.strip()
    return cpu, int(status["VmHWM"].split()[0]), int(status["VmRSS"].split()[0]), int(status["Threads"])


def new_server(tmp, extra=""):
    limits = {"max_recipients = 20": "max_recipients = 20\nmax_connections = 1000\nmax_connections_per_ip = 1000"}
    s = Server(Path(tempfile.mkdtemp(dir=tmp)), extra, limits)
    return s.start(env={"RUST_LOG": "warn"})


def row(name, n, secs, cpu, hwm, note=""):
    print(f"| {name:<42} | {n:>6} | {n / secs:>9.0f} | {cpu:>7.2f} | {hwm / 1024:>8.1f} | {note}")


def start_dovecot(tmp, count, imap=False):
    import dovecot_helpers as dh
    why = dh.available()
    if why:
        print(f"| Dovecot: {why}, skipped")
        return None
    ca = dh.TestCA(Path(tempfile.mkdtemp(dir=tmp)))
    dove = dh.Dovecot({"bob": "secret"}, ca, imap=imap)
    body = MESSAGE.replace(b"\r\n", b"\n")
    for i in range(count):
        dove.add("bob", body.replace(b"Subject: bench", b"Subject: bench %d" % i))
    return dove.start()


def remove_dovecot(dove, meter=None):
    """Stops Dovecot and removes its directory once its last process is
    gone: a pop3 process still ending after QUIT may write its
    dovecot-uidlist after the master has exited, behind rmtree's back."""
    dove.stop()
    deadline = time.time() + 10
    while meter and meter.pids() and time.time() < deadline:
        time.sleep(0.05)
    for _ in range(5):
        shutil.rmtree(dove.dir, ignore_errors=True)
        if not dove.dir.exists():
            break
        time.sleep(0.2)


def bench_smartpop(tmp):
    dove = start_dovecot(tmp, 2000)
    if dove is None:
        return
    try:
        s = new_server(tmp, extra=(
            f"\n[smartpop isp]\nhost = 127.0.0.1:{dove.pop3}\ntls = none\nusername = bob\n"
            "password = secret\ndeliver_to = bob@example.test\ninterval = 1h\n"))
        start = time.time()
        new = s.maildir_path("bob@example.test") / "new"
        while time.time() - start < 300:
            if new.exists() and len(os.listdir(new)) >= 2000:
                break
            time.sleep(0.05)
        secs = time.time() - start
        got = len(os.listdir(new)) if new.exists() else 0
        cpu, hwm, _, _ = proc_stats(s.proc.pid)
        s.stop()
        row("SmartPop: collect 2000 from local Dovecot", got, secs, cpu, hwm, "durable + UIDL record each")
    finally:
        remove_dovecot(dove)
    imap_secs = bench_smartpop_imap(tmp)
    if imap_secs and got == 2000:
        print(f"| SmartPop IMAP / POP3 time for 2000 x 4 KiB: {imap_secs / secs:.2f}")


def bench_smartpop_imap(tmp):
    """The same 2000 messages of 4 KiB collected over IMAP (keep = no:
    UID EXPUNGE each after it is durable and recorded). Returns the
    seconds it took when all 2000 came."""
    dove = start_dovecot(tmp, 2000, imap=True)
    if dove is None:
        return
    try:
        s = new_server(tmp, extra=(
            f"\n[smartpop isp]\nprotocol = imap\nhost = 127.0.0.1:{dove.imap}\ntls = none\n"
            "username = bob\npassword = secret\ndeliver_to = bob@example.test\ninterval = 1h\n"
            "idle = no\n"))
        start = time.time()
        new = s.maildir_path("bob@example.test") / "new"
        while time.time() - start < 300:
            if new.exists() and len(os.listdir(new)) >= 2000:
                break
            time.sleep(0.05)
        secs = time.time() - start
        got = len(os.listdir(new)) if new.exists() else 0
        cpu, hwm, _, _ = proc_stats(s.proc.pid)
        s.stop()
        row("SmartPop IMAP: collect 2000 from Dovecot", got, secs, cpu, hwm,
            "durable + UID record each, UID EXPUNGE per 200")
    finally:
        remove_dovecot(dove)
    return secs if got == 2000 else None


def bench_outbound(tmp):
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        print("| outbound: aiosmtpd missing, skipped")
        return
    received = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            received.append(1)
            return "250 2.0.0 ok"

    port = free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port)
    ctl.start()
    s = new_server(tmp, extra=f"\n[outbox]\nmode = smarthost\nhost = 127.0.0.1:{port}\ntls = none\nretry = 1s\n")
    start = time.time()
    procs = [mp.Process(target=smtp_worker_relay, args=(s.ports["smtp"], 200)) for _ in range(10)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    while len(received) < 2000 and time.time() - start < 300:
        time.sleep(0.05)
    secs = time.time() - start
    cpu, hwm, _, _ = proc_stats(s.proc.pid)
    s.stop()
    ctl.stop()
    row("relay 2000 to a smarthost sink (in + out)", len(received), secs, cpu, hwm)


def smtp_worker_relay(port, count):
    s = smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=("127.0.0.2", 0))
    for _ in range(count):
        s.sendmail("bench@example.test", ["someone@remote.test"], MESSAGE)
    s.quit()


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def bench_memory(tmp):
    s = new_server(tmp)
    time.sleep(0.5)
    _, _, idle, threads = proc_stats(s.proc.pid)
    socks = []
    for _ in range(500):
        c = socket.create_connection(("127.0.0.1", s.ports["smtp"]))
        c.recv(100)
        socks.append(c)
    time.sleep(0.5)
    _, _, with_smtp, _ = proc_stats(s.proc.pid)
    for c in socks:
        c.close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = []
    for _ in range(100):
        c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", s.ports["smtps"])))
        c.recv(100)
        tls.append(c)
    time.sleep(0.5)
    _, _, with_tls, threads_busy = proc_stats(s.proc.pid)
    for c in tls:
        c.close()
    s.stop()
    print()
    print("| memory                              | RSS MiB |")
    print("|-------------------------------------|---------|")
    print(f"| idle                                | {idle / 1024:>7.1f} |")
    print(f"| 500 idle SMTP sessions              | {with_smtp / 1024:>7.1f} |")
    print(f"| 100 idle TLS sessions (smtps)       | {with_tls / 1024:>7.1f} |")
    print(f"| threads (idle / busy)               | {threads} / {threads_busy} |")



# -- side by side --------------------------------------------------------------

def machine_busy():
    """CPU seconds this machine has been busy (all CPUs, from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu():
    """CPU seconds of this bench process and the load generators it ran."""
    import resource
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


class Others:
    """CPU that neither the server under test nor the bench used during a
    round: other people's builds and tests on a shared machine (and kernel
    threads, some of them writing back this round's mail). Reported so
    that a noisy figure can be told from a slow server."""

    def __init__(self, meter):
        self.meter = meter

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.b0, self.o0, self.m0 = machine_busy(), own_cpu(), self.meter.cpu()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        busy = machine_busy() - self.b0
        ours = own_cpu() - self.o0 + self.meter.cpu() - self.m0
        self.share = max(0.0, busy - ours) / wall  # CPUs' worth
        return False


class Figure:
    """One line of the side-by-side table: per-round results of both."""

    def __init__(self, name):
        self.name = name
        self.rounds = {"mailgate": [], "peer": []}
        self.peak = {"mailgate": (0, 0), "peer": (0, 0)}
        self.failed = []
        self.lag = []
        self.others = []
        self.ceiling = []  # the disk's durable writes/s, `writers` streams
        self.writers = 0

    def add(self, who, messages, seconds, cpu, peak):
        self.rounds[who].append((messages / seconds, cpu / messages))
        r, p = self.peak[who]
        self.peak[who] = (max(r, peak[0]), max(p, peak[1]))

    def median(self, who, i):
        vals = [r[i] for r in self.rounds[who]]
        return statistics.median(vals) if vals else float("nan")

    def ratio(self, i):
        """Median of the ratios of each mailgate round to the peer round
        run right after it: under a load that drifts, neighbours see the
        same machine."""
        pairs = list(zip(self.rounds["mailgate"], self.rounds["peer"]))
        if not pairs:
            return float("nan")
        return statistics.median(m[i] / p[i] for m, p in pairs)

    def spread(self, who):
        """(max - min) / median of the rates, in percent."""
        vals = [r[0] for r in self.rounds[who]]
        if len(vals) < 2:
            return 0.0
        return 100 * (max(vals) - min(vals)) / statistics.median(vals)


def smtp_source(port, sessions, count, rcpt):
    """Postfix's load generator: `count` messages over `sessions` parallel
    sessions, one connection per message (no -d), MESSAGE_BYTES of body."""
    cmd = [postfix_peer.SMTP_SOURCE, "-s", str(sessions), "-m", str(count),
           "-l", str(MESSAGE_BYTES), "-f", SENDER, "-t", rcpt, f"127.0.0.1:{port}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    secs = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {out.returncode}: {out.stdout}{out.stderr}")
    return secs


def count_maildir(path):
    n = 0
    for sub in ("new", "cur"):
        try:
            n += len(os.listdir(path / sub))
        except FileNotFoundError:
            pass
    return n


def wait_count(path, want, timeout):
    deadline = time.time() + timeout
    while True:
        got = count_maildir(path)
        if got >= want or time.time() > deadline:
            return got
        time.sleep(0.02)


def smtp_round(meter, port, sessions, count, maildir, rcpt):
    """One timed round: (messages/s, CPU s, peak) or raises when mail is
    missing. The rate is smtp-source's wall time (intake: every message
    answered 250); CPU is read after every file is in the Maildir, so a
    server that delivers after answering pays for the delivery too."""
    meter.start_sampling()
    cpu0 = meter.cpu()
    secs = smtp_source(port, sessions, count, rcpt)
    t = time.perf_counter()
    got = wait_count(maildir, count, DELIVERY_TIMEOUT)
    lag = time.perf_counter() - t
    # Let the last queue-file removals and log lines finish.
    time.sleep(0.3)
    cpu = meter.cpu() - cpu0
    peak = meter.stop_sampling()
    if got != count:
        raise RuntimeError(f"{maildir}: {got} of {count} messages")
    return secs, cpu, peak, lag


def mailgate_server(tmp, recipients, meter, extra="", replace=None):
    extra += "".join(f"\n[mailbox {r}@{DOMAIN}]\npassword = {{PLAIN}}secret\n" for r in recipients)
    limits = {"max_recipients = 20": "max_recipients = 20\nmax_connections = 1000\nmax_connections_per_ip = 1000"}
    limits.update(replace or {})
    s = Server(Path(tempfile.mkdtemp(dir=tmp)), extra, limits)
    s.start(env={"RUST_LOG": "warn"})
    meter.adopt(s.proc.pid)
    return s


def smtp_rounds(fig, servers, sessions, peer_lag=True, ceiling_dir=None):
    """Warm each server up, then ROUNDS alternating SMTP rounds into
    `fig`. `servers`: who -> (meter, port, maildir of a recipient);
    round i goes to recipient r{i}. `peer_lag`: record how long the
    peer's queue took to deliver after the load ended (Postfix).
    `ceiling_dir`: after each pair of rounds, measure there what the disk
    allows with as many writers as there are sessions (fig.ceiling)."""
    fig.writers = sessions
    for who, (meter, port, md) in servers.items():
        smtp_source(port, sessions, WARMUP_MESSAGES, f"warmup@{DOMAIN}")
        wait_count(md("warmup"), WARMUP_MESSAGES, DELIVERY_TIMEOUT)
    for i in range(ROUNDS):
        for who, (meter, port, md) in servers.items():
            rcpt = f"r{i}"
            try:
                with Others(meter) as others:
                    secs, cpu, peak, lag = smtp_round(meter, port, sessions, SMTP_MESSAGES,
                                                      md(rcpt), f"{rcpt}@{DOMAIN}")
                fig.others.append(others.share)
            except RuntimeError as e:
                fig.failed.append(f"{who} round {i + 1}: {e}")
                continue
            fig.add(who, SMTP_MESSAGES, secs, cpu, peak)
            if who == "peer" and peer_lag:
                fig.lag.append(lag)
        if ceiling_dir:
            fig.ceiling.append(scratchfs.durable_writes_per_second(
                ceiling_dir, streams=sessions, count=SMTP_MESSAGES))


def bench_smtp(tmp, table):
    why = postfix_peer.available()
    if why:
        print(f"Postfix: {why}: SMTP figures skipped")
        return
    for sessions in SMTP_SESSIONS:
        fig = Figure(f"SMTP in, {sessions} sessions, vs Postfix")
        table.append(fig)
        rcpts = ["warmup"] + [f"r{i}" for i in range(ROUNDS)]
        mg_meter, pf_meter = Meter("mailgate"), Meter("postfix")
        mg = mailgate_server(tmp, rcpts, mg_meter)
        # Under tmp: removed with it at the very end. On a file system
        # without a journal (BENCH_DIR on this VM's root, say) creating a
        # file scans past every inode freed in the last minutes, so deleting
        # thousands of files between rounds would slow the next rounds down.
        pf = None
        try:
            pf = postfix_peer.Postfix(DOMAIN, rcpts, free_port(), parent=tmp).start(pf_meter)
            servers = {
                "mailgate": (mg_meter, mg.ports["smtp"], lambda r: mg.maildir_path(f"{r}@{DOMAIN}")),
                "peer": (pf_meter, pf.port, lambda r: pf.maildir(r)),
            }
            smtp_rounds(fig, servers, sessions, ceiling_dir=tmp)
        finally:
            mg.stop()
            if pf:
                pf.stop()
            mg_meter.close()
            pf_meter.close()


def bench_dns():
    """A dnslib server for the checks-on run: SPF and DMARC of the
    sender's domain, a DNSBL that lists nobody."""
    from dnslib import QTYPE, RCODE, RR, SOA, TXT
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    records = {
        "remote.test": "v=spf1 ip4:127.0.0.1 -all",
        "_dmarc.remote.test": "v=DMARC1; p=quarantine",
    }

    class Zone(BaseResolver):
        def resolve(self, request, handler):
            reply = request.reply()
            name = str(request.q.qname).rstrip(".").lower()
            if name in records and QTYPE[request.q.qtype] == "TXT":
                reply.add_answer(RR(name, QTYPE.TXT, ttl=60, rdata=TXT(records[name].encode())))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
                reply.add_auth(RR("test", QTYPE.SOA, ttl=60, rdata=SOA("ns.test", "hostmaster.test")))
            return reply

    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", logf=lambda s: None)
    server = DNSServer(Zone(), address="127.0.0.1", port=0, logger=quiet)
    server.start_thread()
    return server


def bench_mailauth(tmp, table):
    """SMTP intake with the MX checks on (SPF, DKIM, DMARC, a DNSBL; DNS
    from a local dnslib server, answers cached 30 s) beside checks off,
    both mailgate, rounds alternating. Greylisting is off: it would defer
    every first message."""
    if not os.path.exists(postfix_peer.SMTP_SOURCE):
        print("smtp-source missing: checks-on figure skipped")
        return
    dns = bench_dns()
    sessions = SMTP_SESSIONS[0]
    fig = Figure(f"SMTP {sessions} s., checks on=mg off=peer")
    table.append(fig)
    rcpts = ["warmup"] + [f"r{i}" for i in range(ROUNDS)]
    on_meter, off_meter = Meter("checks-on"), Meter("checks-off")
    on_extra = (f"\n[outbox]\nnameserver = 127.0.0.1:{dns.server.server_address[1]}\n")
    on = mailgate_server(tmp, rcpts, on_meter, extra=on_extra,
                         replace={"mail_auth = no": "mail_auth = yes\ndnsbl = bl.bench.test"})
    off = mailgate_server(tmp, rcpts, off_meter)
    try:
        servers = {
            "mailgate": (on_meter, on.ports["smtp"], lambda r: on.maildir_path(f"{r}@{DOMAIN}")),
            "peer": (off_meter, off.ports["smtp"], lambda r: off.maildir_path(f"{r}@{DOMAIN}")),
        }
        smtp_rounds(fig, servers, sessions, peer_lag=False)
        # The checks ran: every message carries their header.
        sample = next(iter(sorted((on.maildir_path(f"r0@{DOMAIN}") / "new").iterdir())), None)
        if sample is None or b"Authentication-Results: mx.example.test" not in sample.read_bytes():
            fig.failed.append("checks-on: no Authentication-Results in the delivered mail")
    finally:
        on.stop()
        off.stop()
        on_meter.close()
        off_meter.close()
        dns.stop()


def bench_pop3(tmp, table):
    why = dh.available()
    if why:
        print(f"Dovecot: {why}: POP3 figures skipped")
        return
    if postfix_peer.available():
        print("POP3 figures need smtp-source to fill the mailbox: skipped")
        return
    figs = {1: Figure("POP3 RETR, 1 at a time, vs Dovecot"),
            POP3_DEPTH: Figure(f"POP3 RETR, {POP3_DEPTH} in flight, vs Dovecot")}
    table.extend(figs.values())
    mg_meter, dv_meter = Meter("mailgate-pop3"), Meter("dovecot")
    # mailgate stores the mail it is sent; Dovecot gets copies of the very
    # same files, so both serve identical bytes from identical Maildirs.
    mg = mailgate_server(tmp, [], mg_meter)
    dove = None
    try:
        smtp_source(mg.ports["smtp"], 10, POP3_MESSAGES, f"bob@{DOMAIN}")
        md = mg.maildir_path(f"bob@{DOMAIN}")
        if wait_count(md, POP3_MESSAGES, DELIVERY_TIMEOUT) != POP3_MESSAGES:
            raise RuntimeError("mailgate did not store every message to serve")
        ca = dh.TestCA(Path(tempfile.mkdtemp(dir=tmp)))
        dove = dh.Dovecot({"bob": "secret"}, ca)
        dst = dove._ensure_maildir("bob")
        for sub in ("new", "cur"):
            for name in os.listdir(md / sub):
                shutil.copyfile(md / sub / name, dst / sub / name)
                os.chown(dst / sub / name, dove.uid, dove.gid)
        dove.start()
        dv_meter.adopt(dove.proc.pid)
        servers = {"mailgate": (mg_meter, mg.ports["pop3"], f"bob@{DOMAIN}"),
                   "peer": (dv_meter, dove.pop3, "bob")}
        client = pop3load.build(tmp)
        # Untimed: each server's first session builds its index and moves
        # new/ to cur/; the rounds measure the mailbox as a client sees it
        # every day after that.
        for meter, port, user in servers.values():
            pop3load.retrieve_all(client, port, user, "secret", POP3_DEPTH)
        for depth, fig in figs.items():
            for i in range(ROUNDS):
                for who, (meter, port, user) in servers.items():
                    meter.start_sampling()
                    cpu0 = meter.cpu()
                    try:
                        passes = POP3_PASSES[depth]
                        with Others(meter) as others:
                            n, _, secs = pop3load.retrieve_all(client, port, user, "secret",
                                                               depth, passes)
                        if n != POP3_MESSAGES * passes:
                            raise pop3load.Pop3Error(f"{n} of {POP3_MESSAGES * passes} messages")
                        fig.others.append(others.share)
                    except (pop3load.Pop3Error, OSError) as e:
                        meter.stop_sampling()
                        fig.failed.append(f"{who} round {i + 1}: {e}")
                        continue
                    # Dovecot's pop3 process ends after QUIT: give it a
                    # moment to be accounted for.
                    time.sleep(0.1)
                    cpu = meter.cpu() - cpu0
                    peak = meter.stop_sampling()
                    fig.add(who, n, secs, cpu, peak)
    finally:
        mg.stop()
        if dove:
            remove_dovecot(dove, dv_meter)
        mg_meter.close()
        dv_meter.close()


# Dovecot as it would be set up for a household's devices: enough IMAP
# processes and per-user connections for IMAP_IDLE sessions from one address.
DOVECOT_IMAP_LIMITS = """
default_client_limit = 5000
protocol imap {{
  mail_max_userip_connections = {n}
}}
service imap {{
  process_limit = {n}
}}
"""


def imap_maildir_files(count):
    """[(name, bytes, mtime)]: Dovecot-style names with ,S= (so neither
    server needs to read a file for its size), a third of them \\Seen."""
    out = []
    t0 = 1_700_000_000
    for i in range(count):
        body = MESSAGE.replace(b"Subject: bench", b"Subject: bench %d\r\nMessage-ID: <b%d@bench>" % (i, i))
        info = "S" if i % 3 == 0 else ""
        out.append((f"{t0 + i}.M{i}P1.bench,S={len(body)}:2,{info}", body, t0 + i))
    return out


def write_maildir(md, files, owner=None):
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True)
        if owner:
            os.chown(md / sub, *owner)
    if owner:
        os.chown(md, *owner)
    for name, body, mtime in files:
        p = md / "cur" / name
        p.write_bytes(body)
        os.utime(p, (mtime, mtime))
        if owner:
            os.chown(p, *owner)


def private_kib(pid):
    """Private_Clean + Private_Dirty of one process, KiB (0 when gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f
                       if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def bench_imap(tmp, table):
    import imap_interop as ii
    why = dh.available()
    if why:
        print(f"Dovecot: {why}: IMAP figures skipped")
        return
    imapload.raise_fd_limit(IMAP_IDLE * 2 + 1024)
    limits = {"max_recipients = 20": "max_recipients = 20\nmax_connections = 4000\n"
              "max_connections_per_ip = 4000"}
    mg_meter, dv_meter = Meter("mailgate-imap"), Meter("dovecot-imap")
    d = Path(tempfile.mkdtemp(dir=tmp))
    # The tests' base config has the [imap] section and its ports.
    mg = Server(d, "", limits)
    if "imap" not in mg.ports:
        print("IMAP figures skipped: the tests' base config has no [imap]")
        return
    imap = mg.ports["imap"]
    check = subprocess.run([ii.conftest.BIN, "-c", str(mg.config), "check"], capture_output=True, text=True)
    if check.returncode != 0:
        lines = (check.stdout + check.stderr).strip().splitlines()
        print("IMAP figures skipped: this mailgate's config rejects [imap]: "
              + next((line for line in lines if "imap" in line.lower()), lines[-1] if lines else ""))
        return
    figs = {"select": Figure(f"IMAP SELECT+UID FETCH {IMAP_MESSAGES // 1000}k, vs Dovecot"),
            "full": Figure(f"IMAP FETCH {IMAP_FULL} BODY[], vs Dovecot")}
    table.extend(figs.values())
    files = imap_maildir_files(IMAP_MESSAGES)
    want_sizes = [len(b) for _, b, _ in files]
    dove = None
    try:
        write_maildir(mg.maildir_path(f"bob@{DOMAIN}"), files)
        mg.start(env={"RUST_LOG": "warn"})
        mg_meter.adopt(mg.proc.pid)
        ca = dh.TestCA(Path(tempfile.mkdtemp(dir=tmp)))
        dove = dh.Dovecot({"bob": "secret"}, ca, imap=True,
                          extra_conf=DOVECOT_IMAP_LIMITS.format(n=IMAP_IDLE + 100))
        write_maildir(dove.maildir("bob"), files, owner=(dove.uid, dove.gid))
        dove.start()
        dv_meter.adopt(dove.proc.pid)
        servers = {"mailgate": (mg_meter, imap, f"bob@{DOMAIN}"), "peer": (dv_meter, dove.imap, "bob")}
        # Untimed: each server's first SELECT assigns UIDs (dovecot-uidlist)
        # and Dovecot builds its index; the rounds see the folder as every
        # later session does.
        sizes = {}
        for who, (meter, port, user) in servers.items():
            got, _ = imapload.select_fetch_all(port, user, "secret", None)
            if len(got) != IMAP_MESSAGES or sorted(got.values()) != sorted(want_sizes):
                raise RuntimeError(f"{who}: {len(got)} messages or wrong sizes after the first SELECT")
            sizes[who] = got
        for key, fig in figs.items():
            for i in range(ROUNDS):
                for who, (meter, port, user) in servers.items():
                    meter.start_sampling()
                    cpu0 = meter.cpu()
                    try:
                        with Others(meter) as others:
                            if key == "select":
                                _, secs = imapload.select_fetch_all(port, user, "secret", sizes[who])
                                n = IMAP_MESSAGES
                            else:
                                n, _, secs = imapload.fetch_full(port, user, "secret", IMAP_FULL, want_sizes)
                        fig.others.append(others.share)
                    except (imapload.ImapError, OSError) as e:
                        meter.stop_sampling()
                        fig.failed.append(f"{who} round {i + 1}: {e}")
                        continue
                    time.sleep(0.1)
                    cpu = meter.cpu() - cpu0
                    peak = meter.stop_sampling()
                    fig.add(who, n, secs, cpu, peak)
        # Memory: IMAP_IDLE sessions in IDLE on the 20k INBOX.
        print()
        print(f"| IMAP, {IMAP_IDLE} sessions in IDLE on a {IMAP_MESSAGES}-message INBOX | KiB |")
        print("|------------------------------------------------------------|-----|")
        time.sleep(0.5)
        mg_idle = proc_stats(mg.proc.pid)[2]
        t0 = time.perf_counter()
        clients = imapload.idle_sessions(imap, f"bob@{DOMAIN}", "secret", IMAP_IDLE)
        mg_secs = time.perf_counter() - t0
        time.sleep(1)
        mg_busy = proc_stats(mg.proc.pid)[2]
        for c in clients:
            c.sock.close()
        dv_base = sum(private_kib(p) for p in dv_meter.pids())
        t0 = time.perf_counter()
        clients = imapload.idle_sessions(dove.imap, "bob", "secret", IMAP_IDLE)
        dv_secs = time.perf_counter() - t0
        time.sleep(1)
        pids = dv_meter.pids()
        imap_pids = [p for p in pids if comm(p) == "imap"]
        dv_imap = sum(private_kib(p) for p in imap_pids)
        dv_all = sum(private_kib(p) for p in pids)
        for c in clients:
            c.sock.close()
        delta = mg_busy - mg_idle
        print(f"| mailgate RSS idle / with {IMAP_IDLE} IDLE (+delta)          "
              f"| {mg_idle} / {mg_busy} (+{delta}, {delta / IMAP_IDLE:.1f} per session; set up in {mg_secs:.1f} s) |")
        print(f"| Dovecot private memory of its {len(imap_pids)} imap processes  "
              f"| {dv_imap} ({dv_imap / max(1, len(imap_pids)):.0f} per process; set up in {dv_secs:.1f} s) |")
        print(f"| Dovecot private memory, all processes, before / with IDLE | {dv_base} / {dv_all} |")
        print(f"| ratio: mailgate's RSS delta / Dovecot's imap private memory | {delta / max(1, dv_imap):.3f} |")
        print(f"| ratio: mailgate's whole RSS / Dovecot's imap private memory | {mg_busy / max(1, dv_imap):.3f} |")
    except (RuntimeError, imapload.ImapError, OSError) as e:
        figs["select"].failed.append(f"set-up: {e}")
    finally:
        mg.stop() if mg.proc else None
        if dove:
            remove_dovecot(dove, dv_meter)
        mg_meter.close()
        dv_meter.close()


def print_side_by_side(table, peers):
    print(f"SMTP: {SMTP_MESSAGES} x 4 KiB by smtp-source, one connection per message, "
          f"vs {peers['SMTP']} (virtual Maildir)")
    print(f"POP3: login, LIST, UIDL, RETR all {POP3_MESSAGES} x 4 KiB, QUIT, vs {peers['POP3']} "
          f"(same Maildir files); {POP3_PASSES[1]} sessions a round one at a time, "
          f"{POP3_PASSES[POP3_DEPTH]} pipelined")
    print(f"IMAP: {IMAP_MESSAGES} x 4 KiB in INBOX; login + SELECT + UID FETCH 1:* (FLAGS RFC822.SIZE), "
          f"and FETCH 1:{IMAP_FULL} BODY.PEEK[], vs {peers['IMAP']} (same Maildir files)")
    print()
    print(f"| {'figure':<36} | {'mailgate':>9} | {'peer':>9} | {'ratio':>6} "
          f"| {'mg CPU':>7} | {'peer CPU':>8} | {'CPU':>5} "
          f"| {'mg RSS':>6} | {'peer RSS':>8} | {'peer PSS':>8} | spread mg/peer |")
    print(f"| {'':<36} | {'msg/s':>9} | {'msg/s':>9} | {'mg/pr':>6} "
          f"| {'ms/msg':>7} | {'ms/msg':>8} | {'ratio':>5} "
          f"| {'MiB':>6} | {'MiB':>8} | {'MiB':>8} | {'':<14} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 11}|{'-' * 8}|{'-' * 9}|{'-' * 10}|{'-' * 7}"
          f"|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 16}|")
    for fig in table:
        name = fig.name
        mr, pr = fig.median("mailgate", 0), fig.median("peer", 0)
        mc, pc = fig.median("mailgate", 1), fig.median("peer", 1)
        spread = f"±{fig.spread('mailgate') / 2:.0f}% / ±{fig.spread('peer') / 2:.0f}%"
        print(f"| {name:<36} | {mr:>9.0f} | {pr:>9.0f} | {fig.ratio(0):>5.2f}x "
              f"| {mc * 1e3:>7.3f} | {pc * 1e3:>8.3f} | {fig.ratio(1):>5.2f} "
              f"| {fig.peak['mailgate'][0] / 2**20:>6.1f} | {fig.peak['peer'][0] / 2**20:>8.1f} "
              f"| {fig.peak['peer'][1] / 2**20:>8.1f} | {spread:<14} |")
    print()
    print("rounds, in the order run (mailgate and peer alternate):")
    for fig in table:
        rates = {w: "/".join(f"{r[0]:.0f}" for r in fig.rounds[w]) for w in fig.rounds}
        cpus = {w: "/".join(f"{r[1] * 1e3:.2f}" for r in fig.rounds[w]) for w in fig.rounds}
        print(f"  {fig.name}: mailgate {rates['mailgate']} ({cpus['mailgate']} ms/msg), "
              f"peer {rates['peer']} ({cpus['peer']} ms/msg)")
        if fig.others:
            print("    CPUs used meanwhile by all but server and bench (others' work, kernel threads): "
                  + "/".join(f"{o:.2f}" for o in fig.others))
        if fig.ceiling:
            ceiling = statistics.median(fig.ceiling)
            print(f"    the disk's ceiling for {fig.writers} writers (bare 4 KiB tmp/ write, fsync, "
                  f"rename, fsync new/; no SMTP), after each pair: "
                  + "/".join(f"{f:.0f}" for f in fig.ceiling)
                  + f" msg/s; mailgate at {fig.median('mailgate', 0) / ceiling:.0%} of it, "
                  f"the ceiling at {ceiling / fig.median('peer', 0):.2f}x the peer")
        if fig.lag:
            print(f"    Postfix's last Maildir file came {statistics.median(fig.lag):.2f} s "
                  "after smtp-source ended (median)")
    for fig in table:
        for f in fig.failed:
            print(f"FAILED ({fig.name}): {f}")


def fs_of(path):
    """The file system a path is on, with the options that decide what an
    fsync costs (ext4 without a journal, for one)."""
    best = ("", "?", "?", "")
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype, opts = line.split()[:4]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                best = (mnt, dev, fstype, opts)
    mnt, dev, fstype, opts = best
    journal = ""
    if fstype == "ext4":
        # A journaled ext4 has /proc/fs/jbd2/DEV-INODE.
        name = os.path.basename(os.path.realpath(dev))
        jbd2 = os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []
        journal = ", journal" if any(j.startswith(name + "-") for j in jbd2) else ", NO journal"
    return f"{fstype} {dev} on {mnt}{journal}"


def peer_versions():
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.split("\n")[0].strip()
        except OSError:
            return "missing"
    pf = first_line(["/usr/sbin/postconf", "-d", "-h", "mail_version"])
    dv = first_line([dh.DOVECOT, "--version"])
    dovecot = f"Dovecot {dv.split()[0] if dv else '?'}"
    return {"SMTP": f"Postfix {pf}", "POP3": dovecot, "IMAP": dovecot}


def main():
    binary = os.environ.get("MAILGATE_BIN", "")
    size = os.path.getsize(binary) if binary else 0
    peers = peer_versions()
    print(f"mailgate benchmark: {binary} ({size / 1048576:.2f} MiB), {os.cpu_count()} CPUs, "
          f"{peers['SMTP']}, {peers['POP3']}")
    print(f"server CPU: {Meter('probe').method}; {ROUNDS} rounds each, alternating, medians")
    Meter("probe").close()
    # Every server's files (mailgate's data_dir, Postfix's queue and
    # Maildirs, Dovecot's Maildir) go under one directory: a fresh file
    # system made for this run (scratchfs.py says why), or BENCH_DIR.
    if os.environ.get("BENCH_DIR"):
        run(os.environ["BENCH_DIR"], "BENCH_DIR", peers)
        return
    with scratchfs.fresh_ext4() as (mnt, why):
        run(mnt or tempfile.gettempdir(), "a fresh file system" if mnt else f"no fresh file system: {why}",
            peers)


def run(where, how, peers):
    print(f"files under {where} ({how}): {fs_of(where)}")
    streams = 16
    print(f"that disk: {scratchfs.durable_writes_per_second(where, streams=streams):.0f} durable writes/s "
          f"({streams} threads of 4 KiB tmp/ write, fsync, rename to new/, fsync new/)")
    tempfile.tempdir = where
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="mailgate-bench-")
    os.chmod(tmp, 0o755)
    only = sys.argv[1:] or ["smtp", "mailauth", "pop3", "imap", "outbound", "smartpop", "memory"]
    table = []
    try:
        for name in ("smtp", "mailauth", "pop3", "imap"):
            if name in only:
                globals()[f"bench_{name}"](tmp, table)
        if table:
            print()
            print_side_by_side(table, peers)
        rest = [n for n in only if n not in ("smtp", "mailauth", "pop3", "imap")]
        if rest:
            print()
            print(f"| {'mailgate alone':<42} | {'msgs':>6} | {'msgs/s':>9} | {'CPU s':>7} | {'peak MiB':>8} | note")
            print(f"|{'-' * 44}|{'-' * 8}|{'-' * 11}|{'-' * 9}|{'-' * 10}|------")
            for name in rest:
                globals()[f"bench_{name}"](tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nbench took {time.time() - started:.0f} s")
    if any(fig.failed for fig in table):
        sys.exit(1)


if __name__ == "__main__":
    main()
