"""How long a program waits when the server of its mount is killed or restarted (docs/restart.md).

A supervised zswapfs mount (native frontend), half of it written with pages that compress as
memory does, is read by a thread doing one 4 KiB O_DIRECT read after another at random offsets
(QD1, as a swap-in is). Each round, at a random instant, the server is killed (-9) and later
replaced with `zswapfs restart`; what the program sees is the longest single read around each:
    kill     from the kill until the new server answers (the supervisor notices, a new process
             takes the pool over, the kernel resends what the dead one had read)
    restart  while `zswapfs restart` runs (only the handover stalls)
    quiet    a window as long with nothing done: this machine's noise, the baseline
Every read must succeed: the run fails if the mount counts a failed read.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import harness

NAME = "restart"
QUESTION = "how long a reading program stalls when the server is killed or restarted"
BASELINE = "quiet"
NEEDS = ("root", "fuse")
ROUNDS = 20
UNITS = {"longest read": "s"}
ZS = [sys.executable, "-m", "zswapfs"]
PAGE = 4096


class Reader(threading.Thread):
    """Reads pages at random, one at a time, recording when each was asked and answered."""

    def __init__(self, image: Path, pages: int) -> None:
        super().__init__(daemon=True)
        self.fd = os.open(image, os.O_RDONLY | os.O_DIRECT)
        self.pages = pages
        self.done: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        buf = mmap.mmap(-1, PAGE)
        rnd = random.Random(1)
        while not self.stop.is_set():
            t0 = time.monotonic()
            os.preadv(self.fd, [buf], rnd.randrange(self.pages) * PAGE)
            with self.lock:
                self.done.append((t0, time.monotonic()))

    def longest_between(self, start: float, end: float) -> float:
        """The longest read that was in flight at any time in [start, end]."""
        with self.lock:
            spans = [b - a for a, b in self.done if b >= start and a <= end]
        return max(spans, default=0.0)


def stats_of(mp: Path) -> dict[str, Any]:
    return dict(json.loads((mp / "stats").read_text()))


def run(ctx: harness.Context) -> dict[str, Any]:
    size = ctx.pick("64M", "256M")
    tmp = ctx.workdir
    mp = tmp / "mnt"
    mp.mkdir()
    cfg = tmp / "bench.toml"
    cfg.write_text("restart-limit = 1000\n")
    subprocess.run(
        [
            *ZS,
            "mount",
            str(mp),
            "--size",
            size,
            "--config",
            str(cfg),
            "--log",
            str(tmp / "daemon.log"),
        ],
        check=True,
        capture_output=True,
    )
    try:
        image = mp / "swap.img"
        pages = int(stats_of(mp)["disksize"]) // PAGE
        with open(image, "r+b") as f:  # half the image: pages that compress, as memory does
            rnd = random.Random(2)
            for _ in range(pages // 2 // 256):
                f.write(b"".join(rnd.randbytes(1024) + bytes(3072) for _ in range(256)))
        reader = Reader(image, pages // 2)
        reader.start()
        rnd = random.Random(3)

        def measure(_target: str, _round: int) -> dict[str, float]:
            # the three events of a round, in this order every round
            time.sleep(rnd.uniform(0.2, 0.6))
            t = time.monotonic()
            time.sleep(0.3)
            quiet = reader.longest_between(t, time.monotonic())
            pid = int(stats_of(mp)["pid"])
            time.sleep(rnd.uniform(0.05, 0.3))
            t = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while int(stats_of(mp)["pid"]) == pid:
                time.sleep(0.01)
            time.sleep(0.05)
            kill = reader.longest_between(t, time.monotonic())
            time.sleep(rnd.uniform(0.2, 0.6))
            t = time.monotonic()
            res = subprocess.run([*ZS, "restart", str(mp)], capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"restart failed: {res.stderr}")
            time.sleep(0.05)
            restart = reader.longest_between(t, time.monotonic())
            return {"quiet": quiet, "kill": kill, "restart": restart}

        raw = harness.interleave(["mount"], ctx.rounds, measure, ctx.log)
        reader.stop.set()
        reader.join()
        os.close(reader.fd)
        st = stats_of(mp)
    finally:
        res = subprocess.run([*ZS, "umount", str(mp)], capture_output=True, text=True)
        if res.returncode != 0:
            ctx.log(res.stderr + (tmp / "daemon.log").read_text()[-3000:])
    if st["failed_reads"]:
        raise RuntimeError(f"{st['failed_reads']} reads failed across the kills and restarts")
    samples = {"longest read": {k: v["mount"] for k, v in raw.items()}}
    extra = {
        "reads": len(reader.done),
        "takeovers": st["takeovers"],
        "failed_reads": st["failed_reads"],
    }
    return harness.make_result(
        sys.modules[__name__], ctx, {"size": size, "frontend": "native"}, samples, extra
    )


def tables(doc: dict[str, Any]) -> dict[str, str]:
    s, med, x = doc["samples"]["longest read"], doc["medians"]["longest read"], doc["extra"]
    names = {
        "kill": "server killed (-9) until the new one answers",
        "restart": "`zswapfs restart` (check, handover)",
        "quiet": "nothing done (this machine's noise)",
    }
    rows = [[names[k], harness.fmt(med[k], 3), harness.fmt(max(s[k]), 3)] for k in names]
    rows.append(
        [
            "reads / takeovers / failed reads over the run",
            "",
            f"{x['reads']:,} / {x['takeovers']} / {x['failed_reads']}",
        ]
    )
    return {"stall": harness.table(["longest 4 KiB read, s", "median", "max"], rows)}
