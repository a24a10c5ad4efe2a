"""Density in the background: recompression of idle pages with trained dictionaries, dedup. The
in-process tests run on both engines (the `engine` fixture)."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.conftest import ENGINES, Mounted, needs_mount, new_store, wait_for
from tests.test_store import make_page
from zswapfs.engine.backing import BackingFile
from zswapfs.engine.codec import PAGE_SIZE, same_filled_value
from zswapfs.engine.pools import POOL_NAMES
from zswapfs.engine.recompress import Recompression
from zswapfs.engine.store import BACKED, MARK, SHARED, SLOT_MASK, PageStore


def record_page(rnd: random.Random, tag: int) -> bytes:
    """Pages of one kind of record with varying fields: what a trained dictionary is for."""
    out = bytearray()
    while len(out) < PAGE_SIZE:
        out += b'{"id": %d, "name": "user%05d", "state": "%s", "score": %d}, ' % (
            tag,
            rnd.randrange(100000),
            rnd.choice([b"active", b"idle", b"gone"]),
            rnd.randrange(1000),
        )
    return bytes(out[:PAGE_SIZE])


def make_store(
    engine: str, npages: int = 2048, pool: str = "zsmalloc", backing: Path | None = None
) -> PageStore:
    back = BackingFile(str(backing), npages, False) if backing else None
    store: PageStore = new_store(engine, npages, "lz4", pool, backing=back)
    return store


def age(store: PageStore, seconds: int) -> None:
    """Move the store's clock *seconds* ahead (every page is that much older)."""
    store.set_clock(advance=seconds)


@pytest.mark.unit
@pytest.mark.parametrize("pool", POOL_NAMES)
def test_idle_pages_are_recompressed_and_read_back(engine: str, pool: str) -> None:
    store = make_store(engine, pool=pool)
    rnd = random.Random(1)
    pages = {pn: record_page(rnd, pn) for pn in range(1200)}
    for pn, page in pages.items():
        store.write_page(pn, page)
    work = Recompression(store, level=9, idle=30)
    assert work.step() == 0, "nothing is idle yet"
    assert store.recompressions == 0 and work.trainings == 1  # the dictionary is ready
    before = store.compr_data_size
    age(store, 31)
    assert work.step() > 1000
    st = store.stats()
    assert st["recompressions"] == st["recompressed_pages"] > 1000
    assert store.compr_data_size < 0.8 * before, (store.compr_data_size, before)
    assert st["recompress_saved_bytes"] == before - store.compr_data_size
    assert st["dict_count"] == 1 and 0 < st["dict_bytes"] <= 16 << 10
    assert st["mem_used_total"] == store.pool.pages_used * PAGE_SIZE + st["dict_bytes"]
    assert st["codec_pages"]["zstd:9+dict#1"] == st["recompressed_pages"]
    assert sum(st["codec_pages"].values()) == st["stored_pages"] - st["same_pages"]
    for pn, page in pages.items():
        assert store.read_page(pn) == page


