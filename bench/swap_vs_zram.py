"""The same memory hog on zswapfs swap and on kernel zram swap, in one run.

A memory cgroup limited to --limit (128M) runs `python -m zswapfs.lab.workloads.hog MIB`: it fills
MIB with checksummed, partly compressible pages and verifies them all, so it must swap. Once
with a zswapfs image as the only swap (lz4, zsmalloc; loop device with direct I/O, priority
100), once with /dev/zram0 (lz4) as the only swap. Prints wall time and the peaks of pages
stored, compressed size and memory used (sampled while the hog runs) for both, and the ratios.
zram0 is reset and its algorithm restored after.

    python bench/swap_vs_zram.py [--mib 512] [--limit 128M] [--codec lz4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from zswapfs.lab import cgroup, kzram
from zswapfs.service.config import parse_size


def run_hog(
    mib: int, limit: int, sample: Callable[[], dict[str, int]]
) -> tuple[float, dict[str, object], dict[str, int]]:
    """Run the hog; *sample* is polled while it runs and the peak of each figure kept (zram
    drops a page when the kernel frees its swap slot, e.g. when the hog exits, so figures read
    afterwards would be empty for zram and stale for zswapfs, which gets no such notice)."""
    peak: dict[str, int] = {}
    with cgroup.memory_cgroup(f"zswapfs-bench-{os.getpid()}", limit) as cg:
        t0 = time.monotonic()
        hog = cg.popen(
            [sys.executable, "-m", "zswapfs.lab.workloads.hog", str(mib)], stdout=subprocess.PIPE
        )
        while hog.poll() is None:
            for k, v in sample().items():
                peak[k] = max(peak.get(k, 0), v)
            time.sleep(0.2)
        wall = time.monotonic() - t0
        out = hog.stdout.read() if hog.stdout else ""
    if hog.returncode != 0:
        raise SystemExit(f"hog failed ({hog.returncode}): {out}")
    return wall, json.loads(out), peak


def zswapfs_run(mib: int, limit: int, codec: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="zswapfs-swapbench-") as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(f'size = "{2 * mib}M"\ncodec = "{codec}"\nmountpoint = "{tmp}/mnt"\n')
        zs = [sys.executable, "-m", "zswapfs"]
        subprocess.run([*zs, "swapon", "--config", str(config)], check=True, capture_output=True)
        stats_file = Path(tmp) / "mnt" / "stats"

        def sample() -> dict[str, int]:
            st = json.loads(stats_file.read_text())
            keys = ("stored_pages", "compr_data_size", "mem_used_total", "rss_bytes")
            return {k: int(st[k]) for k in keys}

        try:
            wall, hog, peak = run_hog(mib, limit, sample)
        finally:
            subprocess.run([*zs, "swapoff", "--config", str(config)], capture_output=True)
    return {"wall_s": wall, "hog": hog, **peak}


def zram_run(mib: int, limit: int, codec: str) -> dict[str, object]:
    with kzram.configured(2 * mib << 20, codec) as dev:
        subprocess.run(["mkswap", str(dev)], check=True, capture_output=True)
        subprocess.run(["swapon", "-p", "100", str(dev)], check=True, capture_output=True)

        def sample() -> dict[str, int]:
            st = kzram.mm_stat()
            return {
                "stored_pages": st["orig_data_size"] // 4096,
                "compr_data_size": st["compr_data_size"],
                "mem_used_total": st["mem_used_total"],
            }

        try:
            wall, hog, peak = run_hog(mib, limit, sample)
        finally:
            subprocess.run(["swapoff", str(dev)], capture_output=True)
    return {"wall_s": wall, "hog": hog, **peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--limit", default="128M")
    ap.add_argument("--codec", default="lz4")
    args = ap.parse_args()
    limit = parse_size(args.limit)
    if Path("/proc/swaps").read_text().count("\n") > 1:
        raise SystemExit("another swap device is on: the comparison needs ours alone")
    why = kzram.unavailable() or cgroup.unavailable()
    if why:
        raise SystemExit(why)
    ours = zswapfs_run(args.mib, limit, args.codec)
    zram = zram_run(args.mib, limit, args.codec)
    result = {
        "mib": args.mib,
        "limit": limit,
        "codec": args.codec,
        "zswapfs": ours,
        "zram": zram,
        "wall_ratio": ours["wall_s"] / zram["wall_s"],  # type: ignore[operator]
        "mem_ratio": ours["mem_used_total"] / zram["mem_used_total"],
    }  # type: ignore[operator]
    print(json.dumps(result, indent=1))
    print(
        f"hog {args.mib} MiB in a {args.limit} cgroup: zswapfs {ours['wall_s']:.1f} s, zram "
        f"{zram['wall_s']:.1f} s (x{result['wall_ratio']:.2f}); stored pages "
        f"{ours['stored_pages']} / {zram['stored_pages']}; compressed "
        f"{ours['compr_data_size']} / {zram['compr_data_size']} bytes; pool memory "
        f"{ours['mem_used_total']} / {zram['mem_used_total']} (x{result['mem_ratio']:.3f})"
    )


if __name__ == "__main__":
    main()
