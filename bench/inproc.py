"""In-process timings of the page engines under pyperf, against bare codec loops on the same pages.

Every figure is microseconds a page of this thread's CPU time (time.thread_time: user and
kernel time, so page faults and hole punches count; the time other tenants hold the core does
not), on a corpus of real captured memory (py_dicts):
    bare lz4 / zstd:3 compress, decompress   the codec library alone (the baseline)
    {engine} {pool} store / load 4k          every page written as one 4 KiB request, then
                                             read back as one (a fresh store for each pass)
    native zsmalloc store / load 1m          the same in 1 MiB requests (256 pages a call)
    native zsmalloc zstd:3 store / load 4k   the store on zstd level 3
    native {pool} overwrite                  random overwrites of incompressible pages (each
                                             frees a pool page and takes another)
    native zsmalloc writeback / read back    pages written back to a backing file, and read
                                             from it
    native zsmalloc read lz4 / recompressed  first reads of pages left in lz4, and of pages
                                             the background recompression settled (zstd:9
                                             with a trained dictionary)
The page workers are off (every page on the timed thread). pyperf runs each benchmark in
worker processes with calibrated loops; `python -m pyperf compare_to OLD NEW` (or
`python -m bench compare`) tells two builds apart with a significance test.

As a script this file is pyperf's (`python bench/inproc.py --corpus FILE -o OUT.json`); as a
module of the suite it runs that script and turns its JSON into a suite result.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NAME = "inproc"
QUESTION = "what a page costs in the engine itself, against the bare codec on the same pages"
BASELINE = "bare lz4 compress"
NEEDS: tuple[str, ...] = ()
ROUNDS = 1  # pyperf's own worker processes and values make the repetitions
UNITS = {"us per page": "us"}
PAGE = 4096
POOLS = ("zsmalloc", "zbud", "z3fold")


# -- the pyperf script ----------------------------------------------------------------------------


def _benchmarks(corpus: Path) -> dict[str, Callable[[int], float]]:
    """name: time_func(loops) -> thread seconds for loops passes over the corpus."""
    import lz4.block
    import numpy as np
    import zstandard

    from zswapfs.engine import native
    from zswapfs.engine.backing import BackingFile
    from zswapfs.engine.codec import make_codec
    from zswapfs.engine.recompress import Recompression
    from zswapfs.engine.store import MARK

    native.set_workers(0)
    blob = corpus.read_bytes()
    blob = blob[: len(blob) // PAGE * PAGE]
    pages = [blob[i : i + PAGE] for i in range(0, len(blob), PAGE)]
    n = len(pages)
    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    lz4_payloads = [lz4.block.compress(p, store_size=False) for p in pages]
    zstd_payloads = [zc.compress(p) for p in pages]
    tmp = Path(tempfile.mkdtemp(prefix="zswapfs-inproc-"))
    clock = time.thread_time

    def passes(
        fn: Callable[[], object], setup: Callable[[], object] | None = None
    ) -> Callable[[int], float]:
        def time_func(loops: int) -> float:
            spent = 0.0
            for _ in range(loops):
                if setup:
                    setup()
                t0 = clock()
                fn()
                spent += clock() - t0
            return spent

        return time_func

    def store_of(engine: str, pool: str, codec: str = "lz4", **kw: Any) -> Any:
        store = native.make_store(engine, n, make_codec(codec), pool, **kw)
        if store.engine != engine:
            raise SystemExit(f"asked for the {engine} engine, got {store.engine}")
        return store

    out: dict[str, Callable[[int], float]] = {}

    def each(fn: Callable[[bytes], object], items: list[bytes]) -> Callable[[], None]:
        """A loop calling fn on every item, each result dropped at once (as the engine drops
        its buffers): keeping them all would time the heap's growth and page faults too."""

        def loop() -> None:
            for item in items:
                fn(item)

        return loop

    out["bare lz4 compress"] = passes(
        each(lambda p: lz4.block.compress(p, store_size=False), pages)
    )
    out["bare lz4 decompress"] = passes(
        each(lambda x: lz4.block.decompress(x, uncompressed_size=PAGE), lz4_payloads)
    )
    out["bare zstd:3 compress"] = passes(each(zc.compress, pages))
    out["bare zstd:3 decompress"] = passes(
        each(lambda x: zd.decompress(x, max_output_size=PAGE), zstd_payloads)
    )

    def store_load(engine: str, pool: str, codec: str, step: int) -> None:
        size = step * PAGE
        chunks = [blob[o : o + size] for o in range(0, len(blob), size)]
        state: dict[str, Any] = {}

        def fresh() -> None:
            if "store" in state:
                state.pop("store").pool.close()
            state["store"] = store_of(engine, pool, codec)

        def write_all() -> None:
            st, off = state["store"], 0
            for c in chunks:
                st.write(off, c)
                off += len(c)

        def filled() -> None:
            if "loaded" not in state:
                fresh()
                write_all()
                if state["store"].read(0, len(blob)) != blob:
                    raise SystemExit(f"{engine} {pool} {codec}: a page read back wrong")
                state["loaded"] = True

        def read_all() -> None:
            st, off = state["store"], 0
            for c in chunks:
                st.read(off, len(c))
                off += len(c)

        tag = f"{engine} {pool}{'' if codec == 'lz4' else ' ' + codec}"
        req = "4k" if step == 1 else "1m"
        out[f"{tag} store {req}"] = passes(write_all, fresh)
        out[f"{tag} load {req}"] = passes(read_all, filled)

    for engine, pool in [("native", p) for p in POOLS] + [("python", "zsmalloc")]:
        store_load(engine, pool, "lz4", 1)
    store_load("native", "zsmalloc", "lz4", 256)
    store_load("native", "zsmalloc", "zstd:3", 1)

    rnd = random.Random(1)
    incompressible = [os.urandom(PAGE) for _ in range(256)]
    for pool in POOLS:
        ow: dict[str, Any] = {}

        def overwrite(pool: str = pool, ow: dict[str, Any] = ow) -> None:
            if "store" not in ow:
                ow["store"] = store_of("native", pool)
                for pn in range(n):
                    ow["store"].write(pn * PAGE, incompressible[pn % 256])
            st = ow["store"]
            for i in range(n):
                st.write(rnd.randrange(n) * PAGE, incompressible[i % 256])

        out[f"native {pool} overwrite"] = passes(overwrite)

    wb: dict[str, Any] = {}

    def wb_fresh() -> None:
        if "store" in wb:
            wb.pop("store").pool.close()
            wb.pop("backing").close()
        (tmp / "backing.img").unlink(missing_ok=True)
        wb["backing"] = BackingFile(str(tmp / "backing.img"), n, False)
        wb["store"] = store_of("native", "zsmalloc", backing=wb["backing"])
        for pn, page in enumerate(pages):
            wb["store"].write_page(pn, page)

    def wb_all() -> None:
        st = wb["store"]
        for pn in range(n):
            st.writeback_page(pn)

    def wb_filled() -> None:
        if "done" not in wb:
            wb_fresh()
            wb_all()
            wb["done"] = True

    def wb_read() -> None:
        st = wb["store"]
        for pn in range(n):
            st.read(pn * PAGE, PAGE)

    def wb_again() -> None:
        wb.pop("done", None)
        wb_fresh()

    out["native zsmalloc writeback"] = passes(wb_all, wb_again)
    out["native zsmalloc read back"] = passes(wb_read, wb_filled)

    rc: dict[str, Any] = {}

    def rc_ready() -> None:
        if "plain" not in rc:
            for kind in ("plain", "settled"):
                rc[kind] = store_of("native", "zsmalloc")
                for pn, page in enumerate(pages):
                    rc[kind].write_page(pn, page)
            work = Recompression(rc["settled"], level=9, idle=0, duty=1.0)  # every page idle
            while work.step():
                pass
        settled = rc["settled"]
        with settled.lock:  # the timed reads are first reads: the pages idle again
            settled.rewarm.clear()
            settled.meta &= np.uint32(0xFFFFFFFF ^ MARK)  # in place: C holds the buffer

    def reads(kind: str) -> Callable[[], None]:
        def go() -> None:
            st = rc[kind]
            for pn in range(n):
                st.read(pn * PAGE, PAGE)

        return go

    out["native zsmalloc read lz4"] = passes(reads("plain"), rc_ready)
    out["native zsmalloc read recompressed"] = passes(reads("settled"), rc_ready)
    return out


