"""The two frontends answer alike: the native one (C, libfuse's worker threads) and the pyfuse3
reference are mounted side by side over the same kind of store, and one sequence of requests goes
through the kernel to both: the same bytes back, the same errno, the same attributes and
directory. What only one can do is asserted as such: FALLOCATE (discard) is the native
frontend's; pyfuse3 has no handler, so the kernel answers EOPNOTSUPP there."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import random
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Mounted, needs_mount, start_daemon, stop_daemon
from zswapfs.engine.codec import PAGE_SIZE

pytestmark = [pytest.mark.mount, needs_mount]

SIZE = 4 << 20
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def both(tmp_path: Path) -> Iterator[dict[str, Mounted]]:
    """The native and the pyfuse3 frontend, each on its own mount of a SIZE image."""
    mounts: dict[str, Mounted] = {}
    try:
        for frontend in ("native", "pyfuse3"):
            mp = tmp_path / frontend
            mp.mkdir()
            log = tmp_path / f"{frontend}.log"
            args = ("--size", str(SIZE), "--frontend", frontend, "--recompress", "off")
            mounts[frontend] = Mounted(mp, start_daemon(mp, log, *args), log)
        yield mounts
    finally:
        for m in mounts.values():
            stop_daemon(m.mountpoint, m.proc)
    for m in mounts.values():
        assert "Traceback" not in m.log_text(), m.log_text()


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) or ("errno", its name): what a request came to."""
    try:
        return "ok", fn()
    except OSError as exc:
        return "errno", errno.errorcode.get(exc.errno or 0, exc.errno)


