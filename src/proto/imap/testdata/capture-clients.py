#!/usr/bin/env python3
"""Records the exact bytes Python's imaplib and imapclient send, for the
parser's client-traffic test (`clients/*.imap`).

A scripted fake server on loopback answers just enough for each client
to go on (greeting with capabilities, `+` for literals and IDLE, canned
untagged data, tagged OK); everything the client sends is written out.
Run: python3 src/proto/imap/testdata/capture-clients.py (needs imapclient
from PyPI). The files are committed; the unit test needs no Python.
"""
import os, re, socket, threading, imaplib, email.message

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clients")
CAPS = (b"IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT "
        b"CHILDREN SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE QRESYNC ESEARCH "
        b"APPENDLIMIT=26214400 AUTH=PLAIN")

def canned(cmd):
    c = cmd.upper()
    if c == b"CAPABILITY":
        return b"* CAPABILITY " + CAPS + b"\r\n"
    if c in (b"SELECT", b"EXAMINE"):
        return (b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 3 EXISTS\r\n* 0 RECENT\r\n"
                b"* OK [UIDVALIDITY 1] x\r\n* OK [UIDNEXT 4] x\r\n* OK [HIGHESTMODSEQ 9] x\r\n")
    if c == b"NAMESPACE":
        return b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    if c == b"ID":
        return b'* ID ("name" "fake")\r\n'
    if c == b"ENABLE":
        return b"* ENABLED CONDSTORE\r\n"
    if c in (b"SEARCH", b"UID SEARCH"):
        return b"* SEARCH 1 2\r\n"
    if c == b"STATUS":
        return b'* STATUS "INBOX" (MESSAGES 3 UIDNEXT 4)\r\n'
    if c in (b"LIST", b"LSUB"):
        return b'* %s (\\HasNoChildren) "/" "INBOX"\r\n' % c
    return b""

def serve(sock, out):
    conn, _ = sock.accept()
    f = conn.makefile("rb")
    conn.sendall(b"* OK [CAPABILITY " + CAPS + b"] fake ready\r\n")
    while True:
        line = f.readline()
        if not line:
            break
        out.append(line)
        cmd = line
        while True:
            m = re.search(rb"\{(\d+)(\+?)\}\r\n$", line)
            if not m:
                break
            if not m.group(2):
                conn.sendall(b"+ go\r\n")
            data = f.read(int(m.group(1)))
            out.append(data)
            line = f.readline()
            out.append(line)
        parts = cmd.split(b" ")
        tag = parts[0]
        name = parts[1].rstrip(b"\r\n") if len(parts) > 1 else b""
        if name.upper() == b"UID" and len(parts) > 2:
            name = b"UID " + parts[2].rstrip(b"\r\n")
        if name.upper() == b"IDLE":
            conn.sendall(b"+ idling\r\n")
            out.append(f.readline())
        if name.upper() == b"AUTHENTICATE" and len(parts) == 3:
            conn.sendall(b"+ \r\n")
            out.append(f.readline())
        conn.sendall(canned(name))
        if name.upper() == b"LOGOUT":
            conn.sendall(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
            break
        conn.sendall(tag + b" OK done\r\n")
    conn.close()

def capture(name, client):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    out = []
    t = threading.Thread(target=serve, args=(sock, out))
    t.start()
    try:
        client(sock.getsockname()[1])
    finally:
        t.join(10)
    with open(os.path.join(HERE, name + ".imap"), "wb") as f:
        f.write(b"".join(out))
    print("captured", name, sum(map(len, out)), "bytes")

msg = email.message.EmailMessage()
msg["From"] = "bob@example.test"
msg["Subject"] = "Grüße"
msg.set_content("hello\n")
raw = msg.as_bytes().replace(b"\n", b"\r\n")

def with_imaplib(port):
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login("bob@example.test", 'se"cr et\\')
    m.list()
    m.list('""', "Lists/*")
    m.lsub()
    m.select("INBOX")
    m.select("Entw&APw-rfe", readonly=True)
    m.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")
    m.search(None, "ALL")
    m.search("UTF-8", "SUBJECT", '"Gr\xfc\xdfe"'.encode("utf-8"))
    m.uid("SEARCH", "UNSEEN", "SINCE", "1-Dec-2026")
    m.fetch("1:3", "(UID FLAGS RFC822.SIZE)")
    m.fetch("1", "(RFC822)")
    m.uid("FETCH", "2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
    m.store("1", "+FLAGS", "(\\Deleted)")
    m.store("2", "-FLAGS.SILENT", "\\Seen")
    m.copy("1:2", "Archive")
    m.append("INBOX", "(\\Seen)", imaplib.Time2Internaldate(1796205600), raw)
    m.create("Lists/Family")
    m.rename("Lists/Family", "Family")
    m.subscribe("Family")
    m.unsubscribe("Family")
    m.delete("Family")
    m.namespace()
    m.check()
    m.expunge()
    m.close()
    m.logout()

def with_imaplib_auth(port):
    m = imaplib.IMAP4("127.0.0.1", port)
    m.authenticate("PLAIN", lambda _: b"\0bob@example.test\0secret")
    m.select()
    m.logout()

def with_imapclient(port):
    import imapclient
    c = imapclient.IMAPClient("127.0.0.1", port=port, ssl=False)
    c.login("bob@example.test", "secret")
    c.id_({"name": "IMAPClient", "version": imapclient.__version__})
    c.enable("CONDSTORE")
    c.list_folders()
    c.list_sub_folders()
    c.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "HIGHESTMODSEQ"])
    c.select_folder("INBOX")
    c.search(["UNSEEN", "SINCE", __import__("datetime").date(2026, 12, 1)])
    c.search(["FROM", "Smith", "NOT", "DELETED"], charset="UTF-8")
    c.search(["OR", "SEEN", "FLAGGED"])
    c.fetch([1, 2], ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE"])
    c.fetch([1, 2, 3], ["FLAGS"], modifiers=["CHANGEDSINCE 5"])
    c.fetch([3], ["BODY.PEEK[1.MIME]", "BODY.PEEK[TEXT]<0.100>"])
    c.add_flags([1, 2], ["\\Seen", "$Forwarded"], silent=True)
    c.remove_flags([1], ["\\Flagged"])
    c.set_flags([2], ["\\Answered"])
    c.copy([1], "Archive")
    c.move([2], "Trash")
    c.uid_expunge([1])
    c.append("Sent", raw, flags=["\\Seen"])
    c.create_folder("Archive/2026")
    c.rename_folder("Archive/2026", "Archive/Old")
    c.delete_folder("Archive/Old")
    c.idle()
    c.idle_done()
    c.namespace()
    c.unselect_folder()
    c.logout()

os.makedirs(HERE, exist_ok=True)
capture("imaplib", with_imaplib)
capture("imaplib-auth", with_imaplib_auth)
capture("imapclient", with_imapclient)
