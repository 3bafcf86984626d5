#!/usr/bin/env python3
"""Regenerates the Dovecot reference answers the mime tests compare with.

Runs Debian's Dovecot imap (dovecot-imapd, 2.3) in PREAUTH mode on a
scratch Maildir holding one corpus message at a time, FETCHes each item
(one command per item, BODY.PEEK so no flag changes) and writes
`mN.dovecot`: for every item, `ITEM NUL response NUL`, where response is
Dovecot's exact `* 1 FETCH (...)` bytes. Run as root (it drops to nobody):
    python3 src/proto/imap/testdata/capture-dovecot.py
Not part of `make test`: the answers are committed, so the unit tests need
no Dovecot.
"""
import os, re, shutil, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ITEMS = [
    "RFC822.SIZE", "BODYSTRUCTURE", "BODY", "ENVELOPE",
    "BODY.PEEK[]", "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]",
    "BODY.PEEK[1]", "BODY.PEEK[1.MIME]", "BODY.PEEK[2]", "BODY.PEEK[2.MIME]",
    "BODY.PEEK[2.HEADER]", "BODY.PEEK[2.TEXT]", "BODY.PEEK[2.1]", "BODY.PEEK[2.2]",
    "BODY.PEEK[2.1.MIME]", "BODY.PEEK[3]", "BODY.PEEK[3.MIME]", "BODY.PEEK[1.1]",
    "BODY.PEEK[HEADER.FIELDS (From Subject x-missing)]",
    "BODY.PEEK[HEADER.FIELDS.NOT (From Subject)]",
    "BODY.PEEK[2.HEADER.FIELDS (subject)]",
    "BODY.PEEK[]<5.20>", "BODY.PEEK[TEXT]<0.10>", "BODY.PEEK[1]<3.1000>",
    "BODY.PEEK[]<100000.10>",
]

def run(msg):
    root = tempfile.mkdtemp(prefix="dvref")
    md = os.path.join(root, "home", "Maildir")
    for d in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, d))
    shutil.copy(msg, os.path.join(md, "cur", "1.ref:2,"))
    conf = os.path.join(root, "dovecot.conf")
    with open(conf, "w") as f:
        f.write("mail_location = maildir:~/Maildir\nlog_path = %s/log\nprotocols = imap\nssl = no\n" % root)
    subprocess.run(["chown", "-R", "nobody:nogroup", root], check=True)
    os.chmod(root, 0o755)
    script = b"s SELECT INBOX\r\n"
    for i, item in enumerate(ITEMS):
        script += b"t%d FETCH 1 (%s)\r\n" % (i, item.encode())
    script += b"z LOGOUT\r\n"
    out = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "env", "-i", "USER=bob", "HOME=" + os.path.join(root, "home"),
         "/usr/lib/dovecot/imap", "-c", conf],
        input=script, capture_output=True, check=True).stdout
    shutil.rmtree(root)
    # Every command gives exactly one `* 1 FETCH` (PEEK only, so no flag
    # updates); Dovecot may send the tagged OKs later, so take the
    # responses in order, reading literals by their length.
    responses = []
    pos = 0
    while pos < len(out):
        start = pos
        while True:
            eol = out.index(b"\r\n", pos)
            line = out[pos:eol]
            pos = eol + 2
            m = re.search(rb"\{(\d+)\}$", line)
            if not m:
                break
            pos += int(m.group(1))
        if out[start:].startswith(b"* 1 FETCH"):
            responses.append(out[start:pos])
    assert len(responses) == len(ITEMS), (msg, len(responses))
    return b"".join(i.encode() + b"\0" + r + b"\0" for i, r in zip(ITEMS, responses))

for name in sorted(os.listdir(HERE)):
    if name.endswith(".eml"):
        with open(os.path.join(HERE, name[:-4] + ".dovecot"), "wb") as f:
            f.write(run(os.path.join(HERE, name)))
        print("captured", name)
