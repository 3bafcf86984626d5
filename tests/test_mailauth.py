"""SPF, DKIM, DMARC, DNSBL and greylisting on the MX role, end to end.

The real binary on loopback, its resolver pointed at a dnslib server that
serves the SPF, DKIM, DMARC and DNSBL zones (slow and broken answers too);
mail comes from smtplib and swaks, is signed by dkimpy, and what lands in
the Maildir (Authentication-Results, the Junk folder) or the SMTP reply
is what is checked. The client is 127.0.0.1: not in relay_networks, so
every check applies.
"""

import base64
import email
import imaplib
import smtplib
import subprocess
import threading
import time
from pathlib import Path

import dkim
import nacl.signing
import pytest
from dnslib import MX, QTYPE, RCODE, RR, SOA, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

CLIENT = "127.0.0.1"


class Zone(BaseResolver):
    """TXT and A records from dicts; everything else NXDOMAIN. `slow`
    names are answered after `delay` seconds, `servfail` names with
    SERVFAIL, `drop` names never."""

    def __init__(self):
        self.txt = {}
        self.a = {}
        self.mx = {}
        self.slow = set()
        self.delay = 0.0
        self.servfail = set()
        self.drop = set()
        self.queries = []
        self.tcp_queries = []

    def resolve(self, request, handler):
        reply = self.answer(request)
        if reply is None:
            return None
        qname = str(request.q.qname).rstrip(".").lower()
        if getattr(handler, "protocol", "udp") == "tcp":
            self.tcp_queries.append(qname)
        elif len(reply.pack()) > 512:
            # RFC 1035 4.2.1: too long for UDP: truncated, ask over TCP.
            reply = request.reply()
            reply.header.tc = 1
        return reply

    def answer(self, request):
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.queries.append((qname, qtype))
        if qname in self.drop:
            time.sleep(30)
            return None
        if qname in self.slow:
            time.sleep(self.delay)
        if qname in self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if qname not in self.txt and qname not in self.a and qname not in self.mx:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(RR("test", QTYPE.SOA, ttl=60, rdata=SOA("ns.test", "hostmaster.test")))
            return reply
        if qtype == "TXT":
            for text in self.txt.get(qname, []):
                # Long records in 255-octet strings (RFC 7208 3.3).
                chunks = [text[i:i + 255].encode() for i in range(0, len(text), 255)] or [b""]
                reply.add_answer(RR(qname, QTYPE.TXT, ttl=60, rdata=TXT(chunks)))
        elif qtype == "A":
            for ip in self.a.get(qname, []):
                reply.add_answer(RR(qname, QTYPE.A, ttl=60, rdata=A(ip)))
        elif qtype == "MX":
            for pref, host in self.mx.get(qname, []):
                reply.add_answer(RR(qname, QTYPE.MX, ttl=60, rdata=MX(host, pref)))
        if not reply.rr:
            reply.add_auth(RR("test", QTYPE.SOA, ttl=60, rdata=SOA("ns.test", "hostmaster.test")))
        return reply


@pytest.fixture
def dns():
    zone = Zone()
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", logf=lambda s: None)
    # UDP and TCP on one port number: the UDP port the kernel picks may be
    # taken for TCP by another test running beside this one; pick again.
    for _ in range(50):
        server = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
        zone.port = server.server.server_address[1]
        try:
            tcp = DNSServer(zone, address="127.0.0.1", port=zone.port, logger=quiet, tcp=True)
            break
        except OSError:
            server.server.server_close()
    else:
        raise RuntimeError("no port free for both UDP and TCP")
    server.start_thread()
    tcp.start_thread()
    yield zone
    server.stop()
    tcp.stop()


def rsa_key(tmp_path, bits=2048):
    pem = tmp_path / f"rsa{bits}.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(pem), str(bits)], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(pem), "-pubout", "-outform", "DER"],
        check=True, capture_output=True,
    ).stdout
    return pem.read_bytes(), "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def ed25519_key():
    sk = nacl.signing.SigningKey.generate()
    return base64.b64encode(bytes(sk)), "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(sk.verify_key)).decode()


def mx(make_server, dns, extra_smtp="", extra=""):
    """A server with the checks on and its resolver at `dns`."""
    return make_server(
        extra=f"\n[outbox]\nnameserver = 127.0.0.1:{dns.port}\n" + extra,
        replace={"mail_auth = no": "mail_auth = yes\n" + extra_smtp},
    )


