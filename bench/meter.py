"""What one server costs: CPU seconds and peak memory of all its processes.

A `Meter` follows one server (mailgate, Postfix or Dovecot) with every
process it forks, including those that have exited by the time it is read:

- cgroup v2, when a cgroup2 hierarchy is mounted and writable (here
  /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on a pure v2 one):
  the server's first process is moved into a cgroup of its own, every child
  inherits it, and `cpu.stat` usage_usec counts them all, dead or alive.
- otherwise /proc: utime+stime of the root process and every live
  descendant, plus the root's cutime+cstime (the children it has reaped).

Peak memory is sampled, not read from the cgroup: `memory.peak` counts the
page cache of the mail the server writes (12 MiB per 3000 messages), which
is not the server's footprint. A sampler thread sums the RSS (and PSS,
which splits pages shared between processes fairly) of every process of
the server every SAMPLE_SECONDS; for a single-process server its VmHWM
(the kernel's exact peak) is taken as well.
"""

import os
import threading
import time

SAMPLE_SECONDS = 0.05
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def cgroup2_root():
    """The writable cgroup2 mount point, or None."""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, path, fstype = line.split()[:3]
                if fstype == "cgroup2" and os.access(path, os.W_OK) \
                        and os.path.exists(os.path.join(path, "cgroup.procs")):
                    return path
    except OSError:
        pass
    return None


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name is in parentheses and may hold spaces: split after it.
    head, _, rest = text.rpartition(")")
    return rest.split()


def descendants(root):
    """Live pids below root (not root itself)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(name)[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rss_pss(pid):
    """(RSS bytes, PSS bytes) of one process; (0, 0) when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            rss = pss = 0
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
            return rss, pss
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        return rss, rss
    except (OSError, ValueError, IndexError):
        return 0, 0


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Meter:
    def __init__(self, name):
        self.name = name
        self.root = None
        self.cgroup = None
        base = cgroup2_root()
        if base:
            path = os.path.join(base, f"mailgate-bench-{os.getpid()}-{name}")
            try:
                os.makedirs(path, exist_ok=True)
                if os.path.exists(os.path.join(path, "cpu.stat")):
                    self.cgroup = path
                else:
                    os.rmdir(path)
            except OSError:
                self.cgroup = None
        self.method = "cgroup v2 cpu.stat" if self.cgroup else "/proc utime+stime (+cutime)"
        self._sampler = None
        self._stop = threading.Event()
        self.peak_rss = self.peak_pss = 0

    def adopt(self, root_pid):
        """Follow root_pid and everything it forks. The root moves first, so
        any child it forks from then on is born in the cgroup; the children
        it already has move after it."""
        self.root = root_pid
        if self.cgroup:
            procs = os.path.join(self.cgroup, "cgroup.procs")
            for pid in [root_pid] + descendants(root_pid):
                try:
                    with open(procs, "w") as f:
                        f.write(str(pid))
                except OSError:
                    pass  # exited meanwhile

    def pids(self):
        if self.cgroup:
            try:
                with open(os.path.join(self.cgroup, "cgroup.procs")) as f:
                    return [int(x) for x in f.read().split()]
            except OSError:
                return []
        if self.root is None:
            return []
        return [self.root] + descendants(self.root)

    def cpu(self):
        """CPU seconds (user + system) of the server so far."""
        if self.cgroup:
            with open(os.path.join(self.cgroup, "cpu.stat")) as f:
                for line in f:
                    k, v = line.split()
                    if k == "usage_usec":
                        return int(v) / 1e6
            return 0.0
        total = 0
        for pid in self.pids():
            try:
                f = _stat_fields(pid)
            except OSError:
                continue
            total += int(f[11]) + int(f[12])
            if pid == self.root:
                total += int(f[13]) + int(f[14])
        return total / TICKS

    # -- memory ------------------------------------------------------------
    def _sample(self):
        rss = pss = 0
        for pid in self.pids():
            r, p = rss_pss(pid)
            rss += r
            pss += p
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _loop(self):
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def start_sampling(self):
        self.peak_rss = self.peak_pss = 0
        self._stop.clear()
        self._sample()
        self._sampler = threading.Thread(target=self._loop, daemon=True)
        self._sampler.start()

    def stop_sampling(self):
        self._stop.set()
        if self._sampler:
            self._sampler.join()
        self._sample()
        pids = self.pids()
        if len(pids) == 1:
            hwm = vm_hwm(pids[0])
            self.peak_rss = max(self.peak_rss, hwm)
        return self.peak_rss, self.peak_pss

    def close(self):
        """Removes the cgroup once its processes are gone (best effort)."""
        if self.cgroup:
            for _ in range(50):
                try:
                    os.rmdir(self.cgroup)
                    break
                except OSError:
                    time.sleep(0.1)
            self.cgroup = None
