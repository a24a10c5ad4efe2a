"""Writeback to a backing file, the memory limit, and the persistent image mode. The in-process
tests run on both engines (the `engine` fixture), except where a test replaces a Python piece the
compiled loop does not call (a codec that fails): those say so and run on the Python engine."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    Mounted,
    needs_fio,
    needs_mount,
    new_store,
    pool_resident,
    stop_daemon,
)
from zswapfs.engine.backing import BackingError, BackingFile
from zswapfs.engine.codec import PAGE_SIZE, make_codec
from zswapfs.engine.maintenance import Maintenance
from zswapfs.engine.pools import make_pool
from zswapfs.engine.store import BACKED, DIRTY, PageStore, StorageFailure, StoreFull


def text_page(rnd: random.Random, tag: int) -> bytes:
    return (b"page %d %s " % (tag, rnd.randbytes(8).hex().encode()) * 200)[:PAGE_SIZE]


def make_store(
    engine: str,
    tmp_path: Path,
    npages: int = 512,
    persistent: bool = False,
    mem_limit: int = 0,
    **options: Any,
) -> PageStore:
    backing = BackingFile(str(tmp_path / "backing.img"), npages, persistent)
    store: PageStore = new_store(engine, npages, backing=backing, mem_limit=mem_limit, **options)
    return store


# -- in-process -----------------------------------------------------------------------------------
@pytest.mark.unit
def test_writeback_moves_pages_and_reads_them_back(engine: str, tmp_path: Path) -> None:
    store = make_store(engine, tmp_path)
    rnd = random.Random(1)
    pages = {pn: text_page(rnd, pn) for pn in range(200)}
    for pn, page in pages.items():
        store.write_page(pn, page)
    cold = store.cold_pages(50)
    assert len(cold) == 50
    moved = sum(store.writeback_page(pn) for pn in cold)
    assert moved == 50 and store.bd_count == 50 and store.bd_writes == 50
    assert store.stored_pages == 150 and store.written_back_pages == 50
    for pn, page in pages.items():
        assert store.read_page(pn) == page
    assert store.bd_reads == 50
    # the backing file is a plain image: page N at N*4096
    raw = (tmp_path / "backing.img").read_bytes()
    for pn in cold:
        assert raw[pn * PAGE_SIZE : (pn + 1) * PAGE_SIZE] == pages[pn]
    # overwriting a written-back page brings it back into memory
    store.write_page(cold[0], bytes(PAGE_SIZE))
    assert store.bd_count == 49 and store.read_page(cold[0]) == bytes(PAGE_SIZE)


@pytest.mark.unit
def test_cold_pages_oldest_first_and_huge_first(engine: str, tmp_path: Path) -> None:
    store = make_store(engine, tmp_path)
    rnd = random.Random(2)
    store.write_page(0, text_page(rnd, 0))
    store.write_page(1, os.urandom(PAGE_SIZE))  # huge
    store.set_clock(advance=100)  # a hundred seconds later ...
    store.meta[0] = 5  # ... page 0 was last touched long ago
    store.meta[1] = 9
    store.write_page(2, text_page(rnd, 2))
    assert store.cold_pages(2)[0] == 0
    assert store.cold_pages(1, huge_first=True) == [1]


@pytest.mark.unit
def test_memory_limit_without_backing_is_hard(engine: str) -> None:
    store = new_store(engine, 4096, "none", mem_limit=64 * 4096)
    with pytest.raises(StoreFull):
        for pn in range(4096):
            store.write_page(pn, os.urandom(PAGE_SIZE))
    assert store.pool_limit_hit == 1 and store.failed_writes == 1
    assert store.reject_reclaim_fail == 1  # nothing to reclaim into
    assert store.pool_bytes <= 64 * 4096 + 8 * PAGE_SIZE


class BrokenCodec:
    """lz4's name and decompression, but compress() raises: the codec failure path."""

    def __init__(self) -> None:
        self.inner = make_codec("lz4")
        self.name = "broken"

    def compress(self, page: bytes) -> bytes:
        raise RuntimeError("injected codec failure")

    def decompress(self, payload: bytes) -> bytes:
        return bytes(self.inner.decompress(payload))


@pytest.mark.unit
def test_codec_failure_is_counted_and_sent_to_the_file(tmp_path: Path) -> None:
    """Python engine only: the failing codec is a Python object, which the compiled loop (whose
    lz4 and zstd are C) never calls."""
    backing = BackingFile(str(tmp_path / "backing.img"), 16, False)
    store = PageStore(16, BrokenCodec(), make_pool("zsmalloc", 16), backing=backing)  # type: ignore[arg-type]
    page = b"text " * 819 + b"!"
    store.write_page(3, page)
    assert store.reject_compress_fail == 1 and store.bd_writes == 1 and store.failed_writes == 0
    assert store.table.item(3) == BACKED and store.read_page(3) == page
    bare = PageStore(16, BrokenCodec(), make_pool("zsmalloc", 16))  # type: ignore[arg-type]
    kept = b"\x07" * PAGE_SIZE  # same-filled: stored without the codec
    bare.write_page(2, kept)
    with pytest.raises(StorageFailure):
        bare.write_page(2, page)
    assert bare.reject_compress_fail == 1 and bare.failed_writes == 1
    assert bare.read_page(2) == kept  # the old contents are kept


