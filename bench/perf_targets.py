"""The performance targets (docs/performance.md), each as a ratio against a baseline measured
in the same run, PASS/FAIL.

FUSE path: the null-FUSE file (a minimal pyfuse3 file, zswapfs.lab.nullfs) and a
zswapfs mount (lz4 + zsmalloc) side by side, the same fio jobs on both (O_DIRECT, fio's
50%-compressible buffers): 4K randwrite/randread at QD1 and QD16, 128K sequential write at QD16;
directly on the image file and through a loop device with --direct-io=on. Both are mounted at
once and every job alternates null / zswapfs for --rounds rounds (this machine drifts).
Memory: 256 MiB of fio data stored, then daemon RSS against pool memory and stored pages.
Density: a captured real corpus replayed through zsmalloc+lz4 and zsmalloc+zstd:3 against kernel
zram lz4 on the same pages (`zswapfs bench`'s replay and zram row).

    python bench/perf_targets.py [--runtime 10] [--corpus builtin:py_dicts:100] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zswapfs.lab import bench

SIZE = 1 << 30
REGION = "256M"
#: (name, fio rw, block size, iodepth, target ratio against null-FUSE)
JOBS = [
    ("4k-randwrite-qd1", "randwrite", "4k", 1, 0.7),
    ("4k-randread-qd1", "randread", "4k", 1, 0.7),
    ("4k-randwrite-qd16", "randwrite", "4k", 16, 0.8),
    ("4k-randread-qd16", "randread", "4k", 16, 0.8),
    ("128k-seqwrite-qd16", "write", "128k", 16, 0.5),
]


def fio(target: Path, rw: str, bs: str, qd: int, runtime: float, workdir: Path) -> float:
    return bench.fio.fio_iops(target, rw, bs, qd, runtime, workdir, REGION)


@contextlib.contextmanager
def loop_device(image: Path) -> Iterator[Path]:
    dev = subprocess.run(
        ["losetup", "--direct-io=on", "-f", "--show", str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def prefill(image: Path, workdir: Path) -> None:
    """Write the region once so reads hit stored pages, not never-written ones."""
    subprocess.run(
        [
            "fio",
            "--name=fill",
            f"--filename={image}",
            f"--size={REGION}",
            "--rw=write",
            "--bs=1m",
            "--direct=1",
            "--buffer_compress_percentage=50",
            "--refill_buffers",
            "--output-format=json",
        ],
        check=True,
        capture_output=True,
        cwd=workdir,
    )


def fuse_rows(runtime: float, rounds: int, tmp: Path) -> list[dict[str, Any]]:
    """Both mounted side by side; every job alternates null, zswapfs, null, zswapfs ... for
    *rounds* rounds, so drift on a shared machine hits both alike. Ratio of the mean IOPS."""
    rows = []
    for kind in ("null", "zswapfs"):
        (tmp / f"mnt-{kind}").mkdir()
    with contextlib.ExitStack() as stack:
        images = {
            "null": stack.enter_context(
                bench.fio.null_mounted(tmp / "mnt-null", SIZE, tmp / "null.log")
            ),
            "zswapfs": stack.enter_context(
                bench.fio.zswapfs_mounted(
                    tmp / "mnt-zswapfs", SIZE, "zsmalloc", "lz4", tmp / "zswapfs.log"
                )
            ),
        }
        for image in images.values():
            prefill(image, tmp)
        for path_kind in ("file", "loop"):
            with contextlib.ExitStack() as loops:
                targets = {
                    k: (loops.enter_context(loop_device(v)) if path_kind == "loop" else v)
                    for k, v in images.items()
                }
                for name, rw, bs, qd, goal in JOBS:
                    runs: dict[str, list[float]] = {"null": [], "zswapfs": []}
                    for _ in range(rounds):
                        for kind in ("null", "zswapfs"):
                            runs[kind].append(fio(targets[kind], rw, bs, qd, runtime, tmp))
                    null = sum(runs["null"]) / rounds
                    ours = sum(runs["zswapfs"]) / rounds
                    print(
                        f"  {path_kind} {name}: null {runs['null']} zswapfs {runs['zswapfs']}",
                        file=sys.stderr,
                        flush=True,
                    )
                    rows.append(
                        {
                            "target": f"{name} ({path_kind}) vs null-FUSE",
                            "ours": ours,
                            "baseline": null,
                            "ratio": ours / null,
                            "goal": goal,
                            "pass": ours / null >= goal,
                            "runs": runs,
                        }
                    )
    return rows


def fill(image: Path, offset: str, size: str, workdir: Path) -> None:
    subprocess.run(
        [
            "fio",
            "--name=fill",
            f"--filename={image}",
            f"--offset={offset}",
            f"--size={size}",
            "--rw=write",
            "--bs=64k",
            "--direct=1",
            "--buffer_compress_percentage=50",
            "--refill_buffers",
            "--output-format=json",
        ],
        check=True,
        capture_output=True,
        cwd=workdir,
    )


def memory_rows(tmp: Path) -> list[dict[str, Any]]:
    """Per-page cost as a slope: fill half of a 512 MiB image, then the other half; what RSS
    grows by beyond the pool between the two, per page added (fixed costs such as memory the
    allocator keeps from request buffers cancel out). Then the tables of the full image."""
    mp = tmp / "mnt-mem"
    mp.mkdir()
    with bench.fio.zswapfs_mounted(mp, 512 << 20, "zsmalloc", "lz4", tmp / "mem.log") as image:
        fill(image, "0", "256M", tmp)
        half = bench.fio.read_mount_stats(mp)
        fill(image, "256M", "256M", tmp)
        full = bench.fio.read_mount_stats(mp)
    pages = full["stored_pages"] - half["stored_pages"]
    rss = full["rss_bytes"] - half["rss_bytes"]
    pool = full["mem_used_total"] - half["mem_used_total"]
    beyond = (rss - pool) / pages
    tables = full["metadata_bytes"] / full["stored_pages"]
    limit = full["mem_used_total"] + 24 * full["stored_pages"] + (64 << 20)
    return [
        {
            "target": "RSS growth beyond the pool per stored page (slope)",
            "ours": beyond,
            "baseline": 24,
            "ratio": beyond / 24,
            "goal": 1.0,
            "pass": beyond <= 24,
            "lower_is_better": True,
        },
        {
            "target": "tables per stored page, full image (metadata_bytes)",
            "ours": tables,
            "baseline": 24,
            "ratio": tables / 24,
            "goal": 1.0,
            "pass": tables <= 24,
            "lower_is_better": True,
        },
        {
            "target": "daemon RSS <= pool + 24 B/page + 64 MiB",
            "ours": full["rss_bytes"],
            "baseline": limit,
            "ratio": full["rss_bytes"] / limit,
            "goal": 1.0,
            "pass": full["rss_bytes"] <= limit,
            "lower_is_better": True,
        },
    ]


def density_rows(corpus: str) -> list[dict[str, Any]]:
    run = bench.run(
        [corpus],
        ["zsmalloc"],
        ["lz4", "zstd:3"],
        with_zram=True,
        churn=0,
        progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
    )
    rows = {r["codec"] if r["pool"] != "zram" else "zram": r for r in run.rows}
    if "zram" not in rows:
        raise SystemExit("no zram row: /dev/zram0 is in use or missing")
    z = rows["zram"]["density"]
    return [
        {
            "target": f"density zsmalloc+lz4 vs zram lz4 ({corpus})",
            "ours": rows["lz4"]["density"],
            "baseline": z,
            "ratio": rows["lz4"]["density"] / z,
            "goal": 1.0,
            "pass": rows["lz4"]["density"] / z >= 1.0,
        },
        {
            "target": f"density zsmalloc+zstd:3 vs zram lz4 ({corpus})",
            "ours": rows["zstd:3"]["density"],
            "baseline": z,
            "ratio": rows["zstd:3"]["density"] / z,
            "goal": 1.5,
            "pass": rows["zstd:3"]["density"] / z >= 1.5,
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--corpus", action="append")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zswapfs-perf-") as tmp:
        rows = fuse_rows(args.runtime, args.rounds, Path(tmp)) + memory_rows(Path(tmp))
    for corpus in args.corpus or ["builtin:py_dicts:100", "builtin:sqlite_mem:100"]:
        rows += density_rows(corpus)
    print(f"{'target':<66}{'ours':>12}{'baseline':>12}{'ratio':>8}{'goal':>7}  result")
    for r in rows:
        goal = ("<=" if r.get("lower_is_better") else ">=") + f"{r['goal']:g}"
        print(
            f"{r['target']:<66}{r['ours']:>12.1f}{r['baseline']:>12.1f}{r['ratio']:>8.3f}"
            f"{goal:>7}  {'PASS' if r['pass'] else 'FAIL'}"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"machine": bench.machine_info(), "rows": rows}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
