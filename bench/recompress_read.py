"""Read latency of recompressed pages against lz4 pages, in process, on a real corpus.

The corpus is stored twice (two stores, zsmalloc): one left in lz4, one settled by the
background recompression (zstd with a trained dictionary, every page idle). Then every page is
read from each store, the two alternating for --rounds rounds; the median per-page read time of
each and their ratio are printed. Reads are one 4 KiB request each (store.read, as the FUSE
path calls it), on the engine asked for (native by default: a recompressed page's first read is
decoded in C). Between rounds the read marks are cleared, as if the pages had gone idle again:
each round times first reads, not the second reads that send a page back to lz4.

    python bench/recompress_read.py CORPUS [--level 9] [--rounds 3] [--engine native|python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from zswapfs.engine import native
from zswapfs.engine.codec import PAGE_SIZE, make_codec
from zswapfs.engine.recompress import Recompression
from zswapfs.engine.store import MARK, PageStore
from zswapfs.lab.replay import load_corpus


def fill(pages: list[bytes], engine: str) -> PageStore:
    store = native.make_store(engine, len(pages), make_codec("lz4"), "zsmalloc")
    if store.engine != engine:
        raise SystemExit(f"asked for the {engine} engine, got {store.engine}")
    for pn, page in enumerate(pages):
        store.write_page(pn, page)
    return store


def read_all(store: PageStore, pages: list[bytes]) -> float:
    """Seconds a page to read every page once, a request each (checked after the timing)."""
    t0 = time.perf_counter()
    got = [store.read(pn * PAGE_SIZE, PAGE_SIZE) for pn in range(len(pages))]
    spent = (time.perf_counter() - t0) / len(pages)
    if got != pages:
        raise SystemExit("a page read back wrong")
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus")
    ap.add_argument("--level", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engine", choices=native.ENGINE_NAMES, default="native")
    args = ap.parse_args()
    data = load_corpus(args.corpus)
    pages = [data[i : i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]
    plain, settled = fill(pages, args.engine), fill(pages, args.engine)
    work = Recompression(settled, level=args.level, idle=0, duty=1.0)  # every page idle
    while work.step():
        pass
    st = settled.stats()
    times: dict[str, list[float]] = {"lz4": [], "recompressed": []}
    for _ in range(args.rounds):
        times["lz4"].append(read_all(plain, pages))
        times["recompressed"].append(read_all(settled, pages))
        with settled.lock:  # the timing reads are not a workload's: idle again
            settled.rewarm.clear()
            settled.meta &= np.uint32(0xFFFFFFFF ^ MARK)  # in place: C holds the buffer
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    print(
        json.dumps(
            {
                "corpus": args.corpus,
                "engine": args.engine,
                "pages": len(pages),
                "recompressed_pages": st["recompressed_pages"],
                "read_us": {k: [round(x * 1e6, 2) for x in v] for k, v in times.items()},
                "median_us": med,
                "ratio": med["recompressed"] / med["lz4"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
