"""Helpers for the IMAP interop tests (tests/test_imap_interop.py) and the
IMAP bench: a raw IMAP client that keeps every response, a parser of IMAP
responses into Python values, the normalisation that lets mailgate's
answers be compared with Dovecot's, a message corpus, and starting
mailgate with an `[imap]` section (skipping cleanly while the binary
does not know that section yet).
"""

import os
import re
import shutil
import socket
import subprocess
import time
from email.utils import format_datetime
from datetime import datetime, timezone, timedelta
from pathlib import Path

import pytest

import conftest
import dovecot_helpers as dh

USER = "bob@example.test"
PASSWORD = "secret"


# -- a raw IMAP client ----------------------------------------------------


class ImapError(Exception):
    pass


class Imap:
    """Sends commands as written and returns every response line (with its
    literals inline) so nothing is hidden the way imaplib hides it."""

    def __init__(self, port, host="127.0.0.1", timeout=60):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.n = 0
        self.greeting = self.response()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ImapError(f"connection closed; buffer {self.buf[:200]!r}")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _bytes(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self):
        """One whole response: a line, and each literal it announces with
        the line that follows it."""
        out = b""
        while True:
            line = self._line()
            out += line
            m = re.search(rb"\{(\d+)\+?\}$", line)
            if not m:
                return out
            out += b"\r\n" + self._bytes(int(m.group(1)))

    def send(self, data: bytes):
        self.sock.sendall(data)

    def cmd(self, text, literals=()):
        """Runs one command; `text` may hold `{}` where each literal goes
        (sent as a synchronising literal). Returns (untagged, tagged)."""
        self.n += 1
        tag = f"a{self.n:03d}"
        parts = text.split("{}")
        if isinstance(text, str):
            parts = [p.encode() for p in parts]
        self.send(tag.encode() + b" " + parts[0])
        untagged = []
        for lit, rest in zip(literals, parts[1:]):
            self.send(b"{%d}\r\n" % len(lit))
            while True:
                r = self.response()
                if r.startswith(b"+"):
                    break
                if r.startswith(tag.encode() + b" "):
                    return untagged, r[len(tag) + 1:]
                untagged.append(r)
            self.send(lit + rest)
        self.send(b"\r\n")
        while True:
            r = self.response()
            if r.startswith(tag.encode() + b" "):
                return untagged, r[len(tag) + 1:]
            untagged.append(r)

    def ok(self, text, literals=()):
        untagged, tagged = self.cmd(text, literals)
        if not tagged.upper().startswith(b"OK"):
            raise ImapError(f"{text!r} -> {tagged!r}")
        return untagged

    def login(self, user, password):
        return self.ok(f'LOGIN "{user}" "{password}"')

    def close(self):
        try:
            self.cmd("LOGOUT")
        except (OSError, ImapError):
            pass
        self.sock.close()


# -- parsing responses ------------------------------------------------------


class Parser:
    """IMAP response syntax -> Python: atoms and strings become str, NIL
    None, parenthesised lists lists. `BODY[HEADER.FIELDS (A B)]<0>` stays
    one atom; a response code `[...]` after OK/NO/BAD is one atom too."""

    def __init__(self, data: bytes):
        self.d = data
        self.i = 0

    def _ws(self):
        while self.i < len(self.d) and self.d[self.i:self.i + 1] == b" ":
            self.i += 1

    def value(self):
        self._ws()
        c = self.d[self.i:self.i + 1]
        if c == b"(":
            self.i += 1
            out = []
            while True:
                self._ws()
                if self.i >= len(self.d):
                    raise ValueError("unterminated list")
                if self.d[self.i:self.i + 1] == b")":
                    self.i += 1
                    return out
                out.append(self.value())
        if c == b'"':
            self.i += 1
            s = bytearray()
            while True:
                ch = self.d[self.i:self.i + 1]
                if not ch:
                    raise ValueError("unterminated string")
                self.i += 1
                if ch == b"\\":
                    s += self.d[self.i:self.i + 1]
                    self.i += 1
                elif ch == b'"':
                    return s.decode("utf-8", "surrogateescape")
                else:
                    s += ch
        if c == b"{":
            m = re.compile(rb"\{(\d+)\+?\}\r\n").match(self.d, self.i)
            if not m:
                raise ValueError(f"bad literal at {self.i}")
            n = int(m.group(1))
            start = m.end()
            self.i = start + n
            return self.d[start:start + n].decode("utf-8", "surrogateescape")
        # An atom: up to a space or ')' outside brackets; brackets may hold
        # spaces and lists (BODY[HEADER.FIELDS (FROM)]).
        start = self.i
        depth = 0
        while self.i < len(self.d):
            ch = self.d[self.i:self.i + 1]
            if ch == b"[":
                depth += 1
            elif ch == b"]":
                depth -= 1
            elif depth == 0 and ch in (b" ", b")", b"(") and self.i > start:
                break
            self.i += 1
        atom = self.d[start:self.i].decode("utf-8", "surrogateescape")
        if atom.upper() == "NIL":
            return None
        return atom

    def rest(self):
        self._ws()
        r = self.d[self.i:].decode("utf-8", "surrogateescape")
        self.i = len(self.d)
        return r

    def all(self):
        out = []
        while True:
            self._ws()
            if self.i >= len(self.d):
                return out
            out.append(self.value())


