"""Replay a page corpus through a store in-process: the figures a pool strategy is judged on.

No FUSE here: the same store, codec and pool code the daemon runs, driven directly, so density
and per-page cost are measured without the FUSE round trip. The engine is the daemon's default,
the compiled one ("native"), unless asked otherwise; each result names the engine it measured.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zswapfs.engine.codec import PAGE_SIZE, make_codec
from zswapfs.engine.native import make_store
from zswapfs.engine.recompress import Recompression
from zswapfs.engine.store import PageStore

#: pages one recompression step takes while settling: small enough to draw density over time
SETTLE_STEP_PAGES = 1024


def load_corpus(path: str | Path) -> bytes:
    data = Path(path).read_bytes()
    usable = len(data) // PAGE_SIZE * PAGE_SIZE
    if usable == 0:
        raise ValueError(f"{path}: no whole 4 KiB page in it")
    return data[:usable]


def replay_store(engine: str, npages: int, pool: str, codec: str) -> PageStore:
    """A store for a replay on *engine* ("native", the daemon's, or "python"); make_store falls
    back to the Python engine when the compiled one is missing, and the result says which ran."""
    return make_store(engine, npages, make_codec(codec), pool)


@dataclass
class ReplayResult:
    pool: str
    codec: str
    pages: int
    orig_data_size: int
    compr_data_size: int
    mem_used_total: int
    metadata_bytes: int
    same_pages: int
    huge_pages: int
    store_pages_per_s: float
    load_pages_per_s: float
    #: after overwriting a share of the pages with other pages of the corpus and freeing some
    churn_mem_used: int = 0
    compacted_mem_used: int = 0
    compact_seconds: float = 0.0
    #: after the background recompression and dedup settled (every page idle), with compaction
    settled_density: float = 0.0
    settle_seconds: float = 0.0
    #: (seconds into settling, density) while the loop works
    settle_timeline: list[tuple[float, float]] = field(default_factory=list)
    recompressed_pages: int = 0
    dict_bytes: int = 0
    pages_deduped: int = 0
    #: the engine that ran: "native" (the daemon's default) or "python" (the reference)
    engine: str = "native"

    @property
    def density(self) -> float:
        """orig_data_size / (pool memory + metadata)."""
        return self.orig_data_size / max(1, self.mem_used_total + self.metadata_bytes)

    @property
    def pool_density(self) -> float:
        """orig_data_size / pool memory (zram's mm_stat view, metadata not counted)."""
        return self.orig_data_size / max(1, self.mem_used_total)

    @property
    def efficiency(self) -> float:
        """Allocator efficiency: compressed bytes / pool memory."""
        return self.compr_data_size / max(1, self.mem_used_total)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(density=self.density, pool_density=self.pool_density, efficiency=self.efficiency)
        return out


def stats_density(st: Mapping[str, Any]) -> float:
    """orig_data_size / (mem_used_total + metadata_bytes) of a store's stats, a mount's, or
    kzram.measure()'s (the same names)."""
    return float(st["orig_data_size"] / max(1, st["mem_used_total"] + st["metadata_bytes"]))


def density(store: PageStore) -> float:
    return stats_density(store.stats())


def settle(store: PageStore, result: ReplayResult, level: int) -> None:
    """Every page idle: run the recompression loop (default settings but *level*) and compaction
    as the maintenance thread would, until a step changes nothing; record how long it took,
    the density over that time and after it."""
    # idle 0: the writes ended long enough ago that every page counts as idle
    work = Recompression(store, level=level, idle=0, pages_per_step=SETTLE_STEP_PAGES, duty=1.0)
    t0 = time.perf_counter()
    timeline = [(0.0, density(store))]
    while work.step():
        store.pool.compact()
        timeline.append((time.perf_counter() - t0, density(store)))
    store.pool.compact()
    result.settle_seconds = time.perf_counter() - t0
    timeline.append((result.settle_seconds, density(store)))
    result.settle_timeline = [(round(s, 4), round(d, 4)) for s, d in timeline]
    result.settled_density = density(store)
    st = store.stats()
    result.recompressed_pages = st["recompressed_pages"]
    result.dict_bytes = st["dict_bytes"]
    result.pages_deduped = st["pages_deduped"]


def replay(
    corpus: bytes,
    pool: str,
    codec: str,
    churn: float = 0.0,
    seed: int = 1,
    recompress: str | None = None,
    engine: str = "native",
) -> ReplayResult:
    """Store every page of *corpus*, read them all back (checked), optionally churn: overwrite
    a *churn* share of pages with other corpus pages, then compact; and with *recompress*
    ("zstd:LEVEL"), store the corpus again in a fresh store, let the background recompression
    settle and read everything back again. *engine*: the daemon's compiled engine by default."""
    npages = len(corpus) // PAGE_SIZE
    store = replay_store(engine, npages, pool, codec)
    pages = [corpus[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(npages)]
    t0 = time.perf_counter()
    for pn, page in enumerate(pages):
        store.write_page(pn, page)
    t1 = time.perf_counter()
    for pn, page in enumerate(pages):
        if store.read_page(pn) != page:
            raise AssertionError(f"{pool}/{codec}: page {pn} read back wrong")
    t2 = time.perf_counter()
    st = store.stats()
    result = ReplayResult(
        pool=pool,
        codec=codec,
        pages=npages,
        orig_data_size=st["orig_data_size"],
        compr_data_size=st["compr_data_size"],
        mem_used_total=st["mem_used_total"],
        metadata_bytes=st["metadata_bytes"],
        same_pages=st["same_pages"],
        huge_pages=st["huge_pages"],
        store_pages_per_s=npages / max(t1 - t0, 1e-9),
        load_pages_per_s=npages / max(t2 - t1, 1e-9),
        engine=store.engine,
    )
    if churn > 0:
        rnd = random.Random(seed)
        victims = rnd.sample(range(npages), int(npages * churn))
        for pn in victims:  # a swap workload rewrites slots with unrelated pages
            pages[pn] = pages[rnd.randrange(npages)]
            store.write_page(pn, pages[pn])
        result.churn_mem_used = store.pool.pages_used * PAGE_SIZE
        t3 = time.perf_counter()
        store.pool.compact()
        result.compact_seconds = time.perf_counter() - t3
        result.compacted_mem_used = store.pool.pages_used * PAGE_SIZE
        for pn, page in enumerate(pages):
            if store.read_page(pn) != page:
                raise AssertionError(f"{pool}/{codec}: page {pn} wrong after churn and compaction")
    store.pool.close()
    if recompress:  # on the corpus as it is (the churn above copies pages: duplicates)
        store = replay_store(engine, npages, pool, codec)
        pages = [corpus[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(npages)]
        for pn, page in enumerate(pages):
            store.write_page(pn, page)
        settle(store, result, int(recompress.partition(":")[2]))
        for pn, page in enumerate(pages):
            if store.read_page(pn) != page:
                raise AssertionError(f"{pool}/{codec}: page {pn} wrong after recompression")
        store.pool.close()
    return result