def main() -> None:
    import pyperf

    def add_args(cmd: list[str], args: Any) -> None:
        cmd.extend(["--corpus", str(args.corpus)])

    runner = pyperf.Runner(add_cmdline_args=add_args)
    runner.argparser.add_argument("--corpus", type=Path, required=True)
    args = runner.parse_args()
    funcs = _benchmarks(args.corpus)
    npages = args.corpus.stat().st_size // PAGE
    for name, fn in funcs.items():
        runner.bench_time_func(name, fn, inner_loops=npages)


# -- the suite module -----------------------------------------------------------------------------


def run(ctx: Any) -> dict[str, Any]:
    import pyperf

    from bench import harness

    corpus, pages = harness.real_corpus(ctx, "py_dicts", ctx.pick(8, 32))
    out = ctx.workdir / "inproc.pyperf.json"
    size = ["--debug-single-value"] if ctx.quick else ["--processes", "6", "--values", "3"]
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--corpus",
        str(corpus),
        "-o",
        str(out),
        "--quiet",
        *size,
    ]
    ctx.log(f"  {' '.join(cmd)}")
    subprocess.run(cmd, check=True)
    suite = pyperf.BenchmarkSuite.load(str(out))
    samples = {
        "us per page": {
            b.get_name(): [v * 1e6 for v in b.get_values()] for b in suite.get_benchmarks()
        }
    }
    params = {
        "corpus": "py_dicts",
        "pages": pages,
        "clock": "thread_time",
        "page_workers": 0,
        "pyperf": size,
    }
    doc = harness.make_result(sys.modules[__name__], ctx, params, samples)
    doc["extra"]["pyperf_file"] = out.name  # copied beside the result (for compare_to)
    return doc


