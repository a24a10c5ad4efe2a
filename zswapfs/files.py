"""The mount's three files, whatever serves them: names, inodes, attributes, modes, the checks a
request gets and the errno it fails with. Both frontends call this one implementation: fs.py
(pyfuse3 + trio, the readable reference) for every request, the native frontend (engine/csrc/
frontend.c) for the rare ones (lookup, getattr, setattr, open, release, readdir, statfs, the stats
and control files), while it serves READ, WRITE, FALLOCATE, FLUSH and FSYNC on the image in C with
the same checks (tests/test_frontends.py holds the two identical).

The mount holds three files and nothing else:
    <name>   the fixed-size image (default swap.img, mode 0600)
    stats    read-only JSON snapshot of the store's figures, taken when it is opened
    control  write-only (0200): a command a write, e.g. "compact"; the control callback runs it
             and the write returns when it is done (EINVAL for an unknown command)

Error mapping (FsError carries the errno; the frontends reply with it): a write starting at or
past the end -> ENOSPC (a write straddling the end is short, as on a full regular file); a read
past the end -> short or empty; a size change, chmod, chown -> EPERM; creating, removing or
renaming entries -> EPERM; StoreFull -> ENOSPC; any other storage failure -> EIO with a log line.
Nothing else escapes: an unexpected exception in a handler is logged and becomes EIO.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.engine.store import PageStore, StoreError, StoreFull

log = logging.getLogger(__name__)

#: libfuse's (and pyfuse3's) root inode
ROOT_INODE = 1
IMAGE_INODE = ROOT_INODE + 1
STATS_INODE = ROOT_INODE + 2
CONTROL_INODE = ROOT_INODE + 3
STATS_NAME = b"stats"
CONTROL_NAME = b"control"
#: the longest command the control file takes
MAX_COMMAND = 256
#: seconds the kernel may cache names and attributes (the image's never change by themselves)
CACHE_SECONDS = 300.0


class FsError(Exception):
    """A request that fails with *errno* (the frontends' FUSEError)."""

    def __init__(self, err: int) -> None:
        super().__init__(err, os.strerror(err))
        self.errno = err


class UnknownCommand(Exception):
    pass


class Attr(NamedTuple):
    """An inode's attributes as both frontends reply them (the native one reads the fields by
    position)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    entry_timeout: float
    attr_timeout: float


class Statfs(NamedTuple):
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int


class ImageFiles:
    """The mount's files over one store. Methods are plain calls that raise FsError; any thread
    may call them (the native frontend's workers do, under the GIL)."""

    def __init__(
        self,
        store: PageStore,
        image_name: str = "swap.img",
        stats_source: Callable[[], dict[str, Any]] | None = None,
        direct_io: bool = True,
        control: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.image_name = image_name.encode()
        self.size = store.npages * PAGE_SIZE
        self.stats_source = stats_source or store.stats
        self.direct_io = direct_io
        self.control = control
        #: the last write to the image (ns), when the frontend serves writes itself (native)
        self.write_time: Callable[[], int] | None = None
        self._lock = threading.Lock()  # snapshots and times: requests may come on any thread
        self._snapshots: dict[int, bytes] = {}
        self._next_fh = CONTROL_INODE + 1  # a stats snapshot's handle is never a file's
        now = time.time_ns()
        self._times = {i: [now, now, now] for i in (IMAGE_INODE, STATS_INODE, CONTROL_INODE)}
        self._root_time = now

    # -- names and attributes ------------------------------------------------------------------
    def attr(self, inode: int) -> Attr:
        uid, gid = os.getuid(), os.getgid()
        if inode == ROOT_INODE:
            t = self._root_time
            return Attr(inode, stat.S_IFDIR | 0o755, 2, uid, gid, 0, 0, t, t, t, CACHE_SECONDS,
                        CACHE_SECONDS)  # fmt: skip
        if inode not in self._times:
            raise FsError(errno.ENOENT)
        with self._lock:
            atime, mtime, ctime = self._times[inode]
        if inode == IMAGE_INODE:
            if self.write_time is not None:
                mtime = max(mtime, self.write_time())
            # what the image occupies in memory, so du shows the compressed footprint
            blocks = self.store.mem_used_pages() * (PAGE_SIZE // 512)
            return Attr(inode, stat.S_IFREG | 0o600, 1, uid, gid, self.size, blocks, atime, mtime,
                        ctime, CACHE_SECONDS, CACHE_SECONDS)  # fmt: skip
        if inode == STATS_INODE:  # generated on open, served with direct_io: no size, no cache
            return Attr(inode, stat.S_IFREG | 0o444, 1, uid, gid, 0, 0, atime, mtime, ctime,
                        CACHE_SECONDS, 0.0)  # fmt: skip
        return Attr(inode, stat.S_IFREG | 0o200, 1, uid, gid, 0, 0, atime, mtime, ctime,
                    CACHE_SECONDS, CACHE_SECONDS)  # fmt: skip

    def lookup(self, parent: int, name: bytes) -> Attr:
        if parent != ROOT_INODE:
            raise FsError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self.attr(ROOT_INODE)
        inode = {self.image_name: IMAGE_INODE, STATS_NAME: STATS_INODE}.get(name)
        if inode is None and name == CONTROL_NAME:
            inode = CONTROL_INODE
        if inode is None:
            raise FsError(errno.ENOENT)
        return self.attr(inode)

    def setattr(
        self,
        inode: int,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Attr:
        """A change of attributes: only the times may change (None: left alone)."""
        if inode == ROOT_INODE and (size is not None or mode is not None):
            raise FsError(errno.EPERM)
        if size is not None and (inode != IMAGE_INODE or size != self.size):
            log.info("refused resize of inode %d to %d bytes", inode, size)
            raise FsError(errno.EPERM)
        if mode is not None or uid is not None or gid is not None:
            raise FsError(errno.EPERM)
        if inode in self._times:
            with self._lock:
                times = self._times[inode]
                if atime_ns is not None:
                    times[0] = atime_ns
                if mtime_ns is not None:
                    times[1] = mtime_ns
                times[2] = time.time_ns()
        return self.attr(inode)

    def opendir(self, inode: int) -> int:
        if inode != ROOT_INODE:
            raise FsError(errno.ENOTDIR)
        return inode

    def readdir(self, start: int) -> list[tuple[bytes, Attr, int]]:
        """(name, attributes, offset of the next entry) from entry *start* on."""
        entries = [
            (self.image_name, IMAGE_INODE),
            (STATS_NAME, STATS_INODE),
            (CONTROL_NAME, CONTROL_INODE),
        ]
        return [(name, self.attr(inode), i + 1) for i, (name, inode) in enumerate(entries)][start:]

    def statfs(self) -> Statfs:
        # answered (a loop device advertises discard only when statfs works): the image's
        # pages, none of them free for new files
        return Statfs(PAGE_SIZE, PAGE_SIZE, self.store.npages, 0, 0, 4, 0, 0, 255)

    # -- files ---------------------------------------------------------------------------------
    def open(self, inode: int, flags: int) -> tuple[int, bool]:
        """(file handle, direct_io) of a new open file."""
        if inode == IMAGE_INODE:
            return IMAGE_INODE, self.direct_io
        if inode == STATS_INODE:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise FsError(errno.EACCES)
            snapshot = self._stats_json()
            with self._lock:
                fh = self._next_fh
                self._next_fh += 1
                self._snapshots[fh] = snapshot
            return fh, True
        if inode == CONTROL_INODE:
            if flags & os.O_ACCMODE != os.O_WRONLY:
                raise FsError(errno.EACCES)
            return CONTROL_INODE, True
        if inode == ROOT_INODE:
            raise FsError(errno.EISDIR)
        raise FsError(errno.ENOENT)

    def _stats_json(self) -> bytes:
        try:
            return (json.dumps(self.stats_source(), indent=1) + "\n").encode()
        except Exception:
            log.exception("could not produce stats")
            raise FsError(errno.EIO) from None

    def read(self, fh: int, off: int, size: int) -> bytes:
        if fh != IMAGE_INODE:
            with self._lock:
                return self._snapshots.get(fh, b"")[off : off + size]
        if off < 0:
            self.store.note_invalid_io()
            raise FsError(errno.EINVAL)
        end = min(off + size, self.size)
        if off >= end:
            return b""
        try:
            return self.store.read(off, end - off)
        except Exception as exc:
            raise FsError(self.io_failure("read", off, end - off, exc)) from None

    def write(self, fh: int, off: int, buf: bytes) -> int:
        if fh == CONTROL_INODE:
            return self.command(buf)
        if fh != IMAGE_INODE:
            raise FsError(errno.EBADF)
        if off < 0:
            self.store.note_invalid_io()
            raise FsError(errno.EINVAL)
        if off >= self.size:
            self.store.note_invalid_io()
            raise FsError(errno.ENOSPC)
        if off + len(buf) > self.size:
            buf = buf[: self.size - off]  # short write: the rest would pass the end
        try:
            self.store.write(off, buf)
        except Exception as exc:
            raise FsError(self.io_failure("write", off, len(buf), exc)) from None
        with self._lock:
            self._times[IMAGE_INODE][1] = time.time_ns()
        return len(buf)

    def command(self, buf: bytes) -> int:
        """A write to the control file: the command runs, the write returns when it is done."""
        if len(buf) > MAX_COMMAND or self.control is None:
            raise FsError(errno.EINVAL)
        command = buf.decode(errors="replace").strip()
        try:
            self.control(command)
        except UnknownCommand:
            log.warning("unknown control command %r", command)
            raise FsError(errno.EINVAL) from None
        except Exception:
            log.exception("control command %r failed", command)
            raise FsError(errno.EIO) from None
        return len(buf)

    def fsync(self, fh: int) -> None:
        """Image mode: every page newer in memory than in the backing file goes there, and the
        file is synced."""
        if fh != IMAGE_INODE:
            return
        try:
            self.store.flush()
        except Exception as exc:
            raise FsError(self.io_failure("fsync", 0, 0, exc)) from None

    def release(self, fh: int) -> None:
        with self._lock:
            self._snapshots.pop(fh, None)

    def io_failure(self, what: str, off: int, size: int, exc: BaseException) -> int:
        """The errno a failed image request answers, with its log line: ENOSPC when the store
        is full, EIO for any other failure (a surprise logged with its traceback). The native
        frontend calls it too, for a request its C path failed."""
        if what == "fsync":
            where = ""
        else:
            where = f" of {size} bytes at {off}"
        if isinstance(exc, StoreFull):
            log.warning("%s%s: %s", what, where, exc)
            return errno.ENOSPC
        if isinstance(exc, StoreError):
            log.error("%s%s failed: %s", what, where, exc)
            return errno.EIO
        log.error("unexpected failure in %s%s: %r", what, where, exc, exc_info=exc)
        return errno.EIO

    def failure(self, what: str, exc: BaseException) -> int:
        """The errno of an unexpected exception in a handler (logged): EIO."""
        log.error("unexpected failure in %s: %r", what, exc, exc_info=exc)
        return errno.EIO