def fallocate(fd: int, mode: int, off: int, length: int) -> int:
    if _libc.fallocate(fd, mode, ctypes.c_long(off), ctypes.c_long(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return 0


@contextlib.contextmanager
def opened(mounts: dict[str, Mounted], flags: int) -> Iterator[dict[str, int]]:
    fds = {name: os.open(m.image, flags) for name, m in mounts.items()}
    try:
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def same(fds: dict[str, int], request: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """request(fd, *args) on both mounts' descriptors; both must come to the same outcome,
    which is returned."""
    got = {name: outcome(lambda fd=fd: request(fd, *args)) for name, fd in fds.items()}
    assert got["native"] == got["pyfuse3"], got
    return got["native"]


def test_one_sequence_of_requests_answers_alike(both: dict[str, Mounted]) -> None:
    """Writes and reads of every shape (aligned, unaligned, across pages, up to and past the end,
    negative), through O_DIRECT and the page cache alike: same bytes, same errno."""
    rnd = random.Random(21)
    model = bytearray(SIZE)
    with opened(both, os.O_RDWR | os.O_DIRECT) as direct, opened(both, os.O_RDWR) as cached:
        buf = __import__("mmap").mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT wants
        for step in range(400):
            kind = rnd.choice(["write", "write", "read", "edge", "unaligned"])
            if kind in ("write", "edge"):
                pages = rnd.choice([1, 1, 2, 8, 32, 256])
                off = rnd.randrange(SIZE // PAGE_SIZE) * PAGE_SIZE
                if kind == "edge":  # at, across and past the end
                    off = SIZE - rnd.choice([0, 1, 2, 4]) * PAGE_SIZE
                data = rnd.randbytes(pages * PAGE_SIZE // 2) + bytes(pages * PAGE_SIZE // 2)
                buf[: len(data)] = data
                got = same(direct, os.pwritev, [memoryview(buf)[: len(data)]], off)
                if got[0] == "ok":
                    model[off : off + got[1]] = data[: got[1]]
            elif kind == "unaligned":
                off = rnd.randrange(SIZE + 100) - 50
                data = rnd.randbytes(rnd.randint(1, 3 * PAGE_SIZE))
                got = same(cached, os.pwrite, data, off)
                if got[0] == "ok":
                    model[off : off + got[1]] = data[: got[1]]
                    for fd in cached.values():
                        os.fsync(fd)
            else:
                off = rnd.randrange(SIZE + PAGE_SIZE)
                size = rnd.randint(1, 64 * 1024)
                got = same(cached, os.pread, size, off)
                assert got == ("ok", bytes(model[off : off + size])), (step, off, size)
        for fd in cached.values():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        whole = same(cached, os.pread, SIZE + 10, 0)
        assert whole == ("ok", bytes(model))


def test_names_attributes_and_refusals_answer_alike(both: dict[str, Mounted]) -> None:
    """The directory, each file's attributes, statfs, the namespace changes refused (EPERM), a
    size or mode change refused, xattrs, the modes of stats and control."""
    native, ref = both["native"], both["pyfuse3"]

    def both_do(fn: Callable[[Path], Any]) -> tuple[str, Any]:
        got = [outcome(lambda mp=mp: fn(mp)) for mp in (native.mountpoint, ref.mountpoint)]
        assert got[0] == got[1], got
        return got[0]

    assert both_do(lambda mp: sorted(os.listdir(mp))) == ("ok", ["control", "stats", "swap.img"])
    for name in ("swap.img", "stats", "control", "missing"):

        def attrs(mp: Path, name: str = name) -> tuple[int, ...]:
            st = os.stat(mp / name)
            return (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_nlink, st.st_size,
                    st.st_uid, st.st_blksize)  # fmt: skip

        both_do(attrs)
    both_do(lambda mp: tuple(os.statvfs(mp))[:9])
    assert both_do(lambda mp: os.statvfs(mp).f_blocks) == ("ok", SIZE // PAGE_SIZE)
    for change in (
        lambda mp: os.mkdir(mp / "d"),
        lambda mp: os.unlink(mp / "swap.img"),
        lambda mp: os.rename(mp / "swap.img", mp / "x"),
        lambda mp: os.symlink("swap.img", mp / "l"),
        lambda mp: os.link(mp / "swap.img", mp / "h"),
        lambda mp: os.open(mp / "new", os.O_CREAT | os.O_WRONLY, 0o600),
        lambda mp: os.rmdir(mp / "stats"),
        lambda mp: os.truncate(mp / "swap.img", SIZE // 2),
        lambda mp: os.chmod(mp / "swap.img", 0o644),
        lambda mp: os.chown(mp / "swap.img", 1, 1),
        lambda mp: os.setxattr(mp / "swap.img", "user.x", b"1"),
        lambda mp: os.getxattr(mp / "swap.img", "user.x"),
        lambda mp: os.listxattr(mp / "swap.img"),
        lambda mp: os.open(mp / "stats", os.O_WRONLY),
        lambda mp: os.open(mp / "control", os.O_RDONLY),
        lambda mp: os.open(mp, os.O_RDWR),
    ):
        assert both_do(change)[0] == "errno"
    assert both_do(lambda mp: os.truncate(mp / "swap.img", SIZE)) == ("ok", None)
    assert both_do(lambda mp: os.utime(mp / "swap.img", ns=(10**18, 2 * 10**18))) == ("ok", None)
    assert both_do(lambda mp: os.stat(mp / "swap.img").st_mtime_ns) == ("ok", 2 * 10**18)


def test_stats_and_control_files_answer_alike(both: dict[str, Mounted]) -> None:
    """The stats file is the same JSON (each says which frontend it is); the control file runs
    a command, and an unknown or too long one is EINVAL on both."""
    for m in both.values():
        with open(m.image, "r+b", buffering=0) as f:
            f.write(b"stats " * 4096)
    st = {name: m.stats() for name, m in both.items()}
    assert st["native"]["frontend"] == "native" and st["pyfuse3"]["frontend"] == "pyfuse3"
    for key in ("stored_pages", "same_pages", "huge_pages", "compr_data_size", "disksize"):
        assert st["native"][key] == st["pyfuse3"][key], key
    # the native mount is served under a supervisor (the daemon started), the pyfuse3 one alone
    assert st["native"]["supervisor_pid"] == both["native"].proc.pid != st["native"]["pid"]
    assert st["pyfuse3"]["pid"] == both["pyfuse3"].proc.pid and not st["pyfuse3"]["supervisor_pid"]

    def write_command(m: Mounted, text: bytes) -> int:
        fd = os.open(m.mountpoint / "control", os.O_WRONLY)
        try:
            return os.write(fd, text)
        finally:
            os.close(fd)

    def command(m: Mounted, text: bytes) -> tuple[str, Any]:
        return outcome(lambda: write_command(m, text))

    for text in (b"compact\n", b"bogus\n", b"x" * 300):
        got = {name: command(m, text) for name, m in both.items()}
        assert got["native"] == got["pyfuse3"], (text, got)
    assert got["native"] == ("errno", "EINVAL")
    with open(both["native"].mountpoint / "stats") as f:  # read in small pieces
        pieces = iter(lambda: f.read(7), "")
        assert json.loads("".join(pieces))["frontend"] == "native"


@pytest.mark.parametrize("mode", [FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE])
def test_discard_is_the_native_frontends(both: dict[str, Mounted], mode: int) -> None:
    """FALLOCATE punch hole (or zero range) with KEEP_SIZE: the native frontend frees the whole
    pages (notify_free), zeroes the partial ones and reads zeros back; pyfuse3 has no handler
    (the kernel answers EOPNOTSUPP). Other modes are EOPNOTSUPP on both."""
    rnd = random.Random(3)
    data = rnd.randbytes(64 * PAGE_SIZE)
    with opened(both, os.O_RDWR) as fds:
        for fd in fds.values():
            os.pwrite(fd, data, 0)
        keep = mode | FALLOC_FL_KEEP_SIZE
        got = {name: outcome(lambda fd=fd: fallocate(fd, keep, 100, 40 * PAGE_SIZE))
               for name, fd in fds.items()}  # fmt: skip
        unsupported = errno.errorcode[errno.EOPNOTSUPP]  # ENOTSUP on Linux: the same number
        assert got == {"native": ("ok", 0), "pyfuse3": ("errno", unsupported)}
        for name, fd in fds.items():  # allocation and a size change: refused on both
            assert outcome(lambda fd=fd: fallocate(fd, 0, 0, PAGE_SIZE))[0] == "errno", name
        expect = bytearray(data)
        expect[100 : 100 + 40 * PAGE_SIZE] = bytes(40 * PAGE_SIZE)
        fd = fds["native"]
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(fd, len(data), 0) == bytes(expect)
    st = both["native"].stats()
    assert st["notify_free"] == 39 and st["discards"] == 1
    assert st["stored_pages"] == 64 - 39
