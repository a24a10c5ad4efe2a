"""The FUSE layer: translates requests into page-store calls and store errors into errno.

It knows pyfuse3; nothing below it does. The mount holds three files and nothing else:
    <name>   the fixed-size image (default swap.img, mode 0600)
    stats    read-only JSON snapshot of the store's figures, taken when it is opened
    control  write-only (0200): a command a write, e.g. "compact"; the daemon's control callback
             runs it and the write returns when it is done (EINVAL for an unknown command)
Each image request is one store call (store.read / store.write with the byte range); the store
splits it into pages. Requests run as trio tasks on one thread and call the store without
awaiting, so two requests never interleave inside it; fsync's flush runs in a worker thread, and
the maintenance thread works beside them, both under the store's own locks.

Error mapping: a write starting at or past the end -> ENOSPC (a write straddling the end is short,
as on a full regular file); a read past the end -> short or empty; a size change, chmod, chown ->
EPERM; creating, removing or renaming entries -> EPERM; StoreFull -> ENOSPC; any other storage
failure -> EIO with a log line. No exception escapes into pyfuse3.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.engine.store import PageStore, StoreError, StoreFull

log = logging.getLogger(__name__)

ROOT_INODE = pyfuse3.ROOT_INODE
IMAGE_INODE = ROOT_INODE + 1
STATS_INODE = ROOT_INODE + 2
CONTROL_INODE = ROOT_INODE + 3
STATS_NAME = "stats"
CONTROL_NAME = "control"
#: the longest command the control file takes
MAX_COMMAND = 256


class UnknownCommand(Exception):
    pass


def _guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Any exception but FUSEError becomes EIO and a log line: pyfuse3 would otherwise let it
    end the whole session (a dead daemon, a hung mount)."""

    @functools.wraps(fn)
    async def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("unexpected failure in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


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
        control: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.image_name = image_name.encode()
        self.size = store.npages * PAGE_SIZE
        self.stats_source = stats_source or store.stats
        self.direct_io = direct_io
        self.control = control
        self._stats_snapshots: dict[int, bytes] = {}
        self._next_fh = STATS_INODE + 1
        now = time.time_ns()
        self._times = {i: [now, now, now] for i in (IMAGE_INODE, STATS_INODE, CONTROL_INODE)}
        self._root_time = now

    # -- names and attributes ------------------------------------------------------------------
    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.generation = 0
        attr.st_uid = os.getuid()
        attr.st_gid = os.getgid()
        attr.st_blksize = PAGE_SIZE
        if inode == ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
            attr.st_size = 0
            attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self._root_time
            attr.entry_timeout = attr.attr_timeout = 300
            return attr
        atime, mtime, ctime = self._times[inode]
        attr.st_atime_ns, attr.st_mtime_ns, attr.st_ctime_ns = atime, mtime, ctime
        attr.st_nlink = 1
        if inode == IMAGE_INODE:
            attr.st_mode = stat.S_IFREG | 0o600
            attr.st_size = self.size
            # what the image occupies in memory, so du shows the compressed footprint
            attr.st_blocks = self.store.mem_used_pages() * (PAGE_SIZE // 512)
            attr.entry_timeout = attr.attr_timeout = 300
        elif inode == STATS_INODE:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_size = 0  # generated on open, served with direct_io
            attr.entry_timeout = 300
            attr.attr_timeout = 0
        elif inode == CONTROL_INODE:
            attr.st_mode = stat.S_IFREG | 0o200
            attr.st_size = 0
            attr.entry_timeout = attr.attr_timeout = 300
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return attr

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self._attr(ROOT_INODE)
        if name == self.image_name:
            return self._attr(IMAGE_INODE)
        if name == STATS_NAME.encode():
            return self._attr(STATS_INODE)
        if name == CONTROL_NAME.encode():
            return self._attr(CONTROL_INODE)
        raise pyfuse3.FUSEError(errno.ENOENT)

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
        if inode == ROOT_INODE and (fields.update_size or fields.update_mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_size and (inode != IMAGE_INODE or attr.st_size != self.size):
            log.info("refused resize of inode %d to %d bytes", inode, attr.st_size)
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        if inode in self._times:
            times = self._times[inode]
            if fields.update_atime:
                times[0] = attr.st_atime_ns
            if fields.update_mtime:
                times[1] = attr.st_mtime_ns
            times[2] = time.time_ns()
        return self._attr(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = [
            (self.image_name, IMAGE_INODE),
            (STATS_NAME.encode(), STATS_INODE),
            (CONTROL_NAME.encode(), CONTROL_INODE),
        ]
        for i in range(start_id, len(entries)):
            name, inode = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._attr(inode), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sfs = pyfuse3.StatvfsData()
        sfs.f_bsize = sfs.f_frsize = PAGE_SIZE
        sfs.f_blocks = self.store.npages
        sfs.f_bfree = sfs.f_bavail = 0
        sfs.f_files = 4
        sfs.f_ffree = sfs.f_favail = 0
        sfs.f_namemax = 255
        return sfs

    # -- everything that would change the namespace is refused ---------------------------------
    async def create(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mknod(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def mkdir(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def symlink(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, *args: Any, **kwargs: Any) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rmdir(self, *args: Any, **kwargs: Any) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def rename(self, *args: Any, **kwargs: Any) -> None:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def setxattr(self, *args: Any, **kwargs: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # -- files ---------------------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode == IMAGE_INODE:
            return pyfuse3.FileInfo(fh=IMAGE_INODE, direct_io=self.direct_io)
        if inode == STATS_INODE:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise pyfuse3.FUSEError(errno.EACCES)
            fh = self._next_fh
            self._next_fh += 1
            self._stats_snapshots[fh] = self._stats_json()
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        if inode == CONTROL_INODE:
            if flags & os.O_ACCMODE != os.O_WRONLY:
                raise pyfuse3.FUSEError(errno.EACCES)
            return pyfuse3.FileInfo(fh=CONTROL_INODE, direct_io=True)
        if inode == ROOT_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        raise pyfuse3.FUSEError(errno.ENOENT)

    def _stats_json(self) -> bytes:
        try:
            return (json.dumps(self.stats_source(), indent=1) + "\n").encode()
        except Exception:
            log.exception("could not produce stats")
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh != IMAGE_INODE:
            return self._stats_snapshots.get(fh, b"")[off : off + size]
        if off < 0:
            self.store.note_invalid_io()
            raise pyfuse3.FUSEError(errno.EINVAL)
        end = min(off + size, self.size)
        if off >= end:
            return b""
        try:
            return self.store.read(off, end - off)
        except StoreError as exc:
            log.error("read of %d bytes at %d failed: %s", size, off, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected failure reading %d bytes at %d", size, off)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if fh == CONTROL_INODE:
            return await self._command(buf)
        if fh != IMAGE_INODE:
            raise pyfuse3.FUSEError(errno.EBADF)
        if off < 0:
            self.store.note_invalid_io()
            raise pyfuse3.FUSEError(errno.EINVAL)
        if off >= self.size:
            self.store.note_invalid_io()
            raise pyfuse3.FUSEError(errno.ENOSPC)
        if off + len(buf) > self.size:
            buf = buf[: self.size - off]  # short write: the rest would pass the end
        try:
            self.store.write(off, buf)
        except StoreFull as exc:
            log.warning("write of %d bytes at %d: %s", len(buf), off, exc)
            raise pyfuse3.FUSEError(errno.ENOSPC) from None
        except StoreError as exc:
            log.error("write of %d bytes at %d failed: %s", len(buf), off, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected failure writing %d bytes at %d", len(buf), off)
            raise pyfuse3.FUSEError(errno.EIO) from None
        self._times[IMAGE_INODE][1] = time.time_ns()
        return len(buf)

    async def _command(self, buf: bytes) -> int:
        if len(buf) > MAX_COMMAND or self.control is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        command = buf.decode(errors="replace").strip()
        try:
            await self.control(command)
        except UnknownCommand:
            log.warning("unknown control command %r", command)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        except Exception:
            log.exception("control command %r failed", command)
            raise pyfuse3.FUSEError(errno.EIO) from None
        return len(buf)

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        """Image mode: every page newer in memory than in the backing file goes there, and the
        file is synced; in a worker thread, so other requests go on meanwhile."""
        if fh != IMAGE_INODE:
            return
        try:
            await trio.to_thread.run_sync(self.store.flush)
        except StoreError as exc:
            log.error("fsync failed: %s", exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh: int) -> None:
        self._stats_snapshots.pop(fh, None)


# read and write catch everything themselves, inline on the hot path (the store counts its own
# failures in failed_reads/failed_writes)
for _name in (
    "lookup",
    "getattr",
    "setattr",
    "opendir",
    "readdir",
    "releasedir",
    "statfs",
    "open",
    "flush",
    "fsync",
    "release",
):
    setattr(ZswapOperations, _name, _guarded(getattr(ZswapOperations, _name)))
