"""The null-FUSE baseline: zswapfs's own FUSE layer over a store that keeps nothing.

Writes are accepted and dropped, reads return zeros. Run through the same fs.py, pyfuse3 and
trio path as the real daemon, so `real / null` isolates what storage costs (`zswapfs bench
--fio` mounts it for its "null-fuse" row).

    python -m zswapfs.lab.nullfs MOUNTPOINT [--size 1G]     (serves until SIGTERM / Ctrl-C)
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import pyfuse3
import trio

from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.fs import ZswapOperations
from zswapfs.service.config import ConfigError, parse_size

ZERO = bytes(PAGE_SIZE)


class NullStore:
    """The part of PageStore's interface fs.py uses, keeping nothing."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.failed_reads = self.failed_writes = self.invalid_io = 0

    def read_pages(self, pn: int, count: int) -> bytes:
        return ZERO if count == 1 else bytes(count * PAGE_SIZE)

    def write_pages(self, pn: int, data: bytes) -> None:
        pass

    def write_partial(self, pn: int, offset: int, data: bytes) -> None:
        pass

    def flush(self) -> int:
        return 0

    def mem_used_pages(self) -> int:
        return 0

    def note_invalid_io(self) -> None:
        self.invalid_io += 1

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "null": True}


def serve(mountpoint: str, size: int) -> None:
    """Mount the null image on *mountpoint* and serve until SIGTERM/SIGINT; always unmounts."""
    ops = ZswapOperations(NullStore(size // PAGE_SIZE), "swap.img")  # type: ignore[arg-type]
    options = set(pyfuse3.default_options) | {"fsname=zswapfs-null"}  # as the real daemon
    pyfuse3.init(ops, mountpoint, options)

    async def run() -> None:
        async with trio.open_nursery() as nursery:

            async def stop() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(stop)
            await pyfuse3.main(max_tasks=64)
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="zswapfs.lab.nullfs", description="null-FUSE baseline: writes dropped, reads zeros"
    )
    ap.add_argument("mountpoint")
    ap.add_argument("--size", default=str(1 << 30), help="image size, e.g. 1G (default 1G)")
    args = ap.parse_args(argv)
    try:
        size = parse_size(args.size, "--size")
    except ConfigError as exc:
        ap.error(str(exc))
    if size <= 0 or size % PAGE_SIZE:
        ap.error("--size must be a positive multiple of 4096")
    serve(args.mountpoint, size)


if __name__ == "__main__":
    main()
