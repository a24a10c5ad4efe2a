"""The two engines through FUSE: the null-FUSE file, a zswapfs mount on the python engine and one
on the native engine (lz4; zsmalloc unless --pool says otherwise), all mounted at once; every fio
job alternates the three for --rounds rounds (this shared machine drifts) and the table gives
mean IOPS and the ratios to null-FUSE. Image files only (no loop devices), so it needs a FUSE
mount and nothing else.

    python bench/engine_fuse.py [--runtime 3] [--rounds 3] [--pool zsmalloc|zbud|z3fold]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from zswapfs.lab import bench

SIZE = 1 << 30
REGION = "256M"
JOBS = [  # name, fio rw, block size, iodepth
    ("4k-randwrite-qd1", "randwrite", "4k", 1),
    ("4k-randread-qd1", "randread", "4k", 1),
    ("4k-randwrite-qd16", "randwrite", "4k", 16),
    ("4k-randread-qd16", "randread", "4k", 16),
    ("128k-seqwrite-qd16", "write", "128k", 16),
]
FIO_DATA = ["--direct=1", "--buffer_compress_percentage=50", "--refill_buffers"]


def fio(target: Path, rw: str, bs: str, qd: int, runtime: float, workdir: Path) -> float:
    return bench.fio.fio_iops(target, rw, bs, qd, runtime, workdir, REGION)


@contextlib.contextmanager
def engine_mounted(mountpoint: Path, engine: str, log: Path, pool: str) -> Iterator[Path]:
    mountpoint.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "zswapfs",
        "mount",
        str(mountpoint),
        "--size",
        str(SIZE),
        "--engine",
        engine,
        "--pool",
        pool,
        "--log",
        str(log),
    ]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        stats = bench.fio.read_mount_stats(mountpoint)
        assert stats["engine"] == engine, f"asked for {engine}, the mount runs {stats['engine']}"
        assert stats["pool"] == pool
        yield mountpoint / "swap.img"
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(
                [sys.executable, "-m", "zswapfs", "umount", str(mountpoint)],
                capture_output=True,
                timeout=60,
            )
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runtime", type=float, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool", choices=("zsmalloc", "zbud", "z3fold"), default="zsmalloc")
    args = p.parse_args()
    pool = args.pool
    kinds = ("null", "python", "native")
    with tempfile.TemporaryDirectory(prefix="zswapfs-engines-") as d, contextlib.ExitStack() as st:
        tmp = Path(d)
        (tmp / "mnt-null").mkdir()
        images = {
            "null": st.enter_context(
                bench.fio.null_mounted(tmp / "mnt-null", SIZE, tmp / "null.log")
            ),
            "python": st.enter_context(
                engine_mounted(tmp / "mnt-py", "python", tmp / "py.log", pool)
            ),
            "native": st.enter_context(
                engine_mounted(tmp / "mnt-nat", "native", tmp / "n.log", pool)
            ),
        }
        for image in images.values():
            subprocess.run(
                [
                    "fio",
                    "--name=fill",
                    f"--filename={image}",
                    f"--size={REGION}",
                    "--rw=write",
                    "--bs=1m",
                    *FIO_DATA,
                    "--output-format=json",
                ],
                check=True,
                capture_output=True,
                cwd=tmp,
            )
        print(
            f"fio on the image files ({pool}), {args.rounds} alternating rounds of "
            f"{args.runtime} s, mean IOPS:"
        )
        print(f"  {'job':20} {'null':>8} {'python':>8} {'native':>8}  python/null  native/null")
        for name, rw, bs, qd in JOBS:
            runs: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for kind in kinds:
                    runs[kind].append(fio(images[kind], rw, bs, qd, args.runtime, tmp))
            mean = {k: sum(v) / len(v) for k, v in runs.items()}
            print(
                f"  {name:20} {mean['null']:8.0f} {mean['python']:8.0f} {mean['native']:8.0f}"
                f"  {mean['python'] / mean['null']:11.3f}  {mean['native'] / mean['null']:11.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
