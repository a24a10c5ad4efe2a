"""Arena: the memory that pools place objects in.

One anonymous mapping is reserved up front with MAP_NORESERVE for the most pool pages the image
can ever need; reserving costs address space, not memory. A pool page is 4 KiB and is named by its
number (pn) in the arena. Memory becomes resident only when a page is first written, and goes back
to the kernel with madvise(MADV_DONTNEED) when the page is freed, so resident pool memory follows
`pages_used`.

Free pages are tracked in a byte map (one byte per possible page) and handed out lowest number
first. Keeping live pages low is what later lets migration empty the top of the arena.

Locking: the arena has no lock of its own. Its owner (a pool) calls it under the pool lock.
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE_SIZE = 4096


class ArenaFull(Exception):
    """Every page of the reservation is in use."""


class Arena:
    def __init__(self, max_pages: int) -> None:
        if max_pages <= 0:
            raise ValueError("an arena needs at least one page")
        self.max_pages = max_pages
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
        self.mm = mmap.mmap(-1, max_pages * PAGE_SIZE, flags=flags)
        #: 1 where a page below the high-water mark is free (madvised away)
        self._free = np.zeros(max_pages, dtype=np.uint8)
        self._nfree = 0
        #: no free page has a number below this (a search hint, kept exact or low)
        self._hint = 0
        #: pages at or above this number have never been handed out
        self.high_water = 0
        self.pages_max = 0

    @property
    def pages_used(self) -> int:
        return self.high_water - self._nfree

    def alloc_page(self) -> int:
        """Hand out the lowest free page number."""
        if self._nfree:
            pn = self._hint + int(np.argmax(self._free[self._hint : self.high_water]))
            self._free[pn] = 0
            self._nfree -= 1
            self._hint = pn + 1
        elif self.high_water < self.max_pages:
            pn = self.high_water
            self.high_water += 1
        else:
            raise ArenaFull(f"arena of {self.max_pages} pages is full")
        used = self.pages_used
        if used > self.pages_max:
            self.pages_max = used
        return pn

    def free_page(self, pn: int) -> None:
        """Return page *pn*'s memory to the kernel and make the number reusable."""
        self.mm.madvise(mmap.MADV_DONTNEED, pn * PAGE_SIZE, PAGE_SIZE)
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

    def is_free(self, pn: int) -> bool:
        return pn >= self.high_water or bool(self._free[pn])

    def read(self, offset: int, length: int) -> bytes:
        return self.mm[offset : offset + length]

    def write(self, offset: int, data: bytes) -> None:
        self.mm[offset : offset + len(data)] = data

    def close(self) -> None:
        self.mm.close()
