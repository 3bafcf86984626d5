"""A power-cut filesystem for the tests: FUSE, all in memory, durable only
where POSIX promises it.

Run as `python3 powercut_fs.py MOUNTPOINT CONTROL_SOCKET STATE_FILE`. It
serves MOUNTPOINT until unmounted. Every create, write, truncate, mkdir,
rename, unlink, link and rmdir changes the live tree at once (what a
running program sees), and nothing more. Two things make state durable,
at most what POSIX and Linux promise:

- `fsync`/`fdatasync` of a file: that file's contents and size, as they
  are now. Not its name: a file that is fsynced but whose folder is not
  may vanish, or come back under its old name after a rename.
- `fsync` of a folder (FUSE fsyncdir): the folder's entries as they are
  now (creations, renames in and out, unlinks). Not the contents of the
  files they name, nor of the sub-folders.

The durable state is thus a second tree: for each folder the entries it
had at its last fsync, for each file the bytes it had at its last fsync
(empty if never). The control socket takes one line:

- `cut`: keep the durable state (also written to STATE_FILE, a pickle, for
  a post-mortem or a later daemon) and answer `ok`. The caller then
  unmounts, and this process mounts the durable state again: exactly what
  a machine would find after losing power at that instant. A fresh mount,
  so no kernel cache can keep what was thrown away. An unmount without a
  cut ends the daemon.
- `freeze N`: the instant of the power cut. With N = 0, now; with N > 0,
  just before the N-th fsync or fsyncdir from now. From then on every
  operation blocks, unapplied, so no program can act on anything after
  that instant (a `250` sent after it can only rest on syncs before it).
  The durable state changes only at syncs, so "before the N-th sync"
  reaches every distinct state a power cut can leave.
- `frozen`: `yes` once the freeze has struck, else `no`.
- `hold N`: the N-th fsync or fsyncdir from now waits, unapplied, while
  every other call goes on; a later freeze and cut find it never done. So
  a test can let another writer act between two syncs of one transaction
  (`holding` answers `yes` once it waits).
- `release`: the blocked operations (and any later one) fail with EIO,
  still unapplied, so that killed programs can exit and the mount be
  taken down.
- `stats`: counters as JSON (writes, fsyncs, fsyncdirs, ...), so a test can
  see that its calls reached the filesystem.

Mount options close the two gaps through which a power-cut filesystem
could be too kind: `direct_io` sends every write(2) to us at once (no
page cache, no writeback cache: a write the program made is a write we
hold, and only our own model decides what survives), and zero entry,
attribute and negative timeouts make every lookup ask us. Inode metadata
(mode, owner, times) is not modelled: it is kept as set. `sync(2)` and
`syncfs(2)` do not reach a FUSE filesystem; nothing here relies on them.

Must not: make anything durable that was not fsynced, or lose anything
that was.
"""

import errno
import json
import os
import pickle
import socket
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations


class Node:
    __slots__ = ("ino", "is_dir", "mode", "uid", "gid", "data", "entries", "times")

    def __init__(self, ino, is_dir, mode, uid=0, gid=0):
        self.ino = ino
        self.is_dir = is_dir
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.data = None if is_dir else bytearray()
        self.entries = {} if is_dir else None
        now = time.time()
        self.times = [now, now, now]  # atime, mtime, ctime


ROOT = 1


