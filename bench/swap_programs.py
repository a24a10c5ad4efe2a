"""Programs swapping through zswapfs beside the yardsticks, in one run: wall time and how much of
a program's memory is left in the pool after it exits.

Programs (each in a memory cgroup smaller than its data, so it can only run by swapping):
    bulk     fills MIB of memory and verifies it (with --corpus FILE: a corpus of real memory,
             `python -m zswapfs.lab.workloads.corpus_hog`; else the synthetic hog)
    dicts    a Python program with 320 MiB of dict records, 100,000 random lookups (160 MiB cgroup)
    sqlite   an in-memory SQLite table of 128 MiB, 200,000 random queries (64 MiB cgroup)
Swap devices, each the only swap on while a program runs (loop devices with direct I/O,
`swapon --discard=pages`, priority 100), the rounds interleaved so drift on a shared machine
hits them alike:
    zswapfs          `zswapfs swapon` with the default native frontend (lz4, zsmalloc)
    zswapfs-pyfuse3  the same served by the pyfuse3 reference frontend
    c-ram            the minimal C libfuse file keeping pages in RAM (zswapfs.lab.ramfs)
    py-ram           the minimal pyfuse3 file keeping pages in RAM (zswapfs.lab.nullfs)
    zram             /dev/zram0, lz4
Each program's checksum must be the same on every device (a page swapped in wrong shows). For
zswapfs, the pages left in the pool 5 s after the program exits are recorded (discard frees
the rest). A run the cgroup's OOM killer ends is counted per device and left out of the times.

    python bench/swap_programs.py [--rounds 3] [--programs bulk,dicts,sqlite]
        [--devices zswapfs,c-ram,zram,...] [--corpus FILE] [--mib 380] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zswapfs.lab import cgroup, kzram
from zswapfs.lab.procs import reap
from zswapfs.service.safepath import default_log

ZS = [sys.executable, "-m", "zswapfs"]
IMAGE = 2 << 30
DEVICES = ("zswapfs", "zswapfs-pyfuse3", "c-ram", "py-ram", "zram")


def program(name: str, mib: int, corpus: str | None) -> tuple[list[str], int]:
    """(command, cgroup limit) of a program."""
    mod = [sys.executable, "-m"]
    if name == "bulk":
        if corpus:
            return [*mod, "zswapfs.lab.workloads.corpus_hog", corpus, str(mib)], 128 << 20
        return [*mod, "zswapfs.lab.workloads.hog", str(mib)], 128 << 20
    if name == "dicts":
        return [*mod, "zswapfs.lab.workloads.random_access", "dicts", "320", "100000"], 160 << 20
    if name == "sqlite":
        return [*mod, "zswapfs.lab.workloads.random_access", "sqlite", "128", "200000"], 64 << 20
    raise SystemExit(f"unknown program {name}")


def run_program(cmd: list[str], limit: int) -> tuple[float, dict[str, Any]]:
    with cgroup.memory_cgroup(f"zswapfs-bench-{time.monotonic_ns()}", limit) as cg:
        t0 = time.monotonic()
        proc = cg.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        wall = time.monotonic() - t0
    if proc.returncode == -9:  # the cgroup's OOM killer (docs/swap.md): counted, not timed
        return wall, {"oom_killed": True}
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}): {err[-2000:]}")
    report = json.loads(out)
    if report.get("bad_pages"):
        raise SystemExit(f"{cmd}: {report['bad_pages']} pages read back wrong")
    return wall, report


def swap_on(dev: str) -> None:
    subprocess.run(["mkswap", dev], check=True, capture_output=True)
    subprocess.run(["swapon", "--discard=pages", "-p", "100", dev], check=True, capture_output=True)


@contextlib.contextmanager
def zswapfs_swap(tmp: Path, frontend: str) -> Iterator[Path]:
    config = tmp / "bench.toml"
    config.write_text(f'size = "{IMAGE}"\nmountpoint = "{tmp}/mnt"\nfrontend = "{frontend}"\n'
                      'swap-priority = 100\n')  # fmt: skip
    subprocess.run([*ZS, "swapon", "--config", str(config)], check=True, capture_output=True)
    try:
        yield tmp / "mnt"
    finally:
        subprocess.run([*ZS, "swapoff", "--config", str(config)], capture_output=True)
        Path(default_log(f"{tmp}/mnt")).unlink(missing_ok=True)


@contextlib.contextmanager
def yardstick_swap(tmp: Path, module: str, args: list[str]) -> Iterator[None]:
    mp = tmp / "mnt"
    mp.mkdir()
    with open(tmp / "yardstick.log", "wb") as log:
        cmd = [sys.executable, "-m", module, str(mp), "--size", str(IMAGE), *args]
        daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    dev = ""
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mp):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{module} did not mount: {(tmp / 'yardstick.log').read_text()}")
            time.sleep(0.05)
        dev = subprocess.run(["losetup", "--direct-io=on", "-f", "--show", str(mp / "swap.img")],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        swap_on(dev)
        yield
    finally:
        if dev:
            subprocess.run(["swapoff", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        reap(daemon, wait=10)


@contextlib.contextmanager
def zram_swap() -> Iterator[None]:
    with kzram.configured(IMAGE, "lz4") as dev:
        swap_on(str(dev))
        try:
            yield
        finally:
            subprocess.run(["swapoff", str(dev)], capture_output=True)


def one_run(device: str, cmd: list[str], limit: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="zswapfs-progbench-") as d:
        tmp = Path(d)
        if device.startswith("zswapfs"):
            frontend = "pyfuse3" if device == "zswapfs-pyfuse3" else "native"
            with zswapfs_swap(tmp, frontend) as mp:
                before = json.loads((mp / "stats").read_text())
                wall, report = run_program(cmd, limit)
                time.sleep(5)
                after = json.loads((mp / "stats").read_text())
                left = after["stored_pages"] - before["stored_pages"]
                return {"wall_s": wall, "report": report, "pages_left_after_5s": left,
                        "notify_free": after["notify_free"]}  # fmt: skip
        if device == "c-ram":
            ctx: Any = yardstick_swap(tmp, "zswapfs.lab.ramfs", ["--threads", "4"])
        elif device == "py-ram":
            ctx = yardstick_swap(tmp, "zswapfs.lab.nullfs", ["--keep", "ram"])
        else:
            ctx = zram_swap()
        with ctx:
            wall, report = run_program(cmd, limit)
        return {"wall_s": wall, "report": report}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--programs", default="bulk,dicts,sqlite")
    ap.add_argument("--devices", default="zswapfs,c-ram,zram")
    ap.add_argument("--corpus", help="a page corpus for the bulk program (zswapfs capture)")
    ap.add_argument("--mib", type=int, default=380, help="the bulk program's memory")
    ap.add_argument("--out", help="write the results (JSON) here too")
    args = ap.parse_args()
    programs = [p for p in args.programs.split(",") if p]
    devices = [d for d in args.devices.split(",") if d]
    for d in devices:
        if d not in DEVICES:
            raise SystemExit(f"unknown device {d} (known: {', '.join(DEVICES)})")
    if Path("/proc/swaps").read_text().count("\n") > 1:
        raise SystemExit("another swap device is on: the comparison needs ours alone")
    why = cgroup.unavailable() or ("zram" in devices and kzram.unavailable())
    if why:
        raise SystemExit(str(why))
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        p: {d: [] for d in devices} for p in programs
    }
    for r in range(args.rounds):
        for prog in programs:
            cmd, limit = program(prog, args.mib, args.corpus)
            for dev in devices:
                res = one_run(dev, cmd, limit)
                runs[prog][dev].append(res)
                print(f"round {r + 1} {prog} {dev}: {res['wall_s']:.2f} s"
                      + (f", {res['pages_left_after_5s']} pages left after 5 s"
                         if "pages_left_after_5s" in res else ""),
                      file=sys.stderr, flush=True)  # fmt: skip
    summary: dict[str, Any] = {}
    for prog in programs:
        sums = {
            res["report"]["checksum"]
            for d in devices
            for res in runs[prog][d]
            if "checksum" in res["report"]
        }
        if len(sums) > 1:
            raise SystemExit(f"{prog}: checksums differ between devices: {sums}")
        done = {d: [x for x in runs[prog][d] if not x["report"].get("oom_killed")] for d in devices}
        summary[prog] = {"oom_killed": {d: len(runs[prog][d]) - len(done[d]) for d in devices}}
        if not all(done.values()):
            continue  # a device whose every run was killed: no time to quote
        med = {d: statistics.median(x["wall_s"] for x in done[d]) for d in devices}
        summary[prog]["median_s"] = med
        for base in ("c-ram", "zram"):
            if base in med:
                summary[prog][f"vs_{base}"] = {d: med[d] / med[base] for d in devices}
        left = [x["pages_left_after_5s"] for x in runs[prog].get("zswapfs", [])]
        if left:
            summary[prog]["zswapfs_pages_left_after_5s"] = max(left)
    result = {
        "bench": "swap_programs",
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "loadavg_end": list(os.getloadavg())},
        "rounds": args.rounds,
        "corpus": args.corpus,
        "summary": summary,
        "runs": runs,
    }  # fmt: skip
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
