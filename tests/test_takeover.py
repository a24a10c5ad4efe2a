"""A compiled store taken over by a new process from the memfds that hold its state
(docs/restart.md; csrc/pool.h I1-I4, csrc/store.h S1-S3).

A child process (tests/_takeover_child.py) runs a store under a random workload (writes of
every kind of page, discards, reads, compaction, migration, writeback and flush, recompression
with trained dictionaries, dedup) and journals each request before and after it; the test keeps
copies of the state's descriptors and kills the child: at a named crash point (ZSWAPFS_CRASH_AT,
one for each step of each invariant), at a random instant, or not at all. Then it takes the
store over in this process and checks every page: a request the child acknowledged reads back
as written, the one in flight reads as before or after it (the kernel would send it again), and
the counters, pool and store agree with one another; then it goes on using the store (writes
over everything, compaction, migration) and checks again. Refusals: state of another format,
size or store, a Python engine, each one line and nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests._takeover_child import SEEDS, page_for
from tests.conftest import HANG
from zswapfs.engine import native
from zswapfs.engine.backing import BackingFile
from zswapfs.engine.codec import PAGE_SIZE, make_codec
from zswapfs.engine.native import StateFds, TakeoverRefused, make_store
from zswapfs.engine.store import FIRST_HANDLE, SAME

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not native.available(), reason=native.UNAVAILABLE or ""),
]

ROOT = Path(__file__).resolve().parent.parent
NPAGES = 384
#: counters that are not the state's (figures of the process, or derived with another rule)
NOT_STATE = {"metadata_bytes", "takeovers"}


@dataclass
class Run:
    """What a child left: its state's descriptors (ours now), its journal and how it ended."""

    cfg: dict
    fds: StateFds
    backing_fd: int | None
    returncode: int
    committed: dict[int, int] = field(default_factory=dict)
    pending: dict[int, int] = field(default_factory=dict)
    counters: dict | None = None

    def close(self) -> None:
        self.fds.close()
        if self.backing_fd is not None:
            os.close(self.backing_fd)


def config(tmp_path: Path, pool: str, mode: str, seed: int, steps: int = 3000) -> dict:
    cfg = {"npages": NPAGES, "codec": "lz4", "pool": pool, "mode": mode, "seed": seed,
           "steps": steps}  # fmt: skip
    if mode != "plain":
        cfg["backing"] = str(tmp_path / f"backing-{seed}.img")
    if mode == "swap":
        cfg["mem_limit"] = 96 * PAGE_SIZE  # pages go to the file on the write path too
    return cfg


def run_child(cfg: dict, crash_at: str | None = None, kill_after: float | None = None) -> Run:
    parent, child = socket.socketpair()
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "ZSWAPFS_CRASH_AT"}
    if crash_at:
        env["ZSWAPFS_CRASH_AT"] = crash_at
    cfg = dict(cfg, sock=child.fileno(), journal=w)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests._takeover_child", json.dumps(cfg)],
        pass_fds=(child.fileno(), w),
        cwd=ROOT,
        env=env,
    )
    child.close()
    os.close(w)
    try:
        parent.settimeout(HANG)
        _, fds, _, _ = socket.recv_fds(parent, 16, 4)
        assert len(fds) >= 3, f"the child sent no state (it ended with {proc.wait(HANG)})"
        timer = threading.Timer(kill_after, proc.kill) if kill_after is not None else None
        if timer:
            timer.start()
        with os.fdopen(r, "rb") as journal:
            lines = journal.read().decode().splitlines()
        if timer:
            timer.cancel()
        rc = proc.wait(HANG)
    finally:
        parent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run = Run(cfg, StateFds(*fds[:3]), fds[3] if len(fds) > 3 else None, rc)
    begun = None
    for line in lines:
        if line == "A":
            assert begun is not None
            for pn in range(begun[1], begun[1] + begun[2]):
                run.committed[pn] = begun[3]
            begun = None
        elif line.startswith("B "):
            _, op, pn, count, seed = line.split()
            begun = (op, int(pn), int(count), int(seed))
        elif line.startswith("END "):
            run.counters = json.loads(line[4:])
    if begun is not None:
        run.pending = {pn: begun[3] for pn in range(begun[1], begun[1] + begun[2])}
    return run


def take_over(run: Run, check_only: bool = False) -> native.NativeStore:
    cfg = run.cfg
    backing = None
    if run.backing_fd is not None:
        backing = BackingFile.adopt(
            run.backing_fd, cfg["backing"], cfg["npages"], persistent=cfg["mode"] == "image"
        )
        run.backing_fd = None  # the BackingFile has it
    store = make_store(
        "native", cfg["npages"], make_codec(cfg["codec"]), cfg["pool"], backing=backing,
        mem_limit=cfg.get("mem_limit", 0), takeover=run.fds, check_only=check_only,
    )  # fmt: skip
    assert isinstance(store, native.NativeStore)
    return store


