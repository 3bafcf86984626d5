"""Power cuts during IMAP store writes (APPEND, MOVE, STORE and the
dovecot-uidlist), on the power-cut filesystem (tests/powercut_fs.py).

Until mailgate serves IMAP, the store is driven by `mailbox_tool stress`
(examples/mailbox_tool.rs), as in tests/test_imap_store.py: two processes
at once, each printing an ACK line only after an operation returned Ok.
Each cut freezes the filesystem at a random instant (now, or before the
N-th sync), SIGKILLs both, keeps only what was durable, and the next round
starts on what is left. Checked after every cut: every acknowledged
message is there once, under its acknowledged folder and UID (and flags
for a STORE) unless its process's next operation may have moved it, and
the uidlists parse (a second dump changes nothing).

It found two losses in the store, both fixed (src/store/mailbox/folder.rs,
module header): STORE moving a message new/ -> cur/ by rename(2), and MOVE
renaming across folders, where another writer's sync of the source made
the removal durable before the addition (a message acknowledged and then
lost), or a cut between the folders' syncs left it in both. Both now link
first and unlink once the new name is durable; MOVE hides the source name
first and settles a leftover by its link count. The filesystem counts
links like a real one for that (st_nlink).

Known and counted, not fixed here: a cut often keeps the name of a
`dovecot-uidlist.lock` (another write synced its folder) but not its
`PID:HOST` content. The store, like Dovecot, takes an empty lock for a
live one and waits out the 120 s stale timeout, so after a power cut the
first write to that folder stalls for two minutes. The test removes such
empty locks after each cut (as a boot script could) and reports how many.
"""

import random
import signal
import subprocess
import time

import pytest

from powercut import PowerCutMount, skip_unless_usable
from test_imap_store import TOOL, dump, tool
from test_powercut import CUTS, SEED, table_line


def test_power_cuts_during_imap_append_move_store(tmp_path):
    skip_unless_usable()
    print(f"\npowercut seed {SEED} (replay: POWERCUT_SEED={SEED})")
    rng = random.Random(f"{SEED}-imap")
    fs = PowerCutMount(tmp_path / "mnt", tmp_path / "fs").mount()
    procs = []
    try:
        root = fs.mountpoint / "m"
        tool(root, "defaults")
        acked = {}  # base -> (folder, uid, flags or None)
        inflight = set()  # each process's last message: its next op may have run
        ops = 0
        empty_locks = 0
        for round_ in range(CUTS):
            procs = [
                subprocess.Popen([TOOL, str(root), "stress", str(round_ * 10 + i + 1)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)
            ]
            if rng.random() < 0.4:
                time.sleep(rng.uniform(0.1, 0.5))
                fs.freeze(0)
            else:
                time.sleep(0.1)
                fs.freeze(rng.randint(1, 60))
                if not fs.wait_frozen(1.0):
                    fs.freeze(0)
            for p in procs:
                p.send_signal(signal.SIGKILL)
            fs.release()
            for p in procs:
                out, err = p.communicate(timeout=30)
                assert p.returncode == -signal.SIGKILL, err
                last = None
                for line in out.splitlines():
                    parts = line.split(" ")
                    if len(parts) < 5 or parts[0] != "ACK":
                        continue  # a line torn by the kill was never complete
                    op, base, folder, uid = parts[1], parts[2], parts[3], int(parts[4])
                    ops += 1
                    last = base
                    if op in ("append", "move"):
                        acked[base] = (folder, uid, None)
                    else:
                        acked[base] = (folder, uid, frozenset(parts[5].split(",")))
                if last:
                    inflight.add(last)
            procs = []
            fs.cut()
            for lock in root.rglob("dovecot-uidlist.lock"):
                if lock.stat().st_size == 0:
                    lock.unlink()
                    empty_locks += 1
            ours, _ = dump(root)
            where = {}
            for folder, (_v, _n, msgs) in ours.items():
                for uid, (base, flags) in msgs.items():
                    assert base not in where, f"cut {round_}: {base} in {where[base]} and {folder}"
                    where[base] = (folder, uid, flags)
            lost = [b for b in acked if b not in where]
            assert not lost, f"cut {round_}: acknowledged, lost: {lost[:5]}"
            for base, (folder, uid, flags) in acked.items():
                if base in inflight:
                    continue  # its MOVE or STORE may have happened unacknowledged
                wf, wuid, wflags = where[base]
                assert (wf, wuid) == (folder, uid), f"cut {round_}: {base} {where[base]}"
                if flags is not None:
                    assert wflags == flags, f"cut {round_}: {base} flags {wflags} != {flags}"
            assert dump(root)[0] == ours, f"cut {round_}: a uidlist did not parse"
        assert ops > CUTS, f"only {ops} operations acknowledged"
        table_line("imap store append/move/store", fs.cuts, ops, 0, 0,
                   f" ({len(acked)} messages; empty uidlist locks left by cuts {empty_locks})")
    finally:
        try:
            fs.release()
        except OSError:
            pass
        for p in procs:
            p.kill()
            p.wait()
        fs.close()
