"""The IMAP server (issue 13) driven by real clients: Python's imaplib
and imapclient (PyPI), against the real binary.

Mail arrives over SMTP (the real delivery path), so what IMAP shows is
what the store wrote; every assertion is on content the server returned.
"""

import email
import imaplib
import os
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import imapclient
import pytest

from test_durability import strace_usable

USER, PASSWORD = "bob@example.test", "secret"


def deliver(server, subject, body="hello\n", to=USER):
    msg = (
        f"From: alice@example.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\n{body}"
    )
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail("alice@example.test", [to], msg.encode())


def login(server):
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    m.login(USER, PASSWORD)
    return m


def client(server):
    c = imapclient.IMAPClient("127.0.0.1", port=server.ports["imap"], ssl=False, timeout=30)
    c.login(USER, PASSWORD)
    return c


def wait_exists(server, n, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = login(server)
        typ, data = m.select("INBOX", readonly=True)
        m.logout()
        if int(data[0]) >= n:
            return
        time.sleep(0.2)
    pytest.fail(f"INBOX never reached {n} messages")


def test_capability_and_login_refusals(server):
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    caps = m.capabilities
    for c in ("IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "STARTTLS", "AUTH=PLAIN", "CONDSTORE", "LITERAL+"):
        assert c in caps, caps
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(USER, "wrong")
    m.login(USER, PASSWORD)
    typ, data = m.capability()
    assert typ == "OK" and b"AUTH=PLAIN" not in data[0]
    m.logout()


def test_authenticate_plain_and_imaps_and_starttls(server):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx, timeout=30)
    typ, _ = m.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
    assert typ == "OK"
    m.logout()
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    m.starttls(ssl_context=ctx)
    assert "STARTTLS" not in m.capabilities
    m.login(USER, PASSWORD)
    m.logout()


def test_special_use_folders_and_list(server):
    c = client(server)
    folders = {name: flags for flags, _, name in c.list_folders()}
    for n in ("INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert n in folders, folders
    assert b"\\Sent" in folders["Sent"] and b"\\Trash" in folders["Trash"]
    c.create_folder("Lists")
    c.create_folder("Lists.Family")
    folders = {name: flags for flags, _, name in c.list_folders()}
    assert b"\\HasChildren" in folders["Lists"], folders
    assert b"\\HasNoChildren" in folders["Lists.Family"], folders
    assert [n for _, _, n in c.list_folders(pattern="Lists.%")] == ["Lists.Family"]
    c.rename_folder("Lists.Family", "Lists.Kin")
    names = [n for _, _, n in c.list_folders()]
    assert "Lists.Kin" in names and "Lists.Family" not in names
    c.delete_folder("Lists.Kin")
    assert "Lists.Kin" not in [n for _, _, n in c.list_folders()]
    # On disk, Maildir++: .Lists with maildirfolder.
    root = server.maildir_path(USER)
    assert (root / ".Lists" / "maildirfolder").exists()
    with pytest.raises(imapclient.exceptions.IMAPClientError):
        c.create_folder("../escape")
    with pytest.raises(imapclient.exceptions.IMAPClientError):
        c.delete_folder("INBOX")
    c.logout()


def test_select_fetch_delivered_mail(server):
    deliver(server, "first one", "line one\nline two\n")
    deliver(server, "second one")
    wait_exists(server, 2)
    c = client(server)
    info = c.select_folder("INBOX")
    assert info[b"EXISTS"] == 2
    assert info[b"UIDVALIDITY"] > 0 and info[b"UIDNEXT"] == 3
    data = c.fetch(c.search("ALL"), ["FLAGS", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "BODY.PEEK[]", "BODYSTRUCTURE"])
    assert sorted(data) == [1, 2]
    body = data[1][b"BODY[]"]
    assert b"line one\r\nline two\r\n" in body, body
    assert data[1][b"RFC822.SIZE"] == len(body)
    assert data[1][b"ENVELOPE"].subject == b"first one"
    assert data[2][b"ENVELOPE"].subject == b"second one"
    assert b"\\Seen" not in data[1][b"FLAGS"]
    hdr = c.fetch([1], ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])[1]
    assert hdr[b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: first one\r\n\r\n"
    part = c.fetch([1], ["BODY.PEEK[TEXT]<5.3>"])[1]
    assert part[b"BODY[TEXT]<5>"] == b"one"
    # BODY[] (not PEEK) sets \Seen, and the flag is on disk.
    c.fetch([2], ["BODY[]"])
    assert b"\\Seen" in c.get_flags([2])[2]
    assert any(f.endswith(":2,S") for f in (p.name for p in (server.maildir_path(USER) / "cur").iterdir()))
    c.logout()


def test_store_search_expunge(server):
    for i in range(4):
        deliver(server, f"msg {i}", f"body number {i}\n")
    wait_exists(server, 4)
    c = client(server)
    c.select_folder("INBOX")
    uids = c.search("ALL")
    assert len(uids) == 4
    c.add_flags(uids[:2], [imapclient.SEEN, b"$Important"])
    assert set(c.search("SEEN")) == set(uids[:2])
    assert set(c.search("UNSEEN")) == set(uids[2:])
    assert c.search(["KEYWORD", "$Important"]) == uids[:2]
    assert c.search(["SUBJECT", "msg 3"]) == [uids[3]]
    assert c.search(["BODY", "number 2"]) == [uids[2]]
    assert c.search(["OR", "SUBJECT", "msg 0", "SUBJECT", "msg 1"]) == uids[:2]
    c.remove_flags([uids[0]], [imapclient.SEEN])
    assert set(c.get_flags([uids[0]])[uids[0]]) - {b"\\Recent"} == {b"$Important"}
    c.set_flags([uids[3]], [imapclient.DELETED])
    c.expunge()
    assert c.search("ALL") == uids[:3]
    # UIDs survive a reconnect; flags are on disk.
    c.logout()
    c = client(server)
    c.select_folder("INBOX")
    assert c.search("ALL") == uids[:3]
    assert set(c.search("SEEN")) == {uids[1]}
    c.logout()


def test_append_copy_move_uidplus(server):
    c = client(server)
    msg = b"From: me@example.test\r\nSubject: appended\r\n\r\nappended body\r\n"
    r = c.append("Drafts", msg, flags=[imapclient.DRAFT])
    assert b"APPENDUID" in r, r
    info = c.select_folder("Drafts")
    assert info[b"EXISTS"] == 1
    got = c.fetch("1", ["BODY.PEEK[]", "FLAGS"])[1]
    assert got[b"BODY[]"] == msg
    assert b"\\Draft" in got[b"FLAGS"]
    uid = c.search("ALL")[0]
    c.copy([uid], "Sent")
    c.move([uid], "Archive")
    assert c.search("ALL") == []
    for folder in ("Sent", "Archive"):
        c.select_folder(folder)
        data = c.fetch(c.search("ALL"), ["BODY.PEEK[]"])
        assert [d[b"BODY[]"] for d in data.values()] == [msg], folder
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="TRYCREATE"):
        c.append("NoSuchFolder", msg)
    c.logout()


def test_literal_plus_and_pipelined_commands(server):
    s = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=30)
    f = s.makefile("rb")
    f.readline()
    body = b"Subject: lit\r\n\r\nx\r\n"
    s.sendall(
        b"a LOGIN " + USER.encode() + b" " + PASSWORD.encode() + b"\r\n"
        b"b APPEND INBOX {" + str(len(body)).encode() + b"+}\r\n" + body + b"\r\n"
        b"c SELECT INBOX\r\nd UID FETCH 1:* (UID RFC822.SIZE)\r\ne LOGOUT\r\n"
    )
    out = b""
    while True:
        line = f.readline()
        if not line:
            break
        out += line
    text = out.decode()
    assert "a OK" in text and "b OK [APPENDUID" in text and "c OK [READ-WRITE]" in text, text
    assert f"RFC822.SIZE {len(body)}" in text, text
    assert "e OK" in text


