"""Replay a page corpus through a store in-process: the figures a pool strategy is judged on.

No FUSE here: the same store, codec and pool code the daemon runs, driven directly, so density
and per-page cost are measured without the FUSE round trip.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zswapfs.engine.codec import PAGE_SIZE, make_codec
from zswapfs.engine.pools import make_pool
from zswapfs.engine.store import PageStore


def load_corpus(path: str | Path) -> bytes:
    data = Path(path).read_bytes()
    usable = len(data) // PAGE_SIZE * PAGE_SIZE
    if usable == 0:
        raise ValueError(f"{path}: no whole 4 KiB page in it")
    return data[:usable]


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


def replay(corpus: bytes, pool: str, codec: str, churn: float = 0.0, seed: int = 1) -> ReplayResult:
    """Store every page of *corpus*, read them all back (checked), and optionally churn:
    overwrite a *churn* share of pages with other corpus pages, then compact."""
    npages = len(corpus) // PAGE_SIZE
    store = PageStore(npages, make_codec(codec), make_pool(pool, npages))
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
    return result
