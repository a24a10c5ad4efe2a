"""The reference frontend: pyfuse3 + trio, translating each request into a call of files.py's
ImageFiles (the one implementation of the mount's files both frontends share) and its FsError
into FUSEError.

It knows pyfuse3; nothing below it does. Requests run as trio tasks on one thread and call the
store without awaiting, so two requests never interleave inside it; fsync's flush and the control
commands run in a worker thread, and the maintenance thread works beside them, all under the
store's own locks. pyfuse3 has no fallocate handler: discard (FALLOCATE punch hole) is the native
frontend's alone (the kernel answers EOPNOTSUPP here).

No exception escapes into pyfuse3: FsError becomes its errno, anything else EIO with a log line.
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

from zswapfs.engine.store import PageStore
from zswapfs.files import (
    CONTROL_INODE,
    IMAGE_INODE,
    ROOT_INODE,
    STATS_INODE,
    Attr,
    FsError,
    ImageFiles,
    UnknownCommand,
)
from zswapfs.nativefs import EXIT_SIGNALS

__all__ = ["CONTROL_INODE", "IMAGE_INODE", "ROOT_INODE", "STATS_INODE", "UnknownCommand"]

log = logging.getLogger(__name__)


def _guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """FsError becomes FUSEError(errno); any other exception EIO and a log line: pyfuse3 would
    otherwise let it end the whole session (a dead daemon, a hung mount)."""

    @functools.wraps(fn)
    async def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("unexpected failure in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


def entry_attributes(attr: Attr) -> pyfuse3.EntryAttributes:
    out = pyfuse3.EntryAttributes()
    out.st_ino = attr.ino
    out.generation = 0
    out.st_mode = attr.mode
    out.st_nlink = attr.nlink
    out.st_uid = attr.uid
    out.st_gid = attr.gid
    out.st_size = attr.size
    out.st_blocks = attr.blocks
    out.st_blksize = 4096
    out.st_atime_ns = attr.atime_ns
    out.st_mtime_ns = attr.mtime_ns
    out.st_ctime_ns = attr.ctime_ns
    out.entry_timeout = attr.entry_timeout
    out.attr_timeout = attr.attr_timeout
    return out


class ZswapOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        store: PageStore,
        image_name: str = "swap.img",
        stats_source: Callable[[], dict[str, Any]] | None = None,
        direct_io: bool = True,
        control: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.files = ImageFiles(store, image_name, stats_source, direct_io, control)

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        return entry_attributes(self.files.attr(inode))

    # -- names and attributes ------------------------------------------------------------------
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return entry_attributes(self.files.lookup(parent_inode, name))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return entry_attributes(
            self.files.setattr(
                inode,
                size=attr.st_size if fields.update_size else None,
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                atime_ns=attr.st_atime_ns if fields.update_atime else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            )
        )

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.files.opendir(inode)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for name, attr, next_id in self.files.readdir(start_id):
            if not pyfuse3.readdir_reply(token, name, entry_attributes(attr), next_id):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = self.files.statfs()
        sfs = pyfuse3.StatvfsData()
        sfs.f_bsize, sfs.f_frsize = st.bsize, st.frsize
        sfs.f_blocks, sfs.f_bfree, sfs.f_bavail = st.blocks, st.bfree, st.bavail
        sfs.f_files, sfs.f_ffree, sfs.f_favail = st.files, st.ffree, st.favail
        sfs.f_namemax = st.namemax
        return sfs

    # -- everything that would change the namespace is refused ---------------------------------
    async def create(self, *args: Any, **kwargs: Any) -> Any:
        raise FsError(errno.EPERM)

    async def mknod(self, *args: Any, **kwargs: Any) -> Any:
        raise FsError(errno.EPERM)

    async def mkdir(self, *args: Any, **kwargs: Any) -> Any:
        raise FsError(errno.EPERM)

    async def symlink(self, *args: Any, **kwargs: Any) -> Any:
        raise FsError(errno.EPERM)

    async def link(self, *args: Any, **kwargs: Any) -> Any:
        raise FsError(errno.EPERM)

    async def unlink(self, *args: Any, **kwargs: Any) -> None:
        raise FsError(errno.EPERM)

    async def rmdir(self, *args: Any, **kwargs: Any) -> None:
        raise FsError(errno.EPERM)

    async def rename(self, *args: Any, **kwargs: Any) -> None:
        raise FsError(errno.EPERM)

    async def setxattr(self, *args: Any, **kwargs: Any) -> None:
        raise FsError(errno.ENOTSUP)

    # -- files ---------------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh, direct_io = self.files.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, direct_io=direct_io)

    # read and write catch FsError inline (the hot path; ImageFiles catches everything else)
    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return self.files.read(fh, off, size)
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            if fh == CONTROL_INODE:  # a command may take a while: not on the trio thread
                return await trio.to_thread.run_sync(self.files.write, fh, off, buf)
            return self.files.write(fh, off, buf)
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        """Image mode: in a worker thread, so other requests go on meanwhile."""
        await trio.to_thread.run_sync(self.files.fsync, fh)

    async def release(self, fh: int) -> None:
        self.files.release(fh)


for _name in (
    "lookup",
    "getattr",
    "setattr",
    "opendir",
    "readdir",
    "releasedir",
    "statfs",
    "create",
    "mknod",
    "mkdir",
    "symlink",
    "link",
    "unlink",
    "rmdir",
    "rename",
    "setxattr",
    "open",
    "flush",
    "fsync",
    "release",
):
    setattr(ZswapOperations, _name, _guarded(getattr(ZswapOperations, _name)))


#: concurrent request tasks; writes to the image are serialised by the kernel anyway
MAX_TASKS = 64


class Pyfuse3Frontend:
    """The reference frontend (fs.py: pyfuse3 + trio) with the native one's life cycle."""

    name = "pyfuse3"

    def __init__(self, ops: ZswapOperations) -> None:
        self.ops = ops

    def mount(self, mountpoint: str, options: set[str]) -> None:
        try:
            pyfuse3.init(self.ops, mountpoint, set(pyfuse3.default_options) | options)
        except RuntimeError as exc:
            raise OSError(str(exc)) from None

    def serve(self) -> str | None:
        stopped_by: list[str] = []

        async def main() -> None:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    with trio.open_signal_receiver(*EXIT_SIGNALS) as sigs:
                        async for signum in sigs:
                            stopped_by.append(signal.Signals(signum).name)
                            pyfuse3.terminate()
                            return

                nursery.start_soon(stop_on_signal)
                await pyfuse3.main(max_tasks=MAX_TASKS)
                nursery.cancel_scope.cancel()

        trio.run(main)
        return stopped_by[0] if stopped_by else None

    def describe(self) -> str:
        return "pyfuse3 (one trio thread)"

    def unmount(self) -> None:
        pyfuse3.close(unmount=True)

    def close(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"frontend": self.name}