def message(sender="alice@sender.test", to="bob@example.test", subject="hello", body="the body.\r\n"):
    return (
        f"From: Alice <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@x>\r\n\r\n{body}"
    ).encode()


def send(server, msg, mail_from="alice@sender.test", to="bob@example.test", helo="client.sender.test"):
    """(code, text) of the end of the data, or of the refusal before it."""
    with smtplib.SMTP(CLIENT, server.ports["smtp"], local_hostname=helo, timeout=60) as s:
        try:
            s.sendmail(mail_from, [to], msg)
            return 250, ""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()
        except smtplib.SMTPRecipientsRefused as e:
            code, text = list(e.recipients.values())[0]
            return code, text.decode()


def one_message(server, address="bob@example.test", timeout=15):
    msgs = server.wait_messages(address, 1, timeout=timeout)
    assert len(msgs) == 1
    return msgs[0]


def auth_results(msg):
    values = msg.get_all("Authentication-Results") or []
    assert len(values) == 1, values
    return " ".join(values[0].split())


def junk_files(server, address="bob@example.test"):
    root = server.maildir_path(address) / ".Junk"
    return sorted((root / "new").glob("*")) if (root / "new").is_dir() else []


SPF_OK = "v=spf1 ip4:127.0.0.1 -all"


def sender_zone(dns, spf=SPF_OK, dmarc=None, domain="sender.test"):
    dns.txt[domain] = [spf] if spf else []
    if dmarc:
        dns.txt[f"_dmarc.{domain}"] = [dmarc]


# -- SPF, DKIM and the header ---------------------------------------------------


def test_spf_pass_and_fail_are_recorded(make_server, dns):
    sender_zone(dns)
    dns.txt["elsewhere.test"] = ["v=spf1 ip4:192.0.2.0/24 ~all"]
    server = mx(make_server, dns)
    assert send(server, message()) == (250, "")
    ar = auth_results(one_message(server))
    assert ar.startswith("mx.example.test;"), ar
    assert "spf=pass" in ar and "smtp.mailfrom=sender.test" in ar, ar
    assert "dkim=pass" not in ar, ar
    assert send(server, message(sender="x@elsewhere.test"), mail_from="x@elsewhere.test") == (250, "")
    msgs = server.wait_messages("bob@example.test", 2)
    ars = [auth_results(m) for m in msgs]
    assert any("spf=softfail" in a and "smtp.mailfrom=elsewhere.test" in a for a in ars), ars
    log = server.log_text()
    assert "mailauth client=[127.0.0.1] from=<x@elsewhere.test> spf=softfail" in log, log


