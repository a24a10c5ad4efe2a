"""What continuous compaction and migration cost a reader's tail latency, per pool.

Each target mounts a 128 MiB image of its pool, fills it with compressible pages, then keeps a
second writer churning the upper half (zero pages and fresh pages: frees that fragment the pool)
while fio does 4K random reads at QD1 (psync, O_DIRECT) on the lower half. "on" runs
maintenance aggressively (compaction and migration on every pass, 5 ms apart), "off" not at all
(interval 3600 s, the baseline); the two take turns for each pool. The target: p99 with
continuous compaction at most 2x without.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import harness

NAME = "compaction_latency"
QUESTION = "how much continuous compaction and migration raise a reader's p99, per pool"
BASELINE = "off"
NEEDS = ("root", "fuse", "fio")
ROUNDS = 3
POOLS = ("zsmalloc", "zbud", "z3fold")
UNITS = {
    f"{p} {m}": u
    for p in POOLS
    for m, u in (
        ("p50", "us"),
        ("p99", "us"),
        ("compaction steps", "steps"),
        ("pages migrated", "pages"),
    )
}
PAGE = 4096
ZS = [sys.executable, "-m", "zswapfs"]


def page_for(rnd: random.Random, tag: int) -> bytes:
    body = b"record %d " % tag * rnd.randint(20, 400)
    return (body + rnd.randbytes(rnd.randint(0, 1500))).ljust(PAGE, b"\0")[:PAGE]


def one_run(mp: Path, size: int, pool: str, on: bool, seconds: int) -> dict[str, float]:
    extra = (
        ["--maintenance-interval", "0.005", "--aggressive-maintenance"]
        if on
        else ["--maintenance-interval", "3600"]
    )
    subprocess.run(
        [*ZS, "mount", str(mp), "--size", str(size), "--pool", pool, "--log", f"{mp}.log", *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    image = mp / "swap.img"
    stop = threading.Event()
    try:
        rnd = random.Random(1)
        npages = size // PAGE
        with open(image, "r+b", buffering=0) as f:
            for first in range(0, npages, 256):
                f.write(b"".join(page_for(rnd, first + i) for i in range(256)))

        def churn() -> None:
            r = random.Random(2)
            with open(image, "r+b", buffering=0) as f:
                while not stop.is_set():
                    pn = r.randrange(npages // 2, npages)
                    f.seek(pn * PAGE)
                    f.write(bytes(PAGE) if r.random() < 0.5 else page_for(r, pn))
                    time.sleep(0.0002)

        writer = threading.Thread(target=churn)
        writer.start()
        try:
            out = subprocess.run(
                [
                    "fio",
                    "--name=read",
                    f"--filename={image}",
                    f"--size={size // 2}",
                    "--rw=randread",
                    "--bs=4k",
                    "--direct=1",
                    "--ioengine=psync",
                    "--time_based",
                    f"--runtime={seconds}",
                    "--output-format=json",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            stop.set()
            writer.join()
        stats = json.loads((mp / "stats").read_text())
        clat = json.loads(out)["jobs"][0]["read"]["clat_ns"]
        return {
            "p50": clat["percentile"]["50.000000"] / 1000,
            "p99": clat["percentile"]["99.000000"] / 1000,
            "compaction steps": stats["maintenance"]["compact_steps"],
            "pages migrated": stats["maintenance"]["migrated_pages"],
        }
    finally:
        stop.set()
        subprocess.run([*ZS, "umount", str(mp)], capture_output=True)


def run(ctx: harness.Context) -> dict[str, Any]:
    size, seconds = ctx.pick(32 << 20, 128 << 20), ctx.pick(2, 15)
    pools = ctx.pick(("zsmalloc",), POOLS)
    count = iter(range(1_000_000))

    def measure(target: str, _round: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for pool in pools:
            mp = ctx.workdir / f"mnt{next(count)}"
            mp.mkdir()
            res = one_run(mp, size, pool, target == "on", seconds)
            out |= {f"{pool} {k}": v for k, v in res.items()}
        return out

    samples = harness.interleave(["off", "on"], ctx.rounds, measure, ctx.log)
    params = {"size": size, "seconds": seconds, "pools": list(pools)}
    return harness.make_result(sys.modules[__name__], ctx, params, samples)


def tables(doc: dict[str, Any]) -> dict[str, str]:
    med, rat = doc["medians"], doc["ratios"]
    rows = []
    for pool in doc["params"]["pools"]:
        m = {k: med[f"{pool} {k}"] for k in ("p50", "p99", "compaction steps", "pages migrated")}
        rows.append(
            [
                pool,
                harness.fmt(m["p50"]["off"]),
                harness.fmt(m["p99"]["off"]),
                harness.fmt(m["p50"]["on"]),
                harness.fmt(m["p99"]["on"]),
                harness.fmt(m["compaction steps"]["on"]),
                harness.fmt(m["pages migrated"]["on"]),
                f"**{harness.fmt(rat[f'{pool} p99']['on'], 2)}**",
            ]
        )
    head = [
        "pool",
        "p50 off, us",
        "p99 off, us",
        "p50 on, us",
        "p99 on, us",
        "compaction steps",
        "pages migrated",
        "p99 on / off",
    ]
    return {"latency": harness.table(head, rows)}