@pytest.mark.unit
def test_a_step_runs_at_nice_19_and_restores_the_nice_value(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop takes a core only when nothing else wants it: each step runs this thread under
    nice 19, and the thread's own nice value is back once the step ends."""
    store = make_store(engine)
    rnd = random.Random(6)
    for pn in range(300):
        store.write_page(pn, record_page(rnd, pn))
    age(store, 31)
    seen: list[int] = []
    real = store.recompress_pages

    def watched(indices: list[int], min_gain: int) -> int:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real(indices, min_gain)

    monkeypatch.setattr(store, "recompress_pages", watched)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert before != 19
    assert Recompression(store, idle=30).step() > 0
    assert seen and set(seen) == {19}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    seen.clear()
    store.write_page(0, record_page(rnd, 1000))  # back to lz4, then idle again
    age(store, 31)
    Recompression(store, idle=30, idle_priority=False).step()
    assert seen and set(seen) == {before}


@pytest.mark.unit
def test_the_loop_steps_aside_while_requests_flow(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each batch the loop rests to work *duty* of the time (at normal priority; at nice
    19 it does not rest), and only *busy_duty* of it when the store served a request
    during the batch (a fake CPU clock: every page costs 1 ms)."""
    from zswapfs.engine import recompress

    store = make_store(engine)
    rnd = random.Random(8)
    for pn in range(2 * recompress.BATCH):
        store.write_page(pn, record_page(rnd, pn))
    age(store, 31)
    now = [0.0]
    rests: list[float] = []

    class Clock:
        @staticmethod
        def thread_time() -> float:
            return now[0]

        @staticmethod
        def sleep(seconds: float) -> None:
            if seconds:
                rests.append(seconds)

    monkeypatch.setattr(recompress, "time", Clock)
    work = Recompression(
        store, idle=30, dedup=False, min_pages=64, duty=0.5, busy_duty=0.01, idle_priority=False
    )
    work._maybe_train()  # the dictionary first, so the step below is only the batches
    real = store.recompress_pages

    def batch(indices: list[int], min_gain: int) -> int:
        now[0] += 0.001 * len(indices)
        if min(indices) < recompress.BATCH:  # requests arrive during the first batch only
            store.requests += 1
        return real(indices, min_gain)

    monkeypatch.setattr(store, "recompress_pages", batch)
    assert work.step() == 2 * recompress.BATCH
    spent = recompress.BATCH * 0.001
    assert rests == pytest.approx([spent * 0.99 / 0.01, spent * 0.5 / 0.5])
    assert work.busy_rests == 1 and work.stats()["busy_rests"] == 1
    # at nice 19 a quiet batch does not rest at all; a busy one still does
    for pn in range(2 * recompress.BATCH):
        store.write_page(pn, record_page(rnd, pn + 1000))
    age(store, 31)
    rests.clear()
    work.idle_priority = True
    assert work.step() == 2 * recompress.BATCH
    assert rests == pytest.approx([spent * 0.99 / 0.01])


@pytest.mark.unit
def test_fresh_pages_wait_and_incompressible_ones_are_tried_once(engine: str) -> None:
    store = make_store(engine)
    rnd = random.Random(2)
    for pn in range(400):
        store.write_page(pn, record_page(rnd, pn))
    noise = {pn: rnd.randbytes(PAGE_SIZE) for pn in range(400, 450)}
    for pn, page in noise.items():
        store.write_page(pn, page)
    work = Recompression(store, idle=10)
    age(store, 11)
    store.write_page(3, record_page(rnd, 3))  # written just now: not idle
    work.step()
    assert not store.meta.item(3) & SLOT_MASK
    assert all(store.meta.item(pn) & MARK for pn in noise)  # tried, did not pay
    tried = store.recompress_not_worth
    assert tried >= len(noise)
    work.step()
    assert store.recompress_not_worth == tried, "a page found not worth it was tried again"
    for pn, page in noise.items():
        assert store.read_page(pn) == page


@pytest.mark.unit
def test_a_page_read_twice_returns_to_the_write_codec(engine: str) -> None:
    store = make_store(engine)
    rnd = random.Random(3)
    pages = {pn: record_page(rnd, pn) for pn in range(300)}
    for pn, page in pages.items():
        store.write_page(pn, page)
    work = Recompression(store, idle=5)
    age(store, 6)
    work.step()
    assert store.meta.item(7) & SLOT_MASK
    assert store.read_page(7) == pages[7]  # once: stays recompressed
    work.step()
    assert store.meta.item(7) & SLOT_MASK
    assert store.read_page(7) == pages[7]  # twice: goes back
    work.step()
    assert not store.meta.item(7) & SLOT_MASK and store.pages_rewarmed == 1
    assert store.read_page(7) == pages[7]


@pytest.mark.unit
def test_a_page_rewritten_during_recompression_keeps_the_new_contents(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(engine)
    rnd = random.Random(4)
    for pn in range(300):
        store.write_page(pn, record_page(rnd, pn))
    work = Recompression(store, idle=5)
    age(store, 6)
    work.step()  # trains; pages recompress
    newest = record_page(rnd, 9999)
    store.write_page(10, record_page(rnd, 10))  # back in slot 0, fresh
    age(store, 6)
    codec = store.codecs[store.current_slot]
    assert codec is not None
    real = codec.compress

    def rewrite_then_compress(page: bytes) -> bytes:
        if store.table.item(10) != BACKED and not store.meta.item(10) & SLOT_MASK:
            store.write_page(10, newest)  # the FUSE thread writes while the payload is encoded
        return real(page)

    monkeypatch.setattr(codec, "compress", rewrite_then_compress)
    assert store.recompress_page(10) == "gone"
    assert store.read_page(10) == newest


@pytest.mark.unit
def test_retraining_keeps_old_pages_readable_and_frees_the_old_dictionary(engine: str) -> None:
    store = make_store(engine)
    rnd = random.Random(5)
    old = {pn: record_page(rnd, pn) for pn in range(300)}
    for pn, page in old.items():
        store.write_page(pn, page)
    work = Recompression(store, idle=5)
    age(store, 6)
    work.step()
    first = store.current_slot
    assert store.slot_pages[first] > 250
    # the contents turn over: new pages, recompressed, until a new dictionary is trained
    for rnd_tag in range(3):
        for pn in range(300, 700):
            store.write_page(pn, record_page(rnd, pn * 7 + rnd_tag))
        age(store, 6)
        work.step()
    assert work.trainings >= 2 and store.current_slot != first
    assert store.codecs[first] is not None  # its pages still need it
    for pn, page in old.items():
        assert store.read_page(pn) == page
    for pn in old:  # the old slot's pages are rewritten: its dictionary goes
        store.write_page(pn, bytes(PAGE_SIZE))
    assert store.slot_pages[first] == 0 and store.codecs[first] is None
    assert store.slot_bytes[first] == 0


@pytest.mark.unit
@pytest.mark.parametrize("pool", POOL_NAMES)
def test_identical_pages_are_stored_once(engine: str, pool: str) -> None:
    store = make_store(engine, pool=pool)
    rnd = random.Random(6)
    twin = record_page(rnd, 1)
    other = record_page(rnd, 2)
    for pn in range(0, 60, 2):
        store.write_page(pn, twin)
        store.write_page(pn + 1, other if pn % 4 else record_page(rnd, pn))
    objects = store.pool.objects
    merged = store.dedup_scan(list(range(60)))
    assert merged == 29 + 14  # 30 twins -> 1, 15 copies of other -> 1
    assert store.pool.objects == objects - merged
    st = store.stats()
    assert st["pages_deduped"] == merged and st["dedup_saved_bytes"] > 0
    assert st["stored_pages"] == 60
    assert all(store.meta.item(pn) & SHARED for pn in range(0, 60, 2))
    store.write_page(0, record_page(rnd, 3))  # a rewrite of one sharer leaves the others
    assert not store.meta.item(0) & SHARED
    for pn in range(2, 60, 2):
        assert store.read_page(pn) == twin
    for pn in range(2, 60, 2):
        store.write_page(pn, bytes(PAGE_SIZE))
    assert store.pool.objects == objects - merged - 1 + 1  # the twin object is gone, page 0 new


@pytest.mark.unit
def test_dedup_compares_bytes_not_only_digests(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(engine)
    rnd = random.Random(7)
    a, b = record_page(rnd, 1), record_page(rnd, 2)
    store.write_page(0, a)
    store.write_page(1, b)

    class Colliding:
        def __init__(self, data: bytes, digest_size: int) -> None:
            pass

        def digest(self) -> bytes:
            return b"same"

    monkeypatch.setattr("zswapfs.engine.store.hashlib.blake2b", Colliding)
    assert store.dedup_scan([0, 1]) == 0
    assert store.read_page(0) == a and store.read_page(1) == b


@pytest.mark.unit
def test_shared_and_recompressed_pages_write_back(engine: str, tmp_path: Path) -> None:
    store = make_store(engine, npages=512, backing=tmp_path / "backing.img")
    rnd = random.Random(8)
    twin = record_page(rnd, 1)
    pages = {pn: record_page(rnd, pn) for pn in range(300)}
    pages.update({300: twin, 301: twin})
    for pn, page in pages.items():
        store.write_page(pn, page)
    work = Recompression(store, idle=5)
    age(store, 6)
    work.step()
    assert store.shared and store.recompressions > 0
    for pn in [300, 5, 6, 7]:
        assert store.writeback_page(pn)
    assert store.read_page(301) == twin  # its sharer went to the file: it still reads
    for pn, page in pages.items():
        assert store.read_page(pn) == page


@pytest.mark.unit
def test_stats_of_a_store_without_recompression(engine: str) -> None:
    st = make_store(engine).stats()
    assert st["recompressed_pages"] == 0 and st["dict_count"] == 0 and st["pages_deduped"] == 0


class DensityMachine(RuleBasedStateMachine):
    """Writes (records, duplicates, zero, random, partial), reads, idle time, recompression and
    dedup steps, writeback: every read returns the last bytes written."""

    engine = "python"
    #: recompression slots that held pages in some run (the machine must reach them)
    seen_slots: set[int] = set()

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="zswapfs-density-"))
        self.store = make_store(self.engine, npages=256, backing=self.tmp / "b.img")
        self.work = Recompression(self.store, idle=5, dict_size=4096, min_pages=32)
        self.model: dict[int, bytes] = {}
        self.rnd = random.Random(1)

    @initialize()
    def idle_records(self) -> None:
        """Enough idle record pages for a dictionary, so any run with a step recompresses."""
        for pn in range(200, 248):
            self.model[pn] = record_page(self.rnd, pn)
            self.store.write_page(pn, self.model[pn])
        age(self.store, 6)

    def teardown(self) -> None:
        self.store.pool.close()
        if self.store.backing is not None:
            self.store.backing.close()
        shutil.rmtree(self.tmp)

    @rule(pn=st.integers(0, 255), kind=st.sampled_from(["record", "dup", "zero", "random", "text"]))
    def write(self, pn: int, kind: str) -> None:
        if kind == "record":
            page = record_page(self.rnd, pn)
        elif kind == "dup":
            page = record_page(random.Random(7), 7)
        else:
            page = make_page(kind, self.rnd)
        self.store.write_page(pn, page)
        self.model[pn] = page

    @rule(off=st.integers(0, 256 * PAGE_SIZE - 1), n=st.integers(1, 3 * PAGE_SIZE))
    def write_range(self, off: int, n: int) -> None:
        n = min(n, 256 * PAGE_SIZE - off)
        data = self.rnd.randbytes(n)
        self.store.write(off, data)
        for pn in range(off // PAGE_SIZE, (off + n - 1) // PAGE_SIZE + 1):
            page = bytearray(self.model.get(pn, bytes(PAGE_SIZE)))
            lo, hi = max(off, pn * PAGE_SIZE), min(off + n, (pn + 1) * PAGE_SIZE)
            page[lo - pn * PAGE_SIZE : hi - pn * PAGE_SIZE] = data[lo - off : hi - off]
            self.model[pn] = bytes(page)

    @rule(pn=st.integers(0, 255))
    def read(self, pn: int) -> None:
        assert self.store.read_page(pn) == self.model.get(pn, bytes(PAGE_SIZE))

    @rule(seconds=st.integers(1, 10))
    def idle(self, seconds: int) -> None:
        age(self.store, seconds)

    @rule()
    def step(self) -> None:
        self.work.step()

    @rule(pn=st.integers(0, 255))
    def writeback(self, pn: int) -> None:
        self.store.writeback_page(pn)

    @invariant()
    def accounting(self) -> None:
        s = self.store
        type(self).seen_slots |= {s.current_slot} if s.recompressions else set()
        in_pool = sum(1 for pn in range(256) if s.table.item(pn) >= 3)
        same = sum(1 for p in self.model.values() if same_filled_value(p) is not None)
        assert s.stored_pages == in_pool + same
        assert s.pool.objects == in_pool - sum(s.shared.values())
        assert sum(s.slot_pages) == sum(1 for pn in range(256) if s.meta.item(pn) & SLOT_MASK)


DENSITY_MACHINES = {
    engine: type(f"{engine.title()}DensityMachine", (DensityMachine,), {"engine": engine})
    for engine in ENGINES
}
for _engine, _machine in DENSITY_MACHINES.items():
    _case = pytest.mark.unit(_machine.TestCase)
    _case.settings = settings(
        max_examples=30, stateful_step_count=80, deadline=None, derandomize=True
    )
    globals()[f"Test{_machine.__name__}"] = _case


@pytest.mark.unit
def test_the_machine_reaches_recompression(engine: str) -> None:
    """The state machine above is only worth its runs if recompression happened in them."""
    machine = DENSITY_MACHINES[engine]
    machine.seen_slots = set()
    machine.TestCase("runTest").runTest()
    assert machine.seen_slots, "no run of the machine recompressed a page"


@pytest.mark.mount
@needs_mount
def test_the_daemon_recompresses_idle_pages(mount: Callable[..., Mounted]) -> None:
    """Through a real mount: pages written, left idle, recompressed by the maintenance thread
    with a trained dictionary, then read back byte for byte; the pool shrinks."""
    m = mount("--size", "16M", "--recompress-idle", "1", "--maintenance-interval", "0.2")
    rnd = random.Random(11)
    pages = [record_page(rnd, pn) for pn in range(1500)]
    with open(m.image, "r+b", buffering=0) as f:
        f.write(b"".join(pages))
    written = m.stats()
    wait_for(lambda: m.stats()["recompressed_pages"] > 1200, "idle pages to be recompressed")
    wait_for(lambda: m.stats()["mem_used_total"] < 0.8 * written["mem_used_total"], "the pool")
    st = m.stats()
    assert st["dict_count"] >= 1 and st["maintenance"]["recompression"]["dict_trainings"] >= 1
    with open(m.image, "rb", buffering=0) as f:
        assert f.read(len(pages) * PAGE_SIZE) == b"".join(pages)
    assert m.stats()["failed_reads"] == 0


@pytest.mark.mount
@needs_mount
def test_recompress_off_leaves_pages_alone(mount: Callable[..., Mounted]) -> None:
    m = mount("--size", "8M", "--recompress", "off", "--maintenance-interval", "0.05")
    with open(m.image, "r+b", buffering=0) as f:
        f.write(b"".join(record_page(random.Random(1), pn) for pn in range(600)))
    runs = m.stats()["maintenance"]["runs"]
    wait_for(lambda: m.stats()["maintenance"]["runs"] > runs + 5, "maintenance passes")
    st = m.stats()
    assert st["recompressed_pages"] == 0 and st["maintenance"]["recompression"] is None
