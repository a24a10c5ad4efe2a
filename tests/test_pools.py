"""Model-based tests of every pool: random alloc/free/read/compact against a dict model."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from tests.conftest import pool_resident
from zswapfs.engine.arena import PAGE_SIZE
from zswapfs.engine.pools import POOL_NAMES, Pool, PoolFull, buddy, make_pool
from zswapfs.engine.pools import zsmalloc as zs

pytestmark = pytest.mark.unit

CLASSES, _, HUGE_CLASS_SIZE = zs.build_classes(zs.DEFAULT_CHAIN)
#: sizes at and around every class edge (payload = slot - header), plus the page itself
EDGES = sorted(
    {
        s
        for c in CLASSES
        for s in (c.size - zs.HDR - 1, c.size - zs.HDR, c.size - zs.HDR + 1)
        if 1 <= s <= PAGE_SIZE
    }
    | {1, 2, 64, 128, HUGE_CLASS_SIZE - zs.HDR, PAGE_SIZE - 1, PAGE_SIZE}
)

sizes = st.one_of(st.integers(1, PAGE_SIZE), st.sampled_from(EDGES), st.integers(1, 300))


def check_zsmalloc(pool: zs.ZsPool, model: dict[int, bytes]) -> None:
    inuse: dict[int, int] = {}
    for handle, data in model.items():
        loc = pool.handles.get(handle)
        assert loc & 0x1FFF == len(data)
        cls = pool.class_for(len(data))
        if loc & zs.HUGE_LOC:
            assert cls.huge
            pn = (loc >> 13) & 0xFFFFFFFF
            assert pool._page_owner[pn] == zs.HUGE_OWNER | handle
        else:
            z = loc >> 24
            assert pool._zs_class[z] == cls.index, "object left its size class"
            assert len(data) + zs.HDR <= cls.size
            assert ((loc >> 13) & 0x7FF) < cls.objs
            inuse[z] = inuse.get(z, 0) + 1
    for z, n in inuse.items():
        assert pool._zs_inuse[z] == n
    for cls in pool.classes:
        if not cls.huge:
            assert cls.inuse == sum(n for z, n in inuse.items() if pool._zs_class[z] == cls.index)
    # every pool page in use belongs to a zspage or a huge object
    owned = sum(c.zspages * c.pages for c in pool.classes)
    assert owned == pool.pages_used


def check_buddy(pool: buddy.BuddyPool, model: dict[int, bytes]) -> None:
    per_page: dict[int, list[tuple[int, int]]] = {}
    for handle, data in model.items():
        loc = pool.handles.get(handle)
        pn, bud = loc >> 15, (loc >> 13) & 3
        assert loc & 0x1FFF == len(data)
        assert pool._handle[bud][pn] == handle, "reverse map disagrees with the handle"
        n = pool._chunks[bud][pn]
        assert n == buddy.chunks_for(len(data))
        start = pool._first_chunk(pn, bud)
        per_page.setdefault(pn, []).append((start, start + n))
    limit = 3 if pool.three else 2
    for spans in per_page.values():
        assert len(spans) <= limit, f"{len(spans)} objects in one {pool.name} page"
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert end <= start, "buddies overlap"
        assert spans[-1][1] <= buddy.NCHUNKS
    assert len(per_page) == pool.pages_used, "a pool page holds no object"


CHECKS = {"zsmalloc": check_zsmalloc, "zbud": check_buddy, "z3fold": check_buddy}


class PoolMachine(RuleBasedStateMachine):
    pool_name = "zsmalloc"
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.pool: Pool = make_pool(self.pool_name, 4096)
        self.model: dict[int, bytes] = {}
        self.rnd = random.Random(0)

    def payload(self, size: int) -> bytes:
        return self.rnd.randbytes(size)

    @rule(target=handles, size=sizes)
    def alloc(self, size: int) -> int:
        data = self.payload(size)
        handle = self.pool.store(data)
        assert handle not in self.model and handle >= 3
        self.model[handle] = data
        return handle

    @rule(handle=consumes(handles))
    def free(self, handle: int) -> None:
        self.pool.free(handle)
        del self.model[handle]

    @rule(handle=handles)
    def read(self, handle: int) -> None:
        assert self.pool.read(handle) == self.model[handle]

    @precondition(lambda self: bool(self.model))
    @rule()
    def compact(self) -> None:
        before = self.pool.pages_used
        freed = self.pool.compact()
        assert self.pool.pages_used == before - freed
        for handle, data in self.model.items():
            assert self.pool.read(handle) == data

    @rule(budget=st.integers(1, 5))
    def compact_step(self, budget: int) -> None:
        before = self.pool.pages_used
        step = self.pool.compact_step(budget)
        assert step >= -1
        assert self.pool.pages_used == before - max(step, 0)

    @rule(down=st.integers(0, 3))
    def migrate(self, down: int) -> None:
        """Move a page near the top of the arena into a hole below, if there is one."""
        arena = self.pool.arena
        pn = arena.high_water - 1 - down
        if pn < 0 or arena.is_free(pn):
            assert not self.pool.migrate_page(max(pn, 0)) or pn < 0
            return
        used = arena.pages_used
        had_hole = arena._lowest_free(pn) >= 0
        moved = self.pool.migrate_page(pn)
        assert moved == had_hole
        assert arena.pages_used == used
        if moved:
            assert arena.is_free(pn)

    @invariant()
    def accounting(self) -> None:
        assert self.pool.objects == len(self.model)
        stored = sum(len(d) for d in self.model.values())
        assert self.pool.bytes_stored == stored
        assert self.pool.pages_used * PAGE_SIZE >= stored
        CHECKS[self.pool_name](self.pool, self.model)  # type: ignore[operator]

    def teardown(self) -> None:
        for handle in list(self.model):
            self.pool.free(handle)
        assert self.pool.pages_used == 0, "freeing everything must return every page"
        self.pool.close()


for _name in POOL_NAMES:
    _cls = type(f"Test{_name.title()}Machine", (PoolMachine,), {"pool_name": _name})
    _cls.TestCase.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)
    globals()[f"Test{_name.title()}Machine"] = _cls.TestCase


@pytest.mark.parametrize("name", POOL_NAMES)
def test_churn_then_compact_returns_memory(name: str) -> None:
    """Fill, free a random 70%, compact: pages fall and every survivor reads back."""
    pool = make_pool(name, 20000)
    rnd = random.Random(7)
    model = {}
    for _ in range(6000):
        data = rnd.randbytes(rnd.randint(200, 1500))
        model[pool.store(data)] = data
    for handle in rnd.sample(sorted(model), k=4200):
        pool.free(handle)
        del model[handle]
    before = pool.pages_used
    freed = pool.compact()
    assert freed > 0 and pool.pages_used == before - freed
    stored = sum(len(d) for d in model.values())
    if name == "zsmalloc":
        # after compaction no class wastes a whole zspage: usage is close to the bytes stored
        assert pool.pages_used * PAGE_SIZE < stored * 1.25 + 64 * 8 * PAGE_SIZE
    else:
        # objects of 4..24 chunks: compaction packs pages to their object limit
        per_page = 3 if name == "z3fold" else 2
        assert pool.pages_used <= len(model) / per_page * 1.1 + 2
    for handle, data in model.items():
        assert pool.read(handle) == data
    pool.close()


@pytest.mark.parametrize("name", POOL_NAMES)
def test_migration_empties_top_segments(name: str) -> None:
    """Free the lower half of the objects: migrating the top pages down lets whole segments go."""
    from zswapfs.engine.arena import SEG_PAGES

    pool = make_pool(name, 20000)
    rnd = random.Random(3)
    handles = [
        (pool.store(d), d) for d in (rnd.randbytes(rnd.randint(1000, 4096)) for _ in range(3000))
    ]
    for h, _ in handles[:1500]:
        pool.free(h)
    pool.compact()
    arena = pool.arena
    mapped_before, hw_before = arena.segments_mapped, arena.high_water
    moved = 0
    while arena.holes and pool.migrate_page(arena.high_water - 1):
        moved += 1
    assert moved > 0 and arena.holes == 0
    assert arena.high_water == arena.pages_used < hw_before
    released = arena.release_empty_segments()
    assert released >= (hw_before - arena.high_water) // SEG_PAGES - 1 and released > 0
    assert arena.segments_mapped == mapped_before - released
    for h, d in handles[1500:]:
        assert pool.read(h) == d
    assert pool.stats()["migrated_pages"] == moved


@pytest.mark.parametrize("name", POOL_NAMES)
def test_pool_full_is_clean(name: str) -> None:
    pool = make_pool(name, 16, max_chain=1)  # 16 pages and the pool's headroom
    handles = []
    with pytest.raises(PoolFull):
        for _ in range(10000):
            handles.append(pool.store(os.urandom(PAGE_SIZE)))
    assert pool.objects == len(handles)
    for h in handles:
        pool.free(h)
    assert pool.pages_used == 0


@pytest.mark.parametrize("name", POOL_NAMES)
def test_bad_sizes_rejected(name: str) -> None:
    pool = make_pool(name, 16)
    for size in (0, PAGE_SIZE + 1):
        with pytest.raises(ValueError):
            pool.store(bytes(size))
    assert pool.objects == 0 and pool.pages_used == 0


def test_class_geometry_matches_kernel_rules() -> None:
    sizes = [c.size for c in CLASSES]
    assert max(sizes) == PAGE_SIZE and min(sizes) == zs.MIN_SIZE
    assert all(s % zs.DELTA == 0 for s in sizes)
    for c in CLASSES:
        assert 1 <= c.pages <= zs.DEFAULT_CHAIN
        assert c.objs == c.pages * PAGE_SIZE // c.size
    # neighbouring classes with the same geometry were merged (the kernel merges neighbours only)
    ordered = sorted(CLASSES, key=lambda c: c.size)
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert (a.pages, a.objs) != (b.pages, b.objs)
    assert zs.best_pages_per_zspage(3072, 8) == 3  # the worked example in the module header


def _shmem() -> int:
    """This process's resident shared memory (RssShmem): the arenas' memfd pages."""
    return pool_resident(os.getpid())


@pytest.mark.parametrize("engine", ["python", "native"])
def test_freed_pages_stay_warm_up_to_a_bound(engine: str) -> None:
    """The last WARM_MAX pages freed stay resident for the next allocation (no punch, no
    refault); the rest go back to the kernel at once, and release_segments returns them all."""
    from zswapfs.engine import native
    from zswapfs.engine.arena import WARM_MAX

    if engine == "native" and not native.available():
        pytest.skip(str(native.UNAVAILABLE))
    pool = make_pool("zbud", 2048) if engine == "python" else native.NativeZbudPool(2048)
    rnd = random.Random(4)
    base = _shmem()
    handles = [pool.store(rnd.randbytes(PAGE_SIZE)) for _ in range(1024)]  # a pool page each
    full = _shmem() - base
    assert full >= 1024 * PAGE_SIZE
    for h in handles[1:]:
        pool.free(h)
    assert pool.stats()["warm_pages"] == WARM_MAX
    kept = _shmem() - base  # the live page, the warm ones, the rest of the mapped segment
    assert full - kept >= (1023 - WARM_MAX) * PAGE_SIZE
    # the lowest free page is taken, warm or not: page 1 here, the first freed, so warm
    again = pool.store(rnd.randbytes(PAGE_SIZE))
    assert pool.stats()["warm_pages"] == WARM_MAX - 1
    pool.free(again)
    pool.release_segments()
    assert pool.stats()["warm_pages"] == 0
    assert _shmem() - base <= kept - WARM_MAX * PAGE_SIZE
    pool.close()
