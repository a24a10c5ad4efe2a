"""4 KiB random I/O and 128 KiB writes through FUSE: zswapfs's two frontends beside a minimal C
libfuse file, a minimal pyfuse3 file and kernel zram, all mounted at once.

Targets (image files; no loop devices):
    c-ram     the minimal C libfuse file keeping pages in RAM (zswapfs.lab.ramfs), libfuse's
              worker threads: the floor of any FUSE daemon (the baseline)
    c-ram-1   the same served by one thread
    py-null   the minimal pyfuse3 file (zswapfs.lab.nullfs, writes dropped)
    native    zswapfs, native frontend (the default: lz4, zsmalloc)
    pyfuse3   zswapfs, the pyfuse3 reference frontend
    zram      /dev/zram0, lz4
Each fio job (O_DIRECT, libaio, fio's 50%-compressible buffers) runs on every target in every
round, the targets taking turns.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import Any

from bench import harness
from zswapfs.lab import bench

NAME = "fuse_iops"
QUESTION = "how many requests a second a mount serves, against a minimal C libfuse file and zram"
BASELINE = "c-ram"
NEEDS = ("root", "fuse", "fio", "zram")
ROUNDS = 5
JOBS = [  # metric, fio rw, block size, iodepth
    ("4k-randwrite-qd1", "randwrite", "4k", 1),
    ("4k-randread-qd1", "randread", "4k", 1),
    ("4k-randwrite-qd16", "randwrite", "4k", 16),
    ("4k-randread-qd16", "randread", "4k", 16),
    ("128k-seqwrite-qd16", "write", "128k", 16),
]
UNITS = {job[0]: "IOPS" for job in JOBS}
TARGETS = ("c-ram", "c-ram-1", "py-null", "native", "pyfuse3", "zram")
FIO_DATA = ["--direct=1", "--buffer_compress_percentage=50", "--refill_buffers"]


def run(ctx: harness.Context) -> dict[str, Any]:
    size = ctx.pick(256 << 20, 1 << 30)
    region = ctx.pick("32M", "256M")
    runtime = ctx.pick(1, 3)  # whole seconds: fio reads 0.5 as 0
    tmp = ctx.workdir
    with contextlib.ExitStack() as st:
        images = {name: harness.target(st, name, tmp, size, ("--frontend", name))
                  for name in TARGETS}  # fmt: skip
        for image in images.values():  # reads find data everywhere
            subprocess.run(
                [
                    "fio",
                    "--name=fill",
                    f"--filename={image}",
                    f"--size={region}",
                    "--rw=write",
                    "--bs=1m",
                    *FIO_DATA,
                    "--output-format=json",
                ],
                check=True,
                capture_output=True,
                cwd=tmp,
            )

        def measure(target: str, _round: int) -> dict[str, float]:
            return {
                job: bench.fio.fio_iops(images[target], rw, bs, qd, runtime, tmp, region)
                for job, rw, bs, qd in JOBS
            }

        samples = harness.interleave(TARGETS, ctx.rounds, measure, ctx.log)
    params = {
        "size": size,
        "region": region,
        "runtime_s": runtime,
        "pool": "zsmalloc",
        "codec": "lz4",
        "jobs": JOBS,
    }
    return harness.make_result(sys.modules[__name__], ctx, params, samples)


def tables(doc: dict[str, Any]) -> dict[str, str]:
    med, rat = doc["medians"], doc["ratios"]
    head = [
        "job",
        *TARGETS,
        "native / c-ram",
        "pyfuse3 / c-ram",
        "native / pyfuse3",
        "native / zram",
    ]
    rows = []
    for job, *_ in JOBS:
        m = med[job]
        rows.append(
            [
                job.replace("-", " ").replace("qd", "QD").replace("seqwrite", "seqwrite"),
                *(harness.fmt(m.get(t)) for t in TARGETS),
                harness.fmt(rat[job]["native"], 2),
                harness.fmt(rat[job]["pyfuse3"], 2),
                harness.fmt(m["native"] / m["pyfuse3"], 1),
                harness.fmt(m["native"] / m["zram"], 2),
            ]
        )
    return {"iops": harness.table(head, rows)}
