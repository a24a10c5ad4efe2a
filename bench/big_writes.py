"""Big writes against kernel zram: 128 KiB sequential writes at QD16 (fio, 50%-compressible
buffers) and 1 MiB writes of real captured memory (`dd bs=1M oflag=direct`, a py_dicts corpus).

Targets, all mounted or configured at once, taking turns in every round:
    zram        /dev/zram0, lz4 (the baseline)
    null        the minimal pyfuse3 file (zswapfs.lab.nullfs): the ceiling of one pyfuse3 session
    native-w0   zswapfs, native engine, every page compressed on the request thread
                (--page-workers 0)
    native      zswapfs, native engine, default page workers
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness
from zswapfs.lab import bench

NAME = "big_writes"
QUESTION = "how fast big writes of real memory go in, against zram"
BASELINE = "zram"
NEEDS = ("root", "fuse", "fio", "zram")
ROUNDS = 3
UNITS = {"128k-seqwrite-qd16": "MB/s", "dd-1m-corpus": "MB/s"}
TARGETS = ("zram", "null", "native-w0", "native")


def dd_mbps(corpus: Path, target: Path) -> float:
    """MB/s of one `dd bs=1M oflag=direct` of the corpus file onto the start of *target*."""
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", f"if={corpus}", f"of={target}", "bs=1M", "oflag=direct", "conv=notrunc"],
        check=True,
        capture_output=True,
    )
    return corpus.stat().st_size / (time.perf_counter() - t0) / 1e6


def run(ctx: harness.Context) -> dict[str, Any]:
    size = ctx.pick(256 << 20, 1 << 30)
    region = ctx.pick("32M", "256M")
    runtime = ctx.pick(1, 3)
    mib = ctx.pick(16, 96)
    corpus, pages = harness.real_corpus(ctx, "py_dicts", mib)
    tmp = ctx.workdir
    with contextlib.ExitStack() as st:
        dev = {}
        for name in TARGETS:
            workers = ("--page-workers", "0") if name == "native-w0" else ()
            opts = ("--frontend", "native", "--recompress", "off", *workers)
            dev[name] = harness.target(st, "py-null" if name == "null" else name, tmp, size, opts)

        def measure(target: str, _round: int) -> dict[str, float]:
            iops = bench.fio.fio_iops(dev[target], "write", "128k", 16, runtime, tmp, region)
            return {
                "128k-seqwrite-qd16": iops * 128 * 1024 / 1e6,
                "dd-1m-corpus": dd_mbps(corpus, dev[target]),
            }

        samples = harness.interleave(TARGETS, ctx.rounds, measure, ctx.log)
    params = {
        "size": size,
        "region": region,
        "runtime_s": runtime,
        "corpus": f"builtin:py_dicts:{mib}",
        "corpus_pages": pages,
    }
    return harness.make_result(sys.modules[__name__], ctx, params, samples)


def tables(doc: dict[str, Any]) -> dict[str, str]:
    med, rat = doc["medians"], doc["ratios"]
    names = {
        "128k-seqwrite-qd16": "128K seqwrite QD16 (fio)",
        "dd-1m-corpus": f"1 MiB dd of real memory ({doc['params']['corpus_pages']:,} pages)",
    }
    head = [
        "MB/s",
        "zram (lz4)",
        "null pyfuse3",
        "native, no workers",
        "native",
        "native / zram",
        "no workers / zram",
    ]
    rows = [
        [
            names[m],
            *(harness.fmt(med[m][t]) for t in TARGETS),
            f"**{harness.fmt(rat[m]['native'], 2)}**",
            harness.fmt(rat[m]["native-w0"], 2),
        ]
        for m in UNITS
    ]
    return {"mbps": harness.table(head, rows)}
