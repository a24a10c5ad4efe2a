"""A root daemon among unprivileged users: planted links, FIFOs and foreign files at the log and
backing paths, an existing data file at the backing path, loose config files, and another user
reaching for the image through the mount (docs/security.md).

The unprivileged user is `nobody`, reached with setpriv; its actions use shell tools (ln, cat,
dd, mkfifo), since the test interpreter lives where nobody cannot go. Every refusal must be one
line on stderr naming the path, a non-zero exit, and the victim file untouched: same bytes, mode
and mtime.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import mount_unavailable, start_daemon, stop_daemon, zswapfs_cmd
from zswapfs.engine.backing import MARK_XATTR, read_mark
from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.service import safepath
from zswapfs.service.safepath import ROOT_LOG_DIR

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _unavailable() -> str | None:
    why = mount_unavailable()
    if why:
        return why
    if shutil.which("setpriv") is None:
        return "setpriv is not installed (util-linux): the tests act as user nobody with it"
    try:
        import pwd

        pwd.getpwnam("nobody")
    except KeyError:
        return "there is no user nobody to act as the unprivileged user"
    return None


#: the mount and system tests need root, a FUSE mount, setpriv and the user nobody
needs_mount_and_nobody = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, timeout=60, cwd="/")


def zswapfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        zswapfs_cmd(*args), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def snapshot(path: Path) -> tuple[bytes, int, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), st.st_mode, st.st_mtime_ns, st.st_uid


def assert_refused(res: subprocess.CompletedProcess[str], path: Path, words: str) -> None:
    """Exactly one stderr line, naming *path* and saying *words*; a non-zero exit."""
    lines = res.stderr.splitlines()
    assert res.returncode != 0, res
    assert len(lines) == 1, res.stderr
    assert str(path) in lines[0] and words in lines[0], lines[0]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A sticky, world-writable directory like /tmp, which nobody can reach (made under /tmp)."""
    d = Path(tempfile.mkdtemp(prefix="zswapfs-sec-", dir="/tmp"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-owned file the attacker wants root to write to."""
    v = tmp_path / "victim"
    v.write_bytes(b"root:secret:0:0\n" * 8)
    v.chmod(0o640)
    os.utime(v, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return v


def unmount(mp: Path) -> None:
    """Lazy-unmount *mp* whatever its state: os.path.ismount is False for a dead FUSE mount
    (ENOTCONN), which must go too."""
    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """A mountpoint that is always unmounted afterwards, should a refused mount have happened."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    yield mp
    unmount(mp)


def plant(kind: str, path: Path, victim: Path) -> None:
    """Put *kind* at *path* as the unprivileged user (a hard link is made by root: the kernel
    here forbids nobody to link root's files, fs.protected_hardlinks=1, which zswapfs may not
    rely on)."""
    if kind == "symlink":
        res = as_nobody("ln", "-s", str(victim), str(path))
    elif kind == "fifo":
        res = as_nobody("mkfifo", str(path))
    elif kind == "foreign file":
        res = as_nobody("sh", "-c", f"echo mine > {path}")
    elif kind == "hard link":
        os.link(victim, path)
        return
    assert res.returncode == 0, res.stderr


#: what another user can plant at a path zswapfs opens, and the words of its refusal
PLANTED = [
    ("symlink", "symbolic link"),
    ("fifo", "not a regular file"),
    ("foreign file", "owned by uid"),
    ("hard link", "hard links"),
]


# -- log files -----------------------------------------------------------------------------------
@pytest.mark.mount
@needs_mount_and_nobody
@pytest.mark.parametrize("kind, words", PLANTED)
@pytest.mark.parametrize("foreground", [False, True])
def test_log_path_planted_by_another_user_is_refused(
    shared_tmp: Path, victim: Path, mountpoint: Path, kind: str, words: str, foreground: bool
) -> None:
    log = shared_tmp / "zswapfs.log"
    plant(kind, log, victim)
    before, planted = snapshot(victim), os.lstat(log)
    args = ["mount", str(mountpoint), "--size", "16M", "--log", str(log)]
    res = zswapfs(*args, *(["--foreground"] if foreground else []))
    assert_refused(res, log, words)
    assert snapshot(victim) == before
    after = os.lstat(log)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (
        planted.st_ino,
        planted.st_mode,
        planted.st_mtime_ns,
    )
    assert not os.path.ismount(mountpoint)


@pytest.mark.mount
@needs_mount_and_nobody
def test_default_log_is_not_in_tmp(victim: Path, mountpoint: Path) -> None:
    """The old predictable /tmp/zswapfs-<mountpoint>.log, planted as a link, is left alone; the
    log goes to a root-only directory instead."""
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(mountpoint)).strip("_")
    old = Path(f"/tmp/zswapfs-{tag}.log")
    plant("symlink", old, victim)
    before = snapshot(victim)
    log = ROOT_LOG_DIR / f"{tag}.log"
    try:
        res = zswapfs("mount", str(mountpoint), "--size", "16M")
        assert res.returncode == 0, res.stderr
        assert f"log {log}" in res.stdout
        assert zswapfs("umount", str(mountpoint)).returncode == 0
        assert snapshot(victim) == before
        st, dst = os.lstat(log), os.lstat(ROOT_LOG_DIR)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        assert stat.S_ISDIR(dst.st_mode) and stat.S_IMODE(dst.st_mode) == 0o700
        assert dst.st_uid == 0
        assert "mounted" in log.read_text()
    finally:
        old.unlink()
        log.unlink(missing_ok=True)


@pytest.mark.mount
@needs_mount_and_nobody
def test_under_systemd_the_daemon_logs_to_the_journal(tmp_path: Path, mountpoint: Path) -> None:
    """JOURNAL_STREAM naming our stderr (as systemd sets it) sends the daemon's log there and
    creates no log file."""
    journal = tmp_path / "journal"
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(mountpoint)).strip("_")
    with open(journal, "wb") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        cmd = zswapfs_cmd("mount", str(mountpoint), "--size", "16M")
        res = subprocess.run(
            cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=120
        )
    try:
        assert res.returncode == 0, journal.read_text()
        assert "log the journal" in res.stdout
    finally:
        zswapfs("umount", str(mountpoint))
    assert "mounted" in journal.read_text() and "unmounted" in journal.read_text()
    assert not (ROOT_LOG_DIR / f"{tag}.log").exists()


