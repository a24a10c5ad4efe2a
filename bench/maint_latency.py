"""p99 4K read latency with and without continuous background compaction, in one run.

Both runs mount the same image size, prefill it with compressible pages, and keep a second
writer churning the upper half (zeros and fresh pages: frees that fragment the pool) while fio
does 4K random reads at QD1 on the lower half. The only difference: maintenance is aggressive
(compaction and migration on every pass, 5 ms apart) or off (interval 3600 s).

    python bench/maint_latency.py [--pool zsmalloc] [--seconds 20] [--size 128M]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE = 4096


def page_for(rnd: random.Random, tag: int) -> bytes:
    body = b"record %d " % tag * rnd.randint(20, 400)
    return (body + rnd.randbytes(rnd.randint(0, 1500))).ljust(PAGE, b"\0")[:PAGE]


def zswapfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zswapfs", *args], capture_output=True, text=True, check=True
    )


def one_run(mp: Path, size: int, pool: str, aggressive: bool, seconds: int) -> dict[str, float]:
    extra = (
        ["--maintenance-interval", "0.005", "--aggressive-maintenance"]
        if aggressive
        else ["--maintenance-interval", "3600"]
    )
    zswapfs("mount", str(mp), "--size", str(size), "--pool", pool, *extra)
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
        stop.set()
        writer.join()
        stats = json.loads((mp / "stats").read_text())
        clat = json.loads(out)["jobs"][0]["read"]["clat_ns"]
        return {
            "p50_us": clat["percentile"]["50.000000"] / 1000,
            "p99_us": clat["percentile"]["99.000000"] / 1000,
            "mean_us": clat["mean"] / 1000,
            "compact_steps": stats["maintenance"]["compact_steps"],
            "migrated_pages": stats["maintenance"]["migrated_pages"],
            "pages_compacted": stats["pages_compacted"],
        }
    finally:
        stop.set()
        zswapfs("umount", str(mp))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="zsmalloc")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--size", default="128M")
    args = ap.parse_args()
    size = int(args.size[:-1]) << {"M": 20, "G": 30}[args.size[-1]]
    with tempfile.TemporaryDirectory() as tmp:
        mp = Path(tmp) / "mnt"
        mp.mkdir()
        off = one_run(mp, size, args.pool, False, args.seconds)
        on = one_run(mp, size, args.pool, True, args.seconds)
    ratio = on["p99_us"] / off["p99_us"]
    print(json.dumps({"pool": args.pool, "without": off, "with": on, "p99_ratio": ratio}, indent=1))
    mark = "PASS" if ratio <= 2.0 else "FAIL"
    print(
        f"p99 4K read: {off['p99_us']:.0f} us without, {on['p99_us']:.0f} us with continuous"
        f" compaction ({on['compact_steps']} steps, {on['migrated_pages']} pages migrated):"
        f" ratio {ratio:.2f} (target <= 2.0) {mark}"
    )
    sys.exit(0 if ratio <= 2.0 else 1)


if __name__ == "__main__":
    main()
