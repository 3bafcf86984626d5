"""A file system made fresh for one bench run.

Every server's files go on it, so that no run inherits the state of the
runs before it. That state is not small: on ext4 without a journal (this
machine's /), creating a file checks every free inode it passes for a
recent deletion time (ext4's `recently_deleted`, ~45% of mailgate's CPU
under `perf` right after the previous run had removed its 30,000 files),
and a second `make bench` straight after a first measured both servers
at a third to a half of their speed. A fresh ext4 with a journal (what
`mkfs.ext4` makes by default, and what a NAS or router's disk has) does
no such check, and every run starts from the same place.

The image is a file on the same disk as /tmp, allocated in full up front
and attached to a loop device with direct I/O: the loop driver then
writes straight to the disk (no second page cache) and a flush is a flush
of that disk with no metadata of the host file system to update. So a
journal commit costs what it costs on a disk of its own: 16 streams of
write + fsync + rename + folder fsync do ~5,300/s here, as the issue
measured for this machine. Its inode tables and journal are written at
mkfs time, so no kernel thread initialises them while a round runs.

BENCH_DIR=/some/dir skips all this and measures on that directory as it is.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time

IMAGE_BYTES = 6 << 30  # a full run writes ~1.5 GiB


@contextlib.contextmanager
def fresh_ext4():
    """Yields (mount point, None) on a new journaled ext4, or (None, reason)
    when one cannot be made here (not root, no mkfs.ext4, no loop device)."""
    if os.geteuid() != 0:
        yield None, "not root"
        return
    if not shutil.which("mkfs.ext4"):
        yield None, "no mkfs.ext4"
        return
    base = tempfile.mkdtemp(prefix="mailgate-benchfs-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    image, mnt = os.path.join(base, "fs.img"), os.path.join(base, "mnt")
    device = None
    mounted = False
    try:
        os.chmod(base, 0o755)  # Postfix and Dovecot run as users of their own
        os.mkdir(mnt)
        steps = [["fallocate", "-l", str(IMAGE_BYTES), image],
                 ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image],
                 ["losetup", "--direct-io=on", "--find", "--show", image]]
        for cmd in steps:
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                yield None, f"{' '.join(cmd[:2])}: {out.stderr.strip()}"
                return
        device = out.stdout.strip()
        out = subprocess.run(["mount", device, mnt], capture_output=True, text=True)
        if out.returncode != 0:
            yield None, f"mount {device}: {out.stderr.strip()}"
            return
        mounted = True
        os.chmod(mnt, 0o755)
        yield mnt, None
    finally:
        if mounted and subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            # A server that outlived its stop still holds a file: detach
            # the mount now, the kernel frees it when that process goes.
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def durable_writes_per_second(root, streams=16, count=2000, size=4096):
    """What the disk under `root` allows: `streams` threads each doing what
    a durable delivery must (write a tmp/ file, fsync it, rename it into
    new/, fsync new/), `count` in all. The ceiling the SMTP figures meet
    when a server does nothing but its fsyncs (fsync releases the GIL)."""
    d = tempfile.mkdtemp(prefix="disk-", dir=root)
    tmp, new = os.path.join(d, "tmp"), os.path.join(d, "new")
    os.mkdir(tmp)
    os.mkdir(new)
    data = b"x" * size
    left = [count]
    lock = threading.Lock()

    def stream(t):
        i = 0
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            i += 1
            name = f"{t}.{i}"
            fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(os.path.join(tmp, name), os.path.join(new, name))
            dfd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    threads = [threading.Thread(target=stream, args=(t,)) for t in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.perf_counter() - start)
