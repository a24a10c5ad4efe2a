"""The FUSE yardsticks: a minimal pyfuse3 file system, not zswapfs's own FUSE layer.

One directory holding one file (`swap.img`), opened with direct_io, served by the fewest lines
pyfuse3 allows, so `zswapfs / yardstick` measures everything zswapfs adds on top of the FUSE
round trip itself (its fs.py included):

    --keep none   writes are dropped, reads return zeros: the ceiling of any request through one
                  pyfuse3 session (`zswapfs bench --fio` mounts it for its "null-fuse" row)
    --keep ram    pages are kept in an anonymous mapping of the image's size, uncompressed, and
                  the daemon locks its memory: the ceiling of any swap served by one pyfuse3
                  session (swap needs its pages back)

    python -m zswapfs.lab.nullfs MOUNTPOINT [--size 1G] [--keep none|ram]
                                                   (serves until SIGTERM / Ctrl-C; always unmounts)
"""

from __future__ import annotations

import argparse
import errno
import logging
import mmap
import signal
import stat

import pyfuse3
import trio

from zswapfs.service.config import ConfigError, parse_size
from zswapfs.service.hardening import harden

log = logging.getLogger(__name__)

PAGE_SIZE = 4096
NAME = b"swap.img"
FILE_INODE = pyfuse3.ROOT_INODE + 1


class MinimalFile(pyfuse3.Operations):
    """One regular file of *size* bytes; *keep* None drops writes, else a buffer holds them."""

    def __init__(self, size: int, keep: mmap.mmap | None) -> None:
        super().__init__()
        self.size = size
        self.keep = keep

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
        elif inode == FILE_INODE:
            attr.st_mode = stat.S_IFREG | 0o600
            attr.st_size = self.size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_blksize = PAGE_SIZE
        return attr

    async def lookup(
        self, parent: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(FILE_INODE, ctx)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, await self.getattr(FILE_INODE, None), 1)  # type: ignore[arg-type]

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        if self.keep is None:
            return bytes(end - off)
        return self.keep[off:end]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if off >= self.size:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        n = min(len(buf), self.size - off)
        if self.keep is not None:
            self.keep[off : off + n] = buf[:n]
        return n


def serve(mountpoint: str, size: int, keep_ram: bool = False) -> None:
    """Mount the file on *mountpoint* and serve until SIGTERM/SIGINT; always unmounts."""
    keep = None
    if keep_ram:
        harden(lock_memory=True)  # swap must not page the swap daemon out (logs what it cannot)
        keep = mmap.mmap(-1, size)
    ops = MinimalFile(size, keep)
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
        if keep is not None:
            keep.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="zswapfs.lab.nullfs", description="minimal pyfuse3 file: the FUSE yardstick"
    )
    ap.add_argument("mountpoint")
    ap.add_argument("--size", default=str(1 << 30), help="image size, e.g. 1G (default 1G)")
    ap.add_argument(
        "--keep",
        choices=["none", "ram"],
        default="none",
        help="none: drop writes, read zeros (default); ram: keep pages in memory",
    )
    args = ap.parse_args(argv)
    try:
        size = parse_size(args.size, "--size")
    except ConfigError as exc:
        ap.error(str(exc))
    if size <= 0 or size % PAGE_SIZE:
        ap.error("--size must be a positive multiple of 4096")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(args.mountpoint, size, keep_ram=args.keep == "ram")


if __name__ == "__main__":
    main()