@pytest.mark.unit
def test_pool_out_of_room_is_counted_and_sent_to_the_file(engine: str, tmp_path: Path) -> None:
    """An arena of 8 pool pages under a 64-page image: incompressible pages fill it, and the
    next one is a counted reject_alloc_fail that goes to the backing file."""
    backing = BackingFile(str(tmp_path / "backing.img"), 64, False)
    codec = make_codec("lz4")
    if engine == "python":
        from zswapfs.engine.pools.zsmalloc import ZsPool

        store = PageStore(64, codec, ZsPool(8), backing=backing)
    else:
        from zswapfs.engine.native import NativeStore, NativeZsPool

        store = NativeStore(64, codec, NativeZsPool(8), backing=backing)
    pages = [os.urandom(PAGE_SIZE) for _ in range(9)]
    for pn, page in enumerate(pages):
        store.write_page(pn, page)
    assert store.reject_alloc_fail == 1 and store.bd_writes == 1 and store.failed_writes == 0
    assert store.table.item(8) == BACKED and store.pool.pages_used == 8
    assert store.read(0, 9 * PAGE_SIZE) == b"".join(pages)
    assert store.stats()["reject_alloc_fail"] == 1


@pytest.mark.unit
def test_limit_with_backing_goes_straight_to_the_file(engine: str, tmp_path: Path) -> None:
    store = make_store(engine, tmp_path, npages=2048, mem_limit=64 * PAGE_SIZE)
    pages = [os.urandom(PAGE_SIZE) for _ in range(300)]
    for pn, page in enumerate(pages):
        store.write_page(pn, page)
    assert store.pool_limit_hit > 0 and store.bd_writes > 0
    assert store.pool_bytes <= 64 * PAGE_SIZE + 8 * PAGE_SIZE
    for pn, page in enumerate(pages):
        assert store.read_page(pn) == page


@pytest.mark.unit
def test_background_writeback_between_watermarks(engine: str, tmp_path: Path) -> None:
    limit = 128 * PAGE_SIZE
    store = make_store(engine, tmp_path, npages=4096, mem_limit=limit, low_watermark=50)
    maint = Maintenance(store.pool, interval=3600, store=store, high_watermark=80)
    rnd = random.Random(3)
    pages = {pn: os.urandom(1500) + text_page(rnd, pn)[:2596] for pn in range(1000)}
    for pn, page in pages.items():
        store.write_page(pn, page)
    maint.pass_once()
    assert store.pool_bytes <= limit * 50 // 100
    assert maint.written_back > 0 and store.written_back_pages == maint.written_back
    for pn, page in pages.items():
        assert store.read_page(pn) == page


@pytest.mark.unit
def test_idle_writeback(engine: str, tmp_path: Path) -> None:
    store = make_store(engine, tmp_path)
    rnd = random.Random(4)
    for pn in range(20):
        store.write_page(pn, text_page(rnd, pn))
    store.meta[:10] = 1  # idle since the start
    store.set_clock(advance=100)  # a hundred seconds later
    store.write_page(15, text_page(rnd, 99))  # just touched
    maint = Maintenance(store.pool, interval=3600, store=store, idle_writeback=50)
    maint.pass_once()
    assert store.bd_count >= 10
    assert store.table.item(15) != BACKED


@pytest.mark.unit
def test_image_mode_flush_and_reopen(engine: str, tmp_path: Path) -> None:
    store = make_store(engine, tmp_path, persistent=True)
    rnd = random.Random(5)
    pages = {pn: text_page(rnd, pn) for pn in range(0, 300, 3)}
    pages[7] = bytes(PAGE_SIZE)
    pages[8] = b"\xab" * PAGE_SIZE
    for pn, page in pages.items():
        store.write_page(pn, page)
    assert (store.meta & DIRTY).any()
    assert store.flush() == len(pages)
    assert not (store.meta & DIRTY).any()
    assert store.flush() == 0  # nothing newer than the file any more
    # a clean page is dropped from memory without writing it again
    before = store.bd_writes
    assert store.writeback_page(0) and store.bd_writes == before
    store.backing.close()  # type: ignore[union-attr]
    again = make_store(engine, tmp_path, persistent=True)
    for pn in range(300):
        assert again.read_page(pn) == pages.get(pn, bytes(PAGE_SIZE))


