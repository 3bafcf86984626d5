"""mailgate's IMAP server beside the reference, Dovecot (dovecot-imapd),
and driven by real IMAP clients (mbsync from isync, fetchmail).

- The same session runs against Dovecot and mailgate on copies of one
  Maildir (written by Dovecot through APPEND); each command's answers are
  compared after normalising what is server-specific (free text,
  capabilities, HIGHESTMODSEQ, \\Recent, quoting, item order, case of
  BODYSTRUCTURE tokens).
- Dovecot serves a Maildir mailgate's IMAP wrote, and mailgate one Dovecot
  wrote: same folders, subscriptions, UIDVALIDITY, UIDNEXT, UIDs, flags
  and keywords as an IMAP client sees them.
- mbsync syncs a folder tree with flags both ways; fetchmail downloads
  over IMAP with and without `keep`.

While the binary does not know `[imap]`, every test here skips.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import conftest
import dovecot_helpers as dh
import imap_interop as ii

if "[imap]" not in conftest.BASE_CONFIG:
    pytest.skip("this tree's mailgate serves no IMAP (conftest's base config has no [imap])",
                allow_module_level=True)
from imap_interop import Imap, normalise

# The compared session: (id, command). Sequence numbers and UIDs refer to
# the corpus in imap_interop.corpus(); both servers start from the same
# files, so they must agree on every answer.
SESSION = [
    ("list_all", 'LIST "" "*"'),
    ("list_top", 'LIST "" "%"'),
    ("lsub", 'LSUB "" "*"'),
    ("status_inbox", "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"),
    ("select", "SELECT INBOX"),
    ("fetch_flags_uid_size", "FETCH 1:* (FLAGS UID RFC822.SIZE)"),
    ("fetch_internaldate", "FETCH 1:* (INTERNALDATE)"),
    ("fetch_envelope", "FETCH 1:* (ENVELOPE)"),
    ("fetch_bodystructure", "FETCH 1:* (BODYSTRUCTURE)"),
    ("fetch_body", "FETCH 1:* (BODY)"),
    ("fetch_header_fields", "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE X-TAG)])"),
    ("fetch_header_fields_not", "FETCH 1:3 (BODY.PEEK[HEADER.FIELDS.NOT (FROM SUBJECT DATE)])"),
    ("fetch_partial", "FETCH 1:* (BODY.PEEK[]<0.100>)"),
    ("fetch_parts", "FETCH 3 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[TEXT]<10.40>)"),
    ("fetch_rfc822_part", "FETCH 5 (BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[2])"),
    ("fetch_sets_seen", "FETCH 1 (BODY[TEXT])"),
    ("search_all", "SEARCH ALL"),
    ("search_unseen", "SEARCH UNSEEN"),
    ("search_from", 'SEARCH FROM "alice"'),
    ("search_subject_or", 'SEARCH OR SUBJECT "tea" SUBJECT "offers"'),
    ("search_not_flags", "SEARCH NOT SEEN NOT DRAFT"),
    ("search_keyword", "SEARCH KEYWORD $Label1"),
    ("search_size", "SEARCH LARGER 1000 UNDELETED"),
    ("search_dates", "SEARCH SINCE 20-Jan-2024 BEFORE 25-Feb-2024"),
    ("search_sentdates", "SEARCH SENTSINCE 1-Feb-2024"),
    ("search_header", 'SEARCH HEADER X-Tag "kitchen"'),
    ("search_body", 'SEARCH BODY "needle3"'),
    ("search_text", 'SEARCH TEXT "dessert photos"'),
    ("search_text_one", 'SEARCH TEXT "photos"'),
    ("search_seqset", "SEARCH 2:4,7:* ANSWERED"),
    ("search_charset", 'SEARCH CHARSET UTF-8 SUBJECT "K\u00f6ln"'),
    ("uid_search", "UID SEARCH UID 3:* FLAGGED"),
    ("store_add", "STORE 1 +FLAGS (\\Flagged)"),
    ("store_remove", "STORE 2 -FLAGS (\\Seen)"),
    ("store_silent", "STORE 3 FLAGS.SILENT (\\Answered $Label2)"),
    ("uid_store_keyword", "UID STORE 4 +FLAGS ($Label2)"),
    ("fetch_after_store", "FETCH 1:* (FLAGS)"),
    ("copy", "COPY 1:2 Archive"),
    ("copy_missing", "COPY 1 Nowhere"),
    ("uid_move", "UID MOVE 6 Archive"),
    ("store_deleted", "STORE 2,4 +FLAGS.SILENT (\\Deleted)"),
    ("expunge", "EXPUNGE"),
    ("fetch_after_expunge", "FETCH 1:* (UID FLAGS)"),
    ("status_archive", "STATUS Archive (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"),
    ("select_archive", "SELECT Archive"),
    ("fetch_archive", "FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)"),
    ("examine_family", "EXAMINE Lists.Family"),
    ("fetch_family", "UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"),
    ("close", "CLOSE"),
    ("create_delete", "CREATE Tmp"),
    ("delete", "DELETE Tmp"),
    ("list_end", 'LIST "" "*"'),
    # After the end, so nothing above changes: imaptest's findings, as
    # steps a reference checks.
    ("select_again", "SELECT INBOX"),
    ("store_new_keyword", "STORE 1 +FLAGS ($Fresh)"),
    ("fetch_new_keyword", "FETCH 1 (FLAGS)"),
    ("create_mutf7", 'CREATE "p&AOQA5A-"'),
    ("list_mutf7", 'LIST "" "p&AOQA5A-"'),
    ("status_mutf7", 'STATUS "p&AOQA5A-" (MESSAGES)'),
    ("delete_mutf7", 'DELETE "p&AOQA5A-"'),
    ("select_invalid_mutf7", "SELECT a&b"),
]

# Steps mailgate does not get right yet, with the reason: strict, so the
# step turns red when fixed and the mark can go. (Fixed on imap-server by
# 314a064 and unmarked: LIST's \\Noselect parents, EXAMINE's
# PERMANENTFLAGS (), * FLAGS before a new keyword, CREATE/STATUS/DELETE of
# p&AOQA5A-; on imap-proto: LIST with a modified UTF-7 pattern, NO for a
# name that is not modified UTF-7.)
XFAIL = {}


def run_session(port, user, password, delim="."):
    c = Imap(port)
    out = []
    try:
        c.login(user, password)
        for _name, command in SESSION:
            command = command.replace("Lists.Family", f"Lists{delim}Family")
            untagged, tagged = c.cmd(command)
            try:
                out.append(normalise(untagged, tagged))
            except Exception as e:  # a malformed answer is an answer too
                out.append(("unparsable", repr(e), tuple(untagged), tagged))
    finally:
        c.close()
    return out


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    ii.need_dovecot_imap()
    return dh.TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def compared(tmp_path_factory, ca):
    """Both servers on copies of one Dovecot-written Maildir; the session's
    normalised answers from each: (dovecot, mailgate)."""
    mg = ii.mailgate_with_imap(tmp_path_factory.mktemp("mg"))
    d = dh.Dovecot({"bob": ii.PASSWORD, "ref": ii.PASSWORD}, ca, imap=True, extra_conf=ii.SPECIAL_USE)
    try:
        d.start()
        c = Imap(d.imap)
        c.login("bob", ii.PASSWORD)
        ii.seed(c)
        c.close()
        time.sleep(0.2)
        ii.copy_maildir(d.maildir("bob"), d.maildir("ref"))
        d.chown_mail()
        ii.copy_maildir(d.maildir("bob"), mg.maildir_path(ii.USER))
        mg.start()
        c = Imap(mg.ports["imap"])
        c.login(ii.USER, ii.PASSWORD)
        delim = ii.delimiter(c)
        c.close()
        ref = run_session(d.imap, "ref", ii.PASSWORD)
        got = run_session(mg.ports["imap"], ii.USER, ii.PASSWORD, delim)
        yield ref, got, delim
    finally:
        mg.stop() if mg.proc else None
        d.cleanup()


def _params():
    out = []
    for i, (name, _cmd) in enumerate(SESSION):
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
        out.append(pytest.param(i, id=name, marks=marks))
    return out


@pytest.mark.parametrize("step", _params())
def test_same_answers_as_dovecot(compared, step):
    ref, got, delim = compared
    name, command = SESSION[step]
    want = ref[step]
    if delim != ".":
        want = repr(want).replace("Lists.Family", f"Lists{delim}Family")
        assert repr(got[step]) == want, f"{command}"
    else:
        assert got[step] == want, f"{command}"


def test_delimiter_is_dovecots(compared):
    """Dovecot's Maildir++ namespace uses '.'; a client moved between the
    two would otherwise see other folder names and download again."""
    _ref, _got, delim = compared
    assert delim == "."


# -- Maildir both ways --------------------------------------------------------


def _changes(c: Imap):
    """What a client does after filing: flags, keywords, an expunge."""
    c.ok("SELECT INBOX")
    c.ok("STORE 1 +FLAGS ($Label2 \\Flagged)")
    c.ok("STORE 4 -FLAGS ($Label1)")
    c.ok("STORE 7 +FLAGS (\\Deleted)")
    c.ok("EXPUNGE")
    c.ok("CLOSE")


def test_dovecot_serves_what_mailgate_wrote(tmp_path, ca):
    mg = ii.mailgate_with_imap(tmp_path / "mg")
    d = dh.Dovecot({"bob": ii.PASSWORD}, ca, imap=True)
    try:
        mg.start()
        c = Imap(mg.ports["imap"])
        c.login(ii.USER, ii.PASSWORD)
        ii.seed(c)
        _changes(c)
        seen_by_mailgate = ii.view(c)
        c.close()
        mg.stop()
        ii.copy_maildir(mg.maildir_path(ii.USER), d.maildir("bob"))
        d.chown_mail()
        d.start()
        c = Imap(d.imap)
        c.login("bob", ii.PASSWORD)
        seen_by_dovecot = ii.view(c)
        c.close()
        assert len(seen_by_mailgate["boxes"]["INBOX"][1]) == 7
        assert seen_by_dovecot == seen_by_mailgate
    finally:
        mg.stop() if mg.proc else None
        d.cleanup()


def test_mailgate_serves_what_dovecot_wrote(tmp_path, ca):
    mg = ii.mailgate_with_imap(tmp_path / "mg")
    d = dh.Dovecot({"bob": ii.PASSWORD}, ca, imap=True)
    try:
        d.start()
        c = Imap(d.imap)
        c.login("bob", ii.PASSWORD)
        ii.seed(c)
        _changes(c)
        c.ok("CREATE Empty")
        seen_by_dovecot = ii.view(c)
        c.close()
        d.stop()
        assert len(seen_by_dovecot["boxes"]["INBOX"][1]) == 7
        ii.copy_maildir(d.maildir("bob"), mg.maildir_path(ii.USER))
        mg.start()
        c = Imap(mg.ports["imap"])
        c.login(ii.USER, ii.PASSWORD)
        seen_by_mailgate = ii.view(c)
        # mailgate's own special-use folders may join; Dovecot's all stay.
        extra = set(seen_by_mailgate["folders"]) - set(seen_by_dovecot["folders"])
        for f in extra:
            seen_by_mailgate["boxes"].pop(f)
            seen_by_mailgate["folders"].remove(f)
            if f in seen_by_mailgate["subscribed"]:
                seen_by_mailgate["subscribed"].remove(f)
        assert seen_by_mailgate == seen_by_dovecot
        # New mail continues Dovecot's numbering in Dovecot's UIDVALIDITY.
        status = seen_by_dovecot["boxes"]["INBOX"][0]
        c.ok(f"APPEND INBOX () {ii.imap_date(ii.DATE0)} {{}}", [b"Subject: after the move\r\n\r\nhi\r\n"])
        after = dict(ii.norm_untagged(c.ok("STATUS INBOX (UIDNEXT UIDVALIDITY)")[0])[2])
        assert after["UIDVALIDITY"] == status["UIDVALIDITY"]
        assert int(after["UIDNEXT"]) == int(status["UIDNEXT"]) + 1
        c.close()
    finally:
        mg.stop() if mg.proc else None
        d.cleanup()


# -- real clients: mbsync and fetchmail ---------------------------------------
# Each runs against Dovecot too: that proves the test itself (the client,
# its configuration and the checks) before it judges mailgate.


@pytest.fixture(params=["dovecot", "mailgate"])
def imap_server(request, tmp_path, ca):
    """(port, user, password, delimiter) of a running IMAP server."""
    if request.param == "mailgate":
        s = ii.mailgate_with_imap(tmp_path / "mg")
        s.start()
        user, port = ii.USER, s.ports["imap"]
    else:
        s = dh.Dovecot({"bob": ii.PASSWORD}, ca, imap=True)
        s.start()
        user, port = "bob", s.imap
    c = Imap(port)
    c.login(user, ii.PASSWORD)
    delim = ii.delimiter(c)
    c.close()
    yield port, user, ii.PASSWORD, delim
    if request.param == "mailgate":
        s.stop()
    else:
        s.cleanup()


def local_maildir(root: Path, name, files):
    """A local Maildir with files {basename: (info, bytes)}."""
    md = root / name
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    for base, (info, data) in files.items():
        (md / "cur" / f"{base}:2,{info}").write_bytes(data)
    return md


def local_flags(md: Path):
    """{Subject: info flags} of a local Maildir (new/ counts as none)."""
    out = {}
    for sub in ("new", "cur"):
        for p in (md / sub).iterdir():
            subj = next((line[9:].strip() for line in p.read_text().splitlines()
                         if line.startswith("Subject:")), "")
            out[subj] = p.name.split(":2,")[1] if ":2," in p.name else ""
    return out


def server_flags(c: Imap, folder):
    """{Subject: sorted flags} of a server folder."""
    c.ok(f'EXAMINE "{folder}"')
    out = {}
    for r in c.ok("UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"):
        n = ii.norm_untagged(r)
        if n and n[0] == "FETCH":
            items = dict(n[2])
            subj = items["BODY[HEADER.FIELDS (SUBJECT)]"].strip()[len("Subject:"):].strip()
            out[subj] = items["FLAGS"]
    return out


def mbsync(tmp_path, port, user, password):
    rc = tmp_path / "mbsyncrc"
    local = tmp_path / "local"
    rc.write_text(
        f"IMAPAccount srv\nHost 127.0.0.1\nPort {port}\nUser {user}\nPass {password}\n"
        "SSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore remote\nAccount srv\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\n"
        "SyncState *\nSync All\n"
    )
    r = subprocess.run(["mbsync", "-c", str(rc), "-V", "sync"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def msg(subject):
    return (f"From: a@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@x>\r\n\r\nbody of {subject}\r\n").encode()


def test_mbsync_folder_tree_both_ways(imap_server, tmp_path):
    port, user, password, delim = imap_server
    if not shutil.which("mbsync"):
        pytest.skip("mbsync missing (tests/setup.sh installs isync)")
    local = tmp_path / "local"
    inbox = local_maildir(local, "INBOX", {"1.a.host": ("S", msg("read one")),
                                            "2.a.host": ("FS", msg("flagged one")),
                                            "3.a.host": ("", msg("new one"))})
    family = local_maildir(local, "Lists/Family", {"4.a.host": ("RS", msg("answered one"))})
    local_maildir(local, "Lists/Work", {})
    mbsync(tmp_path, port, user, password)

    # Up: folders, messages and flags on the server.
    c = Imap(port)
    c.login(user, password)
    names = {n[3] for n in map(ii.norm_untagged, c.ok('LIST "" "*"')) if n and n[0] == "LIST"}
    assert {f"Lists{delim}Family", f"Lists{delim}Work"} <= names
    assert server_flags(c, "INBOX") == {"read one": ("\\seen",),
                                        "flagged one": ("\\flagged", "\\seen"), "new one": ()}
    assert server_flags(c, f"Lists{delim}Family") == {"answered one": ("\\answered", "\\seen")}

    # Down: changes made on the server (another device).
    c.ok("SELECT INBOX")
    c.ok("STORE 3 +FLAGS (\\Seen \\Flagged)")
    c.ok("STORE 1 +FLAGS (\\Deleted)")
    c.ok("EXPUNGE")
    c.ok(f'APPEND "Lists{delim}Work" (\\Seen) {{}}', [msg("from the phone")])
    c.ok(f'CREATE "Lists{delim}Travel"')
    c.ok(f'APPEND "Lists{delim}Travel" () {{}}', [msg("tickets")])
    c.close()
    mbsync(tmp_path, port, user, password)
    assert local_flags(inbox) == {"flagged one": "FS", "new one": "FS"}
    assert local_flags(local / "Lists" / "Work") == {"from the phone": "S"}
    assert local_flags(local / "Lists" / "Travel") == {"tickets": ""}
    assert local_flags(family) == {"answered one": "RS"}

    # Up again: a flag change made locally (the laptop reads "tickets").
    p = next((local / "Lists" / "Travel").glob("*/*"))
    base = p.name.split(":2,")[0]
    p.rename(p.parent.parent / "cur" / f"{base}:2,S")
    mbsync(tmp_path, port, user, password)
    c = Imap(port)
    c.login(user, password)
    assert server_flags(c, f"Lists{delim}Travel") == {"tickets": ("\\seen",)}
    assert server_flags(c, "INBOX") == {"flagged one": ("\\flagged", "\\seen"),
                                        "new one": ("\\flagged", "\\seen")}
    c.close()


def fetchmail(tmp_path, port, user, password, keep, out):
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 protocol imap port {port}\n"
        f"  user '{user}' password '{password}' is root here\n"
        f"  mda 'cat >> {out}' sslproto '' {'keep' if keep else 'no keep fetchall'}\n"
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))
    res = subprocess.run(["fetchmail", "-f", str(rc), "-v", "--nodetach", "--nosyslog"],
                         capture_output=True, text=True, timeout=120, env=env)
    # 0: mail fetched; 1: no mail.
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    return res.returncode


def test_fetchmail_imap_keep_and_no_keep(imap_server, tmp_path):
    port, user, password, _delim = imap_server
    c = Imap(port)
    c.login(user, password)
    for i in range(3):
        c.ok("APPEND INBOX () {}", [msg(f"fetch {i}")])
    c.close()
    out = tmp_path / "fetched.mbox"
    # keep: downloaded, left on the server, marked \Seen.
    assert fetchmail(tmp_path, port, user, password, True, out) == 0
    assert out.read_text().count("Subject: fetch ") == 3
    c = Imap(port)
    c.login(user, password)
    assert server_flags(c, "INBOX") == {f"fetch {i}": ("\\seen",) for i in range(3)}
    c.ok("APPEND INBOX () {}", [msg("fetch 3")])
    c.close()
    # keep again: only the unseen one comes.
    assert fetchmail(tmp_path, port, user, password, True, out) == 0
    assert out.read_text().count("Subject: fetch ") == 4
    assert out.read_text().count("Subject: fetch 3") == 1
    # no keep, fetchall: all four again, then gone from the server.
    assert fetchmail(tmp_path, port, user, password, False, out) == 0
    assert out.read_text().count("Subject: fetch ") == 8
    c = Imap(port)
    c.login(user, password)
    assert server_flags(c, "INBOX") == {}
    c.close()


# -- a second compared session: QRESYNC, \Recent, COPY/MOVE into the selected
# mailbox, LSUB's \Noselect parents. Two connections (0 and 1) per server;
# `{UV}` and `{H}` are that server's UIDVALIDITY and HIGHESTMODSEQ as the
# step "select_h" saw them (modseq values differ between the servers, and
# the normaliser drops MODSEQ items, so only what changed is compared).
SESSION2 = [
    ("qresync_not_enabled", 0, "SELECT INBOX (QRESYNC (1 1))"),
    ("examine_before_enable", 0, "EXAMINE INBOX"),
    ("vanished_not_enabled", 0, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)"),
    ("enable_qresync", 0, "ENABLE QRESYNC"),
    ("select_h", 0, "SELECT INBOX"),
    ("other_select", 1, "SELECT INBOX"),
    ("other_store", 1, "STORE 2 +FLAGS (\\Flagged)"),
    ("other_delete", 1, "STORE 4 +FLAGS.SILENT (\\Deleted)"),
    ("other_expunge", 1, "EXPUNGE"),
    ("noop_sees_vanished", 0, "NOOP"),
    ("uid_fetch_vanished", 0, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE {H} VANISHED)"),
    ("uid_fetch_vanished_part", 0, "UID FETCH 5:7 (FLAGS) (CHANGEDSINCE {H} VANISHED)"),
    ("unselect", 0, "UNSELECT"),
    ("select_qresync", 0, "SELECT INBOX (QRESYNC ({UV} {H}))"),
    ("select_qresync_known", 0, "SELECT INBOX (QRESYNC ({UV} {H} 1:3))"),
    ("select_qresync_seqmatch", 0, "SELECT INBOX (QRESYNC ({UV} {H} 1:8 (1:3 1:3)))"),
    ("examine_qresync_other_uv", 0, "EXAMINE INBOX (QRESYNC (999 {H}))"),
    ("select_again2", 0, "SELECT INBOX"),
    ("copy_into_selected", 0, "COPY 1 INBOX"),
    ("move_into_selected", 0, "UID MOVE 2 INBOX"),
    ("fetch_after_self_copy", 0, "FETCH 1:* (UID FLAGS)"),
    ("append_archive", 1, ("APPEND Archive (\\Seen) {}", [b"Subject: r\r\n\r\nrecent\r\n"])),
    ("status_recent_unclaimed", 0, "STATUS Archive (MESSAGES RECENT)"),
    ("claim_recent", 1, "SELECT Archive"),
    ("status_recent_claimed", 0, "STATUS Archive (MESSAGES RECENT)"),
    ("lsub_percent", 0, 'LSUB "" "%"'),
    ("lsub_child_percent", 0, 'LSUB "" "Lists.%"'),
]


def run_session2(port, user, password):
    conns = [Imap(port), Imap(port)]
    out, subst = [], {}
    try:
        for c in conns:
            c.login(user, password)
        for name, i, command in SESSION2:
            literals = ()
            if isinstance(command, tuple):
                command, literals = command
            for k, v in subst.items():
                command = command.replace("{" + k + "}", v)
            untagged, tagged = conns[i].cmd(command, literals)
            if name == "select_h":
                for r in untagged:
                    for key, code in ((b"UV", b"UIDVALIDITY"), (b"H", b"HIGHESTMODSEQ")):
                        m = re.search(rb"\[" + code + rb" (\d+)\]", r)
                        if m:
                            subst[key.decode()] = m.group(1).decode()
            try:
                out.append(normalise(untagged, tagged))
            except Exception as e:  # a malformed answer is an answer too
                out.append(("unparsable", repr(e), tuple(untagged), tagged))
    finally:
        for c in conns:
            c.close()
    return out


@pytest.fixture(scope="module")
def compared2(tmp_path_factory, ca):
    mg = ii.mailgate_with_imap(tmp_path_factory.mktemp("mg2"))
    d = dh.Dovecot({"bob": ii.PASSWORD}, ca, imap=True, extra_conf=ii.SPECIAL_USE)
    try:
        d.start()
        c = Imap(d.imap)
        c.login("bob", ii.PASSWORD)
        ii.seed(c)
        c.close()
        time.sleep(0.2)
        ii.copy_maildir(d.maildir("bob"), mg.maildir_path(ii.USER))
        mg.start()
        ref = run_session2(d.imap, "bob", ii.PASSWORD)
        got = run_session2(mg.ports["imap"], ii.USER, ii.PASSWORD)
        yield ref, got
    finally:
        mg.stop() if mg.proc else None
        d.cleanup()


@pytest.mark.parametrize("step", range(len(SESSION2)), ids=[s[0] for s in SESSION2])
def test_same_answers_as_dovecot_qresync_recent_self_copy(compared2, step):
    ref, got = compared2
    assert got[step] == ref[step], f"{SESSION2[step][2]}"