def expected_pages(run: Run) -> dict[int, set[bytes]]:
    out = {}
    for pn in range(run.cfg["npages"]):
        allowed = {page_for(pn, run.committed.get(pn, -1))}
        if pn in run.pending:
            allowed.add(page_for(pn, run.pending[pn]))
        out[pn] = allowed
    return out


def check_store(store: native.NativeStore, expect: dict[int, set[bytes]]) -> None:
    """Every page as expected; the counters, store and pool agree with one another."""
    wrong = [pn for pn, allowed in expect.items()
             if store.read(pn * PAGE_SIZE, PAGE_SIZE) not in allowed]  # fmt: skip
    assert not wrong, f"{len(wrong)} pages read back wrong, first {wrong[:8]}"
    table = store.table
    held = table[table >= FIRST_HANDLE]
    st = store.stats()
    assert st["stored_pages"] == int(np.count_nonzero(table == SAME)) + len(held)
    assert st["same_pages"] == int(np.count_nonzero(table == SAME))
    assert store.pool.objects == len(np.unique(held))
    assert st["compr_data_size"] == store.pool.bytes_stored
    slots = store.meta[table >= FIRST_HANDLE] >> 24 & 63
    assert st["recompressed_pages"] == int(np.count_nonzero(slots))


def take_over_and_check(run: Run) -> None:
    """Take the run's store over, check every page it must hold, and close it."""
    store = take_over(run)
    try:
        check_store(store, expected_pages(run))
    finally:
        store.close()


def go_on(store: native.NativeStore, seed: int) -> dict[int, set[bytes]]:
    """Use the store taken over: every page written again (or discarded), the pool compacted
    and migrated; what each page must now read."""
    rnd = random.Random(seed)
    now = {}
    for pn in range(store.npages):
        s = rnd.randrange(-1, SEEDS)
        if s < 0:
            store.discard(pn * PAGE_SIZE, PAGE_SIZE)
        else:
            store.write(pn * PAGE_SIZE, page_for(pn, s))
        now[pn] = {page_for(pn, s)}
    store.pool.compact()
    for _ in range(16):
        store.pool.migrate_top()
    store.pool.release_segments()
    return now


MODES = ("plain", "swap", "image")


@pytest.mark.parametrize("pool", ["zsmalloc", "zbud", "z3fold"])
@pytest.mark.parametrize("mode", MODES)
def test_a_store_is_taken_over_whole(tmp_path: Path, pool: str, mode: str) -> None:
    """A child that ran its whole workload and exited: every page, dictionary and counter it
    had is the new process's, and the store goes on working."""
    run = run_child(config(tmp_path, pool, mode, seed=1))
    assert run.returncode == 0 and run.counters is not None and not run.pending
    store = take_over(run)
    try:
        st = store.stats()  # before any read counts
        ours = {k: v for k, v in st.items() if isinstance(v, int)}
        ours.update({k: st["pool_stats"][k] for k in ("objects_moved", "migrated_pages")})
        differ = {k: (v, ours.get(k)) for k, v in run.counters.items()
                  if k not in NOT_STATE and ours.get(k) != v}  # fmt: skip
        assert not differ, f"counters not taken over as they were: {differ}"
        assert st["takeovers"] == 1
        check_store(store, expected_pages(run))
        if pool != "zbud":
            assert st["dict_count"] >= 1, "the workload trained no dictionary: nothing checked"
        check_store(store, go_on(store, seed=2))
    finally:
        store.close()