@pytest.mark.unit
def test_backing_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "b.img"
    path.write_bytes(b"x" * 8192)
    for persistent in (True, False):  # not made by zswapfs: refused in either mode
        with pytest.raises(BackingError, match="not created by zswapfs"):
            BackingFile(str(path), 16, persistent=persistent)
    assert path.read_bytes() == b"x" * 8192
    with pytest.raises(BackingError, match="refusing to resize"):
        BackingFile(str(path), 16, persistent=True, force=True)
    assert path.stat().st_size == 8192, "image mode never truncates a wrong-sized file"
    BackingFile(str(path), 16, persistent=False, force=True).close()  # swap mode empties it
    assert path.stat().st_size == 16 * PAGE_SIZE and path.read_bytes() == bytes(16 * PAGE_SIZE)
    assert path.stat().st_mode & 0o777 == 0o600
    BackingFile(str(path), 8, persistent=False).close()  # now marked as ours: no force needed
    with pytest.raises(BackingError, match="stale pages of a swap-mode"):
        BackingFile(str(path), 8, persistent=True)
    new = tmp_path / "new.img"
    BackingFile(str(new), 4, persistent=True).close()
    assert new.stat().st_mode & 0o777 == 0o600
    with pytest.raises(BackingError, match="persistent zswapfs image"):
        BackingFile(str(new), 4, persistent=False)
    with pytest.raises(BackingError, match="refusing to resize"):
        BackingFile(str(new), 8, persistent=True)
    held = BackingFile(str(new), 4, persistent=True)
    with pytest.raises(BackingError, match="in use by another zswapfs daemon"):
        BackingFile(str(new), 4, persistent=True)
    held.close()
    with pytest.raises(BackingError) as info:
        BackingFile(str(tmp_path / "missing-dir" / "x.img"), 4, persistent=True)
    assert info.value.errno == errno.ENOENT


@pytest.mark.unit
def test_backing_read_failure_is_eio_for_that_page(engine: str, tmp_path: Path) -> None:
    store = make_store(engine, tmp_path)
    store.write_page(3, text_page(random.Random(6), 3))
    assert store.writeback_page(3)
    os.ftruncate(store.backing.fd, 0)  # type: ignore[union-attr]
    with pytest.raises(StorageFailure):
        store.read_page(3)
    assert store.failed_reads == 1
    store.write_page(4, bytes(PAGE_SIZE))
    assert store.read_page(4) == bytes(PAGE_SIZE)


