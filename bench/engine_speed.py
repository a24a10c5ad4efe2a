"""In-process speed of the page engines against bare codec loops over the same pages.

One run, several interleaved rounds (this 2-core shared machine drifts), medians per page of
this thread's CPU time (time.thread_time: user and kernel time, so page faults count; the time
other processes hold the core does not):
  bare compress     lz4.block.compress of every page, nothing else
  bare decompress   lz4.block.decompress of every page's payload
  python / native   a fresh store (zsmalloc, lz4) per round: every page written as one 4 KiB
                    request (store.write), then read back as one (store.read); and the same with
                    1 MiB requests (256 pages a call, as a large FUSE request); with --pools,
                    the same for each pool named (rows "native-zbud", ...)
The ratios are the targets': bare compress time / store time (goal >= 0.8) and bare decompress
time / load time (goal >= 0.7), so 1.0 means the engine costs no more than the codec alone.
The page workers are off here (--page-workers 0): they would move 1 MiB requests' compression
to other threads, whose CPU time this thread's clock does not see (bench/large_writes.py
measures what they bring, in wall time against zram).

    python bench/engine_speed.py [--pages FILE] [--rounds 5] [--synthetic 8192] [--json OUT]
                                 [--pools zsmalloc,zbud,z3fold]

FILE is a corpus of 4 KiB pages (`zswapfs capture --out FILE -- COMMAND`); without it, a
synthetic mix (zero, text-like, half random, random pages).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lz4.block

from zswapfs.engine import native
from zswapfs.engine.codec import PAGE_SIZE, make_codec, same_filled_value
from zswapfs.engine.store import PageStore
from zswapfs.lab.bench.corpus import synthetic_corpus

BIG = 256  # pages in a 1 MiB request


def timed(fn: Callable[..., object], *args: object) -> float:
    """CPU seconds of this thread (user and kernel, page faults included) spent in fn: on a
    shared machine wall time also counts the time other tenants hold the core."""
    t0 = time.thread_time()
    fn(*args)
    return time.thread_time() - t0


def store_requests(write: Callable[[int, bytes], None], requests: list[bytes]) -> None:
    offset = 0
    for data in requests:
        write(offset, data)
        offset += len(data)


def load_requests(read: Callable[[int, int], bytes], requests: list[bytes]) -> None:
    offset = 0
    for data in requests:
        read(offset, len(data))
        offset += len(data)


def engine_round(engine: str, pool: str, pages: list[bytes], blob: bytes) -> dict[str, float]:
    """Seconds for: every page stored and loaded one request each, then in 1 MiB requests."""
    step = BIG * PAGE_SIZE
    chunks = [blob[off : off + step] for off in range(0, len(blob), step)]
    out: dict[str, float] = {}
    for size, requests in (("4k", pages), ("1m", chunks)):
        store: PageStore = native.make_store(engine, len(pages), make_codec("lz4"), pool)
        assert store.engine == engine, f"asked for {engine}, got {store.engine}"
        assert store.pool.name == pool
        out[f"store_{size}"] = timed(store_requests, store.write, requests)
        out[f"load_{size}"] = timed(load_requests, store.read, requests)
        assert store.read(0, len(blob)) == blob
        store.pool.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pages", type=Path, help="a corpus file of 4 KiB pages")
    p.add_argument("--synthetic", type=int, default=8192, help="pages of the synthetic mix")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--pools", default="zsmalloc", help="comma-separated pools (default zsmalloc)")
    args = p.parse_args()
    pools = [name.strip() for name in args.pools.split(",") if name.strip()]
    # rows: "python", "native" for zsmalloc (the targets'), "native-zbud" etc. for the others
    rows = [
        (engine, pool, engine if pool == "zsmalloc" else f"{engine}-{pool}")
        for pool in pools
        for engine in ("python", "native")
    ]
    if not native.available():
        print(f"engine_speed: {native.UNAVAILABLE}", file=sys.stderr)
        return 1
    native.set_workers(0)  # every page on this thread, where its CPU time is counted
    blob = args.pages.read_bytes() if args.pages else synthetic_corpus(args.synthetic)
    blob = blob[: len(blob) - len(blob) % PAGE_SIZE]
    pages = [blob[i : i + PAGE_SIZE] for i in range(0, len(blob), PAGE_SIZE)]
    payloads = [lz4.block.compress(page, store_size=False) for page in pages]
    n = len(pages)
    same = sum(same_filled_value(page) is not None for page in pages)

    def bare_compress() -> None:
        for page in pages:
            lz4.block.compress(page, store_size=False)

    def bare_decompress() -> None:
        for payload in payloads:
            lz4.block.decompress(payload, uncompressed_size=PAGE_SIZE)

    samples: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        row = {"bare_compress": timed(bare_compress), "bare_decompress": timed(bare_decompress)}
        for engine, pool, name in rows:
            for key, secs in engine_round(engine, pool, pages, blob).items():
                row[f"{name}_{key}"] = secs
        for key, secs in row.items():
            samples.setdefault(key, []).append(secs * 1e6 / n)  # us a page
    med = {key: statistics.median(v) for key, v in samples.items()}
    source = str(args.pages) if args.pages else f"synthetic:{args.synthetic}"
    print(
        f"{n} pages from {source} ({same} same-filled), {args.rounds} interleaved rounds, "
        f"median us a page:"
    )
    print(
        f"  bare lz4 compress {med['bare_compress']:7.2f}   "
        f"bare lz4 decompress {med['bare_decompress']:7.2f}"
    )
    ratios: dict[str, float] = {}
    for _, _, name in rows:
        for size in ("4k", "1m"):
            st, ld = med[f"{name}_store_{size}"], med[f"{name}_load_{size}"]
            ratios[f"{name}_store_{size}"] = med["bare_compress"] / st
            ratios[f"{name}_load_{size}"] = med["bare_decompress"] / ld
            print(
                f"  {name:13} {size} requests: store {st:7.2f} (ratio "
                f"{ratios[f'{name}_store_{size}']:.2f}, goal 0.8)   load {ld:7.2f} (ratio "
                f"{ratios[f'{name}_load_{size}']:.2f}, goal 0.7)"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "pages": n,
                    "same_filled": same,
                    "source": source,
                    "rounds": args.rounds,
                    "us_per_page": samples,
                    "median": med,
                    "ratios": ratios,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