def tables(doc: dict[str, Any]) -> dict[str, str]:
    from bench import harness

    m = doc["medians"]["us per page"]

    def cell(name: str) -> str:
        return harness.fmt(m.get(name), 2)

    def ratio(base: str, name: str) -> str:
        return harness.fmt(m[base] / m[name], 2) if name in m and base in m else "-"

    head = [
        "us a page (median)",
        "store",
        "load",
        "bare compress / store",
        "bare decompress / load",
    ]
    rows = [
        [
            "bare lz4 (the codec alone)",
            cell("bare lz4 compress"),
            cell("bare lz4 decompress"),
            "",
            "",
        ],
        ["bare zstd:3", cell("bare zstd:3 compress"), cell("bare zstd:3 decompress"), "", ""],
    ]
    for tag, codec in [(f"native {p}", "lz4") for p in POOLS] + [
        ("native zsmalloc zstd:3", "zstd:3"),
        ("python zsmalloc", "lz4"),
    ]:
        for req in ("4k", "1m"):
            st, ld = f"{tag} store {req}", f"{tag} load {req}"
            if st in m:
                rows.append(
                    [
                        f"{tag}, {'4 KiB' if req == '4k' else '1 MiB'} requests",
                        cell(st),
                        cell(ld),
                        ratio(f"bare {codec} compress", st),
                        ratio(f"bare {codec} decompress", ld),
                    ]
                )
    engine = harness.table(head, rows)

    def row(what: str, name: str, base: str, label: str) -> list[str]:
        return [what, cell(name), f"{ratio(name, base)}x {label}"]

    st, ld, lz = "native zsmalloc store 4k", "native zsmalloc load 4k", "native zsmalloc read lz4"
    rows = [
        row(
            f"overwrite of an incompressible page, {p}",
            f"native {p} overwrite",
            st,
            "a store (zsmalloc, real pages)",
        )
        for p in POOLS
    ]
    rows += [
        row("writeback of a page to the backing file", "native zsmalloc writeback", st, "a store"),
        row("read of a page from the backing file", "native zsmalloc read back", ld, "a load"),
        row("first read of a page in lz4", lz, ld, "a load"),
        row(
            "first read of a recompressed page (zstd:9 + dictionary)",
            "native zsmalloc read recompressed",
            lz,
            "an lz4 page's first read",
        ),
    ]
    paths = harness.table(["native engine", "us a page (median)", "against"], rows, "lrl")
    return {"engine": engine, "paths": paths}


if __name__ == "__main__":
    main()
