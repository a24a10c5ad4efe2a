"""The null-FUSE baseline: zswapfs's own FUSE layer over a store that keeps nothing.

Writes are accepted and dropped, reads return zeros. Run through the same fs.py, pyfuse3 and
trio path as the real daemon, so `real / null` isolates what storage costs.

    python bench/nullfs.py MOUNTPOINT [--size 1G]     (serves until SIGTERM / Ctrl-C)
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import pyfuse3
import trio

from zswapfs.codec import PAGE_SIZE
from zswapfs.fs import ZswapOperations

ZERO = bytes(PAGE_SIZE)


class NullStore:
    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.failed_reads = self.failed_writes = self.invalid_io = 0

    def read_pages(self, pn: int, count: int) -> bytes:
        return ZERO if count == 1 else bytes(count * PAGE_SIZE)

    def write_pages(self, pn: int, data: bytes) -> None:
        pass

    def write_partial(self, pn: int, offset: int, data: bytes) -> None:
        pass

    def mem_used_pages(self) -> int:
        return 0

    def note_invalid_io(self) -> None:
        self.invalid_io += 1

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "null": True}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mountpoint")
    ap.add_argument("--size", type=int, default=1 << 30)
    args = ap.parse_args()
    ops = ZswapOperations(NullStore(args.size // PAGE_SIZE), "swap.img")  # type: ignore[arg-type]
    pyfuse3.init(ops, args.mountpoint, set(pyfuse3.default_options) | {"fsname=zswapfs-null"})

    async def serve() -> None:
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
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