# -- backing files -------------------------------------------------------------------------------
@pytest.mark.mount
@needs_mount_and_nobody
@pytest.mark.parametrize("kind, words", PLANTED)
@pytest.mark.parametrize("force", [False, True])
def test_backing_path_planted_by_another_user_is_refused(
    shared_tmp: Path, victim: Path, mountpoint: Path, kind: str, words: str, force: bool
) -> None:
    backing = shared_tmp / "swap.img"
    plant(kind, backing, victim)
    before, planted = snapshot(victim), os.lstat(backing)
    log = mountpoint.parent / "d.log"
    res = zswapfs(
        "mount",
        str(mountpoint),
        "--size",
        "16M",
        "--backing",
        str(backing),
        "--log",
        str(log),
        *(["--force"] if force else []),
    )
    assert_refused(res, backing, words)
    assert snapshot(victim) == before
    after = os.lstat(backing)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns, after.st_size) == (
        planted.st_ino,
        planted.st_mode,
        planted.st_mtime_ns,
        planted.st_size,
    )
    assert not os.path.ismount(mountpoint)


@pytest.mark.mount
@needs_mount_and_nobody
@pytest.mark.parametrize("mode", ["swap", "image"])
def test_existing_data_file_is_refused_and_taken_over_with_force(
    tmp_path: Path, mountpoint: Path, mode: str
) -> None:
    size = 16 << 20
    data = tmp_path / "precious.img"
    content = os.urandom(3 * PAGE_SIZE) * (size // (3 * PAGE_SIZE)) + os.urandom(
        size % (3 * PAGE_SIZE)
    )
    data.write_bytes(content)
    data.chmod(0o644)
    before = snapshot(data)
    args = [
        "mount",
        str(mountpoint),
        "--size",
        "16M",
        "--backing",
        str(data),
        "--mode",
        mode,
        "--log",
        str(tmp_path / "d.log"),
    ]
    res = zswapfs(*args)
    assert_refused(res, data, "not created by zswapfs")
    assert "--force" in res.stderr
    assert snapshot(data) == before and not os.path.ismount(mountpoint)
    res = zswapfs(*args, "--force")
    assert res.returncode == 0, res.stderr
    try:
        image = mountpoint / "swap.img"
        with open(image, "rb") as f:
            f.seek(5 * PAGE_SIZE)
            page5 = f.read(PAGE_SIZE)
    finally:
        assert zswapfs("umount", str(mountpoint)).returncode == 0
    st = data.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == size
    fd = os.open(data, os.O_RDONLY)
    try:
        assert read_mark(fd) == (mode, size)
    finally:
        os.close(fd)
    if mode == "swap":  # emptied: the force flag's documented price
        assert page5 == bytes(PAGE_SIZE) and data.read_bytes() == bytes(size)
    else:  # adopted as the image, contents kept
        assert page5 == content[5 * PAGE_SIZE : 6 * PAGE_SIZE]
        assert data.read_bytes() == content
    # from now on it is recognised as zswapfs's own: no force needed
    res = zswapfs(*args)
    assert res.returncode == 0, res.stderr
    assert zswapfs("umount", str(mountpoint)).returncode == 0


