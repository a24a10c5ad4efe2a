"""Background maintenance: compaction and migration while requests go on, and memory returned.
The in-process tests run on both engines (the `engine` fixture)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    HANG,
    Mounted,
    needs_fio,
    needs_mount,
    new_store,
    pool_resident,
    wait_for,
    zswapfs_cmd,
)
from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.engine.maintenance import Maintenance
from zswapfs.engine.pools import POOL_NAMES
from zswapfs.lab.bench.fio import FIO_DIR


def page_for(rnd: random.Random, tag: int) -> bytes:
    body = b"record %d " % tag * rnd.randint(20, 400)
    return (body + rnd.randbytes(rnd.randint(0, 1500))).ljust(PAGE_SIZE, b"\0")[:PAGE_SIZE]


@pytest.mark.unit
@pytest.mark.parametrize("pool", POOL_NAMES)
def test_store_stays_exact_under_aggressive_maintenance(engine: str, pool: str) -> None:
    """The FUSE thread's view (writes, overwrites, reads) stays byte-exact while the background
    thread compacts and migrates continuously: after every block of writes the test waits for a
    pass to end, so passes fall between (and, as the scheduler likes, inside) the blocks."""
    npages = 3000
    blocks, block = 80, 200
    store = new_store(engine, npages, "lz4", pool)
    maint = Maintenance(store.pool, interval=0.001, aggressive=True)
    rnd = random.Random(5)
    model: dict[int, bytes] = {}
    maint.start()
    try:
        for b in range(blocks):
            for i in range(b * block, (b + 1) * block):
                pn = rnd.randrange(npages)
                if rnd.random() < 0.3:
                    page = bytes(PAGE_SIZE)  # frees the old object: fragmentation to compact
                else:
                    page = page_for(rnd, i)
                store.write_page(pn, page)
                model[pn] = page
                probe = rnd.choice(list(model))
                assert store.read_page(probe) == model[probe]
            assert maint.wait_passes(maint.passes_finished + 1, HANG), "maintenance stalled"
    finally:
        maint.stop()
    for pn, page in model.items():
        assert store.read_page(pn) == page
    st = maint.stats()
    assert st["runs"] >= blocks
    assert st["compact_steps"] > 0 and st["migrated_pages"] > 0, st


@pytest.mark.unit
def test_maintenance_stops_promptly(engine: str) -> None:
    """stop() wakes a thread that sleeps for an hour between passes: it returns, and the thread
    is gone (the deadline only ends a hang; a stop that waited out the interval would hit it)."""
    store = new_store(engine, 100)
    maint = Maintenance(store.pool, interval=3600)
    maint.start()
    thread = maint._thread
    assert thread is not None and thread.is_alive()
    stopper = threading.Thread(target=maint.stop)
    stopper.start()
    stopper.join(HANG)
    assert not stopper.is_alive(), "stop() did not return while the thread slept"
    assert not thread.is_alive() and maint.runs == 0


@pytest.mark.mount
@needs_mount
@pytest.mark.parametrize("rewrite", ["zeros", "compressible"])
def test_churn_then_compact_returns_memory(mount: Callable[..., Mounted], rewrite: str) -> None:
    """Fill, overwrite a random half with zeros or more compressible data, compact: the pool and
    the pool's resident memory fall together."""
    size = 96 << 20
    m = mount("--size", str(size), "--maintenance-interval", "3600")  # compaction only on demand
    npages = size // PAGE_SIZE
    rnd = random.Random(9)
    watched = set(random.Random(10).sample(range(npages), 500))
    expected: dict[int, bytes] = {}  # what the watched pages must read back as
    with open(m.image, "r+b", buffering=0) as f:
        chunk = 256
        for first in range(0, npages, chunk):
            pages = [page_for(rnd, first + i) for i in range(chunk)]
            expected.update((first + i, p) for i, p in enumerate(pages) if first + i in watched)
            f.write(b"".join(pages))
        full = m.stats()
        shm_full = pool_resident(full["pid"])
        for pn in rnd.sample(range(npages), npages // 2):
            f.seek(pn * PAGE_SIZE)
            if rewrite == "zeros":
                page = bytes(PAGE_SIZE)
            else:  # compresses far better than what it replaces, but is not same-filled
                page = (b"compressible page %d " % pn * 200)[:PAGE_SIZE]
            f.write(page)
            if pn in watched:
                expected[pn] = page
    res = subprocess.run(
        zswapfs_cmd("compact", str(m.mountpoint)), capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    after = m.stats()
    shm_after = pool_resident(after["pid"])
    fell = 1 - after["mem_used_total"] / full["mem_used_total"]
    assert fell >= 0.40, (full["mem_used_total"], after["mem_used_total"])
    assert after["pages_compacted"] > 0
    mem_drop = full["mem_used_total"] - after["mem_used_total"]
    # the pool's own resident memory (its memfd pages) falls with it: punched holes are returned
    assert shm_full - shm_after >= 0.9 * mem_drop, (shm_full, shm_after, mem_drop)
    assert shm_after <= after["mem_used_total"] + (2 << 20), (shm_after, after["mem_used_total"])
    # nothing lost: a sample of pages, kept and rewritten ones alike, reads back as written
    with open(m.image, "rb") as f:
        for pn, page in expected.items():
            f.seek(pn * PAGE_SIZE)
            assert f.read(PAGE_SIZE) == page, f"page {pn} changed through compaction"


def churn_writer(
    image: Path, first: int, last: int, stop: threading.Event, done: list[int]
) -> None:
    """Overwrite random pages in [first, last) with zeros or fresh data until *stop*, counting
    the pages written in done[0]."""
    rnd = random.Random(4)
    with open(image, "r+b", buffering=0) as f:
        while not stop.is_set():
            pn = rnd.randrange(first, last)
            f.seek(pn * PAGE_SIZE)
            f.write(bytes(PAGE_SIZE) if rnd.random() < 0.5 else page_for(rnd, pn))
            done[0] += 1


def moved(maint: dict[str, Any]) -> int:
    """Objects and pages maintenance has moved so far: compaction steps plus migrated pages."""
    return int(maint["compact_steps"] + maint["migrated_pages"])


@pytest.mark.mount
@needs_mount
@needs_fio
@pytest.mark.parametrize("pool", POOL_NAMES)
def test_fio_verify_during_continuous_maintenance(
    mount: Callable[..., Mounted], tmp_path: Path, pool: str
) -> None:
    """fio verifies the first half of the image while another writer churns the second half
    (frees and new objects in the same zspages/pages) and maintenance compacts and migrates
    continuously: zero verify errors. fio starts only once the churn has made maintenance both
    compact and migrate, and the test checks maintenance went on moving objects while fio ran."""
    size = 64 << 20
    m = mount(
        "--size",
        str(size),
        "--pool",
        pool,
        "--maintenance-interval",
        "0.005",
        "--aggressive-maintenance",
    )
    npages = size // PAGE_SIZE
    rnd = random.Random(1)
    with open(m.image, "r+b", buffering=0) as f:
        for first in range(0, npages, 256):
            f.write(b"".join(page_for(rnd, first + i) for i in range(256)))
    job = FIO_DIR / "verify-randrw.fio"
    out = tmp_path / "fio.json"
    stop = threading.Event()
    churned = [0]
    writer = threading.Thread(
        target=churn_writer, args=(m.image, npages // 2, npages, stop, churned)
    )
    filled = m.stats()["maintenance"]
    writer.start()
    try:

        def churn_compacted_and_migrated() -> bool:
            now = m.stats()["maintenance"]
            return (
                churned[0] > 0
                and now["compact_steps"] > filled["compact_steps"]
                and now["migrated_pages"] > filled["migrated_pages"]
            )

        wait_for(churn_compacted_and_migrated, "maintenance compacting and migrating the churn")
        before, churned_before = m.stats()["maintenance"], churned[0]
        res = subprocess.run(
            [
                "fio",
                f"--filename={m.image}",
                f"--size={size // 2}",
                "--output-format=json",
                f"--output={out}",
                str(job),
            ],
            capture_output=True,
            text=True,
            timeout=280,
        )
        during = m.stats()["maintenance"]
    finally:
        stop.set()
        writer.join()
    assert res.returncode == 0, res.stderr
    job_out = json.loads(out.read_text())["jobs"][0]
    assert job_out["error"] == 0
    assert job_out["read"]["io_bytes"] > 0 and job_out["write"]["io_bytes"] > 0
    st = m.stats()
    assert st["failed_reads"] == st["failed_writes"] == 0
    assert during["aggressive"]
    # while fio ran: passes ran, they moved objects, and the churn went on
    assert during["runs"] > before["runs"], (before, during)
    assert moved(during) > moved(before), (before, during)
    assert churned[0] > churned_before
    assert os.path.ismount(m.mountpoint)


@pytest.mark.unit
def test_stop_waits_for_a_pass_run_from_another_thread(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compact_now runs in a worker thread; stop() is called while that pass is inside the pool
    and must not return before the pass has made its last pool call."""
    store = new_store(engine, 4000)
    rnd = random.Random(2)
    for pn in range(4000):
        store.write_page(pn, page_for(rnd, pn))
    for pn in range(0, 4000, 2):
        store.write_page(pn, bytes(PAGE_SIZE))  # plenty to compact
    maint = Maintenance(store.pool, interval=3600)
    pool = store.pool
    events: list[str] = []
    in_pass = threading.Event()
    real_step, real_release = pool.compact_step, pool.release_segments

    def step() -> int:
        if not in_pass.is_set():
            in_pass.set()
            # hold this first step until stop() has begun: the pass is surely running then
            assert maint._stopping.wait(HANG), "stop() was never called"
        return real_step()

    def release() -> int:
        events.append("last pool call")  # the pass's final step, under its lock
        return real_release()

    monkeypatch.setattr(pool, "compact_step", step)
    monkeypatch.setattr(pool, "release_segments", release)
    maint.start()
    worker = threading.Thread(target=maint.compact_now)
    worker.start()
    assert in_pass.wait(HANG), "compact_now never reached the pool"
    maint.stop()  # must not return while the worker's pass still touches the pool
    events.append("stop returned")
    assert events == ["last pool call", "stop returned"]
    assert not maint._pass_lock.locked()
    pool.close()
    worker.join(HANG)
    assert not worker.is_alive() and maint.passes_finished == 1