#: every crash point, and the pools and modes whose workload passes it
CRASH_POINTS = {
    "store.fill": ("zsmalloc", "plain"),
    "store.commit": ("z3fold", "image"),
    "store.placed": ("zsmalloc", "swap"),
    "store.to_file": ("zsmalloc", "swap"),
    "recode.placed": ("zsmalloc", "plain"),
    "writeback.written": ("z3fold", "swap"),
    "slot.recorded": ("zsmalloc", "image"),
    "dedup.commit": ("zsmalloc", "plain"),
    "zs.compact.copied": ("zsmalloc", "plain"),
    "zs.compact.switched": ("zsmalloc", "swap"),
    "zs.migrate.copied": ("zsmalloc", "plain"),
    "zs.migrate.switched": ("zsmalloc", "image"),
    "bd.compact.copied": ("zbud", "plain"),
    "bd.migrate.one": ("z3fold", "plain"),
    "bd.migrate.switched": ("zbud", "swap"),
    "z3fold.journaled": ("z3fold", "plain"),
    "z3fold.moved": ("z3fold", "image"),
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_a_crash_at_each_step_of_each_invariant_loses_nothing(tmp_path: Path, point: str) -> None:
    """Killed at a crash point (the Nth pass, N at random): taken over, nothing is lost."""
    pool, mode = CRASH_POINTS[point]
    rnd = random.Random(point)
    nth = rnd.randint(1, 40)
    for _ in range(5):
        run = run_child(config(tmp_path, pool, mode, seed=rnd.randrange(1 << 30)), f"{point}:{nth}")
        assert run.returncode in (0, -signal.SIGKILL)
        try:
            if run.returncode == 0:  # the workload never passed it N times: fewer next time
                nth = max(1, nth // 4)
                continue
            store = take_over(run)
            try:
                check_store(store, expected_pages(run))
                check_store(store, go_on(store, seed=nth))
            finally:
                store.close()
            return
        finally:
            run.close()
    pytest.fail(f"no workload reached crash point {point}")


def test_kills_at_random_instants_lose_nothing(tmp_path: Path) -> None:
    """Killed at random instants under the workload, on every pool and mode in turn."""
    rnd = random.Random(23)
    killed = 0
    for i in range(24):
        pool = ("zsmalloc", "zbud", "z3fold")[i % 3]
        mode = MODES[i // 3 % 3]
        run = run_child(config(tmp_path, pool, mode, seed=i), kill_after=rnd.uniform(0.05, 1.0))
        killed += run.returncode == -signal.SIGKILL
        try:
            take_over_and_check(run)
        finally:
            run.close()
    assert killed >= 12, f"only {killed} of 24 children were killed while they worked"


def region_digest(fds: StateFds) -> str:
    h = hashlib.sha256()
    for fd in (fds.store, fds.pool, fds.arena):
        size = os.fstat(fd).st_size
        h.update(os.pread(fd, size, 0))  # sparse: holes read as zeros
    return h.hexdigest()


def dup_fds(fds: StateFds) -> StateFds:
    return StateFds(os.dup(fds.store), os.dup(fds.pool), os.dup(fds.arena))


def test_a_check_changes_nothing_and_refusals_name_what_differs(tmp_path: Path) -> None:
    run = run_child(config(tmp_path, "zsmalloc", "plain", seed=5, steps=800))
    other = run_child(config(tmp_path, "zsmalloc", "plain", seed=6, steps=50))
    try:
        before = region_digest(run.fds)
        cfg = run.cfg

        def attempt(fds: StateFds, **kw: object) -> str:
            args = dict(npages=cfg["npages"], codec=make_codec("lz4"), pool_name="zsmalloc")
            args.update(kw)  # type: ignore[arg-type]
            with pytest.raises(TakeoverRefused) as info:
                make_store("native", takeover=fds, **args)  # type: ignore[arg-type]
            return str(info.value)

        # a dry run checks and leaves every byte as it was
        checked = make_store("native", NPAGES, make_codec("lz4"), "zsmalloc",
                             takeover=dup_fds(run.fds), check_only=True)  # fmt: skip
        checked.close()
        assert "another pool geometry" in attempt(dup_fds(run.fds), pool_name="z3fold")
        assert "codec lz4" in attempt(dup_fds(run.fds), codec=make_codec("zstd:3"))
        assert "pages" in attempt(dup_fds(run.fds), npages=NPAGES * 2)
        mixed = StateFds(os.dup(run.fds.store), os.dup(other.fds.pool), os.dup(other.fds.arena))
        assert "not this store's" in attempt(mixed)
        wrong_size = os.memfd_create("not-a-store")
        os.ftruncate(wrong_size, 4096)
        assert "bytes" in attempt(StateFds(wrong_size, os.dup(run.fds.pool), os.dup(run.fds.arena)))
        stranger = os.memfd_create("zeros")
        os.ftruncate(stranger, os.fstat(run.fds.store).st_size)
        assert "no zswapfs store" in attempt(
            StateFds(stranger, os.dup(run.fds.pool), os.dup(run.fds.arena))
        )
        assert "only the compiled engine" in attempt(dup_fds(run.fds), pool_name="nope")
        foreign = StateFds(os.dup(run.fds.store), os.dup(run.fds.pool), os.dup(other.fds.arena))
        assert "arena descriptor is not this pool's" in attempt(foreign)
        assert region_digest(run.fds) == before, "a refused takeover changed the state"
        # a format this build does not read: refused, one line
        future = os.memfd_create("future")
        size = os.fstat(run.fds.store).st_size
        os.ftruncate(future, size)
        header = bytearray(os.pread(run.fds.store, 4096, 0))
        header[8:12] = (99).to_bytes(4, "little")
        os.pwrite(future, bytes(header), 0)
        msg = attempt(StateFds(future, os.dup(run.fds.pool), os.dup(run.fds.arena)))
        assert "format 99" in msg and "\n" not in msg
        take_over_and_check(run)  # and the real takeover still works after all that
    finally:
        run.close()
        other.close()
