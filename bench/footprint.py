"""The daemon's own memory: what it holds beside the pool, at start and after real memory has
gone through its image.

Each round mounts a fresh image (default configuration, native frontend) and reads the daemon's
RssAnon and RssShmem from /proc right after the mount, then after passes that write a corpus of
real memory (py_dicts, repeated to the write size) into the image with 1 MiB O_DIRECT writes, as
the swap-out of a big program does, and read it all back. The pool's pages and the engine's
tables live in memfds (RssShmem); everything else the daemon holds is RssAnon. The baseline is
the same daemon right after its mount.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from typing import Any

from bench import harness

NAME = "footprint"
QUESTION = "how much memory the daemon holds beside the pool, and its tables per stored page"
BASELINE = "at start"
NEEDS = ("root", "fuse")
ROUNDS = 3
UNITS = {
    "RssAnon": "MB",
    "RssShmem": "MB",
    "metadata per stored page": "B",
    "stored pages": "pages",
}
ZS = [sys.executable, "-m", "zswapfs"]


def status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def run(ctx: harness.Context) -> dict[str, Any]:
    size, total = ctx.pick(256 << 20, 2 << 30), ctx.pick(64 << 20, 1536 << 20)
    passes = ctx.pick(1, 2)
    corpus_path, _ = harness.real_corpus(ctx, "py_dicts", ctx.pick(16, 96))
    corpus = corpus_path.read_bytes()

    def measure(target: str, r: int) -> dict[str, float]:
        # one target: the daemon, measured at start and after the passes
        mp = ctx.workdir / f"mnt{r}"
        mp.mkdir()
        subprocess.run(
            [*ZS, "mount", str(mp), "--size", str(size), "--log", str(ctx.workdir / "daemon.log")],
            check=True,
            capture_output=True,
        )
        try:
            pid = json.loads((mp / "stats").read_text())["pid"]
            start = status(pid)
            buf = mmap.mmap(-1, 1 << 20)
            for _ in range(passes):
                fd = os.open(mp / "swap.img", os.O_RDWR | os.O_DIRECT)
                try:
                    for off in range(0, total, 1 << 20):
                        at = off % len(corpus)
                        buf[:] = corpus[at : at + (1 << 20)]
                        os.pwrite(fd, buf, off)
                    for off in range(0, total, 1 << 20):
                        os.preadv(fd, [buf], off)
                finally:
                    os.close(fd)
            after = status(pid)
            st = json.loads((mp / "stats").read_text())
        finally:
            subprocess.run([*ZS, "umount", str(mp)], capture_output=True)
        return {
            "start RssAnon": start["RssAnon"] / 1e6,
            "start RssShmem": start["RssShmem"] / 1e6,
            "after RssAnon": after["RssAnon"] / 1e6,
            "after RssShmem": after["RssShmem"] / 1e6,
            "metadata": st["metadata_bytes"] / max(st["stored_pages"], 1),
            "stored": st["stored_pages"],
        }

    raw = harness.interleave(["daemon"], ctx.rounds, measure, ctx.log)
    # regrouped so that "at start" and "after writes" are targets of one metric
    samples = {
        "RssAnon": {
            "at start": raw["start RssAnon"]["daemon"],
            "after writes": raw["after RssAnon"]["daemon"],
        },
        "RssShmem": {
            "at start": raw["start RssShmem"]["daemon"],
            "after writes": raw["after RssShmem"]["daemon"],
        },
        "metadata per stored page": {"after writes": raw["metadata"]["daemon"]},
        "stored pages": {"after writes": raw["stored"]["daemon"]},
    }
    params = {
        "size": size,
        "written": total,
        "passes": passes,
        "frontend": "native",
        "corpus": "py_dicts",
    }
    return harness.make_result(sys.modules[__name__], ctx, params, samples)


def tables(doc: dict[str, Any]) -> dict[str, str]:
    med, p = doc["medians"], doc["params"]
    after = f"after {p['passes']} passes of {p['written'] / 2**20:,.0f} MiB written and read"
    rows = [
        [
            "RssAnon (the daemon beside the pool), MB",
            harness.fmt(med["RssAnon"]["at start"], 1),
            harness.fmt(med["RssAnon"]["after writes"], 1),
        ],
        [
            "RssShmem (pool pages and the engine's tables, memfds), MB",
            harness.fmt(med["RssShmem"]["at start"], 1),
            harness.fmt(med["RssShmem"]["after writes"], 1),
        ],
        [
            "tables per stored page (`metadata_bytes` / `stored_pages`), B",
            "",
            harness.fmt(med["metadata per stored page"]["after writes"], 1),
        ],
        ["stored pages", "", harness.fmt(med["stored pages"]["after writes"])],
    ]
    return {"memory": harness.table(["", "right after the mount", after], rows)}