def parse(data: bytes):
    return Parser(data).all()


def _status_and_code(p: Parser):
    """After OK/NO/BAD/BYE/PREAUTH: the response code (or None)."""
    p._ws()
    if p.d[p.i:p.i + 1] == b"[":
        code = p.value()
        p.rest()
        return code[1:-1]
    p.rest()
    return None


# Response codes compared; the others (CAPABILITY, HIGHESTMODSEQ, ALERT...)
# are server-specific or optional.
KEPT_CODES = {"READ-WRITE", "READ-ONLY", "TRYCREATE", "COPYUID", "APPENDUID",
              "UIDVALIDITY", "UIDNEXT", "UNSEEN", "PERMANENTFLAGS", "NONEXISTENT",
              "ALREADYEXISTS"}


SPECIAL_USE_ATTRS = {"\\all", "\\archive", "\\drafts", "\\flagged", "\\junk",
                     "\\sent", "\\trash"}


def norm_flags(flags, drop_recent=True):
    return tuple(sorted({f.lower() if f.startswith("\\") else f for f in flags
                         if not (drop_recent and f.lower() == "\\recent")}, key=str.lower))


def norm_code(code):
    if code is None:
        return None
    name, _, arg = code.partition(" ")
    name = name.upper()
    if name not in KEPT_CODES:
        return None
    if name == "PERMANENTFLAGS":
        return (name, norm_flags(Parser(arg.encode()).value()))
    return (name, " ".join(arg.split())) if arg else (name,)


def casefold_tree(v):
    if isinstance(v, list):
        return tuple(casefold_tree(x) for x in v)
    if isinstance(v, str):
        return v.lower()
    return v


def tree(v):
    if isinstance(v, list):
        return tuple(tree(x) for x in v)
    return v


def norm_fetch_items(items):
    out = {}
    for k, v in zip(items[0::2], items[1::2]):
        key = " ".join(k.upper().split())
        key = key.replace(".PEEK", "")
        if key == "FLAGS":
            v = norm_flags(v)
        elif key in ("BODYSTRUCTURE", "BODY"):
            # Type, subtype and parameter names are case-insensitive.
            v = casefold_tree(v)
        elif key == "MODSEQ":
            continue
        elif key == "INTERNALDATE" and isinstance(v, str):
            # date-day-fixed is (SP DIGIT) / 2DIGIT (RFC 3501 9): " 7-Feb"
            # and Dovecot's "07-Feb" are the same date.
            v = v.strip().lstrip("0")
        else:
            v = tree(v)
        out[key] = v
    return tuple(sorted(out.items()))


def norm_untagged(raw: bytes):
    """One untagged response -> a comparable value, or None when it is
    server-specific (capabilities, greetings, free text)."""
    p = Parser(raw)
    star = p.value()
    if star != "*":
        return ("?", raw)
    first = p.value()
    up = first.upper() if isinstance(first, str) else first
    if up in ("OK", "NO", "BAD"):
        code = norm_code(_status_and_code(p))
        return None if code is None else ("OK-code" if up == "OK" else up, code)
    if up == "BYE":
        return ("BYE",)
    if up in ("CAPABILITY", "ID", "ENABLED", "NAMESPACE"):
        return None
    if up == "FLAGS":
        return ("FLAGS", norm_flags(p.value()))
    if up in ("LIST", "LSUB"):
        flags, delim, name = p.value(), p.value(), p.value()
        flags = [f.lower() for f in flags]
        if up == "LSUB":
            # RFC 6154 puts special-use attributes in LIST; in LSUB they are
            # the server's choice (Dovecot sends them, RFC 3501 does not ask).
            flags = [f for f in flags if f not in SPECIAL_USE_ATTRS]
        return (up, tuple(sorted(flags)), delim, name)
    if up == "SEARCH":
        return ("SEARCH", tuple(sorted(int(x) for x in p.all())))
    if up == "STATUS":
        name, items = p.value(), p.value()
        return ("STATUS", name, tuple(sorted((k.upper(), v) for k, v in
                                             zip(items[0::2], items[1::2]))))
    if isinstance(first, str) and first.isdigit():
        what = p.value().upper()
        if what == "RECENT":
            return None
        if what == "FETCH":
            return ("FETCH", int(first), norm_fetch_items(p.value()))
        return (what, int(first))
    return (up, tuple(tree(x) for x in p.all()))


