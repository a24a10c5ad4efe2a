"""Model-based tests of the page store (codec + pool + index) against a dict of pages, on both
engines: the Python reference and the compiled one that ships."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.conftest import ENGINES, corrupt_page, examples, new_store
from zswapfs.engine.codec import PAGE_SIZE, fill_page, make_codec, same_filled_value
from zswapfs.engine.pools import POOL_NAMES
from zswapfs.engine.pools.zsmalloc import ZsPool
from zswapfs.engine.store import PageStore, StorageFailure, StoreFull

pytestmark = pytest.mark.unit

NPAGES = 64
KINDS = ["zero", "fill", "random", "half", "text", "sparse"]


def make_page(kind: str, rnd: random.Random) -> bytes:
    if kind == "zero":
        return bytes(PAGE_SIZE)
    if kind == "fill":
        return fill_page(rnd.getrandbits(64) | 1)
    if kind == "random":
        return rnd.randbytes(PAGE_SIZE)
    if kind == "half":
        return rnd.randbytes(PAGE_SIZE // 2) + bytes(PAGE_SIZE // 2)
    if kind == "text":
        words = [b"swap", b"page", b"zram", b"pool", b"class", b"handle", b" ", b"\n"]
        return b"".join(rnd.choice(words) for _ in range(1500))[:PAGE_SIZE].ljust(PAGE_SIZE, b"#")
    page = bytearray(PAGE_SIZE)
    for _ in range(rnd.randint(1, 30)):
        page[rnd.randrange(PAGE_SIZE)] = rnd.randrange(1, 256)
    return bytes(page)


class StoreMachine(RuleBasedStateMachine):
    engine = "python"
    pool_name = "zsmalloc"
    codec_spec = "lz4"

    def __init__(self) -> None:
        super().__init__()
        self.store = new_store(self.engine, NPAGES, self.codec_spec, self.pool_name)
        self.model: dict[int, bytes] = {}
        self.rnd = random.Random(1)

    @rule(pn=st.integers(0, NPAGES - 1), kind=st.sampled_from(KINDS))
    def write(self, pn: int, kind: str) -> None:
        page = make_page(kind, self.rnd)
        self.store.write_page(pn, page)
        self.model[pn] = page

    @rule(pn=st.integers(0, NPAGES - 1), off=st.integers(0, PAGE_SIZE - 1), n=st.integers(1, 600))
    def write_partial(self, pn: int, off: int, n: int) -> None:
        n = min(n, PAGE_SIZE - off)
        data = self.rnd.randbytes(n)
        self.store.write(pn * PAGE_SIZE + off, data)
        old = self.model.get(pn, bytes(PAGE_SIZE))
        self.model[pn] = old[:off] + data + old[off + n :]

    @rule(pn=st.integers(0, NPAGES - 1), count=st.integers(1, 8))
    def read(self, pn: int, count: int) -> None:
        count = min(count, NPAGES - pn)
        want = b"".join(self.model.get(pn + i, bytes(PAGE_SIZE)) for i in range(count))
        assert self.store.read(pn * PAGE_SIZE, count * PAGE_SIZE) == want

    @rule(off=st.integers(0, NPAGES * PAGE_SIZE - 1), n=st.integers(1, 3 * PAGE_SIZE))
    def write_range(self, off: int, n: int) -> None:
        """Any byte range, as one request: a partial head, whole pages, a partial tail."""
        n = min(n, NPAGES * PAGE_SIZE - off)
        data = self.rnd.randbytes(n) if self.rnd.random() < 0.5 else bytes(n)
        self.store.write(off, data)
        image = bytearray(b"".join(self.model.get(i, bytes(PAGE_SIZE)) for i in range(NPAGES)))
        image[off : off + n] = data
        for pn in range(off // PAGE_SIZE, (off + n - 1) // PAGE_SIZE + 1):
            self.model[pn] = bytes(image[pn * PAGE_SIZE : (pn + 1) * PAGE_SIZE])

    @rule(off=st.integers(0, NPAGES * PAGE_SIZE - 1), n=st.integers(0, 3 * PAGE_SIZE))
    def discard(self, off: int, n: int) -> None:
        """A punched range reads back as zeros; whole pages in it are no longer stored."""
        n = min(n, NPAGES * PAGE_SIZE - off)
        self.store.discard(off, n)
        image = bytearray(b"".join(self.model.get(i, bytes(PAGE_SIZE)) for i in range(NPAGES)))
        image[off : off + n] = bytes(n)
        for pn in range(off // PAGE_SIZE, (off + n - 1) // PAGE_SIZE + 1 if n else 0):
            whole = off <= pn * PAGE_SIZE and (pn + 1) * PAGE_SIZE <= off + n
            if whole:
                self.model.pop(pn, None)
            else:
                self.model[pn] = bytes(image[pn * PAGE_SIZE : (pn + 1) * PAGE_SIZE])

    @invariant()
    def accounting(self) -> None:
        s = self.store
        assert s.stored_pages == len(self.model)
        same = sum(1 for p in self.model.values() if same_filled_value(p) is not None)
        assert s.same_pages == same
        assert s.compr_data_size <= (len(self.model) - same) * PAGE_SIZE
        assert s.pool.objects == len(self.model) - same
        assert s.huge_pages <= s.pool.objects

    def teardown(self) -> None:
        for pn, page in self.model.items():
            assert self.store.read_page(pn) == page
        self.store.pool.close()


for _engine in ENGINES:
    for _pool in POOL_NAMES:
        for _codec in ("lz4", "zstd:3", "none"):
            _name = f"Test{_engine.title()}{_pool.title()}{_codec.replace(':', '').title()}Store"
            _attrs = {"engine": _engine, "pool_name": _pool, "codec_spec": _codec}
            _cls = type(_name, (StoreMachine,), _attrs)
            _cls.TestCase.settings = settings(
                max_examples=examples(40), stateful_step_count=50, deadline=None
            )
            globals()[_name] = _cls.TestCase


def test_figures_of_a_known_mix(engine: str) -> None:
    store = new_store(engine, 100)
    rnd = random.Random(3)
    for pn in range(10):
        store.write_page(pn, bytes(PAGE_SIZE))
    for pn in range(10, 20):
        store.write_page(pn, rnd.randbytes(PAGE_SIZE))
    for pn in range(20, 40):
        store.write_page(pn, make_page("text", rnd))
    assert store.stored_pages == 40
    assert store.same_pages == 10
    assert store.huge_pages == 10
    st_ = store.stats()
    assert st_["orig_data_size"] == 40 * PAGE_SIZE
    assert st_["compr_data_size"] < 30 * PAGE_SIZE
    assert st_["mem_used_total"] <= 30 * PAGE_SIZE  # 10 raw pages and 20 compressed ones
    # overwriting a huge page with zeros gives its memory back
    before = store.pool.pages_used
    store.write_page(10, bytes(PAGE_SIZE))
    assert store.pool.pages_used == before - 1 and store.huge_pages == 9


def test_pool_full_keeps_old_contents(engine: str) -> None:
    if engine == "python":
        store = PageStore(64, make_codec("none"), ZsPool(8))  # an arena of 8 pages
    else:
        from zswapfs.engine.native import NativeStore, NativeZsPool

        store = NativeStore(64, make_codec("none"), NativeZsPool(8))
    pages = {}
    with pytest.raises(StoreFull):
        for pn in range(64):
            page = os.urandom(PAGE_SIZE)
            store.write_page(pn, page)
            pages[pn] = page
    assert store.failed_writes == 1
    full_at = len(pages)
    store_pages = dict(pages)
    with pytest.raises(StoreFull):
        store.write_page(0, os.urandom(PAGE_SIZE))  # a pool with no room: the old page stays
    for pn, page in store_pages.items():
        assert store.read_page(pn) == page
    assert store.read_page(full_at) == bytes(PAGE_SIZE)


def test_corrupt_object_is_storage_failure(engine: str) -> None:
    store = new_store(engine, 4)
    store.write_page(0, make_page("text", random.Random(1)))
    corrupt_page(store, 0)
    with pytest.raises(StorageFailure):
        store.read_page(0)
    assert store.failed_reads == 1


@pytest.mark.parametrize("pool", POOL_NAMES)
def test_a_full_image_can_be_rewritten(engine: str, pool: str) -> None:
    """Every page incompressible (one object a pool page), then every page rewritten: the new
    object is placed before the old one is freed, so the pool needs room to spare."""
    npages = 256
    store = new_store(engine, npages, "lz4", pool)
    for _ in range(2):
        pages = [os.urandom(PAGE_SIZE) for _ in range(npages)]
        for pn, page in enumerate(pages):
            store.write_page(pn, page)
    for pn, page in enumerate(pages):
        assert store.read_page(pn) == page


@pytest.mark.parametrize(
    ("offset", "size"),
    [
        (2**64 - 2048, 4096),  # the sum wraps to a small number in 64 bits
        (2**64 - 1, 1),
        (2**63, PAGE_SIZE),
        (2**64 + PAGE_SIZE, PAGE_SIZE),  # not even a 64-bit number
        (-PAGE_SIZE, PAGE_SIZE),
        (256 * PAGE_SIZE, 1),  # one byte past the end
        (255 * PAGE_SIZE, 2 * PAGE_SIZE),  # straddles the end
    ],
)
def test_a_range_outside_the_image_is_refused(engine: str, offset: int, size: int) -> None:
    """The store's own entry points refuse a byte range that does not lie inside the image with
    a clear error, whatever the offset: one near 2**64 is neither wrapped nor cut to 32 bits
    (which on the compiled engine once wrote far outside its index)."""
    store = new_store(engine, 256)
    store.write(0, b"\x01" * PAGE_SIZE)
    with pytest.raises(ValueError, match="past the end of the image"):
        store.write(offset, b"x" * size)
    with pytest.raises(ValueError, match="past the end of the image"):
        store.read(offset, size)
    assert store.stored_pages == 1 and store.read(0, PAGE_SIZE) == b"\x01" * PAGE_SIZE
    assert store.read(256 * PAGE_SIZE, 0) == b""  # an empty range at the very end is inside
    store.pool.close()


@pytest.mark.parametrize("persistent", [False, True])
def test_a_discard_frees_whole_pages_and_zeroes_the_rest(
    engine: str, persistent: bool, tmp_path: Any
) -> None:
    """Swap mode: the whole pages of a discarded range leave the pool (counted in notify_free,
    once a page as zram counts) and read as zeros, the partial ones at either end are zeroed.
    Image mode: the punched pages read as zeros after a flush and a reopen of the backing file,
    though it held their older contents."""
    from zswapfs.engine.backing import BackingFile

    path = str(tmp_path / "image.img")
    npages = 64
    backing = BackingFile(path, npages, persistent) if persistent else None
    store = new_store(engine, npages, backing=backing)
    rnd = random.Random(7)
    pages = [make_page("text", rnd) for _ in range(npages)]
    store.write(0, b"".join(pages))
    if persistent:
        store.flush()  # the file holds every page: the discard must win over it
    used = store.pool.pages_used
    store.discard(10 * PAGE_SIZE + 100, 20 * PAGE_SIZE)  # pages 11..29 whole, 10 and 30 in part
    expect = bytearray(b"".join(pages))
    expect[10 * PAGE_SIZE + 100 : 30 * PAGE_SIZE + 100] = bytes(20 * PAGE_SIZE)
    assert store.read(0, npages * PAGE_SIZE) == bytes(expect)
    assert store.notify_free == 19 and store.discards == 1
    assert store.stats()["notify_free"] == 19
    if persistent:
        assert store.same_pages == 19  # zero pages, newer than the file
        store.flush()
        store.close()
        again = new_store(engine, npages, backing=BackingFile(path, npages, True))
        assert again.read(0, npages * PAGE_SIZE) == bytes(expect)
        again.close()
    else:
        assert store.stored_pages == store.pool.objects == npages - 19
        store.pool.compact()
        assert store.pool.pages_used < used
        store.discard(0, npages * PAGE_SIZE)
        assert store.stored_pages == 0 and store.pool.objects == 0
        assert store.read(0, npages * PAGE_SIZE) == bytes(npages * PAGE_SIZE)
        store.close()
