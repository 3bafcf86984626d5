"""Test side of the power-cut filesystem (tests/powercut_fs.py): mount it,
cut the power, mount what is left.

A cut is: the caller has killed every process writing to the mount
(SIGKILL, and waited); the daemon writes its durable image; the mount is
taken down; a new daemon serves the image on a fresh mount. Nothing the
kernel cached of the old mount can leak into the new one.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DAEMON = Path(__file__).resolve().parent / "powercut_fs.py"


def skip_unless_usable():
    """Skips only where the machine has no /dev/fuse; a missing fusepy or
    libfuse2 is a broken setup (tests/setup.sh installs both) and fails."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine: the power-cut tests need FUSE")
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.fail(f"fusepy/libfuse2 not usable ({e}): run tests/setup.sh")


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


class PowerCutMount:
    """TRAP names a regular file put in the mount point's own folder, seen
    only while the filesystem is down: a program that writes there between
    a cut and the remount (a one-shot `sendmail` started just then) finds
    a file where it expects its data folder and fails, instead of writing
    what the next mount would hide."""

    def __init__(self, mountpoint: Path, workdir: Path, trap=None):
        self.mountpoint = mountpoint
        self.workdir = workdir
        self.sock = str(workdir / "ctl.sock")
        self.state = str(workdir / "durable.pickle")
        self.log = workdir / "fs.log"
        self.proc = None
        self.cuts = 0
        mountpoint.mkdir(parents=True, exist_ok=True)
        if trap:
            (mountpoint / trap).write_text("the power-cut filesystem is not mounted\n")
        workdir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to 108 bytes: fall back to /tmp.
        if len(self.sock) > 100:
            self.sock = f"/tmp/powercut-{os.getpid()}-{id(self)}.sock"

    def mount(self, timeout=10):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(DAEMON), str(self.mountpoint), self.sock, self.state],
            stdout=logf, stderr=logf)
        deadline = time.time() + timeout
        while not (is_mounted(self.mountpoint) and os.path.exists(self.sock)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"powercut_fs exited {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            if time.time() > deadline:
                raise RuntimeError("powercut_fs did not mount")
            time.sleep(0.01)
        return self

    def _ask(self, cmd):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(self.sock)
            s.sendall(cmd.encode() + b"\n")
            return s.makefile("r").readline().strip()

    def stats(self):
        return json.loads(self._ask("stats"))

    def freeze(self, syncs=0):
        """The instant of the cut: now (0) or just before the SYNCS-th sync."""
        assert self._ask(f"freeze {syncs}") == "ok"

    def wait_frozen(self, timeout):
        deadline = time.time() + timeout
        while self._ask("frozen") != "yes":
            if time.time() > deadline:
                return False
            time.sleep(0.005)
        return True

    def hold(self, syncs=1):
        """The SYNCS-th sync from now waits alone until the freeze."""
        assert self._ask(f"hold {syncs}") == "ok"

    def wait_holding(self, timeout):
        deadline = time.time() + timeout
        while self._ask("holding") != "yes":
            if time.time() > deadline:
                return False
            time.sleep(0.005)
        return True

    def release(self):
        """Blocked calls fail (EIO) so that killed writers can exit."""
        assert self._ask("release") == "ok"

    def cut(self):
        """Power cut: everything not durable is gone. Every writer must be
        dead. The daemon mounts what survived once we have unmounted."""
        assert self._ask("cut") == "ok"
        self._umount()
        deadline = time.time() + 10
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"powercut_fs did not mount again: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.005)
        self.cuts += 1

    def _umount(self):
        for attempt in range(100):
            r = subprocess.run(["umount", str(self.mountpoint)], capture_output=True, text=True)
            if r.returncode == 0:
                return
            time.sleep(0.02)  # a dying process still holds a file open
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)

    def unmount(self):
        if self.proc is None:
            return
        if is_mounted(self.mountpoint):
            self._umount()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if os.path.exists(self.sock):
            os.unlink(self.sock)

    def close(self):
        """Unmounts; the last durable image stays in the workdir (a pickle
        of powercut_fs.State) for a post-mortem."""
        self.unmount()
