"""The C yardstick: a minimal libfuse file in C (zswapfs/lab/csrc/ramfs.c), the floor of any
FUSE daemon serving an image, beside nullfs.py's pyfuse3 one.

One directory holding one file (`swap.img`), opened with direct_io; its pages kept uncompressed
in an anonymous mapping (or, with --keep none, dropped, reads answering zeros); FALLOCATE punch
holes answered; libfuse's multi-threaded loop (--threads workers, --clone-fd) or, with
--threads 1, its single-threaded one. The daemon locks its memory, as zswapfs does. zswapfs's
figures are quoted against it in the benchmarks: what is left is what zswapfs adds.

    python -m zswapfs.lab.ramfs MOUNTPOINT [--size 1G] [--threads 4] [--clone-fd]
                                [--keep ram|none]   (serves until SIGTERM / Ctrl-C; unmounts)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from zswapfs.service.config import ConfigError, parse_size
from zswapfs.service.hardening import harden

log = logging.getLogger(__name__)


def unavailable() -> str | None:
    """Why the C yardstick cannot run here, or None."""
    try:
        from zswapfs.lab import _ramfs  # noqa: F401
    except ImportError as exc:
        return f"the C yardstick is not built ({exc})"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zswapfs.lab.ramfs", description=__doc__)
    p.add_argument("mountpoint")
    p.add_argument("--size", default="1G")
    p.add_argument("--threads", type=int, default=4, help="most worker threads; 1: one loop")
    p.add_argument("--clone-fd", action="store_true")
    p.add_argument("--keep", choices=("ram", "none"), default="ram")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        size = parse_size(args.size, "--size")
    except ConfigError as exc:
        print(f"ramfs: {exc}", file=sys.stderr)
        return 2
    why = unavailable()
    if why:
        print(f"ramfs: {why}", file=sys.stderr)
        return 1
    from zswapfs.lab import _ramfs

    harden(lock_memory=True)
    signum = _ramfs.serve(args.mountpoint, size, args.threads, args.clone_fd, args.keep == "ram")
    log.info("ramfs: unmounted %s (signal %d)", args.mountpoint, signum)
    return 0


@contextlib.contextmanager
def ramfs_mounted(
    mountpoint: Path, size: int, log_file: Path, threads: int = 4, keep: str = "ram"
) -> Iterator[Path]:
    """The C yardstick mounted at *mountpoint* for the block; its image path. Always unmounted."""
    mountpoint.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "zswapfs.lab.ramfs", str(mountpoint), "--size", str(size),
           "--threads", str(threads), "--keep", keep]  # fmt: skip
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the C yardstick did not mount: {log_file.read_text()[-500:]}")
            time.sleep(0.02)
        yield mountpoint / "swap.img"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
