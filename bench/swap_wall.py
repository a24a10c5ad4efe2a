"""Swap wall time: zswapfs (one image, and N stripes of one daemon each) against its yardsticks.

Each round runs the same memory hog (`python -m zswapfs.lab.workloads.hog MIB`: fills MIB with
checksummed, partly compressible pages and verifies them all) in a memory cgroup limited to
--limit, once per configuration, the configurations interleaved round by round so drift on a
shared machine hits them alike:
    stripes=1, stripes=N   zswapfs swap (`zswapfs swapon --stripes N`), lz4 + zsmalloc
    ram-fuse               the minimal pyfuse3 file keeping pages in memory, uncompressed
                           (`python -m zswapfs.lab.nullfs --keep ram`): the ceiling of any swap
                           served by one pyfuse3 session
    zram                   /dev/zram0, lz4
Every swap is the only one on while its hog runs (loop devices with direct I/O, priority 100).
Prints per-configuration wall times, their medians and the ratios of the medians against one
stripe, the RAM-keeping file and zram.

    python bench/swap_wall.py [--mib 512] [--limit 128M] [--stripes 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zswapfs.lab import cgroup, kzram
from zswapfs.lab.procs import reap
from zswapfs.service.config import parse_size
from zswapfs.service.safepath import default_log


def hog_seconds(mib: int, limit: int) -> float | None:
    """Wall time of one hog run; None when the cgroup's OOM killer ended it (SIGKILL), which
    the kernel does when reclaim stops making progress; any other failure, and above all a
    page read back wrong, ends the bench."""
    with cgroup.memory_cgroup(f"zswapfs-stripebench-{time.monotonic_ns()}", limit) as cg:
        t0 = time.monotonic()
        hog = cg.popen(
            [sys.executable, "-m", "zswapfs.lab.workloads.hog", str(mib)], stdout=subprocess.PIPE
        )
        out = hog.communicate()[0]
        wall = time.monotonic() - t0
    if hog.returncode == -signal.SIGKILL:
        return None
    if hog.returncode != 0 or json.loads(out)["bad_pages"]:
        raise SystemExit(f"hog failed ({hog.returncode}): {out}")
    return wall


def zswapfs_round(mib: int, limit: int, stripes: int) -> float | None:
    with tempfile.TemporaryDirectory(prefix="zswapfs-stripebench-") as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(f'size = "{2 * mib}M"\nmountpoint = "{tmp}/mnt"\nstripes = {stripes}\n')
        zs = [sys.executable, "-m", "zswapfs"]
        subprocess.run([*zs, "swapon", "--config", str(config)], check=True, capture_output=True)
        try:
            return hog_seconds(mib, limit)
        finally:
            subprocess.run([*zs, "swapoff", "--config", str(config)], capture_output=True)
            # the daemons' logs (one a stripe, in the default log directory) go with the round
            names = ["mnt"] if stripes == 1 else [f"mnt-{i}" for i in range(stripes)]
            for name in names:
                Path(default_log(f"{tmp}/{name}")).unlink(missing_ok=True)


def ram_fuse_round(mib: int, limit: int) -> float | None:
    with tempfile.TemporaryDirectory(prefix="zswapfs-swapbench-") as tmp:
        mp = Path(tmp) / "mnt"
        mp.mkdir()
        with open(Path(tmp) / "ram.log", "wb") as log:
            daemon = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "zswapfs.lab.nullfs",
                    str(mp),
                    "--size",
                    f"{2 * mib}M",
                    "--keep",
                    "ram",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        dev = ""
        try:
            deadline = time.monotonic() + 60
            while not os.path.ismount(mp):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the RAM-keeping file did not mount: {tmp}/ram.log")
                time.sleep(0.05)
            dev = subprocess.run(
                ["losetup", "--direct-io=on", "-f", "--show", str(mp / "swap.img")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            subprocess.run(["mkswap", dev], check=True, capture_output=True)
            subprocess.run(["swapon", "-p", "100", dev], check=True, capture_output=True)
            return hog_seconds(mib, limit)
        finally:
            if dev:
                subprocess.run(["swapoff", dev], capture_output=True)
                subprocess.run(["losetup", "-d", dev], capture_output=True)
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
            reap(daemon, wait=10)


def zram_round(mib: int, limit: int) -> float | None:
    with kzram.configured(2 * mib << 20, "lz4") as dev:
        subprocess.run(["mkswap", str(dev)], check=True, capture_output=True)
        subprocess.run(["swapon", "-p", "100", str(dev)], check=True, capture_output=True)
        try:
            return hog_seconds(mib, limit)
        finally:
            subprocess.run(["swapoff", str(dev)], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--limit", default="128M")
    ap.add_argument("--stripes", default="2", help="comma list of stripe counts beside 1")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    limit = parse_size(args.limit)
    if Path("/proc/swaps").read_text().count("\n") > 1:
        raise SystemExit("another swap device is on: the comparison needs ours alone")
    why = kzram.unavailable() or cgroup.unavailable()
    if why:
        raise SystemExit(why)
    counts = [1] + [int(n) for n in args.stripes.split(",") if int(n) != 1]
    walls: dict[str, list[float]] = {f"stripes={n}": [] for n in counts}
    walls |= {"ram-fuse": [], "zram": []}
    oom_killed = {k: 0 for k in walls}
    for r in range(args.rounds):
        this: dict[str, float | None] = {}
        for n in counts:
            this[f"stripes={n}"] = zswapfs_round(args.mib, limit, n)
        this["ram-fuse"] = ram_fuse_round(args.mib, limit)
        this["zram"] = zram_round(args.mib, limit)
        for name, wall in this.items():
            if wall is None:
                oom_killed[name] += 1
            else:
                walls[name].append(wall)
        print(
            f"round {r + 1}: "
            + ", ".join(
                f"{k} {v:.2f} s" if v is not None else f"{k} OOM-killed" for k, v in this.items()
            ),
            file=sys.stderr,
            flush=True,
        )
    if not all(walls.values()):
        raise SystemExit(f"a configuration never finished: OOM kills {oom_killed}")
    med = {k: statistics.median(v) for k, v in walls.items()}
    result = {
        "mib": args.mib,
        "limit": limit,
        "rounds": args.rounds,
        "wall_s": walls,
        "median_s": med,
        "oom_killed": oom_killed,
        "vs_one_stripe": {k: v / med["stripes=1"] for k, v in med.items()},
        "vs_ram_fuse": {k: v / med["ram-fuse"] for k, v in med.items()},
        "vs_zram": {k: v / med["zram"] for k, v in med.items()},
        "loadavg_end": list(os.getloadavg()),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
