"""SIGKILL during IMAP APPEND/MOVE/STORE load (issue 13, item 6).

Three sessions append, flag and move messages while the server is killed
three times. After each restart: every acknowledged APPEND is present
exactly once (in INBOX, or in Archive once its MOVE was acknowledged), an
acknowledged MOVE left nothing in INBOX, acknowledged flags are there, and
UIDs are the ones the server acknowledged (APPENDUID, COPYUID).
"""

import imaplib
import re
import signal
import threading
import time

USER, PASSWORD = "bob@example.test", "secret"


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.appended = {}  # subject -> uid in INBOX
        self.moved = {}  # subject -> uid in Archive
        self.flagged = set()  # subjects


def worker(port, wid, rnd, ledger, stop):
    try:
        m = imaplib.IMAP4("127.0.0.1", port, timeout=20)
        m.login(USER, PASSWORD)
        m.select("INBOX")
    except (OSError, imaplib.IMAP4.error):
        return
    i = 0
    while not stop.is_set():
        i += 1
        subject = f"r{rnd}-w{wid}-{i}"
        msg = f"From: a@example.test\r\nSubject: {subject}\r\n\r\n{'x' * (i * 37 % 3000)}\r\n"
        try:
            typ, data = m.append("INBOX", None, None, msg.encode())
            if typ != "OK":
                continue
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
            with ledger.lock:
                ledger.appended[subject] = uid
            if i % 3 == 0:
                typ, _ = m.uid("STORE", str(uid), "+FLAGS", "(\\Flagged)")
                if typ == "OK":
                    with ledger.lock:
                        ledger.flagged.add(subject)
            if i % 4 == 0:
                typ, data = m.uid("MOVE", str(uid), "Archive")
                if typ == "OK":
                    text = b" ".join(x for x in m.untagged_responses.pop("OK", []) if isinstance(x, bytes))
                    found = re.search(rb"COPYUID \d+ \d+ (\d+)", text + b" " + (data[0] or b""))
                    with ledger.lock:
                        ledger.moved[subject] = int(found.group(1)) if found else None
        except (OSError, imaplib.IMAP4.error, imaplib.IMAP4.abort, AttributeError):
            return


def folder_state(port, folder):
    m = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    m.login(USER, PASSWORD)
    m.select(folder, readonly=True)
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    m.logout()
    out = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta, hdr = item
        uid = int(re.search(rb"UID (\d+)", meta).group(1))
        flags = re.search(rb"FLAGS \(([^)]*)\)", meta).group(1)
        subject = re.search(rb"Subject: (\S+)", hdr).group(1).decode()
        out.setdefault(subject, []).append((uid, flags))
    return out


def test_sigkill_during_imap_load_loses_nothing_acknowledged(server):
    ledger = Ledger()
    for rnd in range(3):
        stop = threading.Event()
        threads = [
            threading.Thread(target=worker, args=(server.ports["imap"], w, rnd, ledger, stop)) for w in range(3)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5 + rnd * 0.4)
        server.stop(sig=signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(30)
        server.start()
        inbox = folder_state(server.ports["imap"], "INBOX")
        archive = folder_state(server.ports["imap"], "Archive")
        with ledger.lock:
            assert ledger.appended, "no APPEND was acknowledged: the load did not run"
            for subject, uid in ledger.appended.items():
                copies = inbox.get(subject, []) + archive.get(subject, [])
                assert len(copies) == 1, (subject, copies)
                if subject in ledger.moved:
                    assert subject not in inbox, subject
                    new_uid = ledger.moved[subject]
                    if new_uid is not None:
                        assert archive[subject][0][0] == new_uid, (subject, archive[subject])
                elif subject in inbox:
                    assert inbox[subject][0][0] == uid, (subject, inbox[subject], uid)
                if subject in ledger.flagged:
                    assert b"\\Flagged" in copies[0][1], (subject, copies)
    print(f"acknowledged: {len(ledger.appended)} appends, {len(ledger.moved)} moves, {len(ledger.flagged)} flag changes")
    assert ledger.moved and ledger.flagged