# -- mounted ---------------------------------------------------------------------------------
@pytest.mark.mount
@needs_mount
@needs_fio
def test_fio_4x_mem_limit_with_backing(mount: Callable[..., Mounted], tmp_path: Path) -> None:
    limit = 32 << 20
    backing = tmp_path / "backing.img"
    m = mount("--size", "256M", "--mem-limit", str(limit), "--backing", str(backing))
    out = tmp_path / "fio.json"
    res = subprocess.run(
        [
            "fio",
            "--name=fill",
            f"--filename={m.image}",
            "--size=128M",
            "--rw=randwrite",
            "--bs=64k",
            "--direct=1",
            "--ioengine=psync",
            "--buffer_compress_percentage=50",
            "--refill_buffers",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
            f"--output={out}",
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["jobs"][0]["error"] == 0
    st = m.stats()
    assert st["bd_writes"] > 0 and st["bd_count"] > 0
    assert st["failed_reads"] == st["failed_writes"] == 0
    assert st["mem_used_max"] <= limit * 1.05 + (1 << 20), st["mem_used_max"]
    # the pool's own resident memory (its memfd pages) stays within the limit and the slack the
    # high watermark allows while writeback catches up
    shm = pool_resident(st["pid"])
    assert shm <= limit * 1.05 + (1 << 20), (shm, limit)
    assert backing.stat().st_size == 256 << 20


def write_pattern(image: Path, pages: dict[int, bytes]) -> None:
    fd = os.open(image, os.O_RDWR)
    try:
        for pn, page in pages.items():
            os.pwrite(fd, page, pn * PAGE_SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_pages(image: Path, pns: list[int]) -> dict[int, bytes]:
    with open(image, "rb") as f:
        out = {}
        for pn in pns:
            f.seek(pn * PAGE_SIZE)
            out[pn] = f.read(PAGE_SIZE)
        return out


@pytest.mark.mount
@needs_mount
def test_image_mode_survives_kill_and_remount(
    mount: Callable[..., Mounted], tmp_path: Path
) -> None:
    backing = tmp_path / "image.img"
    args = ("--size", "32M", "--mode", "image", "--backing", str(backing))
    rnd = random.Random(8)
    pages = {
        pn: (text_page(rnd, pn) if pn % 3 else os.urandom(PAGE_SIZE))
        for pn in rnd.sample(range(8192), 600)
    }
    m = mount(*args)
    write_pattern(m.image, pages)
    m.kill_all()  # supervisor and server: no unmount, no flush: only the fsync counts
    stop_daemon(m.mountpoint, None)
    m2 = mount(*args)
    assert read_pages(m2.image, list(pages)) == pages
    extra = {pn: text_page(rnd, pn + 100000) for pn in range(8000, 8100)}
    with open(m2.image, "r+b") as f:  # written without fsync: the clean unmount flushes it
        for pn, page in extra.items():
            f.seek(pn * PAGE_SIZE)
            f.write(page)
    stop_daemon(m2.mountpoint, m2.proc)
    assert m2.proc.returncode == 0
    m3 = mount(*args)
    assert read_pages(m3.image, list(pages) + list(extra)) == {**pages, **extra}
    assert m3.stats()["mode"] == "image"


@pytest.mark.mount
@needs_mount
def test_backing_file_on_a_full_tmpfs(mount: Callable[..., Mounted], tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(small)], check=True)
    try:
        m = mount(
            "--size",
            "64M",
            "--mem-limit",
            "1M",
            "--backing",
            str(small / "b.img"),
            "--maintenance-interval",
            "0.05",
        )
        m.expect_errors.append("No space left on device")
        rnd = random.Random(9)
        pages = {
            pn: text_page(rnd, pn) if pn % 2 else os.urandom(PAGE_SIZE) for pn in range(0, 6000, 2)
        }
        fd = os.open(m.image, os.O_RDWR)
        try:
            for pn, page in pages.items():
                os.pwrite(fd, page, pn * PAGE_SIZE)
        finally:
            os.close(fd)
        assert read_pages(m.image, list(pages)) == pages, "a page was lost"
        st = m.stats()
        assert st["bd_errors"] > 0 and st["bd_writes"] > 0
        assert st["failed_writes"] == 0 and st["failed_reads"] == 0
        assert m.proc.poll() is None
    finally:
        stop_daemon(tmp_path / "mnt0", None)  # the daemon holds the backing file open
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("engine", "what"), [("python", "writeback"), ("python", "flush"), ("native", "writeback")]
)
def test_page_rewritten_twice_during_the_file_write_is_not_lost(
    engine: str, tmp_path: Path, what: str
) -> None:
    """The page is rewritten twice while its old contents go to the file: with LIFO handle
    reuse the second rewrite gets the very handle writeback read, so comparing handles alone
    would commit stale data (ABA). The newest contents must win. (The compiled flush writes the
    file in C, not through BackingFile.write_page: test_engine_diff holds the file lock over it
    instead.)"""
    store = make_store(engine, tmp_path, persistent=(what == "flush"))
    rnd = random.Random(12)
    old, mid, new = (text_page(rnd, i) for i in range(3))
    store.write_page(5, old)
    handle = store.table.item(5)
    backing = store.backing
    assert backing is not None
    real_write = backing.write_page

    reused = []

    def racing_write(pn: int, page: bytes) -> None:
        real_write(pn, page)
        if pn == 5:
            store.write_page(5, mid)
            store.write_page(5, new)
            reused.append(store.table.item(5) == handle)

    backing.write_page = racing_write  # type: ignore[method-assign]
    if what == "writeback":
        store.writeback_page(5)
    else:
        store.flush()
    backing.write_page = real_write  # type: ignore[method-assign]
    assert reused == [True], "the scenario needs the handle to come back"
    assert store.read_page(5) == new
    if what == "flush":
        assert store.meta.item(5) & DIRTY, "the newest contents are not in the file yet"
        store.flush()
        assert backing.read_page(5) == new


@pytest.mark.unit
def test_huge_first_skips_the_pool_only_above_the_low_watermark(
    engine: str, tmp_path: Path
) -> None:
    unlimited = make_store(engine, tmp_path, huge_to_backing=True)
    unlimited.write_page(0, os.urandom(PAGE_SIZE))
    assert unlimited.reject_compress_poor == 0 and unlimited.table.item(0) >= 3
    unlimited.backing.close()  # type: ignore[union-attr]
    limited = make_store(
        engine,
        tmp_path,
        npages=2048,
        mem_limit=400 * PAGE_SIZE,
        huge_to_backing=True,
        low_watermark=4,
    )
    assert limited.low_water == 16 * PAGE_SIZE
    pages = [os.urandom(PAGE_SIZE) for _ in range(40)]
    for pn, page in enumerate(pages):
        limited.write_page(pn, page)
    assert limited.reject_compress_poor == 40 - 16 and limited.bd_count == 24
    assert limited.pool_bytes == 16 * PAGE_SIZE
    for pn, page in enumerate(pages):
        assert limited.read_page(pn) == page
