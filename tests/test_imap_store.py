"""The IMAP mailbox store (src/store/mailbox) against the real Dovecot.

Until mailgate's IMAP server exists, the store is driven by the example
binary `mailbox_tool` (examples/mailbox_tool.rs, built by `make build`).
Dovecot (dovecot-imapd, a private instance per test) is the reference:

- Dovecot serves a Maildir the store wrote: same folders, subscriptions,
  UIDVALIDITY, UIDNEXT, UIDs, flags and keywords, checked over IMAP with
  imaplib; and after Dovecot has had it, the store still sees the same.
- The store reads a Maildir Dovecot wrote (APPEND, STORE, keywords,
  EXPUNGE, MOVE, CREATE, SUBSCRIBE over IMAP) and sees what Dovecot showed.
- SELECT of 20,000 messages opens no message file (strace).
- SIGKILL during APPEND/MOVE/STORE from two processes at once loses nothing
  acknowledged, duplicates nothing, and never changes an acknowledged UID.
"""

import imaplib
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import dovecot_helpers as dh

BIN = os.environ.get("MAILGATE_BIN") or str(
    Path(__file__).resolve().parent.parent / "target" / "debug" / "mailgate"
)
TOOL = os.environ.get("MAILGATE_STORE_TOOL") or str(Path(BIN).parent / "examples" / "mailbox_tool")


