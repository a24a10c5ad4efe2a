"""Read latency of recompressed pages against lz4 pages, in process, on a real corpus.

The corpus is stored twice (two stores, zsmalloc): one left in lz4, one settled by the
background recompression (zstd with a trained dictionary, every page idle). Then every page is
read from each store, the two alternating for --rounds rounds; the median per-page read time of
each and their ratio are printed. Reads go through PageStore.read_page, as the FUSE path does.

    python bench/recompress_read.py CORPUS [--level 9] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from zswapfs.engine.codec import PAGE_SIZE, make_codec
from zswapfs.engine.pools import make_pool
from zswapfs.engine.recompress import Recompression
from zswapfs.engine.store import PageStore
from zswapfs.lab.replay import load_corpus


def fill(pages: list[bytes]) -> PageStore:
    store = PageStore(len(pages), make_codec("lz4"), make_pool("zsmalloc", len(pages)))
    for pn, page in enumerate(pages):
        store.write_page(pn, page)
    return store


def read_all(store: PageStore, pages: list[bytes]) -> float:
    """Seconds a page to read every page once (checked after the timing)."""
    t0 = time.perf_counter()
    got = [store.read_page(pn) for pn in range(len(pages))]
    spent = (time.perf_counter() - t0) / len(pages)
    if got != pages:
        raise SystemExit("a page read back wrong")
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus")
    ap.add_argument("--level", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data = load_corpus(args.corpus)
    pages = [data[i : i + PAGE_SIZE] for i in range(0, len(data), PAGE_SIZE)]
    plain, settled = fill(pages), fill(pages)
    work = Recompression(settled, level=args.level, idle=0, duty=1.0)  # every page idle
    while work.step():
        pass
    st = settled.stats()
    times: dict[str, list[float]] = {"lz4": [], "recompressed": []}
    for _ in range(args.rounds):
        times["lz4"].append(read_all(plain, pages))
        times["recompressed"].append(read_all(settled, pages))
        settled.rewarm.clear()  # the timing reads are not a workload's reads
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    print(
        json.dumps(
            {
                "corpus": args.corpus,
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