def test_hostile_input(server):
    s = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a LOGIN " + USER.encode() + b" " + PASSWORD.encode() + b"\r\n")
    assert f.readline().startswith(b"a OK")
    s.sendall(b"b SELECT INBOX\r\n")
    while not (line := f.readline()).startswith(b"b "):
        pass
    assert line.startswith(b"b OK")
    s.sendall(b"c FETCH 0 FLAGS\r\n")
    assert f.readline().startswith(b"c BAD")
    s.sendall(b"d APPEND INBOX {4000000000}\r\n")
    assert f.readline().startswith(b"d NO [TOOBIG]")
    s.sendall(b"e NOOP\r\n")
    assert f.readline().startswith(b"e OK")
    s.sendall(b"f CREATE .hidden\r\n")
    assert f.readline().startswith(b"f NO")
    s.sendall(b"g CREATE a/b\r\n")
    assert f.readline().startswith(b"g NO")
    # Three BADs in a row end the session.
    s.sendall(b"x1 BOGUS\r\nx2 BOGUS\r\nx3 BOGUS\r\n")
    rest = b""
    while chunk := s.recv(4096):
        rest += chunk
    assert rest.count(b" BAD ") == 3 and b"* BYE" in rest, rest
    # The server is fine.
    m = login(server)
    m.logout()


