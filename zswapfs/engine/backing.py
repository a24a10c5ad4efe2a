"""The backing file: a plain raw image the size of the exposed file, page N at offset N*4096.

It is where cold pages go when the pool outgrows its budget (as zswap writes a page back to its
own swap slot) and, in image mode, the persistent copy of the image. It stays readable without
zswapfs (`cmp`, `losetup`, `dd`) and sparse: pages never written back are holes.

    swap mode   contents are ephemeral: emptied (truncated to nothing, then to size) at start
    image mode  contents persist: reopened as they are, and must already have the image's size

The daemon runs as root, and swap mode empties the file it is given, so the file is one zswapfs
made itself, or nothing is touched:

  * a missing file is created with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, and marked with the
    extended attribute `user.zswapfs` = b"zswapfs-backing mode=<swap|image> size=<bytes>". The
    mark lives outside the data, so page offsets stay those of a raw image. (`user.` attributes
    work on ext4, xfs, btrfs and, since Linux 6.6, tmpfs; `trusted.` would need CAP_SYS_ADMIN.)
  * an existing file is opened with O_NOFOLLOW|O_NONBLOCK after lstat says it is a regular
    file of ours with one link, then checked again with fstat (same inode). It is taken only if
    it carries the mark: swap mode over a swap-mode file; image mode over an image-mode file of
    the image's size. Anything else (no mark, a persistent image under swap mode, ...) is refused
    unless `force` is given, which takes the file over: emptied in swap mode, adopted as the image
    in image mode (it must then be empty or the image's size). Links, devices, directories,
    FIFOs, files of other owners and files with more than one link are refused even with force.
  * the file is locked (flock, exclusive) while open, so two daemons never share one.

Failures are BackingError (with the errno kept), so the store can keep the page in the pool,
count the error and go on; a refusal at open is a BackingRefused, one line naming the file and
saying how to proceed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat

from zswapfs.engine.codec import PAGE_SIZE

log = logging.getLogger(__name__)

#: the extended attribute that marks a file zswapfs created as its backing file
MARK_XATTR = "user.zswapfs"
_MARK_PREFIX = "zswapfs-backing"


class BackingError(Exception):
    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = err


class BackingRefused(BackingError):
    """An existing path zswapfs will not use (or not without force)."""


def _mark(mode: str, size: int) -> bytes:
    return f"{_MARK_PREFIX} mode={mode} size={size}".encode()


def read_mark(fd: int) -> tuple[str, int] | None:
    """(mode, size) from the file's mark, or None if it has none (or not ours)."""
    try:
        raw = os.getxattr(fd, MARK_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise
    words = raw.decode(errors="replace").split()
    fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if words[:1] != [_MARK_PREFIX] or not fields.get("size", "").isdigit():
        return None
    return fields.get("mode", ""), int(fields["size"])


class BackingFile:
    def __init__(self, path: str, npages: int, persistent: bool, force: bool = False) -> None:
        self.path = path
        self.size = npages * PAGE_SIZE
        self.persistent = persistent
        self.mode = "image" if persistent else "swap"
        self.created = False
        self.fd = self._open()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # before anything is changed
            self._claim(force)
        except BaseException as exc:
            os.close(self.fd)
            if self.created:
                os.unlink(path)  # made by us a moment ago, in a directory only we can write
            if isinstance(exc, BlockingIOError):
                raise BackingRefused(
                    f"backing file {path} is in use by another zswapfs daemon; stop that one "
                    "first or choose another path",
                    errno.EBUSY,
                ) from None
            if isinstance(exc, OSError):
                raise BackingError(f"backing file {path}: {exc.strerror}", exc.errno or 0) from None
            raise

    @classmethod
    def adopt(cls, fd: int, path: str, npages: int, persistent: bool) -> BackingFile:
        """The backing file of a store being taken over (docs/restart.md): *fd* is the open
        file the previous process used (a supervisor kept it: the same open file, so the same
        flock), taken as it is, never emptied. Refused (the descriptor closed) unless it is a
        regular file of ours with the mark of this mode and size."""
        self = cls.__new__(cls)
        self.path = path
        self.size = npages * PAGE_SIZE
        self.persistent = persistent
        self.mode = "image" if persistent else "swap"
        self.created = False
        self.fd = fd
        try:
            st = os.fstat(fd)
            self._check_existing(st)
            mark = read_mark(fd)
            if mark != (self.mode, self.size) or st.st_size != self.size:
                raise self._refuse(
                    f"handed over is not a {self.mode}-mode file of {self.size} bytes "
                    f"(its mark: {mark}, {st.st_size} bytes)",
                    "the state handed over is not this mount's",
                )
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours: the same open file
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise BackingRefused(
                    f"backing file {path} handed over is locked by another open file",
                    errno.EBUSY,
                ) from None
            if isinstance(exc, OSError):
                raise BackingError(f"backing file {path}: {exc.strerror}", exc.errno or 0) from None
            raise
        return self

    def _refuse(self, what: str, hint: str) -> BackingRefused:
        return BackingRefused(f"backing file {self.path} {what}; {hint}", errno.EEXIST)

    def _open(self) -> int:
        path = self.path
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                raise BackingError(f"backing file {path}: {exc.strerror}", exc.errno or 0) from None
            self.created = True
            return fd
        except OSError as exc:
            raise BackingError(f"backing file {path}: {exc.strerror}", exc.errno or 0) from None
        self._check_existing(before)
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
        except OSError as exc:
            raise BackingError(f"backing file {path}: {exc.strerror}", exc.errno or 0) from None
        try:
            st = os.fstat(fd)
            self._check_existing(st)
            if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
                raise self._refuse("was replaced while zswapfs opened it", "retry")
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_existing(self, st: os.stat_result) -> None:
        """Refusals even force does not override: not a plain file of ours."""
        if stat.S_ISLNK(st.st_mode):
            raise self._refuse(
                "is a symbolic link, which zswapfs does not follow",
                "give the path of the file itself",
            )
        if stat.S_ISDIR(st.st_mode):
            raise self._refuse("is a directory", "give the path of a file (it is created 0600)")
        if not stat.S_ISREG(st.st_mode):
            raise self._refuse(
                "is not a regular file (a device, FIFO or socket)",
                "give the path of a regular file (it is created 0600)",
            )
        if st.st_uid != os.geteuid():
            raise self._refuse(
                f"is owned by uid {st.st_uid}, not uid {os.geteuid()}",
                "remove it or choose another path",
            )
        if st.st_nlink != 1:
            raise self._refuse(
                f"has {st.st_nlink} hard links, so it may be another file too",
                "remove the other links or choose another path",
            )

    def _claim(self, force: bool) -> None:
        """Decide whether the open file may be used in this mode; size and mark it."""
        fd, path = self.fd, self.path
        if self.created:
            self._write_mark()
            os.ftruncate(fd, self.size)
            log.info(
                "created backing file %s (%d bytes, mode 0600, %s mode)", path, self.size, self.mode
            )
            return
        st = os.fstat(fd)
        mark = read_mark(fd)
        force_hint = (
            "pass --force (TOML: force = true) to take it over"
            + (", which destroys its contents" if self.mode == "swap" else " as the image")
            + ", or choose a new path"
        )
        if mark is None:
            if not force:
                raise self._refuse(
                    f"exists ({st.st_size} bytes) and was not created by zswapfs", force_hint
                )
            log.warning("taking over backing file %s (%d bytes) as told by force", path, st.st_size)
        elif mark[0] != self.mode:
            if not force:
                why = "holds the stale pages of a swap-mode zswapfs file, not an image"
                if mark[0] == "image":
                    why = "holds a persistent zswapfs image (image mode) that swap mode would empty"
                raise self._refuse(why, force_hint)
            log.warning(
                "taking over backing file %s (%s mode) in %s mode as told by force",
                path,
                mark[0],
                self.mode,
            )
        if self.persistent:
            held = st.st_size
            if mark is not None and mark[0] == "image" and mark[1] != self.size:
                held = mark[1]  # the size it was made for, whatever it holds now
            if held not in (0, self.size):
                raise BackingRefused(
                    f"backing file {path} holds {held} bytes but the image is {self.size}: "
                    f"refusing to resize it in image mode; mount it with --size {held}",
                    errno.EINVAL,
                )
            if st.st_size == 0:
                os.ftruncate(fd, self.size)
        else:  # swap mode: whatever it held is stale
            os.ftruncate(fd, 0)
            os.ftruncate(fd, self.size)
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)  # it holds swapped memory of every process
            log.warning(
                "backing file %s had mode %04o; set to 0600", path, stat.S_IMODE(st.st_mode)
            )
        self._write_mark()

    def _write_mark(self) -> None:
        try:
            os.setxattr(self.fd, MARK_XATTR, _mark(self.mode, self.size))
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                raise
            raise BackingRefused(
                f"backing file {self.path}: its filesystem keeps no {MARK_XATTR} extended "
                "attribute, which zswapfs needs to recognise its own file; put it on ext4, xfs, "
                "btrfs or tmpfs",
                exc.errno,
            ) from None

    def write_page(self, index: int, page: bytes) -> None:
        try:
            n = os.pwrite(self.fd, page, index * PAGE_SIZE)
        except OSError as exc:
            raise BackingError(
                f"writing page {index} to {self.path}: {exc.strerror}", exc.errno or errno.EIO
            ) from None
        if n != PAGE_SIZE:
            raise BackingError(f"short write of page {index} to {self.path}", errno.ENOSPC)

    def read_page(self, index: int) -> bytes:
        try:
            data = os.pread(self.fd, PAGE_SIZE, index * PAGE_SIZE)
        except OSError as exc:
            raise BackingError(
                f"reading page {index} from {self.path}: {exc.strerror}", exc.errno or errno.EIO
            ) from None
        if len(data) != PAGE_SIZE:  # the file was cut short under us
            raise BackingError(f"short read of page {index} from {self.path}", errno.EIO)
        return data

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise BackingError(f"fsync of {self.path}: {exc.strerror}", exc.errno or 0) from None

    def close(self) -> None:
        os.close(self.fd)
