"""The compiled engine against the Python reference: the same random request sequences on both,
and after every step the same bytes read back, the same page index, access stamps and flags
(one page clock for both, moved by the machine) and the same counters.

Both engines are given the same lz4 build: python-lz4 bundles its own copy of lz4, which on
roughly one page in three thousand emits a block a few bytes longer or shorter than the system
liblz4 the compiled engine links (both decode either). The engines' job is what happens around
the codec, so the Python engine here compresses with the system liblz4 through ctypes, and any
difference in a size is a difference in the engines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.conftest import examples
from zswapfs.engine import native
from zswapfs.engine.backing import BackingFile
from zswapfs.engine.codec import (
    PAGE_SIZE,
    CodecError,
    DictZstdCodec,
    Lz4Codec,
    fill_page,
    train_dictionary,
)
from zswapfs.engine.store import FIRST_HANDLE, SHARED, SLOT_MASK, PageStore, StoreFull

# no skip when the compiled engine is missing: it is what ships, so a build that lost it fails
pytestmark = pytest.mark.unit

NPAGES = 64
KINDS = ["zero", "fill", "random", "half", "half", "half", "text", "sparse", "repeat", "dup"]
KINDS += ["small", "small"]
#: the page "dup" writes, every time: identical pages for dedup to find
DUP = b"".join(b"record %d, " % i for i in range(600))[:PAGE_SIZE]
#: figures that differ by construction: which engine, its page workers, each store's backing file
NOT_COMPARED = {"engine", "backing", "page_workers"}

_liblz4 = ctypes.CDLL(ctypes.util.find_library("lz4") or "liblz4.so.1")


class SystemLz4Codec(Lz4Codec):
    """lz4 through the system liblz4 (the build the compiled engine links)."""

    def compress(self, page: bytes) -> bytes:
        out = ctypes.create_string_buffer(PAGE_SIZE + PAGE_SIZE // 255 + 16)
        n = _liblz4.LZ4_compress_default(page, out, len(page), len(out))
        assert n > 0
        return out.raw[:n]


class SystemDictZstdCodec(DictZstdCodec):
    """zstd with a dictionary as the compiled recompression writes it (the system libzstd;
    python-zstandard bundles another build, whose output may differ by a few bytes)."""

    def compress(self, page: bytes) -> bytes:
        return native._native._dict_compress(self.dictionary, self.level, page)


def make_page(kind: str, rnd: random.Random) -> bytes:
    if kind == "zero":
        return bytes(PAGE_SIZE)
    if kind == "fill":
        return fill_page(rnd.getrandbits(64) | 1)
    if kind == "random":
        return rnd.randbytes(PAGE_SIZE)
    if kind == "half":  # a few sizes of 1-4 objects a zspage: holes that compaction can close
        n = rnd.choice((2000, 3000))
        return rnd.randbytes(n) + bytes(PAGE_SIZE - n)
    if kind == "small":  # 5-20 chunks: pool pages of two or three buddies that compaction empties
        n = rnd.choice((300, 700, 1200))
        return rnd.randbytes(n) + bytes(PAGE_SIZE - n)
    if kind == "text":
        words = [b"swap", b"page", b"zram", b"pool", b"class", b"handle", b" ", b"\n"]
        return b"".join(rnd.choice(words) for _ in range(1500))[:PAGE_SIZE].ljust(PAGE_SIZE, b"#")
    if kind == "dup":
        return DUP
    if kind == "repeat":  # compresses to a few dozen bytes: the small classes
        return (rnd.randbytes(rnd.randint(1, 64)) * PAGE_SIZE)[:PAGE_SIZE]
    page = bytearray(PAGE_SIZE)
    for _ in range(rnd.randint(1, 30)):
        page[rnd.randrange(PAGE_SIZE)] = rnd.randrange(1, 256)
    return bytes(page)


def setup_module() -> None:
    # every aligned write of two pages or more is compressed by a page worker, not the request
    # thread: the compiled engine's batched path is the one compared
    native.set_workers(1, min_pages=2, lead=False)


def teardown_module() -> None:
    native.set_workers()


class EngineDiff(RuleBasedStateMachine):
    """Subclasses set the store's options: a memory limit, a backing file, image mode."""

    pool = "zsmalloc"
    mem_limit_pages = 0
    backing = False
    persistent = False
    huge_to_backing = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="zswapfs-diff-"))
        self.stores = [self._make("python"), self._make("native")]
        assert [s.engine for s in self.stores] == ["python", "native"]
        # pages the compiled loop hands to Python (recompressed or shared old objects, rejects)
        # and pages the background sends back to the write codec are compressed in Python on
        # both engines: with the same liblz4 build as the compiled loop's own pages
        self.stores[1].codec = self.stores[1].codecs[0] = SystemLz4Codec()
        self.rnd = random.Random(7)
        # one page clock for both, moved only by the tick rule: every access stamp, and with
        # them the writeback and recompression picks, are compared exactly
        self.clock = 1
        for s in self.stores:
            s.set_clock(self.clock)

    def _make(self, engine: str) -> PageStore:
        backing = None
        if self.backing:
            backing = BackingFile(str(self.dir / f"{engine}.img"), NPAGES, self.persistent)
        codec = SystemLz4Codec() if engine == "python" else Lz4Codec()
        return native.make_store(
            engine,
            NPAGES,
            codec,
            self.pool,
            backing=backing,
            mem_limit=self.mem_limit_pages * PAGE_SIZE,
            huge_to_backing=self.huge_to_backing,
        )

    def _both(self, method: str, *args: Any) -> list[Any]:
        """Call *method* on both stores; both must return the same or raise the same."""
        results = []
        for s in self.stores:
            try:
                results.append(("ok", getattr(s, method)(*args)))
            except StoreFull as exc:
                results.append(("StoreFull", type(exc).__name__))
        assert results[0] == results[1], f"{method}{args}: {results}"
        return [r[1] for r in results]

    # -- requests ------------------------------------------------------------------------------
    @rule(
        off=st.integers(0, NPAGES * PAGE_SIZE - 1),
        n=st.integers(1, 5 * PAGE_SIZE),
        kind=st.sampled_from(KINDS),
        aligned=st.booleans(),
    )
    def write(self, off: int, n: int, kind: str, aligned: bool) -> None:
        if aligned:
            off, n = off - off % PAGE_SIZE, max(PAGE_SIZE, n - n % PAGE_SIZE)
        n = min(n, NPAGES * PAGE_SIZE - off)
        data = b"".join(make_page(kind, self.rnd) for _ in range(n // PAGE_SIZE + 2))
        start = self.rnd.randrange(PAGE_SIZE) if not aligned else 0
        self._both("write", off, data[start : start + n])

    @rule(off=st.integers(0, NPAGES * PAGE_SIZE - 1), n=st.integers(1, 6 * PAGE_SIZE))
    def read(self, off: int, n: int) -> None:
        n = min(n, NPAGES * PAGE_SIZE - off)
        self._both("read", off, n)

    @rule(pn=st.integers(0, NPAGES - 1), kind=st.sampled_from(KINDS))
    def write_page(self, pn: int, kind: str) -> None:
        self._both("write_page", pn, make_page(kind, self.rnd))

    @rule(pns=st.lists(st.integers(0, NPAGES - 1), min_size=4, max_size=32, unique=True))
    def fragment(self, pns: list[int]) -> None:
        """Small objects, then every other one freed: pool pages with holes, for compaction."""
        for pn in pns:
            self._both("write_page", pn, make_page("small", self.rnd))
        for pn in pns[::2]:
            self._both("write_page", pn, bytes(PAGE_SIZE))

    @rule(
        off=st.integers(0, NPAGES * PAGE_SIZE - 1),
        n=st.integers(0, 6 * PAGE_SIZE),
        aligned=st.booleans(),
    )
    def discard(self, off: int, n: int, aligned: bool) -> None:
        """FALLOCATE's punch hole: whole pages freed, partial ones zeroed."""
        if aligned:
            off, n = off - off % PAGE_SIZE, n - n % PAGE_SIZE
        n = min(n, NPAGES * PAGE_SIZE - off)
        self._both("discard", off, n)

    # -- background steps ----------------------------------------------------------------------
    @rule(budget=st.integers(1, 40))
    def compact_step(self, budget: int) -> None:
        assert self.stores[0].pool.compact_step(budget) == self.stores[1].pool.compact_step(budget)

    @rule()
    def compact(self) -> None:
        assert self.stores[0].pool.compact() == self.stores[1].pool.compact()

    @rule(count=st.integers(1, 8))
    def migrate(self, count: int) -> None:
        for _ in range(count):
            moved = [s.pool.migrate_top() for s in self.stores]
            assert moved[0] == moved[1]

    @rule(pn=st.integers(0, 10**6))
    def migrate_page(self, pn: int) -> None:
        pn %= max(1, self.stores[0].pool.arena.high_water)
        assert self.stores[0].pool.migrate_page(pn) == self.stores[1].pool.migrate_page(pn)

    @rule()
    def release_segments(self) -> None:
        assert self.stores[0].pool.release_segments() == self.stores[1].pool.release_segments()

    @rule(seconds=st.integers(1, 40))
    def tick(self, seconds: int) -> None:
        """Time passes (the same seconds for both engines' page clocks)."""
        self.clock += seconds
        for s in self.stores:
            s.set_clock(self.clock)

    @precondition(lambda self: self.backing)
    @rule(pns=st.lists(st.integers(0, NPAGES - 1), min_size=1, max_size=12))
    def writeback(self, pns: list[int]) -> None:
        for pn in pns:
            self._both("writeback_page", pn)

    @precondition(lambda self: self.backing)
    @rule(pns=st.lists(st.integers(0, NPAGES - 1), min_size=1, max_size=24))
    def writeback_batch(self, pns: list[int]) -> None:
        """The maintenance thread's call: one batch (in C on the compiled engine)."""
        self._both("writeback_pages", pns)

    @precondition(lambda self: self.backing)
    @rule(count=st.integers(1, 12), huge_first=st.booleans(), min_idle=st.integers(0, 60))
    def writeback_cold(self, count: int, huge_first: bool, min_idle: int) -> None:
        """The maintenance thread's choice and batch: the same cold pages, in the same order,
        on both (the ages are the same), then written back."""
        picks = self._both("cold_pages", count, huge_first, min_idle)
        in_pool = {int(pn) for pn in np.flatnonzero(self.stores[0].table >= FIRST_HANDLE)}
        assert set(picks[0]) <= in_pool
        if not min_idle:
            assert len(picks[0]) == min(count, len(in_pool))
        self._both("writeback_pages", picks[0])

    @precondition(lambda self: self.persistent)
    @rule()
    def flush(self) -> None:
        self._both("flush")

    # -- density: recompression with a dictionary, dedup
    @rule(seed=st.integers(0, 3))
    def add_dictionary(self, seed: int) -> None:
        rnd = random.Random(seed)
        sample = [make_page(rnd.choice(["text", "repeat", "half", "dup"]), rnd) for _ in range(64)]
        try:
            dictionary = train_dictionary(sample, 4096, 3)
        except CodecError:
            return  # too little to learn from: the loop would try again later
        for s in self.stores:
            s.add_slot(SystemDictZstdCodec(3, dictionary), len(dictionary))

    @rule(pns=st.lists(st.integers(0, NPAGES - 1), min_size=1, max_size=16))
    def recompress(self, pns: list[int]) -> None:
        for pn in pns:
            self._both("recompress_page", pn)

    @rule(pns=st.lists(st.integers(0, NPAGES - 1), min_size=1, max_size=24))
    def recompress_batch(self, pns: list[int]) -> None:
        """The loop's call: one batch (in C on the compiled engine, the GIL released)."""
        self._both("recompress_pages", pns, 16)

    @rule(count=st.integers(1, 24), min_idle=st.integers(0, 60))
    def recompress_idle(self, count: int, min_idle: int) -> None:
        """The loop's choice (idle pages, coldest first) and its batch."""
        picks = self._both("idle_pages", count, min_idle)
        self._both("recompress_pages", picks[0], 16)

    @rule(k=st.integers(0, 10**6), times=st.integers(1, 3))
    def read_recompressed(self, k: int, times: int) -> None:
        """A recompressed page read: the first time in C (the slot's digested dictionary), a
        second time by the Python path, which queues it to go back to the write codec."""
        held = np.flatnonzero(self.stores[0].meta & SLOT_MASK)
        if len(held):
            pn = int(held[k % len(held)])
            for _ in range(times):
                self._both("read", pn * PAGE_SIZE, PAGE_SIZE)
            assert self.stores[0].rewarm == self.stores[1].rewarm

    @rule(pns=st.lists(st.integers(0, NPAGES - 1), min_size=1, max_size=8))
    def rewarm(self, pns: list[int]) -> None:
        for pn in pns:
            self._both("rewarm_page", pn)

    @rule(pns=st.lists(st.integers(0, NPAGES - 1), min_size=2, max_size=32))
    def dedup(self, pns: list[int]) -> None:
        self._both("dedup_scan", pns)

    # -- the same state ------------------------------------------------------------------------
    @invariant()
    def same_figures(self) -> None:
        a, b = (s.stats() for s in self.stores)
        for key in a.keys() - NOT_COMPARED:
            assert a[key] == b[key], f"{key}: python {a[key]!r}, native {b[key]!r}"
        assert a.keys() - NOT_COMPARED == b.keys() - NOT_COMPARED
        assert np.array_equal(self.stores[0].table, self.stores[1].table)
        # every object at the same place: same zspage and slot, or pool page and buddy, and
        # the same length (or huge pool page)
        assert self.stores[0].pool.handles.table.tobytes() == self.stores[1].pool._handle_table()
        # ages, dirty, slot, mark and shared bits alike
        assert np.array_equal(self.stores[0].meta, self.stores[1].meta)
        assert self.stores[0].shared == self.stores[1].shared

    def teardown(self) -> None:
        try:
            images = [s.read(0, NPAGES * PAGE_SIZE) for s in self.stores]
            assert images[0] == images[1]
            if self.backing:
                files = [(self.dir / f"{e}.img").read_bytes() for e in ("python", "native")]
                assert files[0] == files[1]
            assert self.stores[1]._inflight_count == 0
        finally:
            for s in self.stores:
                s.pool.close()
                if s.backing is not None:
                    s.backing.close()
            shutil.rmtree(self.dir, ignore_errors=True)


class Plain(EngineDiff):
    pass


class Limited(EngineDiff):
    """A memory limit of 12 pool pages over 64 image pages, with a backing file: writes hit
    the limit and go to the file, incompressible ones first past the low watermark."""

    mem_limit_pages = 12
    backing = True
    huge_to_backing = True


class Image(EngineDiff):
    """Image mode: never-written pages read through to the file, dirty bits, flush."""

    mem_limit_pages = 16
    backing = True
    persistent = True


class NoRoom(EngineDiff):
    """A memory limit and no backing file: writes past the limit fail with StoreFull."""

    mem_limit_pages = 10


class PlainZbud(EngineDiff):
    """zbud: two objects a pool page, compaction moves whole pages' objects."""

    pool = "zbud"


class PlainZ3fold(EngineDiff):
    """z3fold: three objects a pool page, the middle one moved inside its page on a free."""

    pool = "z3fold"


class LimitedZ3fold(Limited):
    pool = "z3fold"


class ImageZbud(Image):
    pool = "zbud"


for _cls in (Plain, Limited, Image, NoRoom, PlainZbud, PlainZ3fold, LimitedZ3fold, ImageZbud):
    _cls.TestCase.settings = settings(
        max_examples=examples(60), stateful_step_count=60, deadline=None
    )
    globals()[f"TestEngineDiff{_cls.__name__}"] = _cls.TestCase


@pytest.mark.parametrize("pool", ["zsmalloc", "zbud", "z3fold"])
def test_every_pool_is_compiled(pool: str) -> None:
    from zswapfs.engine.codec import make_codec

    store = native.make_store("native", 16, make_codec("lz4"), pool)
    assert store.engine == "native" and store.stats()["engine"] == "native"
    assert store.pool.name == pool and isinstance(store.pool, native.NATIVE_POOLS[pool])
    store.pool.close()


def test_zstd_round_trip_both_ways() -> None:
    """zstd: the engines may link different libzstd builds, so only contents are compared, and
    each engine decodes the other's payloads: the Python codec each compiled payload, the
    compiled read loop each payload the Python engine wrote (put in its place in the pool)."""
    from zswapfs.engine.codec import make_codec
    from zswapfs.engine.store import SAME

    rnd = random.Random(5)
    pages = [make_page(k, rnd) for k in KINDS * 4]
    stores = [
        native.make_store(e, len(pages), make_codec("zstd:3"), "zsmalloc")
        for e in ("python", "native")
    ]
    for s in stores:
        s.write(0, b"".join(pages))
    assert stores[0].read(0, len(pages) * PAGE_SIZE) == stores[1].read(0, len(pages) * PAGE_SIZE)
    assert stores[0].stored_pages == stores[1].stored_pages
    py, nat = stores
    zstd = make_codec("zstd:3")
    payloads = {}
    for pn, page in enumerate(pages):
        for s in stores:
            entry, payload = s._peek(pn)
            with s.lock:
                assert not s._rewritten(pn)
            if entry == SAME:
                assert payload == page
                continue
            assert entry >= FIRST_HANDLE and payload is not None
            # the compiled engine's payload, decoded by the Python codec
            assert (payload if len(payload) == PAGE_SIZE else zstd.decompress(payload)) == page
            if s is py:
                payloads[pn] = payload
    assert payloads, "no page took the codec"
    for pn, payload in payloads.items():  # the Python engine's payload, read by the C loop
        handle = nat.pool.store(payload)
        with nat.lock:
            nat._swap(pn, handle, len(payload), nat.meta.item(pn))
    assert nat.read(0, len(pages) * PAGE_SIZE) == b"".join(pages)
    assert nat._inflight_count == 0
    for s in stores:
        s.pool.close()


def test_a_surprise_below_is_a_counted_storage_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is not a StoreError, from the Python path a page is handed back to,
    comes out of the compiled request loop as StorageFailure from it, counted, as in
    PageStore.write/read."""
    from zswapfs.engine.codec import make_codec
    from zswapfs.engine.store import StorageFailure

    store = native.make_store("native", 8, make_codec("lz4"), "zsmalloc", mem_limit=PAGE_SIZE)
    store.write(0, make_page("text", random.Random(1)))  # the pool now holds its limit

    def boom(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "_write_slow", boom)
    with pytest.raises(StorageFailure, match="boom") as info:
        store.write(PAGE_SIZE, make_page("text", random.Random(2)))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert store.failed_writes == 1
    store.table[3] = 2  # as if written back: the read goes to Python, which fails the same way
    monkeypatch.setattr(store, "_read_backing", boom)
    with pytest.raises(StorageFailure, match="boom"):
        store.read(3 * PAGE_SIZE, 10)
    assert store.failed_reads == 1
    store.pool.close()


def _surprising_store() -> Any:
    """A native store whose next write over its memory limit (page 1 on) meets a callback that
    raises RuntimeError: the compiled loop's failure path."""
    from zswapfs.engine.codec import make_codec

    store = native.make_store("native", 8, make_codec("lz4"), "zsmalloc", mem_limit=PAGE_SIZE)
    store.write(0, make_page("text", random.Random(1)))  # the pool now holds its limit

    def boom(*args: object) -> None:
        raise RuntimeError("boom")

    store._write_slow = boom
    return store


def test_a_wrapped_failure_holds_a_reference_for_each_link_to_its_cause() -> None:
    """The StorageFailure the compiled loop raises points at the original exception twice
    (__cause__ and __context__), so it holds two references to it, exactly as the same chain
    raised in Python does. One short, the cause would be freed while the failure still points
    at it; here that shows as a count one lower than Python's."""
    import sys

    from zswapfs.engine.store import StorageFailure

    def chain_in_python() -> StorageFailure:
        try:
            try:
                raise RuntimeError("boom")
            except RuntimeError as exc:
                raise StorageFailure("writing at 4096: boom") from exc
        except StorageFailure as failure:
            return failure

    store = _surprising_store()
    page = make_page("text", random.Random(2))
    try:
        store.write(PAGE_SIZE, page)
    except StorageFailure as failure:
        caught = failure
    expected = chain_in_python()
    cause = caught.__cause__
    assert isinstance(cause, RuntimeError) and cause is caught.__context__
    assert sys.getrefcount(cause) == sys.getrefcount(expected.__cause__)
    before = sys.getrefcount(cause)
    del caught
    assert before - sys.getrefcount(cause) == 2  # the failure let go of exactly its two links
    assert str(cause) == "boom"
    store.pool.close()


def test_many_failures_free_what_they_hold() -> None:
    """The failure path, many times, each failure dropped while its cause is kept and then
    used: a reference count one short frees the cause under the caller (under ASan, with
    PYTHONMALLOC=malloc, a use after free; `make sanitize` runs this)."""
    from zswapfs.engine.store import StorageFailure

    store = _surprising_store()
    page = make_page("text", random.Random(2))
    causes = []
    for _ in range(2000):
        try:
            store.write(PAGE_SIZE, page)
        except StorageFailure as failure:
            causes.append(failure.__cause__)
        assert str(causes[-1]) == "boom"
    assert store.failed_writes == 2000
    assert all(type(c) is RuntimeError and c.args == ("boom",) for c in causes)
    store.pool.close()


@pytest.mark.parametrize(
    ("engine", "pool"), [("python", "zsmalloc"), ("native", "zsmalloc"), ("native", "z3fold")]
)
def test_requests_and_maintenance_in_two_threads(tmp_path: Path, engine: str, pool: str) -> None:
    """Requests on one thread; compaction, migration, segment release, writeback and
    recompression batches on another, all through the store and pool locks, while writes over
    the memory limit go to the backing file: every page reads back as last written (a
    writeback's older copy never lands in the file after the write path's newer one) and
    nothing deadlocks (the join deadline only ends a hang)."""
    import threading

    from zswapfs.engine.codec import make_codec

    npages = 512
    backing = BackingFile(str(tmp_path / "b.img"), npages, persistent=False)
    store = native.make_store(
        engine, npages, make_codec("lz4"), pool, backing=backing, mem_limit=96 * PAGE_SIZE
    )
    assert store.engine == engine and store.pool.name == pool
    trainer = random.Random(9)
    sample = [make_page(trainer.choice(["text", "repeat", "half"]), trainer) for _ in range(64)]
    store.add_slot(SystemDictZstdCodec(3, train_dictionary(sample, 4096, 3)), 4096)
    stop = threading.Event()
    errors: list[BaseException] = []

    def maintain() -> None:
        try:
            while not stop.is_set():
                store.pool.compact_step()
                store.pool.migrate_top()
                store.pool.release_segments()
                store.writeback_pages(store.cold_pages(8))
                store.recompress_pages(store.idle_pages(32, 0), 16)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=maintain)
    worker.start()
    model: dict[int, bytes] = {}
    rnd = random.Random(11)
    try:
        for _ in range(3000):
            pn = rnd.randrange(npages - 4)
            count = rnd.choice((1, 1, 1, 4))
            data = b"".join(make_page(rnd.choice(KINDS), rnd) for _ in range(count))
            store.write(pn * PAGE_SIZE, data)
            for i in range(count):
                model[pn + i] = data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
            probe = rnd.choice(list(model))
            assert store.read(probe * PAGE_SIZE, PAGE_SIZE) == model[probe]
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive(), "maintenance thread hung"
    assert not errors, errors
    for pn, page in model.items():
        assert store.read(pn * PAGE_SIZE, PAGE_SIZE) == page
    assert store.bd_count > 0 and store.stored_pages + store.bd_count == len(model)
    assert store.recompressions > 0
    store.pool.close()
    backing.close()


@pytest.mark.parametrize("lead", [False, True])
def test_page_workers_place_a_big_write_as_the_request_thread_would(lead: bool) -> None:
    """A 1 MiB write compressed by the page workers (lead=False: by them alone, so the batched
    path surely ran) lands exactly as the page-by-page loop puts it: same handles, same
    counters, same bytes back; unaligned requests take the page-by-page loop."""
    from zswapfs.engine.codec import make_codec

    rnd = random.Random(3)
    npages = 512
    data = b"".join(make_page(rnd.choice(KINDS), rnd) for _ in range(npages))
    stores = []
    helped = []
    try:
        for workers in (0, 1):
            native.set_workers(workers, min_pages=2, lead=lead)
            store = native.make_store("native", npages, make_codec("lz4"), "zsmalloc")
            stores.append(store)
            before = native.workers()
            store.write(0, data[: 256 * PAGE_SIZE])
            store.write(256 * PAGE_SIZE, data[256 * PAGE_SIZE :])
            store.write(100, data[: 8 * PAGE_SIZE])  # unaligned: page by page
            after = native.workers()
            helped.append(after["pages_by_workers"] - before["pages_by_workers"])
            batches = npages // after["batch_max"]  # the two requests, BATCH_MAX pages a batch
            assert after["batches"] - before["batches"] == (batches if workers else 0)
    finally:
        native.set_workers(1, min_pages=2, lead=False)
    if not lead:
        assert helped == [0, npages]
    a, b = stores
    assert a.pool._handle_table() == b.pool._handle_table()
    assert a.stats() | {"page_workers": None} == b.stats() | {"page_workers": None}
    assert a.read(0, npages * PAGE_SIZE) == b.read(0, npages * PAGE_SIZE)
    expect = bytearray(data)
    expect[100 : 100 + 8 * PAGE_SIZE] = data[: 8 * PAGE_SIZE]
    assert b.read(0, npages * PAGE_SIZE) == bytes(expect)
    for s in stores:
        s.pool.close()


def test_recompression_batches_in_c_match_the_python_engine() -> None:
    """A whole store's worth of pages recompressed with a trained dictionary, in batches: the
    compiled batch (the GIL released) leaves the same handles, counters and bytes as
    PageStore's page-by-page path, and hands shared and already recompressed pages to it."""
    rnd = random.Random(12)
    npages = 600
    kinds = ["text", "text", "repeat", "half", "random", "dup", "zero"]
    pages = [make_page(rnd.choice(kinds), rnd) for _ in range(npages)]
    sample = [p for p in pages if p != bytes(PAGE_SIZE)][:200]
    dictionary = train_dictionary(sample, 4096, 5)
    stores = [
        native.make_store(engine, npages, SystemLz4Codec(), "zsmalloc")
        for engine in ("python", "native")
    ]
    stores[1].codec = stores[1].codecs[0] = SystemLz4Codec()
    for s in stores:
        s.set_clock(7)
    done = []
    try:
        for s in stores:
            s.write(0, b"".join(pages))
            s.dedup_scan(list(range(npages)))  # shared pages: the Python path's
            s.add_slot(SystemDictZstdCodec(5, dictionary), len(dictionary))
            n = s.recompress_pages(list(range(0, npages, 2)), 16)
            n += s.recompress_pages(list(range(npages)), 16)  # half of them a second time
            done.append(n)
        py, nat = stores
        assert done[0] == done[1] > npages // 3, done
        assert py.pool.handles.table.tobytes() == nat.pool._handle_table()
        assert np.array_equal(py.table, nat.table)
        assert np.array_equal(py.meta, nat.meta)
        a, b = py.stats(), nat.stats()
        assert {k: v for k, v in a.items() if k not in NOT_COMPARED} == {
            k: v for k, v in b.items() if k not in NOT_COMPARED
        }
        assert a["pages_deduped"] > 0 and a["recompressed_pages"] > npages // 3
        assert nat.read(0, npages * PAGE_SIZE) == b"".join(pages)
        assert nat._inflight_count == 0
    finally:
        for s in stores:
            s.pool.close()


def test_a_batch_keeps_the_reference_order_around_pages_python_decides() -> None:
    """A page the C batch leaves to Python (here a dedup survivor whose partner was rewritten:
    its SHARED bit stays) is recoded in its turn, not after the rest, so every object lands
    where the Python engine puts it."""
    tables = []
    for engine in ("python", "native"):
        s = native.make_store(engine, 64, SystemLz4Codec(), "zsmalloc")
        s.codec = s.codecs[0] = SystemLz4Codec()
        rnd = random.Random(1)
        pages = [make_page("text", rnd) for _ in range(8)]
        for i, page in enumerate(pages):
            s.write(i * PAGE_SIZE, page)
        s.write(8 * PAGE_SIZE, DUP)
        s.write(9 * PAGE_SIZE, DUP)
        assert s.dedup_scan([8, 9]) == 1
        s.write(9 * PAGE_SIZE, pages[0][::-1])  # the partner rewritten
        assert s.meta.item(8) & SHARED and s.table.item(8) not in s.shared
        trainer = random.Random(9)
        sample = [make_page(trainer.choice(["text", "repeat", "half"]), trainer) for _ in range(64)]
        s.add_slot(SystemDictZstdCodec(3, train_dictionary(sample, 4096, 3)), 4096)
        assert s.recompress_pages([8, 0, 1, 2, 3], 16) == 5
        tables.append((s.table.copy(), s.pool._handle_table() if engine == "native" else None))
        if engine == "python":
            py_handles = s.pool.handles.table.tobytes()
        else:
            assert tables[1][1] == py_handles
        assert s.read(0, 8 * PAGE_SIZE) == b"".join(pages)
        s.pool.close()
    assert np.array_equal(tables[0][0], tables[1][0])


@pytest.mark.parametrize("engine", ["python", "native"])
def test_two_owners_of_a_page_in_flight_both_see_a_rewrite(engine: str) -> None:
    """A flush (request thread) and a background step can have one page in flight at once: a
    rewrite between their claims is seen by both, so the second claim cannot hide it from the
    first (which would then clear the page's dirty bit over a stale file copy)."""
    from zswapfs.engine.codec import make_codec

    store = native.make_store(engine, 8, make_codec("lz4"), "zsmalloc")
    rnd = random.Random(4)
    store.write(0, make_page("text", rnd))
    store._peek(0)  # owner A (say, flush) reads the page
    store.write(0, make_page("text", rnd))  # rewritten
    store._peek(0)  # owner B (say, recompression) reads the new contents
    with store.lock:
        assert store._was_rewritten(0)
        assert store._rewritten(0)  # A: refused
    # (the compiled store's count takes the store lock itself)
    assert store._inflight_count == 1 if engine == "native" else len(store._inflight) == 1
    with store.lock:
        assert store._rewritten(0)  # B: refused too (conservative: tried again later)
    with store.lock:
        assert store._rewritten(0)  # out of flight now: True, as for any page not in flight
    store._peek(0)
    with store.lock:
        assert not store._rewritten(0)  # one owner, no rewrite
    count = store._inflight_count if engine == "native" else len(store._inflight)
    assert count == 0
    store.pool.close()


@pytest.mark.parametrize("engine", ["python", "native"])
def test_a_backing_file_cut_short_fails_the_read_not_the_store(tmp_path: Path, engine: str) -> None:
    """Written-back pages are read from the backing file (in C on the compiled engine, with
    the GIL released); when the file was cut short under the store, the read is a counted
    StorageFailure (EIO for the request) and the pages still in the file read back."""
    import os

    from zswapfs.engine.codec import make_codec
    from zswapfs.engine.store import BACKED, StorageFailure

    backing = BackingFile(str(tmp_path / "b.img"), 8, persistent=False)
    store = native.make_store(engine, 8, make_codec("lz4"), "zsmalloc", backing=backing)
    rnd = random.Random(5)
    pages = [make_page("text", rnd) for _ in range(8)]
    store.write(0, b"".join(pages))
    for pn in range(8):
        assert store.writeback_page(pn)
    assert store.table.tolist() == [BACKED] * 8
    assert store.read(0, 8 * PAGE_SIZE) == b"".join(pages)
    assert store.bd_reads == 8
    os.truncate(backing.path, 6 * PAGE_SIZE)  # pages 6 and 7 are gone
    assert store.read(5 * PAGE_SIZE, PAGE_SIZE) == pages[5]
    with pytest.raises(StorageFailure, match="short read of page 6"):
        store.read(4 * PAGE_SIZE, 4 * PAGE_SIZE)
    assert (store.failed_reads, store.bd_errors, store.bd_reads) == (1, 1, 9 + 2)
    store.pool.close()
    backing.close()


@pytest.mark.parametrize("engine", ["python", "native"])
def test_writes_over_the_limit_go_to_the_file_and_wake_maintenance(
    tmp_path: Path, engine: str
) -> None:
    """A request that finds the pool at its memory limit sends its pages to the backing file
    (in C on the compiled engine) and tells the maintenance thread (on_pressure)."""
    from zswapfs.engine.codec import make_codec
    from zswapfs.engine.store import BACKED

    backing = BackingFile(str(tmp_path / "b.img"), 64, persistent=False)
    store = native.make_store(
        engine, 64, make_codec("lz4"), "zsmalloc", backing=backing, mem_limit=PAGE_SIZE
    )
    woken: list[int] = []
    store.on_pressure = lambda: woken.append(1)
    if engine == "native":  # every page to the file in C: none handed to the Python path

        def no_python(*args: object) -> None:
            raise AssertionError(f"the Python path was asked for {args[0]}")

        store._write_slow = no_python  # type: ignore[method-assign]
    rnd = random.Random(6)
    data = b"".join(make_page("text", rnd) for _ in range(32))
    store.write(0, data)
    assert woken, "the maintenance thread was not told"
    assert store.pool.pages_used >= 1 and store.pool_limit_hit == store.bd_writes > 0
    assert int((store.table == BACKED).sum()) == store.bd_count == store.bd_writes
    assert store.read(0, len(data)) == data
    assert store.failed_writes == 0
    store.pool.close()
    backing.close()


@pytest.mark.parametrize(
    ("persistent", "what"), [(False, "writeback"), (True, "writeback"), (True, "flush")]
)
def test_a_page_rewritten_while_c_writes_it_back_is_not_lost(
    tmp_path: Path, persistent: bool, what: str
) -> None:
    """The C writeback (or flush) batch claims page 5 and waits for the file lock, held here,
    while the page is rewritten twice, so that the handle the batch read comes back (ABA). The
    batch must neither write its stale copy nor commit: the newest contents win (dirty in image
    mode)."""
    import threading
    import time

    from zswapfs.engine.codec import make_codec
    from zswapfs.engine.store import DIRTY

    backing = BackingFile(str(tmp_path / "b.img"), 16, persistent)
    store = native.make_store("native", 16, make_codec("lz4"), "zsmalloc", backing=backing)
    rnd = random.Random(12)
    old, mid, new = (make_page("text", rnd) for _ in range(3))
    store.write_page(5, old)
    handle = store.table.item(5)
    done: list[int] = []
    with store._file_lock:
        step = store.writeback_pages if what == "writeback" else store.flush_pages
        batch = threading.Thread(target=lambda: done.append(step([5])))
        batch.start()
        deadline = time.monotonic() + 30  # only ends a hang
        while store._inflight_count == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert store._inflight_count == 1, "the batch never claimed the page"
        store.write_page(5, mid)
        store.write_page(5, new)
        assert store.table.item(5) == handle, "the scenario needs the handle to come back"
    batch.join(timeout=30)
    assert not batch.is_alive() and done == [0]
    assert store.read_page(5) == new and backing.read_page(5) != old
    assert store.written_back_pages == 0 and store._inflight_count == 0
    if persistent:
        assert store.meta.item(5) & DIRTY
    store.close()


def test_a_failing_backing_file_is_counted_once_and_loses_nothing(tmp_path: Path) -> None:
    """Every write to the backing file fails (its descriptor swapped for a read-only one): a
    page over the limit stays in the pool over it and a writeback leaves the page where it was,
    each failure counted once (the C attempt hands the page to the Python path, which tries,
    counts and logs), and every page reads back."""
    import os

    from zswapfs.engine.codec import make_codec

    backing = BackingFile(str(tmp_path / "b.img"), 16, persistent=False)
    store = native.make_store(
        "native", 16, make_codec("lz4"), "zsmalloc", backing=backing, mem_limit=2 * PAGE_SIZE
    )
    rnd = random.Random(13)
    pages = [make_page("text", rnd) for _ in range(8)]
    store.write(0, pages[0])
    saved = os.dup(backing.fd)
    readonly = os.open(backing.path, os.O_RDONLY)
    os.dup2(readonly, backing.fd)
    try:
        store.write(PAGE_SIZE, b"".join(pages[1:]))  # the pool is at its limit after a page or two
        hit = store.pool_limit_hit
        assert hit > 0 and store.bd_errors == hit and store.bd_writes == 0
        assert store.writeback_pages([0]) == 0
        assert store.bd_errors == hit + 1 and store.written_back_pages == 0
    finally:
        os.dup2(saved, backing.fd)
        os.close(saved)
        os.close(readonly)
    assert store.read(0, 8 * PAGE_SIZE) == b"".join(pages)
    assert store.failed_writes == store.failed_reads == 0
    store.close()