def test_vanishing_client_mid_append_leaves_no_file(server):
    s = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a LOGIN " + USER.encode() + b" " + PASSWORD.encode() + b"\r\n")
    assert f.readline().startswith(b"a OK")
    s.sendall(b"b APPEND INBOX {100000}\r\n")
    assert f.readline().startswith(b"+")
    s.sendall(b"x" * 5000)
    # The makefile holds the socket open: close both, or nothing vanishes.
    f.close()
    s.close()
    time.sleep(0.5)
    m = login(server)
    typ, data = m.select("INBOX")
    assert int(data[0]) == 0
    m.logout()
    root = server.maildir_path(USER)
    leftovers = [p for sub in ("tmp", "new", "cur") for p in (root / sub).glob("*") if p.is_file()]
    assert leftovers == [], leftovers


def test_idle_sees_delivery_and_other_sessions(server):
    deliver(server, "before idle")
    wait_exists(server, 1)
    watcher = client(server)
    watcher.select_folder("INBOX")
    watcher.idle()
    deliver(server, "during idle")
    responses = watcher.idle_check(timeout=20)
    assert (2, b"EXISTS") in responses, responses
    # Another session's flag change arrives as FETCH FLAGS.
    other = client(server)
    other.select_folder("INBOX")
    other.add_flags([1], [imapclient.FLAGGED])
    deadline = time.time() + 20
    seen = []
    while time.time() < deadline:
        seen += watcher.idle_check(timeout=2)
        if any(r[1] == b"FETCH" and b"\\Flagged" in str(r).encode() for r in seen if len(r) > 1):
            break
    assert any(len(r) > 1 and r[1] == b"FETCH" for r in seen), seen
    # ...and an expunge as EXPUNGE.
    other.set_flags([1], [imapclient.DELETED])
    other.expunge()
    deadline = time.time() + 20
    seen = []
    while time.time() < deadline and not any(len(r) > 1 and r[1] == b"EXPUNGE" for r in seen):
        seen += watcher.idle_check(timeout=2)
    assert (1, b"EXPUNGE") in seen, seen
    watcher.idle_done()
    assert watcher.search("ALL") == [2]
    other.logout()
    watcher.logout()


def test_pop3_deletion_reaches_imap(server):
    import poplib

    deliver(server, "for pop")
    deliver(server, "stays")
    wait_exists(server, 2)
    c = client(server)
    c.select_folder("INBOX")
    uids = c.search("ALL")
    p = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
    p.user(USER)
    p.pass_(PASSWORD)
    p.dele(1)
    p.quit()
    c.noop()
    assert c.search("ALL") == uids[1:]
    c.logout()


def test_condstore_and_status(server):
    deliver(server, "cs")
    wait_exists(server, 1)
    c = client(server)
    c.enable("CONDSTORE")
    info = c.select_folder("INBOX")
    hms = info[b"HIGHESTMODSEQ"]
    c.add_flags([1], [imapclient.FLAGGED])
    data = c.fetch([1], ["MODSEQ", "FLAGS"])
    assert data[1][b"MODSEQ"][0] > hms - 1
    st = c.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "UNSEEN", "HIGHESTMODSEQ"])
    assert st[b"MESSAGES"] == 1 and st[b"UNSEEN"] == 1 and st[b"UIDNEXT"] == 2
    assert st[b"HIGHESTMODSEQ"] >= data[1][b"MODSEQ"][0]
    c.logout()


def test_new_keyword_announced_and_examine_and_fetch_modseq(server):
    """imap-findings F1, F3, F4, I2."""
    deliver(server, "kw")
    wait_exists(server, 1)
    m = login(server)
    typ, data = m.select("INBOX", readonly=True)
    assert typ == "OK"
    assert m.untagged_responses.get("RECENT") == [b"1"], m.untagged_responses
    assert any(b"PERMANENTFLAGS ()" in x for x in m.untagged_responses.get("OK", [])), m.untagged_responses
    m.select("INBOX")
    m.untagged_responses.clear()
    typ, data = m.store("1", "+FLAGS", "($hello)")
    assert typ == "OK"
    flags = m.untagged_responses.get("FLAGS", [])
    assert flags and b"$hello" in flags[0], m.untagged_responses
    typ, data = m.fetch("1", "(MODSEQ)")
    assert any(b"HIGHESTMODSEQ" in x for x in m.untagged_responses.get("OK", [])), m.untagged_responses
    typ, data = m.store("1", "+FLAGS", "(\\Seen)")
    assert b"MODSEQ" in data[0], data
    m.logout()


