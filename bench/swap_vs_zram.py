"""The same memory hog on zswapfs swap and on kernel zram swap, in one run.

A memory cgroup limited to --limit (128M) runs `python -m zswapfs.lab.workloads.hog MIB`: it fills
MIB with checksummed, partly compressible pages and verifies them all, so it must swap (with
--corpus FILE, `python -m zswapfs.lab.workloads.corpus_hog FILE MIB` copies real captured memory
instead and verifies it twice). Once
with a zswapfs image as the only swap (lz4, zsmalloc; loop device with direct I/O, priority
100), once with /dev/zram0 (lz4) as the only swap. Prints wall time and the peaks of pages
stored, compressed size and memory used (sampled while the hog runs) for both, and the ratios.
After the hog, zswapfs is sampled --settle seconds more: the freed swap slots it still holds (no
discard reaches it) go through the background recompression, and the figures at the end show
what they cost once it settled. zram0 is reset and its algorithm restored after.

    python bench/swap_vs_zram.py [--mib 512] [--limit 128M] [--codec lz4] [--corpus FILE]
                                 [--settle 60] [--rounds 1]
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


def hog_command(mib: int, corpus: str | None) -> list[str]:
    if corpus:
        return [sys.executable, "-m", "zswapfs.lab.workloads.corpus_hog", corpus, str(mib)]
    return [sys.executable, "-m", "zswapfs.lab.workloads.hog", str(mib)]


def run_hog(
    cmd: list[str], limit: int, sample: Callable[[], dict[str, int]]
) -> tuple[float, dict[str, object], dict[str, int]]:
    """Run the hog; *sample* is polled while it runs and the peak of each figure kept (zram
    drops a page when the kernel frees its swap slot, e.g. when the hog exits, so figures read
    afterwards would be empty for zram and stale for zswapfs, which gets no such notice)."""
    peak: dict[str, int] = {}
    with cgroup.memory_cgroup(f"zswapfs-bench-{os.getpid()}", limit) as cg:
        t0 = time.monotonic()
        hog = cg.popen(cmd, stdout=subprocess.PIPE)
        while hog.poll() is None:
            for k, v in sample().items():
                peak[k] = max(peak.get(k, 0), v)
            time.sleep(0.2)
        wall = time.monotonic() - t0
        out = hog.stdout.read() if hog.stdout else ""
    if hog.returncode != 0:
        raise SystemExit(f"hog failed ({hog.returncode}): {out}")
    return wall, json.loads(out), peak


def zswapfs_run(
    cmd: list[str], mib: int, limit: int, codec: str, settle: float
) -> dict[str, object]:
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
            wall, hog, peak = run_hog(cmd, limit, sample)
            time.sleep(settle)  # the freed slots stay stored: recompression works on them
            st = json.loads(stats_file.read_text())
            settled = {
                "after_s": settle,
                "stored_pages": st["stored_pages"],
                "mem_used_total": st["mem_used_total"],
                "recompressed_pages": st.get("recompressed_pages", 0),
                "pages_deduped": st.get("pages_deduped", 0),
                "dict_bytes": st.get("dict_bytes", 0),
            }
        finally:
            subprocess.run([*zs, "swapoff", "--config", str(config)], capture_output=True)
    return {"wall_s": wall, "hog": hog, **peak, "settled": settled}


def zram_run(cmd: list[str], mib: int, limit: int, codec: str) -> dict[str, object]:
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
            wall, hog, peak = run_hog(cmd, limit, sample)
        finally:
            subprocess.run(["swapoff", str(dev)], capture_output=True)
    return {"wall_s": wall, "hog": hog, **peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--limit", default="128M")
    ap.add_argument("--codec", default="lz4")
    ap.add_argument("--corpus", help="swap this captured memory (corpus_hog) instead of the hog")
    ap.add_argument("--settle", type=float, default=60.0, help="seconds to watch zswapfs after")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, zswapfs and zram alternating")
    args = ap.parse_args()
    limit = parse_size(args.limit)
    if Path("/proc/swaps").read_text().count("\n") > 1:
        raise SystemExit("another swap device is on: the comparison needs ours alone")
    why = kzram.unavailable() or cgroup.unavailable()
    if why:
        raise SystemExit(why)
    cmd = hog_command(args.mib, args.corpus)
    rounds = []
    for _ in range(args.rounds):
        ours = zswapfs_run(cmd, args.mib, limit, args.codec, args.settle)
        zram = zram_run(cmd, args.mib, limit, args.codec)
        rounds.append((ours, zram))
    walls = sorted(rounds, key=lambda r: r[0]["wall_s"] / r[1]["wall_s"])  # type: ignore[operator]
    ours, zram = walls[len(walls) // 2]  # the median round by wall ratio
    result = {
        "mib": args.mib,
        "limit": limit,
        "codec": args.codec,
        "corpus": args.corpus,
        "zswapfs": ours,
        "zram": zram,
        "rounds": [{"zswapfs": o, "zram": z} for o, z in rounds],
        "wall_ratio": ours["wall_s"] / zram["wall_s"],  # type: ignore[operator]
        "mem_ratio": ours["mem_used_total"] / zram["mem_used_total"],  # type: ignore[operator]
        "settled_mem_ratio": ours["settled"]["mem_used_total"] / zram["mem_used_total"],  # type: ignore[index]
    }
    print(json.dumps(result, indent=1))
    print(
        f"hog {args.mib} MiB in a {args.limit} cgroup: zswapfs {ours['wall_s']:.1f} s, zram "
        f"{zram['wall_s']:.1f} s (x{result['wall_ratio']:.2f}); stored pages "
        f"{ours['stored_pages']} / {zram['stored_pages']}; compressed "
        f"{ours['compr_data_size']} / {zram['compr_data_size']} bytes; pool memory "
        f"{ours['mem_used_total']} / {zram['mem_used_total']} (x{result['mem_ratio']:.3f}); "
        f"zswapfs {args.settle:g} s after: {ours['settled']['mem_used_total']} bytes "  # type: ignore[index]
        f"(x{result['settled_mem_ratio']:.3f} zram's peak)"
    )


if __name__ == "__main__":
    main()
