"""Programs swapping through zswapfs beside the yardsticks: wall time, and how much of a
program's memory is left in the pool 5 s after it exits (discard frees the rest).

Programs, each in a memory cgroup smaller than its data, so it can only run by swapping:
    bulk     writes real captured memory (py_dicts) and verifies it twice (corpus_hog)
    dicts    a Python program with dict records, random lookups
    sqlite   an in-memory SQLite table, random queries
Swap devices, each the only swap while a program runs (loop devices with direct I/O,
`swapon --discard=pages`, priority 100), taking turns in every round:
    zswapfs   `zswapfs swapon`, default configuration (native frontend, lz4, zsmalloc)
    c-ram     the minimal C libfuse file keeping pages in RAM (zswapfs.lab.ramfs): the baseline
    zram      /dev/zram0, lz4
Every program's checksum must agree across devices (a page swapped in wrong shows). A run the
cgroup's OOM killer ends is counted per device and left out of the times.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import harness
from zswapfs.lab import cgroup, kzram
from zswapfs.lab.ramfs import ramfs_mounted
from zswapfs.service.safepath import default_log

NAME = "swap_programs"
QUESTION = "how long programs take when they swap through zswapfs, against a C FUSE file and zram"
BASELINE = "c-ram"
NEEDS = ("root", "fuse", "zram", "cgroup", "swap-free")
ROUNDS = 3
PROGRAMS = ("bulk", "dicts", "sqlite")
DEVICES = ("zswapfs", "c-ram", "zram")
UNITS = {f"{p} wall": "s" for p in PROGRAMS} | {
    f"{p} pages left after 5 s": "pages" for p in PROGRAMS
}
ZS = [sys.executable, "-m", "zswapfs"]
IMAGE = 2 << 30


def programs(ctx: harness.Context, corpus: Path) -> dict[str, tuple[list[str], int, str]]:
    """name: (command, cgroup limit, what it is)."""
    mod = [sys.executable, "-m"]
    bulk, dicts, sqlite = ctx.pick((64, 32, 24), (380, 320, 128))
    lookups = ctx.pick(5000, 100_000)
    lim = ctx.pick((24 << 20, 24 << 20, 16 << 20), (128 << 20, 200 << 20, 64 << 20))
    return {
        "bulk": (
            [*mod, "zswapfs.lab.workloads.corpus_hog", str(corpus), str(bulk)],
            lim[0],
            f"{bulk} MiB of real memory written and verified",
        ),
        "dicts": (
            [*mod, "zswapfs.lab.workloads.random_access", "dicts", str(dicts), str(lookups)],
            lim[1],
            f"{dicts} MiB of Python dicts, {lookups:,} lookups",
        ),
        "sqlite": (
            [*mod, "zswapfs.lab.workloads.random_access", "sqlite", str(sqlite), str(2 * lookups)],
            lim[2],
            f"{sqlite} MiB SQLite table, {2 * lookups:,} queries",
        ),
    }


def run_program(cmd: list[str], limit: int) -> tuple[float, dict[str, Any]]:
    with cgroup.memory_cgroup(f"zswapfs-bench-{time.monotonic_ns()}", limit) as cg:
        t0 = time.monotonic()
        proc = cg.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        wall = time.monotonic() - t0
    if proc.returncode == -9:  # the cgroup's OOM killer (docs/swap.md): counted, not timed
        return wall, {"oom_killed": True}
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {err[-2000:]!r}")
    report = dict(json.loads(out))
    if report.get("bad_pages"):
        raise RuntimeError(f"{cmd}: {report['bad_pages']} pages read back wrong")
    return wall, report


def swap_on(dev: str) -> None:
    subprocess.run(["mkswap", dev], check=True, capture_output=True)
    subprocess.run(["swapon", "--discard=pages", "-p", "100", dev], check=True, capture_output=True)


@contextlib.contextmanager
def zswapfs_swap(tmp: Path) -> Iterator[Path]:
    config = tmp / "bench.toml"
    config.write_text(f'size = "{IMAGE}"\nmountpoint = "{tmp}/mnt"\nswap-priority = 100\n')
    subprocess.run([*ZS, "swapon", "--config", str(config)], check=True, capture_output=True)
    try:
        yield tmp / "mnt"
    finally:
        subprocess.run([*ZS, "swapoff", "--config", str(config)], capture_output=True)
        Path(default_log(f"{tmp}/mnt")).unlink(missing_ok=True)


@contextlib.contextmanager
def c_ram_swap(tmp: Path) -> Iterator[None]:
    with ramfs_mounted(tmp / "mnt", IMAGE, tmp / "c-ram.log") as image:
        dev = subprocess.run(["losetup", "--direct-io=on", "-f", "--show", str(image)],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        try:
            swap_on(dev)
            yield
        finally:
            subprocess.run(["swapoff", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)


@contextlib.contextmanager
def zram_swap() -> Iterator[None]:
    with kzram.configured(IMAGE, "lz4") as dev:
        swap_on(str(dev))
        try:
            yield
        finally:
            subprocess.run(["swapoff", str(dev)], capture_output=True)


def run(ctx: harness.Context) -> dict[str, Any]:
    corpus, _ = harness.real_corpus(ctx, "py_dicts", ctx.pick(16, 96))
    progs = programs(ctx, corpus)
    checksums: dict[str, set[Any]] = {p: set() for p in progs}
    oom = {p: dict.fromkeys(DEVICES, 0) for p in progs}

    def measure(device: str, r: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for prog, (cmd, limit, _) in progs.items():
            tmp = ctx.workdir / f"{device}-{prog}-{r}"
            tmp.mkdir()
            if device == "zswapfs":
                with zswapfs_swap(tmp) as mp:
                    before = json.loads((mp / "stats").read_text())["stored_pages"]
                    wall, report = run_program(cmd, limit)
                    time.sleep(5)
                    left = json.loads((mp / "stats").read_text())["stored_pages"] - before
                out[f"{prog} pages left after 5 s"] = left
            else:
                with c_ram_swap(tmp) if device == "c-ram" else zram_swap():
                    wall, report = run_program(cmd, limit)
            if report.get("oom_killed"):
                oom[prog][device] += 1
            else:
                out[f"{prog} wall"] = wall
                checksums[prog].add(json.dumps(report.get("checksum")))
            killed = " (OOM-killed)" if report.get("oom_killed") else ""
            ctx.log(f"  {prog} on {device}: {wall:.2f} s{killed}")
        return out

    samples = harness.interleave(DEVICES, ctx.rounds, measure, ctx.log)
    for prog, sums in checksums.items():
        if len(sums) > 1:
            raise RuntimeError(f"{prog}: checksums differ between devices: {sums}")
    params = {
        "programs": {
            p: {"command": c[2:], "cgroup_limit": lim, "what": what}
            for p, (c, lim, what) in progs.items()
        },
        "devices": DEVICES,
        "image": IMAGE,
    }
    return harness.make_result(sys.modules[__name__], ctx, params, samples, {"oom_killed": oom})


def tables(doc: dict[str, Any]) -> dict[str, str]:
    med, rat, p = doc["medians"], doc["ratios"], doc["params"]
    oom = doc["extra"]["oom_killed"]
    head = [
        "program (seconds)",
        *DEVICES,
        "zswapfs / c-ram",
        "zswapfs / zram",
        "pages left 5 s after exit",
        "OOM-killed (zswapfs / c-ram / zram)",
    ]
    rows = []
    for prog, info in p["programs"].items():
        m, r = med.get(f"{prog} wall", {}), rat.get(f"{prog} wall", {})
        zr = m["zswapfs"] / m["zram"] if "zswapfs" in m and "zram" in m else None
        left = doc["samples"].get(f"{prog} pages left after 5 s", {}).get("zswapfs", [])
        rows.append(
            [
                f"{prog}: {info['what']}, {info['cgroup_limit'] >> 20} MiB cgroup",
                *(harness.fmt(m.get(d), 1) for d in DEVICES),
                harness.fmt(r.get("zswapfs"), 2),
                harness.fmt(zr, 2),
                "max " + harness.fmt(max(left)) if left else "-",
                " / ".join(str(oom[prog][d]) for d in DEVICES),
            ]
        )
    return {"programs": harness.table(head, rows)}