class State:
    """The live tree and the durable one, with the cut between them."""

    def __init__(self):
        self.nodes = {ROOT: Node(ROOT, True, stat.S_IFDIR | 0o755)}
        self.next_ino = ROOT + 1
        # ino -> bytes at its last fsync; ino -> {name: ino} at its last fsyncdir.
        self.durable_data = {}
        self.durable_entries = {ROOT: {}}
        self.stats = dict.fromkeys(
            ("writes", "bytes", "fsyncs", "fsyncdirs", "creates", "renames", "unlinks",
             "mkdirs", "rmdirs", "links", "truncates", "cuts"), 0)

    # -- the cut ---------------------------------------------------------
    def durable_image(self):
        """The tree a power cut leaves: from the root, durable entries only,
        each file with its durable bytes. Unreachable inodes are gone."""
        nodes, todo = {}, [ROOT]
        while todo:
            ino = todo.pop()
            if ino in nodes:
                continue  # a hard link, or a folder renamed into two places
            live = self.nodes[ino]
            n = Node(ino, live.is_dir, live.mode, live.uid, live.gid)
            n.times = list(live.times)
            if n.is_dir:
                n.entries = dict(self.durable_entries.get(ino, {}))
                todo.extend(n.entries.values())
            else:
                n.data = bytearray(self.durable_data.get(ino, b""))
            nodes[ino] = n
        image = State()
        image.nodes = nodes
        image.next_ino = self.next_ino
        image.durable_data = {i: bytes(n.data) for i, n in nodes.items() if not n.is_dir}
        image.durable_entries = {i: dict(n.entries) for i, n in nodes.items() if n.is_dir}
        image.stats = dict(self.stats)
        image.stats["cuts"] += 1
        return image


SYNC_OPS = ("fsync", "fsyncdir")
# Mount and unmount must work whatever the freeze says.
UNGATED_OPS = ("init", "destroy")


