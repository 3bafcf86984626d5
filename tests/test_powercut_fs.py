"""The power-cut filesystem itself, against its model: after a cut, a file's
bytes are those of its last fsync, a folder's names those of its last
fsync, and nothing else survives (tests/powercut_fs.py).

Each case runs in its own folder, made durable first; one cut covers all
the cases; then each folder must hold exactly what the model says.
"""

import os

import pytest

from powercut import PowerCutMount, skip_unless_usable


def fsync_path(path, flags=os.O_RDONLY):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, sync=False):
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def c_file_synced_dir_not(d):
    write(d / "f", b"data", sync=True)


def c_dir_synced_file_not(d):
    write(d / "f", b"data")
    fsync_path(d)


def c_both_synced(d):
    write(d / "f", b"data", sync=True)
    fsync_path(d)


def c_rename_not_dir_synced(d):
    write(d / "old", b"v1", sync=True)
    fsync_path(d)
    os.rename(d / "old", d / "new")


def c_rename_dir_synced(d):
    write(d / "old", b"v1", sync=True)
    fsync_path(d)
    os.rename(d / "old", d / "new")
    fsync_path(d)


def c_replace_not_dir_synced(d):
    write(d / "f", b"v1", sync=True)
    write(d / "f.tmp", b"v2", sync=True)
    fsync_path(d)
    os.rename(d / "f.tmp", d / "f")


def c_rename_across_dest_synced(d):
    # POSIX makes each folder durable on its own: the name is in both.
    os.mkdir(d / "a")
    os.mkdir(d / "b")
    fsync_path(d)
    write(d / "a" / "m", b"msg", sync=True)
    fsync_path(d / "a")
    os.rename(d / "a" / "m", d / "b" / "m")
    fsync_path(d / "b")


def c_rename_across_src_synced(d):
    os.mkdir(d / "a")
    os.mkdir(d / "b")
    fsync_path(d)
    write(d / "a" / "m", b"msg", sync=True)
    fsync_path(d / "a")
    fsync_path(d / "b")
    os.rename(d / "a" / "m", d / "b" / "m")
    fsync_path(d / "a")


def c_unlink_not_dir_synced(d):
    write(d / "f", b"data", sync=True)
    fsync_path(d)
    os.unlink(d / "f")


def c_unlink_dir_synced(d):
    write(d / "f", b"data", sync=True)
    fsync_path(d)
    os.unlink(d / "f")
    fsync_path(d)


def c_write_after_fsync(d):
    fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"first ")
    os.fsync(fd)
    os.write(fd, b"second")
    os.close(fd)
    fsync_path(d)


def c_append_after_fsync(d):
    write(d / "f", b"line1\n", sync=True)
    fsync_path(d)
    write(d / "f", b"line2\n", flags=os.O_WRONLY | os.O_APPEND)


def c_append_fdatasync(d):
    write(d / "f", b"line1\n", sync=True)
    fsync_path(d)
    fd = os.open(d / "f", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"line2\n")
    os.fdatasync(fd)
    os.close(fd)


def c_truncate_not_synced(d):
    write(d / "f", b"0123456789", sync=True)
    fsync_path(d)
    os.truncate(d / "f", 3)


def c_subdir_parent_not_synced(d):
    os.mkdir(d / "sub")
    write(d / "sub" / "f", b"x", sync=True)
    fsync_path(d / "sub")


def c_subdir_all_synced(d):
    os.mkdir(d / "sub")
    fsync_path(d)
    write(d / "sub" / "f", b"x", sync=True)
    fsync_path(d / "sub")


def c_subdir_entries_not_synced(d):
    os.mkdir(d / "sub")
    fsync_path(d)
    write(d / "sub" / "f", b"x", sync=True)


def c_hard_link(d):
    write(d / "f", b"shared", sync=True)
    fsync_path(d)
    os.link(d / "f", d / "g")
    fsync_path(d)


def c_rmdir_not_synced(d):
    os.mkdir(d / "sub")
    fsync_path(d)
    os.rmdir(d / "sub")


def c_open_directory_fd_sync(d):
    # Rust's File::open(dir)?.sync_all(): O_RDONLY|O_CLOEXEC, then fsync.
    write(d / "f", b"z", sync=True)
    fd = os.open(d, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


# (case, expected tree after the cut: relative path -> bytes, or None for a folder)
CASES = [
    (c_file_synced_dir_not, {}),
    (c_dir_synced_file_not, {"f": b""}),
    (c_both_synced, {"f": b"data"}),
    (c_rename_not_dir_synced, {"old": b"v1"}),
    (c_rename_dir_synced, {"new": b"v1"}),
    (c_replace_not_dir_synced, {"f": b"v1", "f.tmp": b"v2"}),
    (c_rename_across_dest_synced, {"a": None, "b": None, "a/m": b"msg", "b/m": b"msg"}),
    (c_rename_across_src_synced, {"a": None, "b": None}),
    (c_unlink_not_dir_synced, {"f": b"data"}),
    (c_unlink_dir_synced, {}),
    (c_write_after_fsync, {"f": b"first "}),
    (c_append_after_fsync, {"f": b"line1\n"}),
    (c_append_fdatasync, {"f": b"line1\nline2\n"}),
    (c_truncate_not_synced, {"f": b"0123456789"}),
    (c_subdir_parent_not_synced, {}),
    (c_subdir_all_synced, {"sub": None, "sub/f": b"x"}),
    (c_subdir_entries_not_synced, {"sub": None}),
    (c_hard_link, {"f": b"shared", "g": b"shared"}),
    (c_rmdir_not_synced, {"sub": None}),
    (c_open_directory_fd_sync, {"f": b"z"}),
]


def tree(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


@pytest.fixture
def mount(tmp_path):
    skip_unless_usable()
    m = PowerCutMount(tmp_path / "mnt", tmp_path / "fs").mount()
    yield m
    m.close()


def test_model_table(mount):
    root = mount.mountpoint
    live = {}
    for case, _ in CASES:
        d = root / case.__name__
        os.mkdir(d)
    fsync_path(root)
    before = mount.stats()
    for case, _ in CASES:
        case(root / case.__name__)
        live[case.__name__] = tree(root / case.__name__)
    after = mount.stats()
    # Every write and every folder fsync reached the filesystem (no page
    # cache or writeback cache in between, FUSE fsyncdir is delivered).
    assert after["writes"] - before["writes"] >= 19, (before, after)
    assert after["fsyncdirs"] - before["fsyncdirs"] >= 20, (before, after)
    mount.cut()
    got_cases = sorted(os.listdir(root))
    assert got_cases == sorted(c.__name__ for c, _ in CASES)
    bad = []
    for case, want in CASES:
        got = tree(root / case.__name__)
        if got != want:
            bad.append(f"{case.__name__}: live {live[case.__name__]}, after cut {got}, model {want}")
    assert not bad, "\n".join(bad)


def test_cut_keeps_durable_state_across_cuts(mount):
    root = mount.mountpoint
    write(root / "f", b"one", sync=True)
    fsync_path(root)
    mount.cut()
    # Nothing new: a second cut changes nothing.
    mount.cut()
    assert tree(root) == {"f": b"one"}
    # Appending after a cut sees the durable size, not a cached one.
    write(root / "f", b"two", flags=os.O_WRONLY | os.O_APPEND, sync=True)
    assert (root / "f").read_bytes() == b"onetwo"
    mount.cut()
    assert tree(root) == {"f": b"onetwo"}
    assert mount.stats()["cuts"] == 3