def test_null_sender_checks_the_helo(make_server, dns):
    dns.txt["client.sender.test"] = [SPF_OK]
    server = mx(make_server, dns)
    assert send(server, message(), mail_from="") == (250, "")
    ar = auth_results(one_message(server))
    assert "spf=pass" in ar and "smtp.helo=client.sender.test" in ar, ar


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize("canon", [(b"relaxed", b"relaxed"), (b"simple", b"simple")], ids=["relaxed", "simple"])
def test_dkimpy_signature_passes_tampered_fails(make_server, dns, tmp_path, kind, canon):
    priv, record = rsa_key(tmp_path) if kind == "rsa" else ed25519_key()
    dns.txt["sel._domainkey.sender.test"] = [record]
    sender_zone(dns, dmarc="v=DMARC1; p=none")
    server = mx(make_server, dns)
    msg = message(body="Hello  Bob,\t \r\n\r\nsigned text.\r\n")
    sig = dkim.sign(
        msg, b"sel", b"sender.test", priv, canonicalize=canon,
        signature_algorithm=b"ed25519-sha256" if kind == "ed25519" else b"rsa-sha256",
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    assert send(server, sig + msg) == (250, "")
    ar = auth_results(one_message(server))
    assert "dkim=pass" in ar and "header.d=sender.test" in ar, ar
    assert "dmarc=pass" in ar, ar
    tampered = (sig + msg).replace(b"signed text", b"signed t3xt")
    assert send(server, tampered) == (250, "")
    msgs = server.wait_messages("bob@example.test", 2)
    ars = [auth_results(m) for m in msgs]
    assert sum("dkim=fail" in a for a in ars) == 1, ars


def test_large_spooled_message_is_hashed_from_disk(make_server, dns, tmp_path):
    priv, record = ed25519_key()
    dns.txt["big._domainkey.sender.test"] = [record]
    sender_zone(dns)
    server = mx(make_server, dns)
    body = "".join(f"line {i} of a long message, padded to be spooled to disk...\r\n" for i in range(12000))
    msg = message(body=body)
    assert len(msg) > 600_000
    sig = dkim.sign(msg, b"big", b"sender.test", priv, signature_algorithm=b"ed25519-sha256",
                    include_headers=[b"from", b"to", b"subject"])
    assert send(server, sig + msg) == (250, "")
    ar = auth_results(one_message(server))
    assert "dkim=pass" in ar, ar
    spool = server.data_dir / "spool"
    assert not spool.is_dir() or [p for p in spool.iterdir() if p.is_file()] == []


# -- DMARC policy -------------------------------------------------------------


def test_p_reject_failure_is_refused_and_leaves_nothing(make_server, dns):
    sender_zone(dns, spf="v=spf1 ip4:192.0.2.1 -all", dmarc="v=DMARC1; p=reject")
    server = mx(make_server, dns, extra_smtp="dmarc = reject\n")
    code, text = send(server, message())
    assert code == 550 and "5.7.1" in text and "DMARC" in text, (code, text)
    time.sleep(0.5)
    assert server.messages("bob@example.test") == []
    assert junk_files(server) == []
    spool = server.data_dir / "spool"
    assert not spool.is_dir() or [p for p in spool.iterdir() if p.is_file()] == []
    assert "action=rejected" in server.log_text()


def test_p_reject_with_policy_quarantine_goes_to_junk(make_server, dns):
    sender_zone(dns, spf="v=spf1 ip4:192.0.2.1 -all", dmarc="v=DMARC1; p=reject")
    server = mx(make_server, dns)  # dmarc = quarantine, the default
    assert send(server, message()) == (250, "")
    deadline = time.time() + 10
    while not junk_files(server) and time.time() < deadline:
        time.sleep(0.1)
    files = junk_files(server)
    assert len(files) == 1
    assert (server.maildir_path("bob@example.test") / ".Junk" / "maildirfolder").exists()
    assert server.messages("bob@example.test") == []
    m = email.message_from_bytes(files[0].read_bytes())
    assert "dmarc=fail" in auth_results(m)


def test_p_quarantine_lands_in_junk_seen_over_imap(make_server, dns):
    sender_zone(dns, spf="v=spf1 -all", dmarc="v=DMARC1; p=quarantine")
    server = mx(make_server, dns, extra="")
    assert send(server, message(subject="quarantined one")) == (250, "")
    deadline = time.time() + 10
    while not junk_files(server) and time.time() < deadline:
        time.sleep(0.1)
    assert len(junk_files(server)) == 1
    imap_port = getattr(server, "ports", {}).get("imap")
    if imap_port is None:
        pytest.skip("this build's test config has no IMAP listener")
    with imaplib.IMAP4("127.0.0.1", imap_port) as im:
        im.login("bob@example.test", "secret")
        typ, data = im.select("Junk")
        assert typ == "OK" and int(data[0]) == 1
        typ, data = im.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"quarantined one" in data[0][1]


def test_dmarc_tag_delivers_to_inbox(make_server, dns):
    sender_zone(dns, spf="v=spf1 -all", dmarc="v=DMARC1; p=reject")
    server = mx(make_server, dns, extra_smtp="dmarc = tag\n")
    assert send(server, message()) == (250, "")
    assert "dmarc=fail" in auth_results(one_message(server))
    assert junk_files(server) == []


# -- DNS trouble ----------------------------------------------------------------


def test_dmarc_servfail_defers_with_4_4_3(make_server, dns):
    sender_zone(dns, spf="v=spf1 -all")
    dns.servfail.add("_dmarc.sender.test")
    server = mx(make_server, dns)
    code, text = send(server, message())
    assert code == 451 and "4.4.3" in text, (code, text)
    assert server.messages("bob@example.test") == []


def test_spf_timeout_is_temperror_and_the_loop_keeps_serving(make_server, dns):
    dns.txt["slow.test"] = [SPF_OK]
    dns.slow.add("slow.test")
    dns.delay = 40  # past every retry: a timeout
    dns.txt["_dmarc.slow.test"] = ["v=DMARC1; p=none"]
    server = mx(make_server, dns)
    result = {}

    def slow_sender():
        result["slow"] = send(server, message(sender="a@slow.test"), mail_from="a@slow.test")

    t = threading.Thread(target=slow_sender)
    t.start()
    time.sleep(1)
    # Meanwhile another client is served at once: nothing waits on DNS.
    sender_zone(dns)
    started = time.time()
    assert send(server, message()) == (250, "")
    assert time.time() - started < 10
    t.join(timeout=90)
    assert result["slow"] == (250, ""), result
    msgs = server.wait_messages("bob@example.test", 2)
    ars = [auth_results(m) for m in msgs]
    assert any("spf=temperror" in a for a in ars), ars


# -- SPF against pyspf, through the binary ------------------------------------------


def spf_scenarios(dns):
    """name -> what pyspf and mailgate are both asked about: MAIL FROM
    user@NAME from 127.0.0.1, HELO client.sender.test."""
    t, a = dns.txt, dns.a
    t["s1.test"] = ["v=spf1 ip4:127.0.0.1 -all"]
    t["s2.test"] = ["v=spf1 ip4:192.0.2.1 -all"]
    t["s3.test"] = ["v=spf1 ~all"]
    t["s4.test"] = ["v=spf1 ?all"]
    # s5.test: no record at all.
    t["s6.test"] = ["v=spf1 include:inc.s6.test -all"]
    t["inc.s6.test"] = ["v=spf1 ip4:127.0.0.0/8 -all"]
    t["s7.test"] = ["v=spf1 redirect=r.s7.test"]
    t["r.s7.test"] = ["v=spf1 a:host.s7.test -all"]
    a["host.s7.test"] = ["127.0.0.1"]
    t["s8.test"] = ["v=spf1 mx -all"]
    dns.mx["s8.test"] = [(10, "mx.s8.test")]
    a["mx.s8.test"] = ["127.0.0.1"]
    t["s9.test"] = ["v=spf1 exists:%{i}.ex.s9.test -all"]
    a["127.0.0.1.ex.s9.test"] = ["127.0.0.2"]
    t["s10.test"] = ["v=spf1 include:s10.test -all"]
    t["s11.test"] = ["v=spf1 " + " ".join(f"include:i{n}.s11.test" for n in range(11)) + " ip4:127.0.0.1 -all"]
    for n in range(11):
        t[f"i{n}.s11.test"] = ["v=spf1 -all"]
    t["s12.test"] = ["v=spf1 a:n1.s12.test a:n2.s12.test a:n3.s12.test ip4:127.0.0.1 -all"]
    t["s13.test"] = ["v=spf1 ip4:bogus -all"]
    t["s14.test"] = ["v=spf1 -all", "v=spf1 +all"]
    t["s15.test"] = ["v=spf1 ip6:2001:db8::/32 -all"]
    t["s16.test"] = ["v=spf1 a/24 -all"]
    a["s16.test"] = ["127.0.0.99"]
    t["s17.test"] = ["v=spf1 include:srv.s17.test ~all"]
    dns.servfail.add("srv.s17.test")
    t["s18.test"] = ["v=spf1 -exists:%{l}.bad.s18.test +all"]
    a["user.bad.s18.test"] = ["127.0.0.2"]
    t["s19.test"] = ["v=spf1 ip4:127.0.0.1 -all " + "x" * 600]  # long: several strings
    t["s20.test"] = ["v=spf1 include:nowhere.s20.test -all"]
    return [f"s{n}.test" for n in range(1, 21)]


def test_spf_results_agree_with_pyspf(make_server, dns):
    spf = pytest.importorskip("spf")
    import dns.resolver as dnsresolver

    names = spf_scenarios(dns)
    resolver = dnsresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = dns.port
    saved = dnsresolver.default_resolver
    dnsresolver.default_resolver = resolver
    try:
        expected = {n: spf.check2(i=CLIENT, s=f"user@{n}", h="client.sender.test")[0] for n in names}
    finally:
        dnsresolver.default_resolver = saved
    server = mx(make_server, dns)
    for n in names:
        code = send(server, message(sender=f"user@{n}", subject=n), mail_from=f"user@{n}")
        assert code == (250, ""), (n, code)
    msgs = server.wait_messages("bob@example.test", len(names), timeout=60)
    got = {}
    for m in msgs:
        ar = auth_results(m)
        got[m["Subject"]] = ar.split("spf=")[1].split()[0]
    agree = [n for n in names if got.get(n) == expected[n]]
    assert len(agree) == len(names), {n: (expected[n], got.get(n)) for n in names if n not in agree}
    # The scenarios cover every result.
    assert set(expected.values()) == {"pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"}


# -- DNSBL ----------------------------------------------------------------------


def test_dnsbl_listing_refused_naming_the_list(make_server, dns):
    dns.a["1.0.0.127.bl.example.net"] = ["127.0.0.2"]
    server = mx(make_server, dns, extra_smtp="dnsbl = zen.example.org, bl.example.net\n")
    out = subprocess.run(
        ["swaks", "--server", f"{CLIENT}:{server.ports['smtp']}", "--to", "bob@example.test",
         "--from", "alice@sender.test", "--timeout", "30"],
        capture_output=True, text=True, timeout=60,
    ).stdout
    assert "554 5.7.1" in out and "bl.example.net" in out, out
    assert "zen.example.org" not in out.split("554 5.7.1")[1].splitlines()[0]
    assert server.messages("bob@example.test") == []
    assert "dnsbl=bl.example.net listed (127.0.0.2)" in server.log_text()


def test_dnsbl_query_refused_is_an_error_never_a_listing(make_server, dns):
    dns.a["1.0.0.127.zen.example.org"] = ["127.255.255.254"]
    sender_zone(dns)
    server = mx(make_server, dns, extra_smtp="dnsbl = zen.example.org\n")
    assert send(server, message()) == (250, "")
    one_message(server)
    log = server.log_text()
    assert "dnsbl=zen.example.org error, not a listing" in log and "query refused" in log, log


def test_relay_client_skips_the_checks(make_server, dns):
    dns.a["2.0.0.127.bl.example.net"] = ["127.0.0.2"]
    server = mx(make_server, dns, extra_smtp="dnsbl = bl.example.net\n")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], source_address=("127.0.0.2", 0), timeout=30) as s:
        s.sendmail("a@nowhere.test", ["bob@example.test"], message())
    m = one_message(server)
    assert m.get_all("Authentication-Results") is None