def tool(root, *args, check=True):
    if not os.path.exists(TOOL):
        pytest.fail(f"{TOOL} missing: `make build` (cargo build --examples) builds it")
    r = subprocess.run([TOOL, str(root), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"mailbox_tool {args}: {r.stderr}")
    return r.stdout


def dump(root):
    """{folder: (uidvalidity, uidnext, {uid: (base, frozenset(flags))})}, [subs]"""
    folders, subs = {}, []
    for line in tool(root, "dump").splitlines():
        kind, rest = line.split(" ", 1)
        if kind == "folder":
            name, v, n, _hms = rest.rsplit(" ", 3)
            folders[name] = (int(v), int(n), {})
        elif kind == "msg":
            parts = rest.split(" ")
            name, uid, base = parts[0], int(parts[1]), parts[2]
            flags = parts[4] if len(parts) > 4 else ""
            folders[name][2][uid] = (base, frozenset(f for f in flags.split(",") if f))
        elif kind == "sub":
            subs.append(rest)
    return folders, subs


def need_dovecot():
    why = dh.available()
    if why is None and not os.path.exists("/usr/lib/dovecot/imap"):
        why = "dovecot-imapd not installed (tests/setup.sh installs it)"
    if why:
        pytest.skip(why)


@pytest.fixture
def dovecot(tmp_path):
    need_dovecot()
    ca = dh.TestCA(tmp_path / "ca")
    d = dh.Dovecot({"bob": "secret"}, ca, imap=True)
    yield d
    d.cleanup()


def imap_login(d):
    c = imaplib.IMAP4("127.0.0.1", d.imap)
    c.login("bob", "secret")
    return c


LIST_RE = re.compile(rb'\((?P<flags>[^)]*)\) (?:"(?P<sep>[^"]*)"|NIL) (?P<name>.*)$')


def imap_folders(c):
    typ, data = c.list()
    assert typ == "OK"
    names = []
    for line in data:
        m = LIST_RE.match(line)
        flags = m.group("flags").lower()
        if b"\\noselect" in flags or b"\\nonexistent" in flags:
            continue  # a parent that only exists through its children
        names.append(m.group("name").decode().strip('"'))
    return sorted(names)


def imap_subscribed(c):
    typ, data = c.lsub()
    assert typ == "OK"
    return sorted(LIST_RE.match(l).group("name").decode().strip('"') for l in data if l)


def imap_state(c, folder):
    """(uidvalidity, uidnext, {uid: frozenset(flags)}) as Dovecot serves it."""
    typ, _ = c.select(f'"{folder}"', readonly=True)
    assert typ == "OK", folder
    v = int(c.untagged_responses["UIDVALIDITY"][-1])
    n = int(c.untagged_responses["UIDNEXT"][-1])
    msgs = {}
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    for item in data:
        if not item:
            continue
        m = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", item)
        if not m:
            continue
        uid = int(m.group(1) or m.group(4))
        flags = (m.group(2) if m.group(1) else m.group(3)).decode().split()
        msgs[uid] = frozenset(f for f in flags if f != "\\Recent")
    c.close()
    return v, n, msgs


def write_spool(path, subject, body="hello"):
    path.write_bytes(f"Subject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\n{body}\r\n".encode())
    return path


def test_dovecot_serves_what_the_store_wrote(dovecot, tmp_path):
    root = dovecot.maildir("bob")
    root.parent.mkdir(parents=True, exist_ok=True)
    tool(root, "defaults")
    tool(root, "create", "Lists.Family")
    tool(root, "subscribe", "Lists.Family")
    sp = [write_spool(tmp_path / f"s{i}", f"m{i}") for i in range(5)]
    tool(root, "append", "INBOX", sp[0], "\\Seen", "@1600000000")
    tool(root, "append", "INBOX", sp[1])
    tool(root, "append", "INBOX", sp[2], "\\Flagged", "$Label1", "Work")
    tool(root, "append", "INBOX", sp[3], "\\Deleted")
    tool(root, "append", "Lists.Family", sp[4], "\\Answered", "\\Seen", "Family")
    tool(root, "store", "INBOX", 2, "+", "\\Seen", "Later")
    tool(root, "store", "INBOX", 3, "-", "$Label1")
    tool(root, "expunge", "INBOX")
    tool(root, "move", "INBOX", 1, "Archive")
    tool(root, "copy", "INBOX", 2, "Lists.Family")
    ours, subs = dump(root)
    assert sorted(ours["INBOX"][2]) == [2, 3]
    dovecot.chown_mail()
    dovecot.start()

    c = imap_login(dovecot)
    assert imap_folders(c) == sorted(ours)
    assert imap_subscribed(c) == sorted(subs)
    for name, (v, n, msgs) in ours.items():
        dv, dn, dmsgs = imap_state(c, name)
        assert (dv, dn) == (v, n), name
        assert dmsgs == {uid: flags for uid, (_, flags) in msgs.items()}, name
    # INTERNALDATE is the mtime we set.
    c.select("Archive", readonly=True)
    typ, data = c.uid("FETCH", "1", "(INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    assert b"13-Sep-2020 12:26:40 +0000" in data[0][0], data
    assert data[0][1] == b"Subject: m0\r\nMessage-ID: <m0@test>\r\n\r\nhello\r\n"
    size = int(re.search(rb"RFC822.SIZE (\d+)", data[0][0]).group(1))
    assert size == len(data[0][1])
    c.logout()
    dovecot.stop()
    # Nothing of ours looked broken or odd to Dovecot.
    complaints = [l for l in dovecot.log_text().splitlines()
                  if re.search(r"(?i)error|warning|broken|corrupt|fatal", l)
                  and "Killed with signal 15" not in l]
    assert complaints == []
    # Dovecot has had the Maildir (and rewritten what it wanted): we still
    # see the same UIDs, UIDVALIDITY and flags.
    again, subs2 = dump(root)
    assert again == ours and subs2 == subs


def test_store_reads_what_dovecot_wrote(dovecot, tmp_path):
    dovecot.start()
    c = imap_login(dovecot)
    for name in ("Sent", "Lists.Family", "Trash"):
        assert c.create(name)[0] == "OK"
    assert c.subscribe("Lists.Family")[0] == "OK"
    date = imaplib.Time2Internaldate(1_600_000_000)
    for i in range(6):
        msg = f"Subject: d{i}\r\n\r\nbody {i}\r\n".encode()
        flags = ["()", "(\\Seen)", "(\\Flagged $Label2)", "(\\Draft)", "(Work)", "(\\Deleted)"][i]
        assert c.append("INBOX", flags, date, msg)[0] == "OK"
    assert c.append("Lists.Family", "(\\Answered Family)", date, b"Subject: f\r\n\r\nx\r\n")[0] == "OK"
    c.select("INBOX")
    c.uid("STORE", "2", "+FLAGS", "(Later)")
    c.uid("STORE", "5", "-FLAGS", "(Work)")
    c.expunge()
    typ, _ = c.uid("MOVE", "3", "Trash")
    assert typ == "OK"
    c.close()
    theirs = {name: imap_state(c, name) for name in imap_folders(c)}
    subs = imap_subscribed(c)
    c.logout()
    dovecot.stop()

    ours, our_subs = dump(dovecot.maildir("bob"))
    assert sorted(ours) == sorted(theirs)
    for name, (v, n, msgs) in theirs.items():
        ov, on, omsgs = ours[name]
        assert (ov, on) == (v, n), name
        assert {uid: f for uid, (_, f) in omsgs.items()} == msgs, name
    assert sorted(our_subs) == subs

    # The store appends into Dovecot's Maildir; Dovecot numbers nothing anew.
    root = dovecot.maildir("bob")
    uid, v = tool(root, "append", "INBOX", write_spool(tmp_path / "x", "ours"), "\\Seen").split()
    assert (int(uid), int(v)) == (theirs["INBOX"][1], theirs["INBOX"][0])
    dovecot.chown_mail()
    dovecot.start()
    c = imap_login(dovecot)
    v2, n2, msgs2 = imap_state(c, "INBOX")
    c.logout()
    dovecot.stop()
    # Dovecot's complaints about the Maildir. Not its own stats IPC: on a
    # loaded CI machine imap-login may time out waiting for its stats-writer
    # ("Timeout waiting for handshake response"), which says nothing of the
    # files.
    complaints = [l for l in dovecot.log_text().splitlines()
                  if re.search(r"(?i)error|broken|corrupt|fatal", l)
                  and "stats-writer" not in l]
    assert complaints == []
    assert (v2, n2) == (int(v), int(uid) + 1)
    assert msgs2 == {**theirs["INBOX"][2], int(uid): frozenset({"\\Seen"})}


def test_uidvalidity_sequence_is_shared_with_dovecot(dovecot):
    """dovecot-uidvalidity and its companion file: a folder the store makes
    takes the value after Dovecot's last, and Dovecot's next folder the
    value after ours, so no two folders ever share a UIDVALIDITY."""
    dovecot.start()
    c = imap_login(dovecot)
    for name in ("A", "B"):
        assert c.create(name)[0] == "OK"
    dv = {name: imap_state(c, name)[0] for name in ("INBOX", "A", "B")}
    c.logout()
    dovecot.stop()
    root = dovecot.maildir("bob")
    tool(root, "create", "Ours")
    ours, _ = dump(root)
    assert ours["Ours"][0] == max(dv.values()) + 1
    dovecot.chown_mail()
    dovecot.start()
    c = imap_login(dovecot)
    assert c.create("C")[0] == "OK"
    assert imap_state(c, "Ours")[0] == ours["Ours"][0]
    assert imap_state(c, "C")[0] == ours["Ours"][0] + 1
    c.logout()


def test_select_of_20000_messages_opens_no_message_file(tmp_path):
    if not subprocess.run(["which", "strace"], capture_output=True).returncode == 0:
        pytest.skip("strace missing (tests/setup.sh installs it)")
    root = tmp_path / "m"
    tool(root, "defaults")
    for sub in ("new", "cur"):
        (root / sub).mkdir(exist_ok=True)
    for q in range(20_000):
        base = f"{1_700_000_000 + q // 10}.M{q % 10}P1Q{q}.h,S={100 + q},W={200 + q}"
        p = root / "cur" / f"{base}:2,S" if q % 2 else root / "new" / base
        p.touch()
    assert tool(root, "select", "INBOX").startswith("20000 messages")  # numbers them
    trace = tmp_path / "trace"
    out = subprocess.run(
        ["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=open,openat,stat,lstat,newfstatat,statx",
         TOOL, str(root), "select", "INBOX"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    touched = [l for l in trace.read_text().splitlines() if f"{root}/cur/" in l or f"{root}/new/" in l]
    assert touched == [], touched[:5]
    took = float(re.search(r"in ([\d.]+) ms", tool(root, "select", "INBOX")).group(1))
    print(f"SELECT of 20000 messages: {took} ms (debug build)")


def test_sigkill_during_append_move_store_loses_nothing_acknowledged(tmp_path):
    root = tmp_path / "m"
    tool(root, "defaults")
    acked = {}  # base -> (folder, uid, flags or None)
    inflight = set()  # each process's last message: its next op may have run
    rng = random.Random(7)
    for round_ in range(3):
        procs = [
            subprocess.Popen([TOOL, str(root), "stress", str(round_ * 10 + i + 1)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)
        ]
        time.sleep(rng.uniform(0.5, 1.5))
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            out, err = p.communicate(timeout=30)
            assert p.returncode == -signal.SIGKILL, err
            last = None
            for line in out.splitlines():
                parts = line.split(" ")
                if len(parts) < 5 or parts[0] != "ACK":
                    continue  # a line torn by the kill was never complete
                op, base, folder, uid = parts[1], parts[2], parts[3], int(parts[4])
                last = base
                if op in ("append", "move"):
                    acked[base] = (folder, uid, None)
                else:
                    acked[base] = (folder, uid, frozenset(parts[5].split(",")))
            if last:
                inflight.add(last)
        ours, _ = dump(root)
        where = {}
        for folder, (_v, _n, msgs) in ours.items():
            for uid, (base, flags) in msgs.items():
                assert base not in where, f"{base} in {where[base]} and {folder}"
                where[base] = (folder, uid, flags)
        assert len(acked) > 5
        for base, (folder, uid, flags) in acked.items():
            assert base in where, f"acknowledged {base} lost"
            wf, wuid, wflags = where[base]
            if base in inflight:
                continue  # its MOVE or STORE may have happened unacknowledged
            assert (wf, wuid) == (folder, uid), base
            if flags is not None:
                assert wflags == flags, base
        # The uidlists parse cleanly (the tool's dump would have rebuilt a
        # broken one: a second dump changes nothing).
        assert dump(root)[0] == ours
    print(f"{len(acked)} acknowledged operations survived 3 SIGKILLs")


def test_dovecot_and_the_store_share_a_folder_at_once(dovecot, tmp_path):
    """Dovecot appends over IMAP while the store appends from another
    process, both under dovecot-uidlist.lock: every message gets one UID,
    and Dovecot and the store agree on which."""
    root = dovecot.maildir("bob")
    root.parent.mkdir(parents=True, exist_ok=True)
    tool(root, "defaults")
    dovecot.chown_mail()
    dovecot.start()
    # Not under tmp_path (0700 root): the mail user must read the spools.
    spool_dir = dovecot.dir / "spool"
    spool_dir.mkdir()
    spools = [write_spool(spool_dir / f"ours{i}", f"ours{i}") for i in range(15)]
    for s in spools:
        os.chown(s, dovecot.uid, dovecot.gid)
    # As the mail user, as mailgate and Dovecot would both run in real life.
    as_mail_user = ["setpriv", f"--reuid={dovecot.uid}", f"--regid={dovecot.gid}", "--clear-groups"]
    ours = subprocess.Popen(
        [*as_mail_user, "sh", "-c", " && ".join(f"{TOOL} {root} append INBOX {s}" for s in spools)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    c = imap_login(dovecot)
    for i in range(15):
        assert c.append("INBOX", "(\\Seen)", None, f"Subject: theirs{i}\r\n\r\nx\r\n".encode())[0] == "OK"
    out, err = ours.communicate(timeout=120)
    assert ours.returncode == 0, err
    c.select("INBOX", readonly=True)
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    theirs = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            theirs[uid] = item[1].decode().split(":", 1)[1].strip()
    c.logout()
    dovecot.stop()
    folders, _ = dump(root)
    mine = {}
    for uid, (base, _flags) in folders["INBOX"][2].items():
        path = next(p for sub in ("new", "cur") for p in (root / sub).iterdir()
                    if p.name.split(":")[0] == base)
        mine[uid] = re.search(r"^Subject: (.*)$", path.read_text(), re.M).group(1)
    assert len(mine) == 30
    print("UID order:", " ".join(mine[u] for u in sorted(mine)))
    assert mine == theirs
    assert sorted(mine.values()) == sorted([f"ours{i}" for i in range(15)] + [f"theirs{i}" for i in range(15)])
