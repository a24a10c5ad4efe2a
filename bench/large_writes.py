"""Big writes against kernel zram: 128 KiB sequential writes at QD16 (fio, 50%-compressible
buffers) and 1 MiB writes of real captured memory (`dd bs=1M oflag=direct`).

Targets, all measured in every round, rounds interleaved (this machine drifts):
    zram          /dev/zram0, lz4 (the yardstick)
    null          the minimal pyfuse3 file (zswapfs.lab.nullfs): the ceiling of one pyfuse3
                  session
    native-w0     zswapfs, native engine, every page compressed on the request thread
                  (--page-workers 0)
    native        zswapfs, native engine, default page workers
Prints MB/s per round, the medians and each target's median against zram's and null's.

    python bench/large_writes.py --corpus FILE.pages|builtin:py_dicts:64 [--rounds 3]
        [--runtime 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from zswapfs.lab import bench, kzram

SIZE = 1 << 30
REGION = "256M"
TARGETS = ("zram", "null", "native-w0", "native")


@contextlib.contextmanager
def targets(tmp: Path, st: contextlib.ExitStack) -> Iterator[dict[str, Path]]:
    out: dict[str, Path] = {}
    for name in TARGETS:
        mnt = tmp / f"mnt-{name}"
        mnt.mkdir()
        log = tmp / f"{name}.log"
        if name == "zram":
            out[name] = st.enter_context(kzram.configured(SIZE, "lz4"))
        elif name == "null":
            out[name] = st.enter_context(bench.fio.null_mounted(mnt, SIZE, log))
        else:
            workers = ("--page-workers", "0") if name == "native-w0" else ()
            extra = ("--engine", "native", "--recompress", "off", *workers)
            out[name] = st.enter_context(
                bench.fio.zswapfs_mounted(mnt, SIZE, "zsmalloc", "lz4", log, extra)
            )
    yield out


def dd_mbps(corpus: Path, target: Path) -> float:
    """MB/s of one `dd bs=1M oflag=direct` of the corpus file onto the start of *target*."""
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", f"if={corpus}", f"of={target}", "bs=1M", "oflag=direct", "conv=notrunc"],
        check=True,
        capture_output=True,
    )
    return corpus.stat().st_size / (time.perf_counter() - t0) / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, help="a .pages file or a bench corpus spec")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runtime", type=float, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="zswapfs-bigwrites-") as d,
        contextlib.ExitStack() as st,
    ):
        tmp = Path(d)
        corpus = bench.corpus.load_spec(args.corpus, tmp)
        pages = tmp / "corpus.raw"  # whole MiBs, at most the region
        usable = min(len(corpus.data), 256 << 20) // (1 << 20) * (1 << 20)
        if not usable:
            raise SystemExit("the corpus is smaller than 1 MiB")
        pages.write_bytes(corpus.data[:usable])
        pages.read_bytes()  # in the page cache from here on: every dd reads it from memory
        results: dict[str, dict[str, list[float]]] = {
            "128k-seqwrite-qd16": {t: [] for t in TARGETS},
            "dd-1m-corpus": {t: [] for t in TARGETS},
        }
        with targets(tmp, st) as dev:
            for r in range(args.rounds):
                for t in TARGETS:
                    iops = bench.fio.fio_iops(
                        dev[t], "write", "128k", 16, args.runtime, tmp, REGION
                    )
                    results["128k-seqwrite-qd16"][t].append(iops * 128 * 1024 / 1e6)
                    results["dd-1m-corpus"][t].append(dd_mbps(pages, dev[t]))
                print(
                    f"round {r + 1}: "
                    + "  ".join(
                        f"{t} {results['128k-seqwrite-qd16'][t][-1]:.0f}/"
                        f"{results['dd-1m-corpus'][t][-1]:.0f}"
                        for t in TARGETS
                    )
                    + "  (MB/s, 128k fio / 1M dd)",
                    flush=True,
                )
    print(f"\ncorpus {corpus.name}: {usable >> 20} MiB; medians of {args.rounds} rounds, MB/s")
    print(f"  {'job':20}" + "".join(f"{t:>11}" for t in TARGETS) + "   /zram  /null  (native)")
    summary: dict[str, dict[str, float]] = {}
    for job, by in results.items():
        med = {t: statistics.median(v) for t, v in by.items()}
        summary[job] = med
        print(
            f"  {job:20}"
            + "".join(f"{med[t]:11.0f}" for t in TARGETS)
            + f"  {med['native'] / med['zram']:6.2f} {med['native'] / med['null']:6.2f}"
            + f"   w0: {med['native-w0'] / med['zram']:.2f} {med['native-w0'] / med['null']:.2f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"corpus": args.corpus, "mib": usable >> 20, "rounds": results, "medians": summary},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
