"""In-process cost of overwriting pages, per engine and pool: the case where every page fills a
pool page of its own (incompressible pages on every pool; pages that compress to just over half
a page on zbud and z3fold), so that an overwrite frees one pool page and takes another.

A fresh store per engine, pool and kind of page: --pages pages written once, then --overwrites
random overwrites; microseconds a page of this thread's CPU time (kernel time included: the
page faults and hole punches are the point).

    python bench/overwrite_speed.py [--pages 16384] [--overwrites 30000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

from zswapfs.engine import native
from zswapfs.engine.codec import PAGE_SIZE, make_codec
from zswapfs.engine.pools import POOL_NAMES


def overwrite_cost(engine: str, pool: str, src: list[bytes], npages: int, count: int) -> float:
    store = native.make_store(engine, npages, make_codec("lz4"), pool)
    if store.engine != engine:
        raise SystemExit(f"asked for the {engine} engine, got {store.engine}")
    for pn in range(npages):
        store.write(pn * PAGE_SIZE, src[pn % len(src)])
    rnd = random.Random(1)
    order = [rnd.randrange(npages) for _ in range(count)]
    t0 = time.thread_time()
    for i, pn in enumerate(order):
        store.write(pn * PAGE_SIZE, src[i % len(src)])
    spent = time.thread_time() - t0
    store.pool.close()
    return spent / count * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pages", type=int, default=16384)
    p.add_argument("--overwrites", type=int, default=30000)
    args = p.parse_args()
    native.set_workers(0)  # one thread's CPU time
    kinds = {
        "half": [os.urandom(PAGE_SIZE // 2) + bytes(PAGE_SIZE // 2) for _ in range(4096)],
        "random": [os.urandom(PAGE_SIZE) for _ in range(1024)],
    }
    engines = ["native", "python"] if native.available() else ["python"]
    print(f"{args.overwrites} overwrites of {args.pages} pages, us a page (thread CPU time):")
    for engine in engines:
        for pool in POOL_NAMES:
            costs = [
                f"{kind} {overwrite_cost(engine, pool, src, args.pages, args.overwrites):6.2f}"
                for kind, src in kinds.items()
            ]
            print(f"  {engine:6} {pool:8}  " + "   ".join(costs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
