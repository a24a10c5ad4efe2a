"""The daemon's own memory: its anonymous resident memory (RssAnon, what it holds beside the pool,
which is shared memory: RssShmem) at start and after real memory has been written to its image.

A zswapfs mount of --size (2 GiB) on the default configuration; its RssAnon and RssShmem read
from /proc right after the mount, then after each of --rounds passes that write a corpus of real
memory (a `zswapfs capture` file, repeated to --write bytes) into the image with 1 MiB O_DIRECT
writes, as swap-out of a big program does, then read it all back. The pool's pages are RssShmem
(memfd segments); everything else the daemon holds is RssAnon.

    python bench/footprint.py --corpus FILE [--size 2G] [--write 1536M] [--rounds 2]
        [--frontend native|pyfuse3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from zswapfs.service.config import parse_size

ZS = [sys.executable, "-m", "zswapfs"]


def status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssShmem", "RssFile", "VmRSS", "Threads"):
                fields = value.split()
                out[key] = int(fields[0]) * (1024 if len(fields) > 1 else 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--size", default="2G")
    ap.add_argument("--write", default="1536M")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--frontend", default="native")
    ap.add_argument("--out")
    args = ap.parse_args()
    size, total = parse_size(args.size), parse_size(args.write)
    corpus = Path(args.corpus).read_bytes()
    corpus = corpus[: len(corpus) // (1 << 20) * (1 << 20)]
    result: dict[str, Any] = {"size": size, "written": total, "frontend": args.frontend}
    with tempfile.TemporaryDirectory(prefix="zswapfs-footprint-") as d:
        mp = Path(d) / "mnt"
        mp.mkdir()
        subprocess.run([*ZS, "mount", str(mp), "--size", str(size), "--frontend",
                        args.frontend, "--log", f"{d}/daemon.log"], check=True,
                       capture_output=True)  # fmt: skip
        try:
            pid = json.loads((mp / "stats").read_text())["pid"]
            result["start"] = status(pid)
            buf = mmap.mmap(-1, 1 << 20)
            for r in range(args.rounds):
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
                st = json.loads((mp / "stats").read_text())
                result[f"after_round_{r + 1}"] = status(pid) | {
                    "stored_pages": st["stored_pages"],
                    "metadata_bytes": st["metadata_bytes"],
                    "mem_used_total": st["mem_used_total"],
                }
        finally:
            subprocess.run([*ZS, "umount", str(mp)], capture_output=True)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