def test_list_shows_missing_parents_noselect(server):
    """imap-findings I1: `.Kin.Near` alone on disk; `%` still leads to it."""
    c = client(server)
    c.create_folder("Kin.Near")
    assert not (server.maildir_path(USER) / ".Kin").exists()
    top = {name: flags for flags, _, name in c.list_folders(pattern="%")}
    assert "Kin" in top and b"\\Noselect" in top["Kin"] and b"\\HasChildren" in top["Kin"], top
    assert "Kin.Near" not in top
    assert [n for _, _, n in c.list_folders(pattern="Kin.%")] == ["Kin.Near"]
    c.logout()


def test_modified_utf7_names(server):
    """imap-findings F2: `&AOQA5A-` is a valid name; stored as Dovecot does."""
    m = login(server)
    typ, _ = m.create('"p&AOQA5A-"')
    assert typ == "OK"
    typ, data = m.list('""', '"p*"')
    assert data == [b'(\\HasNoChildren) "." "p&AOQA5A-"'], data
    assert (server.maildir_path(USER) / ".p&AOQA5A-").is_dir()
    typ, data = m.select('"p&AOQA5A-"')
    assert typ == "OK"
    m.logout()


def test_recent_exactly_once_across_selected_sessions(server):
    """RFC 3501 2.3.2: a new message is \\Recent in exactly one session,
    even when two have the folder selected when it arrives (imaptest
    `append`); STATUS (RECENT) then counts it no more."""
    a, b, c = client(server), client(server), client(server)
    c.create_folder("RecentBox")
    for s in (a, b):
        s.select_folder("RecentBox")
    for i in range(3):
        c.append("RecentBox", f"Subject: r{i}\r\n\r\nbody\r\n".encode())
    assert c.folder_status("RecentBox", ["MESSAGES", "RECENT"])[b"RECENT"] == 3, \
        "nobody was told yet: all unclaimed"
    a.noop()
    b.noop()
    recent = 0
    for s in (a, b, a):  # a again: a session keeps what it claimed
        flags = s.fetch([1, 2, 3], ["FLAGS"])
        assert len(flags) == 3
        recent += sum(imapclient.RECENT in f[b"FLAGS"] for f in flags.values())
    assert recent in (3, 6), "each message recent in exactly one of a, b"
    st = c.folder_status("RecentBox", ["MESSAGES", "RECENT"])
    assert st == {b"MESSAGES": 3, b"RECENT": 0}
    # A later SELECT claims nothing; EXAMINE neither.
    d = client(server)
    assert d.select_folder("RecentBox")[b"RECENT"] == 0
    d.logout()
    for s in (a, b, c):
        s.logout()


def test_noop_sees_mail_dropped_in_the_same_clock_tick(server):
    """A coarse clock (FAT keeps mtimes to 2 s, an older kernel ticks
    slowly): another program drops a message into new/ in the same tick
    as the SELECT that just read the folder, so new/'s mtime stays what
    the SELECT saw. A NOOP must still find it: a folder changed less than
    2 s before it was read is read again, whatever its mtimes say."""
    deliver(server, "first")
    wait_exists(server, 1)
    new = server.maildir_path(USER) / "new"
    os.utime(new)  # changed just now: the SELECT below reads a fresh folder
    m = login(server)
    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"1"], data
    m.response("EXISTS")  # imaplib keeps untagged answers until asked
    tick = os.stat(new).st_mtime_ns
    # As procmail or a Dovecot LDA would: tmp/, then a rename into new/.
    body = b"Subject: dropped\n\nin the same tick\n"
    name = f"{int(time.time())}.M1P{os.getpid()}.other,S={len(body)}"
    (new.parent / "tmp" / name).write_bytes(body)
    os.rename(new.parent / "tmp" / name, new / name)
    os.utime(new, ns=(tick, tick))
    typ, _ = m.noop()
    assert typ == "OK"
    assert m.response("EXISTS") == ("EXISTS", [b"2"]), m.untagged_responses
    typ, data = m.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"dropped" in data[0][1], data
    m.logout()