def normalise(untagged, tagged):
    """(sorted untagged answers, expunges in order, tagged status + code)."""
    others, expunges = [], []
    for r in untagged:
        n = norm_untagged(r)
        if n is None:
            continue
        (expunges if n[0] == "EXPUNGE" else others).append(n)
    p = Parser(tagged)
    status = p.value().upper()
    code = norm_code(_status_and_code(p))
    return tuple(sorted(others, key=repr)), tuple(expunges), (status, code)


# -- a corpus ----------------------------------------------------------------

DATE0 = datetime(2024, 1, 10, 9, 30, 0, tzinfo=timezone(timedelta(hours=1)))


def imap_date(dt):
    return dt.strftime('"%d-%b-%Y %H:%M:%S %z"')


def corpus():
    """[(folder key, flags, internaldate, message bytes CRLF)]: plain,
    multipart, attachments, a forwarded message, encoded words."""
    msgs = []

    def add(folder, flags, n, headers, body):
        dt = DATE0 + timedelta(days=7 * n, hours=n)
        head = {"Date": format_datetime(dt), "Message-ID": f"<m{n}.{folder}@corpus.example>"}
        head.update(headers)
        text = "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n" + body
        msgs.append((folder, flags, dt, text.encode()))

    add("INBOX", "", 1, {"From": "Alice Liddell <alice@wonderland.example>",
                         "To": "bob@example.test", "Subject": "tea party",
                         "X-Tag": "garden"}, "Shall we have tea at four?\r\n" * 3)
    add("INBOX", "\\Seen", 2, {"From": "carol@lists.example", "To": "Family <family@example.test>",
                               "Cc": "dave@example.test, Eve <eve@example.test>",
                               "Subject": "=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
                               "Reply-To": "list@lists.example", "In-Reply-To": "<m1.INBOX@corpus.example>",
                               "MIME-Version": "1.0",
                               "Content-Type": "text/plain; charset=utf-8",
                               "Content-Transfer-Encoding": "8bit"},
        "Viele Gr\u00fc\u00dfe und bis bald\r\n")
    add("INBOX", "\\Seen \\Flagged", 3, {
        "From": "Bob <bob@example.test>", "To": "alice@wonderland.example",
        "Subject": "photos", "MIME-Version": "1.0",
        "Content-Type": 'multipart/mixed; boundary="b1"'},
        "preamble\r\n--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "Here are the photos.\r\n--b1\r\nContent-Type: image/png; name=\"a.png\"\r\n"
        "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.png\"\r\n\r\n"
        + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==\r\n" * 4
        + "--b1--\r\nepilogue\r\n")
    add("INBOX", "$Label1", 4, {
        "From": "news@shop.example", "To": "bob@example.test", "Subject": "weekly offers",
        "MIME-Version": "1.0", "Content-Type": 'multipart/alternative; boundary="alt"'},
        "--alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        "Offers =E2=82=AC 10\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<p>Offers &euro; 10</p>\r\n--alt--\r\n")
    add("INBOX", "\\Answered $Label2", 5, {
        "From": "Dave <dave@example.test>", "To": "bob@example.test", "Subject": "Fwd: tea party",
        "MIME-Version": "1.0", "Content-Type": 'multipart/mixed; boundary="fw"'},
        "--fw\r\nContent-Type: text/plain\r\n\r\nsee below\r\n--fw\r\nContent-Type: message/rfc822\r\n\r\n"
        "From: alice@wonderland.example\r\nSubject: tea party\r\nDate: Wed, 10 Jan 2024 09:30:00 +0100\r\n\r\n"
        "Shall we have tea at four?\r\n--fw--\r\n")
    add("INBOX", "\\Draft", 6, {"From": "bob@example.test", "To": "eve@example.test",
                                "Subject": "draft reply"}, "not finished\r\n")
    add("INBOX", "", 7, {"From": "big@example.test", "To": "bob@example.test", "Subject": "a long one"},
        "".join(f"line {i} of a long message with the word needle{i % 7}\r\n" for i in range(200)))
    add("INBOX", "\\Seen $Label1", 8, {"From": "alice@wonderland.example", "To": "bob@example.test",
                                       "Subject": "re: tea party", "X-Tag": "kitchen"}, "Yes, four.\r\n")
    add("Archive", "\\Seen", 9, {"From": "old@example.test", "To": "bob@example.test", "Subject": "old news"},
        "from last year\r\n")
    add("Lists/Family", "", 10, {"From": "carol@lists.example", "To": "family@example.test",
                                 "Subject": "sunday lunch"}, "who brings dessert?\r\n")
    add("Lists/Family", "\\Seen", 11, {"From": "dave@example.test", "To": "family@example.test",
                                       "Subject": "re: sunday lunch"}, "I do.\r\n")
    return msgs


def folder_name(key, delim):
    return key.replace("/", delim)


def delimiter(c: Imap):
    for r in c.ok('LIST "" ""'):
        n = norm_untagged(r)
        if n and n[0] == "LIST" and n[2]:
            return n[2]
    return "/"


def seed(c: Imap, msgs=None):
    """Creates the corpus' folders (ignoring NO for ones that exist),
    subscribes them and APPENDs the messages. Returns the delimiter."""
    delim = delimiter(c)
    msgs = corpus() if msgs is None else msgs
    folders = []
    for key, *_ in msgs:
        if key != "INBOX" and key not in folders:
            folders.append(key)
    for key in folders:
        c.cmd(f'CREATE "{folder_name(key, delim)}"')
        c.ok(f'SUBSCRIBE "{folder_name(key, delim)}"')
    for key, flags, dt, data in msgs:
        c.ok(f'APPEND "{folder_name(key, delim)}" ({flags}) {imap_date(dt)} {{}}', [data])
    return delim


# -- the state a client sees --------------------------------------------------


def view(c: Imap):
    """What a syncing client records: folders (LIST, LSUB), and per folder
    UIDVALIDITY, UIDNEXT and each UID's flags, size and Message-ID."""
    # \Noselect parents (Lists of Lists.Family) are left out: whether the
    # server lists them is the session comparison's business, not storage's.
    folders = sorted(n[3] for n in map(norm_untagged, c.ok('LIST "" "*"'))
                     if n and n[0] == "LIST" and "\\noselect" not in n[1])
    subs = sorted(n[3] for n in map(norm_untagged, c.ok('LSUB "" "*"')) if n and n[0] == "LSUB")
    boxes = {}
    for f in folders:
        untagged, tagged = c.cmd(f'STATUS "{f}" (UIDVALIDITY UIDNEXT MESSAGES)')
        st = [n for n in map(norm_untagged, untagged) if n and n[0] == "STATUS"]
        untagged, tagged2 = c.cmd(f'EXAMINE "{f}"')
        if not tagged.upper().startswith(b"OK") or not tagged2.upper().startswith(b"OK"):
            # A \Noselect parent (Lists of Lists.Family).
            boxes[f] = ("unselectable",)
            continue
        msgs = {}
        for r in c.ok("UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"):
            n = norm_untagged(r)
            if n and n[0] == "FETCH":
                items = dict(n[2])
                mid = items.get("BODY[HEADER.FIELDS (MESSAGE-ID)]", "").strip()
                msgs[int(items["UID"])] = (items.get("FLAGS"), items.get("RFC822.SIZE"), mid)
        boxes[f] = (dict(st[0][2]) if st else None, msgs)
    return {"folders": folders, "subscribed": subs, "boxes": boxes}


# -- servers ------------------------------------------------------------------

def mailgate_with_imap(directory: Path, extra=""):
    """A conftest.Server serving IMAP, not yet started. The base config
    has the [imap] section (with its ports in `ports`); `mailgate check`
    must accept the config."""
    s = conftest.Server(Path(directory), extra)
    assert "imap" in s.ports and "[imap]" in s.config_text, "conftest's base config serves IMAP"
    r = subprocess.run([conftest.BIN, "-c", str(s.config), "check"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, f"mailgate check: {r.stdout}{r.stderr}"
    return s


def need_dovecot_imap():
    why = dh.available()
    if why is None and not os.path.exists("/usr/lib/dovecot/imap"):
        why = "dovecot-imapd not installed (tests/setup.sh installs it)"
    if why:
        pytest.skip(why)


# Dovecot as a household would configure it: the special-use folders of
# Debian's conf.d/15-mailboxes.conf, created on first login like mailgate's.
SPECIAL_USE = """
namespace inbox {
  inbox = yes
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Archive {
    special_use = \\Archive
    auto = subscribe
  }
}
"""

DOVECOT_INDEX_FILES = re.compile(r"^dovecot\.(index|list\.index|mailbox\.log)")


def copy_maildir(src: Path, dst: Path, keep_indexes=True):
    """Copies a Maildir tree with mtimes (INTERNALDATE is the mtime)."""
    if dst.exists():
        shutil.rmtree(dst)
    ignore = None if keep_indexes else (
        lambda d, names: [n for n in names if DOVECOT_INDEX_FILES.match(n)])
    shutil.copytree(src, dst, symlinks=True, ignore=ignore, copy_function=shutil.copy2)


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")
