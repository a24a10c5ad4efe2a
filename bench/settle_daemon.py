"""Density through a mount, over time, against kernel zram on the same pages.

A mount with the default settings (lz4, zsmalloc, recompression zstd:9 after 20 s idle, dedup)
and the size of the corpus gets the corpus with `dd bs=1M oflag=direct`; then its density
(original bytes / (mem_used_total + metadata_bytes), dictionaries included) is sampled every
--every seconds for --settle seconds. /dev/zram0 (lz4) gets the same pages in the same run;
its density counts its 16-byte slot table as metadata. Prints the samples, the ratio at the
end and when it first reached 1.5x.

    python bench/settle_daemon.py --corpus FILE.pages [--settle 60] [--every 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.lab import bench, kzram
from zswapfs.lab.replay import stats_density


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", required=True, type=Path)
    p.add_argument("--settle", type=float, default=60)
    p.add_argument("--every", type=float, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    data = args.corpus.read_bytes()
    size = len(data) // (1 << 20) * (1 << 20)
    if not size:
        raise SystemExit("the corpus is smaller than 1 MiB")
    data = data[:size]
    zram = kzram.measure(data, "lz4")
    zram_density = stats_density(zram)
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zswapfs-settle-") as d:
        tmp = Path(d)
        (tmp / "corpus").write_bytes(data)
        (tmp / "mnt").mkdir()
        with bench.fio.zswapfs_mounted(tmp / "mnt", size, "zsmalloc", "lz4", tmp / "log") as img:
            subprocess.run(
                ["dd", f"if={tmp / 'corpus'}", f"of={img}", "bs=1M", "oflag=direct"],
                check=True,
                capture_output=True,
            )
            written = time.monotonic()
            while True:
                st = bench.fio.read_mount_stats(img.parent)
                at = time.monotonic() - written
                density = stats_density(st)
                samples.append(
                    {
                        "after_s": round(at, 1),
                        "density": density,
                        "vs_zram": density / zram_density,
                        "recompressed_pages": st["recompressed_pages"],
                        "mem_used_total": st["mem_used_total"],
                    }
                )
                print(
                    f"{at:5.1f} s  density {density:.3f}  {density / zram_density:.3f}x zram  "
                    f"recompressed {st['recompressed_pages']}/{st['stored_pages']}",
                    flush=True,
                )
                if at >= args.settle:
                    break
                time.sleep(min(args.every, args.settle - at + 0.05))
    first = next((s["after_s"] for s in samples if s["vs_zram"] >= 1.5), None)
    print(
        f"\n{len(data) // PAGE_SIZE} pages; zram lz4 density {zram_density:.3f}; after "
        f"{samples[-1]['after_s']} s {samples[-1]['vs_zram']:.3f}x zram; 1.5x first reached "
        f"{'after ' + str(first) + ' s' if first is not None else 'never'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "corpus": str(args.corpus),
                    "zram": zram,
                    "zram_density": zram_density,
                    "samples": samples,
                    "first_1_5x_s": first,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