# -- greylisting ------------------------------------------------------------------


def swaks(server, to="bob@example.test", sender="alice@sender.test"):
    return subprocess.run(
        ["swaks", "--server", f"{CLIENT}:{server.ports['smtp']}", "--to", to, "--from", sender,
         "--helo", "client.sender.test", "--timeout", "30"],
        capture_output=True, text=True, timeout=60,
    ).stdout


def test_greylisting_with_swaks_survives_a_restart(make_server, dns):
    sender_zone(dns, spf="v=spf1 ?all")
    server = mx(make_server, dns, extra_smtp="greylist = yes\ngreylist_delay = 2s\n")
    out = swaks(server)
    assert "451 4.7.1" in out and "Greylisted" in out, out
    out = swaks(server)
    assert "451 4.7.1" in out, "a retry before the delay is deferred again:\n" + out
    time.sleep(2.5)
    out = swaks(server)
    assert "250 2.0.0" in out, out
    server.wait_messages("bob@example.test", 1)
    # Another message of the same triplet passes at once, also after a restart.
    server.restart()
    out = swaks(server)
    assert "250 2.0.0" in out, out
    server.wait_messages("bob@example.test", 2)
    # A new triplet (another recipient) is deferred.
    out = swaks(server, to="alice@example.test")
    assert "451 4.7.1" in out, out
    assert "action=greylisted" in server.log_text()
    assert (server.data_dir / "greylist").read_text().startswith("mailgate-greylist 1")