@pytest.mark.mount
@needs_mount_and_nobody
@pytest.mark.parametrize("which", ["--backing", "--log"])
def test_file_in_a_directory_others_can_write_is_refused(
    tmp_path: Path, mountpoint: Path, which: str
) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)  # no sticky bit: anyone could rename our file away and plant a link
    target = loose / ("swap.img" if which == "--backing" else "d.log")
    paths = {
        "--backing": str(tmp_path / "b.img"),
        "--log": str(tmp_path / "d.log"),
        which: str(target),
    }
    res = zswapfs(
        "mount", str(mountpoint), "--size", "16M", *(x for kv in paths.items() for x in kv)
    )
    assert_refused(res, loose, "without the sticky bit")
    assert not target.exists() and not os.path.ismount(mountpoint)


@pytest.mark.mount
@needs_mount_and_nobody
def test_missing_backing_directories_are_created_0700(tmp_path: Path, mountpoint: Path) -> None:
    backing = tmp_path / "state" / "zswapfs" / "swap.img"
    log = tmp_path / "d.log"
    res = zswapfs(
        "mount", str(mountpoint), "--size", "16M", "--backing", str(backing), "--log", str(log)
    )
    assert res.returncode == 0, res.stderr
    assert zswapfs("umount", str(mountpoint)).returncode == 0
    for d in (backing.parent.parent, backing.parent):
        st = os.lstat(d)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700, d
        assert f"created directory {d} (mode 0700)" in log.read_text()
    st = os.lstat(backing)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 16 << 20
    assert os.getxattr(backing, MARK_XATTR) == b"zswapfs-backing mode=swap size=16777216"


# -- config files --------------------------------------------------------------------------------
def loose_config(tmp_path: Path, mountpoint: Path, victim: Path, loose: str) -> tuple[Path, str]:
    """A config that would make root take over *victim*, left group-writable or foreign."""
    config = tmp_path / "swap0.toml"
    config.write_text(
        f'size = "16M"\nmountpoint = "{mountpoint}"\nbacking = "{victim}"\nforce = true\n'
    )
    if loose == "group-writable":
        config.chmod(0o664)
        return config, "writable by group or others"
    os.chown(config, 65534, 65534)
    config.chmod(0o644)
    return config, "owned by uid 65534"


@pytest.mark.mount
@needs_mount_and_nobody
@pytest.mark.parametrize("loose", ["group-writable", "owned by nobody"])
def test_loose_config_is_refused(
    tmp_path: Path, victim: Path, mountpoint: Path, loose: str
) -> None:
    config, words = loose_config(tmp_path, mountpoint, victim, loose)
    before, cfg_before = snapshot(victim), snapshot(config)
    res = zswapfs("mount", "--config", str(config))
    assert_refused(res, config, words)
    assert snapshot(victim) == before and snapshot(config) == cfg_before
    assert not os.path.ismount(mountpoint)