class PowerCutFS(Operations):
    use_ns = True

    def __init__(self, state):
        self.s = state
        self.mu = threading.Lock()
        self.fhs = {}
        self.next_fh = 1
        # The freeze: syncs left before it strikes (None: no freeze set).
        self.syncs_left = None
        self.frozen = False
        self.released = threading.Event()
        # A hold: the N-th sync from now waits alone (the others go on)
        # until the freeze; then it fails unapplied like every call.
        self.hold_left = None
        self.holding = False

    def __call__(self, op, *args):
        if op not in UNGATED_OPS:
            self._gate(op)
        return super().__call__(op, *args)

    def _gate(self, op):
        with self.mu:
            if not self.frozen and self.syncs_left is not None and op in SYNC_OPS:
                self.syncs_left -= 1
                if self.syncs_left <= 0:
                    self.frozen = True
            held = False
            if not self.frozen and self.hold_left is not None and op in SYNC_OPS:
                self.hold_left -= 1
                if self.hold_left <= 0:
                    self.hold_left = None
                    self.holding = held = True
            frozen = self.frozen or held
        if frozen:
            # The power is off: this operation never happens.
            self.released.wait()
            raise FuseOSError(errno.EIO)

    # -- helpers ---------------------------------------------------------
    def _lookup(self, path):
        node = self.s.nodes[ROOT]
        for part in path.split("/"):
            if not part:
                continue
            if not node.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            ino = node.entries.get(part)
            if ino is None:
                raise FuseOSError(errno.ENOENT)
            node = self.s.nodes[ino]
        return node

    def _parent(self, path):
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def _node(self, path, fh):
        if fh and fh in self.fhs:
            return self.s.nodes[self.fhs[fh]]
        if path is None:
            raise FuseOSError(errno.EBADF)
        return self._lookup(path)

    def _new(self, parent, name, is_dir, mode):
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        ino = self.s.next_ino
        self.s.next_ino += 1
        ctx_uid, ctx_gid, _ = fuse_get_context()
        node = Node(ino, is_dir, mode, ctx_uid, ctx_gid)
        self.s.nodes[ino] = node
        parent.entries[name] = ino
        self._touch(parent)
        return node

    def _touch(self, node):
        now = time.time()
        node.times[1] = node.times[2] = now

    def _fh(self, node):
        fh = self.next_fh
        self.next_fh += 1
        self.fhs[fh] = node.ino
        return fh

    # -- attributes ------------------------------------------------------
    def getattr(self, path, fh=None):
        with self.mu:
            n = self._node(path, fh)
            if n.is_dir:
                nlink = 2 + sum(1 for i in n.entries.values() if self.s.nodes[i].is_dir)
                size = 4096
            else:
                # Its names in the live tree (a MOVE's recovery counts them;
                # after a cut, only the names that were durable are live).
                nlink = sum(1 for d in self.s.nodes.values() if d.is_dir
                            for i in d.entries.values() if i == n.ino)
                size = len(n.data)
            return {
                "st_mode": n.mode, "st_ino": n.ino, "st_nlink": nlink, "st_size": size,
                "st_uid": n.uid, "st_gid": n.gid, "st_blocks": (size + 511) // 512,
                "st_atime": int(n.times[0] * 1e9), "st_mtime": int(n.times[1] * 1e9),
                "st_ctime": int(n.times[2] * 1e9),
            }

    def chmod(self, path, mode):
        with self.mu:
            n = self._lookup(path)
            n.mode = (n.mode & ~0o7777) | (mode & 0o7777)
            return 0

    def chown(self, path, uid, gid):
        with self.mu:
            n = self._lookup(path)
            if uid != -1:
                n.uid = uid
            if gid != -1:
                n.gid = gid
            return 0

    def utimens(self, path, times=None):
        with self.mu:
            n = self._lookup(path)
            if times:
                n.times[0], n.times[1] = times[0] / 1e9, times[1] / 1e9
            else:
                n.times[0] = n.times[1] = time.time()
            return 0

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 22, "f_bfree": 1 << 21,
                "f_bavail": 1 << 21, "f_files": 1 << 20, "f_ffree": 1 << 19,
                "f_favail": 1 << 19, "f_namemax": 255}

    def access(self, path, amode):
        with self.mu:
            self._lookup(path)
            return 0

    # -- folders ---------------------------------------------------------
    def mkdir(self, path, mode):
        with self.mu:
            parent, name = self._parent(path)
            self._new(parent, name, True, stat.S_IFDIR | (mode & 0o7777))
            self.s.stats["mkdirs"] += 1
            return 0

    def rmdir(self, path):
        with self.mu:
            parent, name = self._parent(path)
            n = self._lookup(path)
            if not n.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            if n.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
            self._touch(parent)
            self.s.stats["rmdirs"] += 1
            return 0

    def opendir(self, path):
        with self.mu:
            n = self._lookup(path)
            if not n.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            return self._fh(n)

    def readdir(self, path, fh):
        with self.mu:
            n = self._node(path, fh)
            return [".", ".."] + list(n.entries)

    def releasedir(self, path, fh):
        with self.mu:
            self.fhs.pop(fh, None)
            return 0

    def fsyncdir(self, path, datasync, fh):
        with self.mu:
            n = self._node(path, fh)
            self.s.durable_entries[n.ino] = dict(n.entries)
            self.s.stats["fsyncdirs"] += 1
            return 0

    # -- names -----------------------------------------------------------
    def unlink(self, path):
        with self.mu:
            parent, name = self._parent(path)
            n = self._lookup(path)
            if n.is_dir:
                raise FuseOSError(errno.EISDIR)
            del parent.entries[name]
            self._touch(parent)
            self.s.stats["unlinks"] += 1
            return 0

    def rename(self, old, new):
        with self.mu:
            op, oname = self._parent(old)
            np, nname = self._parent(new)
            n = self._lookup(old)
            target = np.entries.get(nname)
            if target is not None and target != n.ino:
                t = self.s.nodes[target]
                if t.is_dir != n.is_dir:
                    raise FuseOSError(errno.EISDIR if t.is_dir else errno.ENOTDIR)
                if t.is_dir and t.entries:
                    raise FuseOSError(errno.ENOTEMPTY)
            del op.entries[oname]
            np.entries[nname] = n.ino
            self._touch(op)
            self._touch(np)
            self.s.stats["renames"] += 1
            return 0

    def link(self, target, source):
        with self.mu:
            n = self._lookup(source)
            if n.is_dir:
                raise FuseOSError(errno.EPERM)
            parent, name = self._parent(target)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            parent.entries[name] = n.ino
            self._touch(parent)
            self.s.stats["links"] += 1
            return 0

    # -- files -----------------------------------------------------------
    def create(self, path, mode, fi=None):
        with self.mu:
            parent, name = self._parent(path)
            n = self._new(parent, name, False, stat.S_IFREG | (mode & 0o7777))
            self.s.stats["creates"] += 1
            return self._fh(n)

    def open(self, path, flags):
        with self.mu:
            n = self._lookup(path)
            if n.is_dir:
                raise FuseOSError(errno.EISDIR)
            return self._fh(n)

    def read(self, path, size, offset, fh):
        with self.mu:
            n = self._node(path, fh)
            return bytes(n.data[offset:offset + size])

    def write(self, path, data, offset, fh):
        with self.mu:
            n = self._node(path, fh)
            if offset > len(n.data):
                n.data.extend(b"\0" * (offset - len(n.data)))
            n.data[offset:offset + len(data)] = data
            self._touch(n)
            self.s.stats["writes"] += 1
            self.s.stats["bytes"] += len(data)
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mu:
            n = self._node(path, fh)
            if length < len(n.data):
                del n.data[length:]
            else:
                n.data.extend(b"\0" * (length - len(n.data)))
            self._touch(n)
            self.s.stats["truncates"] += 1
            return 0

    def fsync(self, path, datasync, fh):
        with self.mu:
            n = self._node(path, fh)
            self.s.durable_data[n.ino] = bytes(n.data)
            self.s.stats["fsyncs"] += 1
            return 0

    def flush(self, path, fh):
        return 0  # close(2): makes nothing durable

    def release(self, path, fh):
        with self.mu:
            self.fhs.pop(fh, None)
            return 0