# -- DKIM signing out -------------------------------------------------------------


from outbox_helpers import Sink  # noqa: E402

SIGNING = {"[domain example.test]\n": "[domain example.test]\ndkim_selector = mg2026\n"}


def keyed_server(make_server, sink_port, dns=None, extra=""):
    outbox = (f"\n[outbox]\nmode = smarthost\nhost = 127.0.0.1:{sink_port}\ntls = none\n"
              "retry = 1s\ngive_up_after = 30s\n")
    replace = dict(SIGNING)
    if dns is not None:
        outbox += f"nameserver = 127.0.0.1:{dns.port}\n"
        replace["mail_auth = no"] = "mail_auth = yes"
    server = make_server(extra=outbox + extra, replace=replace, start=False)
    out = server.run("dkim", "keygen", "example.test", check=True).stdout.decode()
    records = {}
    for line in out.splitlines():
        if " IN TXT " in line:
            name, _, rest = line.partition(" IN TXT ")
            records[name.strip().rstrip(".")] = rest.strip().strip('"')
    assert len(records) == 2, out
    server.start()
    return server, records


def dkimpy_verdicts(content, records):
    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return records.get(name.rstrip(".").lower(), "").encode()
    raw = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    d = dkim.DKIM(raw)
    sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    def one(i):
        try:
            return dkim.DKIM(raw).verify(idx=i, dnsfunc=dnsfunc)
        except dkim.ValidationError:
            return False
    return [one(i) for i in range(len(sigs))], sigs


