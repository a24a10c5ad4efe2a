"""The page store: the page index and the accounting.

The index is one numpy uint32 a page, sized for the whole image (np.zeros is calloc'd, so parts
of the index never written cost no memory):
    index[pn] == EMPTY (0)   never written, or discarded: reads as zeros
    index[pn] == SAME (1)    same-filled: the fill word is 0, or is kept in `fill` (pn -> word),
                             a dict because non-zero same-filled pages are rare (0xff.. pages)
    index[pn] >= 2           a pool handle. An object of exactly PAGE_SIZE bytes is the raw page
                             (incompressible, "huge"); anything shorter is compressed.
So the index costs 4 bytes a page; the pool adds its handle table (8 bytes a live object) and its
per-page tables (see pools/). zram keeps ~16 bytes a slot plus the 8-byte zsmalloc handle.

Lock order: store.lock -> pool.lock. The store lock guards the index and the counters. A reader
copies the object out while holding the store lock (so no writer can free the handle under it)
and decompresses after letting go. A writer compresses and places the new object before it takes
the store lock, then swaps the index entry and frees the old object under it. Nothing is held
across a codec call.

Errors: the store raises StoreError subclasses, never errno values; fs.py maps them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from zswapfs.codec import PAGE_SIZE, Codec, CodecError, fill_page, same_filled_value
from zswapfs.pools import Pool, PoolFull

log = logging.getLogger(__name__)

EMPTY, SAME = 0, 1
ZERO_PAGE = bytes(PAGE_SIZE)


class StoreError(Exception):
    """Base of every failure the store reports."""


class StoreFull(StoreError):
    """No room for the page in the pool (ENOSPC)."""


class StorageFailure(StoreError):
    """A stored page could not be written or read back (EIO)."""


class PageStore:
    def __init__(self, npages: int, codec: Codec, pool: Pool) -> None:
        if npages <= 0:
            raise ValueError("a store needs at least one page")
        self.npages = npages
        self.codec = codec
        self.pool = pool
        self.lock = threading.Lock()
        self.index = np.zeros(npages, dtype=np.uint32)
        self.fill: dict[int, int] = {}
        self.stored_pages = 0
        self.same_pages = 0
        self.huge_pages = 0
        self.compr_data_size = 0
        self.failed_reads = 0
        self.failed_writes = 0
        self.invalid_io = 0

    # -- writing -------------------------------------------------------------------------------
    def write_page(self, pn: int, page: bytes) -> None:
        """Store one whole page. On failure the page keeps its previous contents."""
        word = same_filled_value(page)
        if word is not None:
            with self.lock:
                self._swap(pn, SAME, 0)
                if word:
                    self.fill[pn] = word
            return
        try:
            payload = self.codec.compress(page)
        except Exception as exc:
            self.failed_writes += 1
            raise StorageFailure(f"compressing page {pn}: {exc}") from exc
        if len(payload) >= self.pool.raw_threshold:
            payload = page
        try:
            handle = self.pool.store(payload)
        except PoolFull as exc:
            self.failed_writes += 1
            raise StoreFull(f"pool full writing page {pn}: {exc}") from exc
        except Exception as exc:
            self.failed_writes += 1
            raise StorageFailure(f"placing page {pn}: {exc}") from exc
        with self.lock:
            self._swap(pn, handle, len(payload))

    def write_pages(self, pn: int, data: bytes) -> None:
        """Store len(data) // PAGE_SIZE whole pages starting at page *pn*."""
        for i in range(len(data) // PAGE_SIZE):
            off = i * PAGE_SIZE
            self.write_page(pn + i, data[off : off + PAGE_SIZE])

    def write_partial(self, pn: int, offset: int, data: bytes) -> None:
        """Read-modify-write of part of one page."""
        old = self.read_page(pn)
        self.write_page(pn, old[:offset] + data + old[offset + len(data) :])

    def _swap(self, pn: int, entry: int, size: int) -> None:
        """Point page *pn* at a new entry and release the old one (store lock held)."""
        old = self.index.item(pn)
        if old == EMPTY:
            self.stored_pages += 1
        elif old == SAME:
            self.same_pages -= 1
            self.fill.pop(pn, None)
        else:
            old_size = self.pool.size(old)
            self.compr_data_size -= old_size
            if old_size == PAGE_SIZE:
                self.huge_pages -= 1
            self.pool.free(old)
        self.index[pn] = entry
        if entry == SAME:
            self.same_pages += 1
        else:
            self.compr_data_size += size
            if size == PAGE_SIZE:
                self.huge_pages += 1

    # -- reading -------------------------------------------------------------------------------
    def read_page(self, pn: int) -> bytes:
        with self.lock:
            entry = self.index.item(pn)
            if entry == EMPTY:
                return ZERO_PAGE
            if entry == SAME:
                word = self.fill.get(pn)
                return ZERO_PAGE if word is None else fill_page(word)
            try:
                payload = self.pool.read(entry)
            except Exception as exc:
                self.failed_reads += 1
                raise StorageFailure(f"reading page {pn} from the pool: {exc}") from exc
        if len(payload) == PAGE_SIZE:
            return payload
        try:
            return self.codec.decompress(payload)
        except CodecError as exc:
            self.failed_reads += 1
            raise StorageFailure(f"decoding page {pn}: {exc}") from exc

    def read_pages(self, pn: int, count: int) -> bytes:
        if count == 1:
            return self.read_page(pn)
        return b"".join([self.read_page(pn + i) for i in range(count)])

    # -- figures -------------------------------------------------------------------------------
    def mem_used_pages(self) -> int:
        return self.pool.pages_used

    def note_invalid_io(self) -> None:
        self.invalid_io += 1

    def metadata_bytes(self) -> int:
        """Index and tables outside the pool's arena (the index counted whole, as allocated)."""
        return int(self.index.nbytes) + self.pool.metadata_bytes()

    def stats(self) -> dict[str, Any]:
        """zram's mm_stat/io_stat names, plus what zswapfs adds."""
        with self.lock:
            pool = self.pool
            return {
                "disksize": self.npages * PAGE_SIZE,
                "orig_data_size": self.stored_pages * PAGE_SIZE,
                "compr_data_size": self.compr_data_size,
                "mem_used_total": pool.pages_used * PAGE_SIZE,
                "mem_limit": 0,
                "mem_used_max": pool.arena.pages_max * PAGE_SIZE,
                "same_pages": self.same_pages,
                "pages_compacted": pool.pages_compacted,
                "huge_pages": self.huge_pages,
                "stored_pages": self.stored_pages,
                "failed_reads": self.failed_reads,
                "failed_writes": self.failed_writes,
                "invalid_io": self.invalid_io,
                "codec": self.codec.name,
                "pool": pool.name,
                "metadata_bytes": self.metadata_bytes(),
                "pool_stats": pool.stats(),
            }