def fuse_get_context():
    from fuse import fuse_get_context as ctx

    return ctx()


class Daemon:
    """The control socket, across mounts: a cut keeps the durable image,
    and once the caller has unmounted, the same process mounts it again
    (no new interpreter to start: a cut costs one umount and one mount)."""

    def __init__(self, sock_path, state_path):
        self.sock_path = sock_path
        self.state_path = state_path
        self.fs = None
        self.next_state = None

    def serve(self):
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.sock_path)
        srv.listen(4)
        while True:
            conn, _ = srv.accept()
            with conn:
                cmd = conn.makefile("r").readline().strip()
                conn.sendall(self.answer(cmd).encode() + b"\n")

    def answer(self, cmd):
        fs = self.fs
        if cmd == "cut":
            with fs.mu:
                self.next_state = fs.s.durable_image()
                if self.state_path:
                    with open(self.state_path + ".tmp", "wb") as f:
                        pickle.dump(self.next_state, f)
                    os.replace(self.state_path + ".tmp", self.state_path)
            return "ok"
        if cmd.startswith("freeze "):
            n = int(cmd.split()[1])
            with fs.mu:
                if n <= 0:
                    fs.frozen = True
                else:
                    fs.syncs_left = n
            return "ok"
        if cmd.startswith("hold "):
            with fs.mu:
                fs.hold_left = max(1, int(cmd.split()[1]))
            return "ok"
        if cmd == "holding":
            with fs.mu:
                return "yes" if fs.holding else "no"
        if cmd == "frozen":
            with fs.mu:
                return "yes" if fs.frozen else "no"
        if cmd == "release":
            fs.released.set()
            return "ok"
        if cmd == "stats":
            with fs.mu:
                return json.dumps(fs.s.stats)
        return "error: unknown command"


def main():
    mountpoint, sock_path, state_path = sys.argv[1:4]
    state = State()
    if os.path.exists(state_path):
        with open(state_path, "rb") as f:
            state = pickle.load(f)
    daemon = Daemon(sock_path, state_path)
    daemon.fs = PowerCutFS(state)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    threading.Thread(target=daemon.serve, daemon=True).start()
    while True:
        # Multithreaded, so that a held call waits alone; every call takes
        # the one lock, so the model still sees one call at a time.
        FUSE(daemon.fs, mountpoint, foreground=True, nothreads=False, fsname="powercut",
             direct_io=True, hard_remove=True, big_writes=True, max_write=131072,
             entry_timeout=0, attr_timeout=0, negative_timeout=0, use_ino=True,
             # The folder underneath may hold a trap (see tests/powercut.py).
             nonempty=True)
        # Unmounted: after a cut, serve what survived; else we are done.
        if daemon.next_state is None:
            break
        state, daemon.next_state = daemon.next_state, None
        daemon.fs = PowerCutFS(state)


if __name__ == "__main__":
    main()