@pytest.fixture
def sink():
    sinks = []

    def make():
        s = Sink().start()
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.stop()


def test_relayed_mail_is_signed_once_and_dkimpy_verifies(make_server, sink):
    s = sink()
    server, records = keyed_server(make_server, s.port)
    msg = (b"From: Alice <alice@example.test>\r\nTo: carol@remote.test\r\nSubject: signed out\r\n"
           b"Message-ID: <out-1@example.test>\r\n\r\nHello  Carol,\t\r\nbye.\r\n")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], source_address=("127.0.0.2", 0), timeout=30) as c:
        c.sendmail("alice@example.test", ["carol@remote.test"], msg)
    (got,) = s.wait(1, timeout=30)
    ok, sigs = dkimpy_verdicts(got.content, records)
    assert ok == [True, True], (ok, got.content[:2000])
    assert any(b"a=rsa-sha256" in v for v in sigs) and any(b"a=ed25519-sha256" in v for v in sigs)
    assert all(b"d=example.test" in v and b"c=relaxed/relaxed" in v for v in sigs)
    # Tampered in transit: dkimpy says no.
    bad, _ = dkimpy_verdicts(got.content.replace(b"bye.", b"bye!"), records)
    assert bad == [False, False]


def test_mail_from_outside_passing_through_is_not_signed(make_server, sink, dns):
    dns.txt["outside.test"] = [SPF_OK]
    s = sink()
    server, records = keyed_server(make_server, s.port, dns=dns,
                                   extra="\n[alias fwd@example.test]\nto = carol@remote.test\n")
    msg = (b"From: Mallory <alice@example.test>\r\nTo: fwd@example.test\r\nSubject: forged\r\n\r\nx\r\n")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as c:
        c.sendmail("m@outside.test", ["fwd@example.test"], msg)
    (got,) = s.wait(1, timeout=30)
    assert b"DKIM-Signature" not in got.content
    # The forwarded copy carries what the MX checks found.
    fwd = email.message_from_bytes(got.content)
    ar = auth_results(fwd)
    assert "spf=pass" in ar and "smtp.mailfrom=outside.test" in ar, ar


def test_bounce_is_signed(make_server, sink):
    """A relayed message refused by the next hop bounces to its remote
    sender; the bounce (From: MAILER-DAEMON@mx.example.test) is queued
    signed d=example.test, and dkimpy verifies it at the smarthost."""
    s = sink()
    s.rcpt_replies["carol@remote.test"] = "550 5.1.1 no such user"
    server, records = keyed_server(make_server, s.port)
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], source_address=("127.0.0.2", 0), timeout=30) as c:
        c.sendmail("dave@remote.test", ["carol@remote.test"],
                   b"From: dave@remote.test\r\nTo: carol@remote.test\r\nSubject: will bounce\r\n\r\nx\r\n")
    (got,) = s.wait(1, timeout=60)
    assert got.mail_from in ("", "<>") and got.rcpt_tos == ["dave@remote.test"]
    ok, sigs = dkimpy_verdicts(got.content, records)
    assert ok == [True, True], got.content[:1500]
    assert all(b"d=example.test" in v for v in sigs)


def test_check_says_when_a_dnsbl_refuses_queries(make_server, dns):
    dns.a["2.0.0.127.zen.example.org"] = ["127.255.255.254"]
    dns.a["2.0.0.127.bl.example.net"] = ["127.0.0.2"]
    server = mx(make_server, dns, extra_smtp="dnsbl = zen.example.org, bl.example.net, typo.example.com\n")
    out = server.run("check", timeout=60).stdout.decode()
    line = next(i + 1 for i, l in enumerate(server.config_text.splitlines()) if l.startswith("dnsbl ="))
    assert f"{server.config}:{line}: warning: dnsbl zen.example.org cannot be used from here" in out, out
    assert "query refused" in out, out
    assert "dnsbl typo.example.com does not list its test entry" in out, out
    assert "dnsbl bl.example.net" not in out, out