def folder_listings(server, trace, action):
    """getdents64 calls on INBOX's new/ and cur/ while `action` runs, seen
    by strace attached to the running server."""
    st = subprocess.Popen(["strace", "-f", "-qq", "-yy", "-e", "trace=getdents64", "-o", str(trace),
                           "-p", str(server.proc.pid)])
    try:
        time.sleep(1)  # attached to every thread
        action()
    finally:
        st.terminate()
        st.wait(timeout=30)
    return [line for line in trace.read_text().splitlines()
            if re.search(r"getdents64\(\d+</[^>]*/(new|cur)>", line)]


@pytest.mark.skipif(strace_usable() is not None, reason=str(strace_usable()))
def test_sessions_opening_a_quiet_folder_share_one_scan(server, tmp_path):
    """A folder quiet for 2 s (its mtimes can vouch nothing changed):
    SELECT and EXAMINE take the view another session holds and list
    nothing, yet each answer is whole and \\Recent is claimed once. A
    delivery or a flag change since makes the next SELECT list again."""
    for i in range(3):
        deliver(server, f"quiet {i}")
    wait_exists(server, 3)
    time.sleep(2.5)
    first = client(server)
    assert first.select_folder("INBOX")[b"RECENT"] == 3
    others = []

    def open_five():
        for _ in range(4):
            others.append(client(server))
            got = others[-1].select_folder("INBOX")
            assert (got[b"EXISTS"], got[b"RECENT"], got[b"UIDNEXT"]) == (3, 0, 4), got
            assert len(others[-1].search("ALL")) == 3
        others.append(client(server))
        got = others[-1].select_folder("INBOX", readonly=True)
        assert (got[b"EXISTS"], got[b"RECENT"]) == (3, 0), got

    assert folder_listings(server, tmp_path / "quiet", open_five) == []

    def deliver_and_select():
        deliver(server, "quiet 3")
        deadline = time.time() + 20
        while time.time() < deadline:
            others.append(client(server))
            got = others[-1].select_folder("INBOX")
            if got[b"EXISTS"] == 4:
                assert (got[b"RECENT"], got[b"UIDNEXT"]) == (1, 5), got
                return
            time.sleep(0.2)
        pytest.fail("the delivery never showed")

    assert folder_listings(server, tmp_path / "delivered", deliver_and_select), \
        "a SELECT after a delivery lists the folder"
    time.sleep(2.5)
    first.add_flags([1], [imapclient.FLAGGED])
    late = client(server)
    late.select_folder("INBOX")
    assert imapclient.FLAGGED in late.get_flags([1])[1], "another session's flag change"
    for c in others + [first, late]:
        c.logout()


def test_esearch_min_max_count_all_and_modseq(server):
    """RFC 4731 RETURN (MIN MAX COUNT ALL) and RFC 7162 3.1.5 MODSEQ: with
    MIN or MAX alone it is that message's modseq, otherwise the highest."""
    from imap_interop import Imap
    c = client(server)
    c.create_folder("Esearch")
    for i in range(4):
        c.append("Esearch", f"Subject: e{i}\r\n\r\nbody\r\n".encode())
    c.logout()
    m = Imap(server.ports["imap"])
    m.login(USER, PASSWORD)
    m.ok("ENABLE CONDSTORE")
    m.ok("SELECT Esearch")
    ms = {}
    for seq in (1, 3, 2, 4):  # 2 gets the highest modseq of 1:3
        r = m.ok(f"STORE {seq} +FLAGS (\\Seen)")
        ms[seq] = int(re.search(rb"MODSEQ \((\d+)\)", b" ".join(r)).group(1))
    low = min(ms.values()) - 1

    def es(ret, rng="1:3"):
        r = m.ok(f"SEARCH RETURN ({ret}) {rng} MODSEQ {low}")
        (line,) = [x for x in r if x.startswith(b"* ESEARCH")]
        return line.split(b")", 1)[1].decode().split()

    assert es("MIN") == ["MIN", "1", "MODSEQ", str(ms[1])]
    assert es("MAX") == ["MAX", "3", "MODSEQ", str(ms[3])]
    assert es("") == ["ALL", "1:3", "MODSEQ", str(ms[2])]
    assert es("MIN MAX", "2:3") == ["MIN", "2", "MAX", "3", "MODSEQ", str(ms[2])]
    assert es("COUNT MIN") == ["MIN", "1", "COUNT", "3", "MODSEQ", str(ms[2])] or \
        es("COUNT MIN") == ["COUNT", "3", "MIN", "1", "MODSEQ", str(ms[2])]
    # Nothing found: no MODSEQ, and no MIN/MAX/ALL.
    r = m.ok("SEARCH RETURN (MIN MAX COUNT) 1:4 UNSEEN")
    assert [x for x in r if x.startswith(b"* ESEARCH")][0].endswith(b"COUNT 0")
    m.close()


