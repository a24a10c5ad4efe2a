"""The backing file: a plain raw image the size of the exposed file, page N at offset N*4096.

It is where cold pages go when the pool outgrows its budget (as zswap writes a page back to its
own swap slot) and, in image mode, the persistent copy of the image. It stays readable without
zswapfs (`cmp`, `losetup`, `dd`) and sparse: pages never written back are holes.

    swap mode   contents are ephemeral: emptied (truncated to nothing, then to size) at start
    image mode  contents persist: an existing file must already have the image's size

Failures are BackingError (with the errno kept), so the store can keep the page in the pool,
count the error and go on.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from zswapfs.engine.codec import PAGE_SIZE

log = logging.getLogger(__name__)


class BackingError(Exception):
    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = err


class BackingFile:
    def __init__(self, path: str, npages: int, persistent: bool) -> None:
        self.path = path
        self.size = npages * PAGE_SIZE
        self.persistent = persistent
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise BackingError(f"backing file {path}: {exc.strerror}", exc.errno or 0) from None
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise BackingError(f"backing file {path} is not a regular file", errno.EINVAL)
            if persistent:
                if st.st_size == 0:
                    os.ftruncate(self.fd, self.size)
                elif st.st_size != self.size:
                    raise BackingError(
                        f"backing file {path} holds {st.st_size} bytes but the image is "
                        f"{self.size}: refusing to resize it in image mode",
                        errno.EINVAL,
                    )
            else:  # swap mode: whatever it held is stale
                os.ftruncate(self.fd, 0)
                os.ftruncate(self.fd, self.size)
        except OSError as exc:
            os.close(self.fd)
            raise BackingError(f"backing file {path}: {exc.strerror}", exc.errno or 0) from None
        except BackingError:
            os.close(self.fd)
            raise

    def write_page(self, pn: int, page: bytes) -> None:
        try:
            n = os.pwrite(self.fd, page, pn * PAGE_SIZE)
        except OSError as exc:
            raise BackingError(f"writing page {pn} to {self.path}: {exc.strerror}",
                               exc.errno or errno.EIO) from None  # fmt: skip
        if n != PAGE_SIZE:
            raise BackingError(f"short write of page {pn} to {self.path}", errno.ENOSPC)

    def read_page(self, pn: int) -> bytes:
        try:
            data = os.pread(self.fd, PAGE_SIZE, pn * PAGE_SIZE)
        except OSError as exc:
            raise BackingError(f"reading page {pn} from {self.path}: {exc.strerror}",
                               exc.errno or errno.EIO) from None  # fmt: skip
        if len(data) != PAGE_SIZE:  # the file was cut short under us
            raise BackingError(f"short read of page {pn} from {self.path}", errno.EIO)
        return data

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise BackingError(f"fsync of {self.path}: {exc.strerror}", exc.errno or 0) from None

    def close(self) -> None:
        os.close(self.fd)