# -- bounded work on hostile input --------------------------------------------------


def test_truncated_answer_is_fetched_over_tcp(make_server, dns):
    mechanisms = " ".join(f"ip4:192.0.2.{n}" for n in range(1, 120))
    dns.txt["big.test"] = [f"v=spf1 {mechanisms} ip4:127.0.0.1 -all"]
    server = mx(make_server, dns)
    assert send(server, message(sender="a@big.test"), mail_from="a@big.test") == (250, "")
    ar = auth_results(one_message(server))
    assert "spf=pass" in ar, ar
    assert "big.test" in dns.tcp_queries


def test_hostile_answers_and_signatures_cost_bounded_work(make_server, dns, tmp_path):
    """A 60 KB TXT answer, a record that includes itself, and a message
    with 500 DKIM signatures: each message is answered, the header stays
    small, and another client is served meanwhile."""
    dns.txt["huge.test"] = ["v=spf1 " + " ".join(f"a:h{n}.huge.test" for n in range(5000))[:60000]]
    dns.txt["loop.test"] = ["v=spf1 include:loop.test -all"]
    priv, record = ed25519_key()
    dns.txt["s0._domainkey.sender.test"] = [record]
    sender_zone(dns)
    server = mx(make_server, dns)
    assert send(server, message(sender="a@huge.test"), mail_from="a@huge.test") == (250, "")
    assert send(server, message(sender="a@loop.test"), mail_from="a@loop.test") == (250, "")
    msg = message(body="many signatures\r\n")
    sig = dkim.sign(msg, b"s0", b"sender.test", priv, signature_algorithm=b"ed25519-sha256",
                    include_headers=[b"from", b"subject"])
    many = b"".join(sig.replace(b"s=s0", f"s=s{n}".encode()) for n in range(500))
    started = time.time()
    assert send(server, many + msg) == (250, "")
    assert time.time() - started < 60
    msgs = server.wait_messages("bob@example.test", 3, timeout=30)
    ars = {m["From"].split("@")[1].rstrip(">"): auth_results(m) for m in msgs}
    assert "spf=permerror" in ars["huge.test"] or "spf=temperror" in ars["huge.test"], ars
    assert "spf=permerror" in ars["loop.test"], ars
    signed = [a for a in msgs if "many signatures" in a.get_payload()][0]
    ar = auth_results(signed)
    assert "dkim=pass" in ar, ar
    assert len(ar) < 8000, len(ar)
    # Only a bounded number of key queries went out for 500 signatures.
    keys = {q for q, t in dns.queries if q.endswith("._domainkey.sender.test")}
    assert len(keys) <= 64, len(keys)


def test_client_gone_during_the_checks_leaks_nothing(make_server, dns):
    """The client hangs up while SPF waits on a nameserver that never
    answers: the spooled message is delivered once (as any message whose
    250 the client did not wait for) or not at all, and its spool file
    is gone either way; the server goes on serving."""
    dns.txt["slow.test"] = [SPF_OK]
    dns.slow.add("slow.test")
    dns.delay = 40
    server = mx(make_server, dns)
    body = "x" * 76 + "\r\n"
    msg = message(sender="a@slow.test", body=body * 8000)  # spooled to disk
    s = smtplib.SMTP(CLIENT, server.ports["smtp"], timeout=30)
    s.ehlo("client.slow.test")
    s.mail("a@slow.test")
    s.rcpt("bob@example.test")
    s.putcmd("DATA")
    assert s.getreply()[0] == 354
    s.send(msg + b"\r\n.\r\n")
    time.sleep(1)
    s.sock.close()  # gone before the SPF answer
    spool = server.data_dir / "spool"
    deadline = time.time() + 40
    while time.time() < deadline and spool.is_dir() and any(p.is_file() for p in spool.iterdir()):
        time.sleep(0.2)
    assert not spool.is_dir() or [p for p in spool.iterdir() if p.is_file()] == []
    before = len(server.messages("bob@example.test"))
    assert before <= 1
    sender_zone(dns)
    assert send(server, message(subject="after")) == (250, "")
    msgs = server.wait_messages("bob@example.test", before + 1)
    assert any(m["Subject"] == "after" for m in msgs)
