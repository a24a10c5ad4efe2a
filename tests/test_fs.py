"""Tier 2: the FUSE operations called directly, no mount, over both engines."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio

from tests.conftest import corrupt_page, new_store
from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.fs import IMAGE_INODE, ROOT_INODE, STATS_INODE, ZswapOperations

pytestmark = pytest.mark.unit

NPAGES = 16
SIZE = NPAGES * PAGE_SIZE


class Ctx:
    uid = gid = pid = 0
    umask = 0o022


def setattr_fields(**flags: bool) -> Any:
    """A duck-typed SetattrFields (pyfuse3's own has read-only flags)."""
    names = ("atime", "mtime", "ctime", "mode", "uid", "gid", "size")
    return SimpleNamespace(**{f"update_{n}": flags.get(n, False) for n in names})


def make_ops(engine: str, **options: Any) -> ZswapOperations:
    return ZswapOperations(new_store(engine, NPAGES, **options))


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return trio.run(fn, *args)


def errno_of(fn: Callable[..., Awaitable[Any]], *args: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(fn, *args)
    return info.value.errno


def test_unaligned_write_read_round_trip(engine: str) -> None:
    ops = make_ops(engine)
    model = bytearray(SIZE)
    rnd = __import__("random").Random(5)
    for _ in range(200):
        off = rnd.randrange(SIZE)
        n = rnd.randint(1, 3 * PAGE_SIZE)
        data = rnd.randbytes(n // 2) + bytes(n - n // 2)
        written = run(ops.write, IMAGE_INODE, off, data)
        assert written == min(n, SIZE - off)
        model[off : off + written] = data[:written]
        roff = rnd.randrange(SIZE)
        rn = rnd.randint(1, 3 * PAGE_SIZE)
        assert run(ops.read, IMAGE_INODE, roff, rn) == bytes(model[roff : roff + rn])
    assert run(ops.read, IMAGE_INODE, 0, SIZE) == bytes(model)


def test_never_written_reads_zeros(engine: str) -> None:
    ops = make_ops(engine)
    assert run(ops.read, IMAGE_INODE, 100, 9000) == bytes(9000)


def test_write_past_end_is_enospc_and_counted(engine: str) -> None:
    ops = make_ops(engine)
    assert errno_of(ops.write, IMAGE_INODE, SIZE, b"x") == errno.ENOSPC
    assert errno_of(ops.write, IMAGE_INODE, SIZE + 5 * PAGE_SIZE, b"x") == errno.ENOSPC
    assert ops.store.invalid_io == 2
    # straddling the end: a short write of what fits
    assert run(ops.write, IMAGE_INODE, SIZE - 10, b"y" * 100) == 10
    assert run(ops.read, IMAGE_INODE, SIZE - 10, 100) == b"y" * 10


def test_read_past_end_is_short(engine: str) -> None:
    ops = make_ops(engine)
    assert run(ops.read, IMAGE_INODE, SIZE, 4096) == b""
    assert run(ops.read, IMAGE_INODE, SIZE + 12345, 1) == b""
    assert len(run(ops.read, IMAGE_INODE, SIZE - 100, 4096)) == 100


def test_resize_chmod_chown_refused(engine: str) -> None:
    ops = make_ops(engine)
    for field in ("size", "mode", "uid", "gid"):
        fields = setattr_fields(**{field: True})
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 0
        attr.st_mode = 0o644
        assert errno_of(ops.setattr, IMAGE_INODE, attr, fields, None, Ctx()) == errno.EPERM


def test_same_size_setattr_and_times_allowed(engine: str) -> None:
    ops = make_ops(engine)
    fields = setattr_fields(size=True, mtime=True)
    attr = pyfuse3.EntryAttributes()
    attr.st_size = SIZE
    attr.st_mtime_ns = 1234
    out = run(ops.setattr, IMAGE_INODE, attr, fields, None, Ctx())
    assert out.st_size == SIZE and out.st_mtime_ns == 1234


#: each namespace change with the arguments pyfuse3 passes it, for a request that would succeed
#: on an ordinary directory
NAMESPACE_CHANGES: dict[str, tuple[Any, ...]] = {
    "create": (ROOT_INODE, b"new", 0o100644, os.O_RDWR | os.O_CREAT, Ctx()),
    "mknod": (ROOT_INODE, b"new", 0o100644, 0, Ctx()),
    "mkdir": (ROOT_INODE, b"new", 0o40755, Ctx()),
    "symlink": (ROOT_INODE, b"new", b"swap.img", Ctx()),
    "link": (IMAGE_INODE, ROOT_INODE, b"new", Ctx()),
    "unlink": (ROOT_INODE, b"swap.img", Ctx()),
    "rmdir": (ROOT_INODE, b"stats", Ctx()),
    "rename": (ROOT_INODE, b"swap.img", ROOT_INODE, b"new", 0, Ctx()),
}


@pytest.mark.parametrize("op", sorted(NAMESPACE_CHANGES))
def test_namespace_changes_refused(engine: str, op: str) -> None:
    """Each change is refused with EPERM and leaves the directory and the image as they were."""
    ops = make_ops(engine)
    page = b"kept " * (PAGE_SIZE // 5)
    run(ops.write, IMAGE_INODE, 0, page)
    assert errno_of(getattr(ops, op), *NAMESPACE_CHANGES[op]) == errno.EPERM
    assert errno_of(ops.lookup, ROOT_INODE, b"new", Ctx()) == errno.ENOENT
    assert run(ops.lookup, ROOT_INODE, b"swap.img", Ctx()).st_ino == IMAGE_INODE
    assert run(ops.lookup, ROOT_INODE, b"stats", Ctx()).st_ino == STATS_INODE
    assert run(ops.read, IMAGE_INODE, 0, len(page)) == page


def test_lookup_and_attrs(engine: str) -> None:
    ops = make_ops(engine)
    attr = run(ops.lookup, ROOT_INODE, b"swap.img", Ctx())
    assert attr.st_ino == IMAGE_INODE and attr.st_size == SIZE and attr.st_mode & 0o777 == 0o600
    assert errno_of(ops.lookup, ROOT_INODE, b"nope", Ctx()) == errno.ENOENT
    st = run(ops.lookup, ROOT_INODE, b"stats", Ctx())
    assert st.st_mode & 0o777 == 0o444


def test_stats_file_is_json_snapshot(engine: str) -> None:
    ops = make_ops(engine)
    run(ops.write, IMAGE_INODE, 0, os.urandom(PAGE_SIZE) + bytes(PAGE_SIZE))
    fi = run(ops.open, STATS_INODE, os.O_RDONLY, Ctx())
    text = run(ops.read, fi.fh, 0, 1 << 20)
    stats = json.loads(text)
    assert stats["stored_pages"] == 2 and stats["same_pages"] == 1 and stats["huge_pages"] == 1
    run(ops.release, fi.fh)
    assert errno_of(ops.open, STATS_INODE, os.O_WRONLY, Ctx()) == errno.EACCES


def test_storage_failure_is_eio_and_daemon_goes_on(
    engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    ops = make_ops(engine)
    run(ops.write, IMAGE_INODE, 0, b"abc" * 2000)
    corrupt_page(ops.store, 0)  # page 0's object comes back corrupt
    assert errno_of(ops.read, IMAGE_INODE, 0, 10) == errno.EIO
    assert ops.store.failed_reads == 1
    assert any("failed" in r.getMessage() for r in caplog.records)
    # other pages still work
    run(ops.write, IMAGE_INODE, PAGE_SIZE, b"ok" * 10)
    assert run(ops.read, IMAGE_INODE, PAGE_SIZE, 20) == b"ok" * 10


def test_unexpected_exception_becomes_eio(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug below the store's own error types (here in the write path's Python part, which the
    compiled loop hands a page over the memory limit to) is a counted EIO."""
    ops = make_ops(engine, mem_limit=PAGE_SIZE)
    run(ops.write, IMAGE_INODE, 0, b"first " * 600)  # the pool is at its limit

    def boom(*args: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(ops.store, "_encode", boom)
    assert errno_of(ops.write, IMAGE_INODE, PAGE_SIZE, b"second " * 500) == errno.EIO
    assert ops.store.failed_writes == 1


def test_any_handler_failure_is_eio_not_a_dead_session(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = make_ops(engine)

    def boom() -> int:
        raise AttributeError("injected")

    monkeypatch.setattr(ops.store, "flush", boom)
    assert errno_of(ops.fsync, IMAGE_INODE, False) == errno.EIO
    monkeypatch.setattr(ops, "_attr", lambda inode: 1 / 0)
    assert errno_of(ops.getattr, IMAGE_INODE, Ctx()) == errno.EIO