def test_list_extended_subscribed_recursivematch_return(server):
    """RFC 5258 as imaptest `listext` checks it: (SUBSCRIBED) lists a
    subscribed name whose mailbox is gone \\NonExistent; RECURSIVEMATCH
    gives a parent CHILDINFO when only a descendant the pattern does not
    reach is subscribed; RETURN (SUBSCRIBED) marks subscribed ones; four
    refused options in a row do not end the session."""
    from imap_interop import Imap
    m = Imap(server.ports["imap"])
    m.login(USER, PASSWORD)
    for f in ("Lx", "Lx.t1", "Lx.t2", "Lx.t2.t1", "Lx.t6", "Lx.t8", "Lx.t8.t8", "Lx.t8.t9"):
        m.ok(f"CREATE {f}")
    for f in ("Lx.t1", "Lx.t2.t1", "Lx.t6", "Lx.t8.t8", "Lx.t8.t9"):
        m.ok(f"SUBSCRIBE {f}")
    m.ok("DELETE Lx.t6")

    def listed(cmd):
        out = {}
        for r in m.ok(cmd):
            mt = re.match(rb'\* LIST \(([^)]*)\) "\." "?([^" ]+)"?(.*)', r)
            out[mt.group(2).decode()] = (set(mt.group(1).decode().lower().split()),
                                         mt.group(3).decode().strip())
        return out

    got = listed('LIST (SUBSCRIBED) "" "Lx.*"')
    assert set(got) == {"Lx.t1", "Lx.t2.t1", "Lx.t6", "Lx.t8.t8", "Lx.t8.t9"}, got
    assert "\\nonexistent" in got["Lx.t6"][0] and "\\noselect" not in got["Lx.t6"][0]
    assert all("\\subscribed" in a for a, _ in got.values())
    got = listed('LIST (SUBSCRIBED RECURSIVEMATCH) "" "Lx.t2%"')
    assert list(got) == ["Lx.t2"] and got["Lx.t2"][1].upper() == '(CHILDINFO ("SUBSCRIBED"))', got
    got = listed('LIST (SUBSCRIBED RECURSIVEMATCH) "" "Lx*t8"')
    assert set(got) == {"Lx.t8", "Lx.t8.t8"} and "CHILDINFO" in got["Lx.t8"][1].upper(), got
    got = listed('LIST "" "Lx.%" RETURN (CHILDREN SUBSCRIBED)')
    assert "\\subscribed" in got["Lx.t1"][0] and "\\haschildren" not in got["Lx.t1"][0]
    assert "\\haschildren" in got["Lx.t2"][0] and "\\subscribed" not in got["Lx.t2"][0]
    for cmd in ('LIST (imaptest) "" ""', 'LIST (RECURSIVEMATCH) "" ""',
                'LIST (RECURSIVEMATCH REMOTE) "" ""', 'LIST "" "" RETURN (imaptest)'):
        assert m.cmd(cmd)[1].startswith(b"BAD")
    m.ok("NOOP")
    m.close()


def test_list_status(server):
    """RFC 5819 (advertised LIST-STATUS): STATUS after each selectable
    mailbox's LIST, none for a \\Noselect parent."""
    from imap_interop import Imap
    m = Imap(server.ports["imap"])
    m.login(USER, PASSWORD)
    m.ok("CREATE Ls.Kid")
    m.ok("APPEND Ls.Kid {}", [b"Subject: s\r\n\r\nx\r\n"])
    r = m.ok('LIST "" "Ls*" RETURN (STATUS (MESSAGES UIDNEXT))')
    lists = [x for x in r if x.startswith(b"* LIST")]
    status = [x for x in r if x.startswith(b"* STATUS")]
    assert len(lists) == 2 and b"\\Noselect" in lists[0], r
    assert status == [b'* STATUS "Ls.Kid" (MESSAGES 1 UIDNEXT 2)'], r
    assert r.index(status[0]) == r.index(lists[1]) + 1, "right after its LIST"
    m.close()
