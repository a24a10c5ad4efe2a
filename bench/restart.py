"""How long a program waits when the server of its mount is killed or restarted (docs/restart.md).

A zswapfs mount (native frontend, supervised; --size, default 256 MiB, half of it written) is
read by a program doing one 4 KiB read after another at random offsets (QD1, as a swap-in is).
Each round, at a random instant, the server is either killed (-9) or replaced with `zswapfs
restart`; what the program sees is the longest single read around it:
    kill     the longest read from the kill until the new server answers (the supervisor
             notices, a new Python process starts, takes the pool over and has the kernel
             resend what the dead one had read): the gap a swapping program sees
    restart  the longest read while `zswapfs restart` runs (the check happens while the old
             server still serves; only the handover stalls)
    quiet    the longest read in a window as long, with nothing done: the baseline of this
             machine's noise, measured in the same run
Medians and maxima over --rounds rounds of each, seconds.

    python bench/restart.py [--rounds 20] [--size 256M] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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
        import mmap

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


def stats_of(mp: Path) -> dict:
    return json.loads((mp / "stats").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--size", default="256M")
    p.add_argument("--out", help="JSON results")
    args = p.parse_args()
    out: dict = {"rounds": args.rounds, "size": args.size}
    with tempfile.TemporaryDirectory(prefix="zswapfs-restart-") as d:
        tmp = Path(d)
        mp = tmp / "mnt"
        mp.mkdir()
        cfg = tmp / "bench.toml"
        cfg.write_text("restart-limit = 1000\n")
        mount = [*ZS, "mount", str(mp), "--size", args.size, "--config", str(cfg), "--log",
                 str(tmp / "daemon.log")]  # fmt: skip
        subprocess.run(mount, check=True, capture_output=True)
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
            kill, restart, quiet = [], [], []
            for _ in range(args.rounds):
                time.sleep(rnd.uniform(0.2, 0.6))
                t = time.monotonic()
                time.sleep(0.3)
                quiet.append(reader.longest_between(t, time.monotonic()))

                pid = int(stats_of(mp)["pid"])
                time.sleep(rnd.uniform(0.05, 0.3))
                t = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                while int(stats_of(mp)["pid"]) == pid:
                    time.sleep(0.01)
                time.sleep(0.05)
                kill.append(reader.longest_between(t, time.monotonic()))

                time.sleep(rnd.uniform(0.2, 0.6))
                t = time.monotonic()
                res = subprocess.run([*ZS, "restart", str(mp)], capture_output=True, text=True)
                if res.returncode != 0:
                    raise SystemExit(f"restart failed: {res.stderr}")
                time.sleep(0.05)
                restart.append(reader.longest_between(t, time.monotonic()))
            reader.stop.set()
            reader.join()
            os.close(reader.fd)
            st = stats_of(mp)
            out["failed_reads"] = st["failed_reads"]
            out["takeovers"] = st["takeovers"]
            out["reads"] = len(reader.done)
        finally:
            res = subprocess.run([*ZS, "umount", str(mp)], capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr, (tmp / "daemon.log").read_text()[-3000:], file=sys.stderr)
    for name, xs in (("kill_longest_read", kill), ("restart_longest_read", restart),
                     ("quiet_longest_read", quiet)):  # fmt: skip
        out[name] = {"median": statistics.median(xs), "max": max(xs), "all": xs}
        print(f"{name:24s} median {statistics.median(xs):.3f} s   max {max(xs):.3f} s")
    print(f"reads {out['reads']}, takeovers {out['takeovers']}, failed_reads {out['failed_reads']}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