@pytest.mark.system
@needs_mount_and_nobody
@pytest.mark.parametrize("loose", ["group-writable", "owned by nobody"])
def test_loose_config_is_refused_by_swapon(
    tmp_path: Path, victim: Path, mountpoint: Path, loose: str
) -> None:
    """As above through swapon, which would go on to losetup and swapon (hence `system`)."""
    config, words = loose_config(tmp_path, mountpoint, victim, loose)
    before, cfg_before = snapshot(victim), snapshot(config)
    try:
        res = zswapfs("swapon", "--config", str(config))
        assert_refused(res, config, words)
        assert snapshot(victim) == before and snapshot(config) == cfg_before
        assert not os.path.ismount(mountpoint)
    finally:  # should it have gone through: swap off, loop detached, unmounted
        os.chown(config, 0, 0)
        config.chmod(0o600)
        zswapfs("swapoff", "--config", str(config))


# -- the mount itself ----------------------------------------------------------------------------
@pytest.mark.mount
@needs_mount_and_nobody
def test_another_user_cannot_reach_the_image_or_stats(shared_tmp: Path, tmp_path: Path) -> None:
    """The image is 0600 and the mount has no allow_other: nobody can neither read nor write
    the image, nor read the stats, though it can reach the directory the mount is in."""
    (shared_tmp / "readable.txt").write_text("anyone may read this\n")
    (shared_tmp / "readable.txt").chmod(0o644)
    mp = shared_tmp / "mnt"
    mp.mkdir()
    mp.chmod(0o755)
    control = as_nobody("cat", str(shared_tmp / "readable.txt"))
    assert control.returncode == 0 and "anyone" in control.stdout  # the path is reachable
    assert as_nobody("ls", str(mp)).returncode == 0  # and so is the empty mountpoint
    proc = start_daemon(mp, tmp_path / "d.log", "--size", "16M")
    try:
        image = mp / "swap.img"
        secret = b"swapped-out secret " * (PAGE_SIZE // 19) + b"\0" * (PAGE_SIZE % 19)
        with open(image, "r+b") as f:
            f.write(secret)
        st = os.stat(image)
        assert stat.S_IMODE(st.st_mode) == 0o600
        before = (image.read_bytes()[:PAGE_SIZE], st.st_mode, st.st_mtime_ns)
        for cmd in (
            ["cat", str(mp / "stats")],
            ["dd", f"if={image}", "bs=4096", "count=1", "status=none"],
            [
                "dd",
                "if=/dev/zero",
                f"of={image}",
                "bs=4096",
                "count=1",
                "conv=notrunc",
                "status=none",
            ],
            ["ls", str(mp)],
        ):
            res = as_nobody(*cmd)
            assert res.returncode != 0 and "Permission denied" in res.stderr, (cmd, res)
            assert res.stdout == "", cmd
        st = os.stat(image)
        assert (image.read_bytes()[:PAGE_SIZE], st.st_mode, st.st_mtime_ns) == before
        assert before[0] == secret
    finally:
        stop_daemon(mp, proc)


# -- the checks themselves -------------------------------------------------------------------
@pytest.mark.unit
def test_ensure_directory_makes_each_level_0700_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    old = os.umask(0)
    try:
        created = safepath.ensure_directory(target, "test")
    finally:
        os.umask(old)
    assert created == [str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(target)]
    for d in created:
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700, d
    assert safepath.ensure_directory(target, "test") == []  # already there: nothing made


@pytest.mark.unit
def test_own_directory_refuses_a_link_and_tightens_a_wide_mode(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    real.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(safepath.UnsafePath, match="not a directory"):
        safepath.own_directory(link, "log directory")
    safepath.own_directory(real, "log directory")
    assert stat.S_IMODE(os.lstat(real).st_mode) == 0o700


@pytest.mark.unit
@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another user needs root")
def test_check_directory_refuses_another_users_directory(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(safepath.UnsafePath, match="owned by uid 65534"):
        safepath.check_directory(theirs / "sub", "backing file x")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    safepath.check_directory(sticky, "backing file x")  # like /tmp: allowed


@pytest.mark.unit
def test_stderr_is_journal_compares_device_and_inode(monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert safepath.stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not safepath.stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert not safepath.stderr_is_journal()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not safepath.stderr_is_journal()
