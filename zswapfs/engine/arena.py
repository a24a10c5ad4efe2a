"""Arena: the memory pools place objects in, in 4 KiB pool pages grouped into segments.

A pool page is named by its number pn. Pages live in *segments* of SEG_PAGES pages, each a
memfd mapped shared, created when a page in it is first handed out. Memory becomes resident only
when a page is written, and goes back to the kernel when the page is freed, by punching a hole
in the memfd (fallocate PUNCH_HOLE), so resident pool memory follows `pages_used`, give or take
the *warm* pages: the last WARM_MAX pages freed while fewer were warm stay resident, unpunched,
for the next allocation to take (an overwrite of a page that fills a pool page of its own frees
one pool page and takes another; punching and refaulting it cost more than the write itself).
Which page an allocation takes does not depend on it (lowest free first, warm or not).
release_empty_segments punches whatever is still warm first. A memfd
rather than anonymous memory because a swap daemon locks its memory (mlockall) and the kernel
refuses madvise(MADV_DONTNEED) on locked mappings; a punched hole frees locked pages too.
A segment whose pages are all free can be unmapped as a whole (release_empty_segments), which
also returns its page tables; the background thread does that, never a foreground request.

Free pages are tracked in a byte map (one byte a possible page) and handed out lowest number
first, so live pages gather at the bottom; page migration (pools' migrate_page) moves pages
from the top into holes lower down so the top segments empty and can be released.

Locking: the arena has no lock of its own. Its owner (a pool) calls it under the pool lock.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

import numpy as np

PAGE_SIZE = 4096
#: pages a segment: 1 MiB, small enough that churn empties whole segments, large enough that a
#: 1 GiB pool is ~1,000 mappings
SEG_SHIFT = 8
SEG_PAGES = 1 << SEG_SHIFT
_SEG_MASK = SEG_PAGES - 1
_SEG_BYTES = SEG_PAGES * PAGE_SIZE
#: freed pages kept resident for reuse (256 KiB)
WARM_MAX = 64
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_fallocate.restype = ctypes.c_int


def _punch(fd: int, offset: int, length: int) -> None:
    if _fallocate(fd, _PUNCH_HOLE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")


class ArenaFull(Exception):
    """Every page the arena may hand out is in use."""


class Arena:
    def __init__(self, max_pages: int) -> None:
        if max_pages <= 0:
            raise ValueError("an arena needs at least one page")
        self.max_pages = max_pages
        nseg = (max_pages + SEG_PAGES - 1) >> SEG_SHIFT
        self.segments: list[mmap.mmap | None] = [None] * nseg
        self._fds = [-1] * nseg
        self._seg_used = np.zeros(nseg, dtype=np.uint16)
        #: 1 where a page below the high-water mark is free
        self._free = np.zeros(max_pages, dtype=np.uint8)
        self._nfree = 0
        #: 1 where a free page is still resident (not punched): see WARM_MAX
        self._warm = np.zeros(max_pages, dtype=np.uint8)
        self.warm_pages = 0
        #: no free page has a number below this (a search hint)
        self._hint = 0
        #: pages at or above this number are free and were never handed out or were folded back
        self.high_water = 0
        self.pages_max = 0
        self.segments_released = 0

    @property
    def pages_used(self) -> int:
        return self.high_water - self._nfree

    @property
    def holes(self) -> int:
        """Free pages below the high-water mark: what migration could close."""
        return self._nfree

    @property
    def segments_mapped(self) -> int:
        return sum(1 for s in self.segments if s is not None)

    def _lowest_free(self, below: int) -> int:
        """Lowest free page number under *below* (and under the high-water mark), or -1."""
        end = min(below, self.high_water)
        if not self._nfree or self._hint >= end:
            return -1
        window = self._free[self._hint : end]
        i = int(np.argmax(window))
        if not window[i]:
            return -1
        return self._hint + i

    def alloc_page(self, below: int | None = None) -> int:
        """Hand out the lowest free page; with *below*, only a page numbered lower (or -1)."""
        pn = self._lowest_free(self.high_water if below is None else below)
        if pn >= 0:
            self._free[pn] = 0
            self._nfree -= 1
            self._hint = pn + 1
        elif below is not None:
            return -1
        elif self.high_water < self.max_pages:
            pn = self.high_water
            self.high_water += 1
        else:
            raise ArenaFull(f"arena of {self.max_pages} pages is full")
        seg = pn >> SEG_SHIFT
        if self.segments[seg] is None:
            self._map(seg)
        if self._warm[pn]:
            self._warm[pn] = 0
            self.warm_pages -= 1
        self._seg_used[seg] += 1
        used = self.pages_used
        if used > self.pages_max:
            self.pages_max = used
        return pn

    def _map(self, seg: int) -> None:
        try:
            fd = os.memfd_create(f"zswapfs-seg{seg}", os.MFD_CLOEXEC)
        except OSError as exc:
            raise ArenaFull(f"cannot create a segment: {exc.strerror}") from None
        try:
            os.ftruncate(fd, _SEG_BYTES)
            self.segments[seg] = mmap.mmap(fd, _SEG_BYTES, flags=mmap.MAP_SHARED)
        except OSError as exc:
            os.close(fd)
            err = "out of memory" if exc.errno == errno.ENOMEM else exc.strerror
            raise ArenaFull(f"cannot map a segment: {err}") from None
        self._fds[seg] = fd

    def free_page(self, pn: int) -> None:
        """Make the number reusable and return page *pn*'s memory to the kernel, unless
        fewer than WARM_MAX freed pages are kept resident (then it is one more)."""
        seg = pn >> SEG_SHIFT
        assert self.segments[seg] is not None, f"page {pn} is not mapped"
        if self.warm_pages < WARM_MAX:
            self._warm[pn] = 1
            self.warm_pages += 1
        else:
            _punch(self._fds[seg], (pn & _SEG_MASK) * PAGE_SIZE, PAGE_SIZE)
        self._seg_used[seg] -= 1
        if pn == self.high_water - 1:
            self.high_water -= 1
            # fold free pages that now sit at the top back into never-used space
            while self.high_water and self._free[self.high_water - 1]:
                self.high_water -= 1
                self._free[self.high_water] = 0
                self._nfree -= 1
        else:
            self._free[pn] = 1
            self._nfree += 1
            if pn < self._hint:
                self._hint = pn
        if self._hint > self.high_water:
            self._hint = self.high_water

    def trim_warm(self) -> None:
        """Punch every warm page: the memory of all free pages goes back to the kernel."""
        for pn in np.flatnonzero(self._warm).tolist():
            self._warm[pn] = 0
            self.warm_pages -= 1
            _punch(self._fds[pn >> SEG_SHIFT], (pn & _SEG_MASK) * PAGE_SIZE, PAGE_SIZE)

    def release_empty_segments(self) -> int:
        """Punch the warm pages, then unmap every mapped segment that holds no live page;
        returns how many segments."""
        self.trim_warm()
        released = 0
        for seg, mm in enumerate(self.segments):
            if mm is not None and self._seg_used[seg] == 0:
                mm.close()
                os.close(self._fds[seg])
                self.segments[seg] = None
                self._fds[seg] = -1
                released += 1
        self.segments_released += released
        return released

    def is_free(self, pn: int) -> bool:
        return pn >= self.high_water or bool(self._free[pn])

    def read(self, pn: int, offset: int, length: int) -> bytes:
        """*length* bytes at *offset* in page *pn* (offset + length <= PAGE_SIZE)."""
        start = (pn & _SEG_MASK) * PAGE_SIZE + offset
        return self.segments[pn >> SEG_SHIFT][start : start + length]  # type: ignore[index]

    def write(self, pn: int, offset: int, data: bytes) -> None:
        start = (pn & _SEG_MASK) * PAGE_SIZE + offset
        self.segments[pn >> SEG_SHIFT][start : start + len(data)] = data  # type: ignore[index]

    def copy_page(self, src: int, dst: int) -> None:
        self.write(dst, 0, self.read(src, 0, PAGE_SIZE))

    def close(self) -> None:
        for seg, mm in enumerate(self.segments):
            if mm is not None:
                mm.close()
                os.close(self._fds[seg])
        self.segments = [None] * len(self.segments)
        self._fds = [-1] * len(self._fds)
