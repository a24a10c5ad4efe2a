"""4K random I/O through FUSE: zswapfs's two frontends beside the yardsticks, in one run.

Targets, all mounted at once (image files, 1 GiB each; no loop devices), every fio job
alternating between them for --rounds rounds (this shared machine drifts):
    c-ram        the minimal C libfuse file keeping pages in RAM (zswapfs.lab.ramfs), libfuse's
                 worker threads: the floor of any FUSE daemon, and the one the targets name
    c-ram-1      the same served by one thread (fuse_session_loop)
    py-null      the minimal pyfuse3 file (zswapfs.lab.nullfs, writes dropped): the ceiling of
                 one pyfuse3 session
    native       zswapfs, native frontend (the default; lz4, zsmalloc unless --pool)
    pyfuse3      zswapfs, the pyfuse3 reference frontend
    zram         /dev/zram0 (lz4), the kernel's own (--no-zram leaves it alone)
Prints mean IOPS per job and target, and every target's mean against c-ram's; --json writes it
all with the machine's description.

    python bench/engine_fuse.py [--runtime 3] [--rounds 3] [--pool zsmalloc|zbud|z3fold]
        [--no-zram] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from zswapfs.lab import bench, kzram
from zswapfs.lab.ramfs import ramfs_mounted

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
def zswapfs_mounted(mountpoint: Path, frontend: str, log: Path, pool: str) -> Iterator[Path]:
    mountpoint.mkdir()
    cmd = [sys.executable, "-m", "zswapfs", "mount", str(mountpoint), "--size", str(SIZE),
           "--frontend", frontend, "--pool", pool, "--log", str(log)]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        stats = bench.fio.read_mount_stats(mountpoint)
        assert stats["frontend"] == frontend, f"asked for {frontend}: {stats['frontend']}"
        yield mountpoint / "swap.img"
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run([sys.executable, "-m", "zswapfs", "umount", str(mountpoint)],
                           capture_output=True, timeout=60)  # fmt: skip
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runtime", type=float, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool", choices=("zsmalloc", "zbud", "z3fold"), default="zsmalloc")
    p.add_argument("--no-zram", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="zswapfs-fuse-") as d, contextlib.ExitStack() as st:
        tmp = Path(d)
        (tmp / "mnt-null").mkdir()
        images = {
            "c-ram": st.enter_context(ramfs_mounted(tmp / "mnt-c", SIZE, tmp / "c.log")),
            "c-ram-1": st.enter_context(
                ramfs_mounted(tmp / "mnt-c1", SIZE, tmp / "c1.log", threads=1)
            ),
            "py-null": st.enter_context(
                bench.fio.null_mounted(tmp / "mnt-null", SIZE, tmp / "null.log")
            ),
            "native": st.enter_context(
                zswapfs_mounted(tmp / "mnt-nat", "native", tmp / "nat.log", args.pool)
            ),
            "pyfuse3": st.enter_context(
                zswapfs_mounted(tmp / "mnt-py", "pyfuse3", tmp / "py.log", args.pool)
            ),
        }
        if not args.no_zram and not kzram.unavailable():
            images["zram"] = st.enter_context(kzram.configured(SIZE, "lz4"))
        for image in images.values():
            subprocess.run(["fio", "--name=fill", f"--filename={image}", f"--size={REGION}",
                            "--rw=write", "--bs=1m", *FIO_DATA, "--output-format=json"],
                           check=True, capture_output=True, cwd=tmp)  # fmt: skip
        kinds = list(images)
        print(f"fio on the images ({args.pool}), {args.rounds} alternating rounds of "
              f"{args.runtime} s, mean IOPS, and against c-ram:")  # fmt: skip
        print(f"  {'job':20}" + "".join(f"{k:>9}" for k in kinds) + "   "
              + "".join(f"{k:>9}" for k in kinds if k != "c-ram"))  # fmt: skip
        result: dict[str, dict[str, float]] = {}
        for name, rw, bs, qd in JOBS:
            runs: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for kind in kinds:
                    runs[kind].append(fio(Path(images[kind]), rw, bs, qd, args.runtime, tmp))
            mean = {k: sum(v) / len(v) for k, v in runs.items()}
            result[name] = mean
            print(f"  {name:20}" + "".join(f"{mean[k]:9.0f}" for k in kinds) + "   "
                  + "".join(f"{mean[k] / mean['c-ram']:9.2f}" for k in kinds if k != "c-ram"),
                  flush=True)  # fmt: skip
    if args.json:
        ratios = {j: {k: v / m["c-ram"] for k, v in m.items()} for j, m in result.items()}
        doc = {"bench": "engine_fuse", "pool": args.pool, "rounds": args.rounds,
               "runtime_s": args.runtime, "iops": result, "vs_c_ram": ratios,
               "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                           "loadavg_end": list(os.getloadavg())}}  # fmt: skip
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
