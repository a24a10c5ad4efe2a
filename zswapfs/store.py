"""The page store: the page index and the accounting.

The index maps page number -> entry in two numpy arrays sized for the whole image (np.zeros is
calloc'd, so pages of the index that were never written cost no memory):
    kind[pn]  uint8   EMPTY (never written: reads as zeros) | SAME (same-filled) |
                      COMP (compressed object in the pool)   | RAW (a huge page stored as is)
    value[pn] uint64  the fill word for SAME, the pool handle for COMP and RAW
That is 9 bytes of index a page; the pool adds 8 bytes of handle table a live object plus its
per-zspage and per-pool-page tables (see pools/). zram keeps a comparable ~16 bytes + handle.

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

EMPTY, SAME, COMP, RAW = 0, 1, 2, 3
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
        self.kind = np.zeros(npages, dtype=np.uint8)
        self.value = np.zeros(npages, dtype=np.uint64)
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
        fill = same_filled_value(page)
        if fill is not None:
            with self.lock:
                self._swap(pn, SAME, fill, 0)
            return
        try:
            payload = self.codec.compress(page)
        except Exception as exc:
            self.failed_writes += 1
            raise StorageFailure(f"compressing page {pn}: {exc}") from exc
        kind = COMP
        if len(payload) >= self.pool.raw_threshold:
            kind, payload = RAW, page
        try:
            handle = self.pool.store(payload)
        except PoolFull as exc:
            self.failed_writes += 1
            raise StoreFull(f"pool full writing page {pn}: {exc}") from exc
        except Exception as exc:
            self.failed_writes += 1
            raise StorageFailure(f"placing page {pn}: {exc}") from exc
        with self.lock:
            self._swap(pn, kind, handle, len(payload))

    def write_pages(self, pn: int, data: bytes) -> None:
        """Store len(data) // PAGE_SIZE whole pages starting at page *pn*."""
        for i in range(len(data) // PAGE_SIZE):
            off = i * PAGE_SIZE
            self.write_page(pn + i, data[off : off + PAGE_SIZE])

    def write_partial(self, pn: int, offset: int, data: bytes) -> None:
        """Read-modify-write of part of one page."""
        old = self.read_page(pn)
        self.write_page(pn, old[:offset] + data + old[offset + len(data) :])

    def _swap(self, pn: int, kind: int, value: int, size: int) -> None:
        """Point entry *pn* at a new object and release the old one (store lock held)."""
        old_kind = self.kind.item(pn)
        if old_kind == EMPTY:
            self.stored_pages += 1
        else:
            self._release(pn, old_kind)
        self.kind[pn] = kind
        self.value[pn] = value
        if kind == SAME:
            self.same_pages += 1
        else:
            self.compr_data_size += size
            if kind == RAW:
                self.huge_pages += 1

    def _release(self, pn: int, kind: int) -> None:
        if kind == SAME:
            self.same_pages -= 1
            return
        handle = self.value.item(pn)
        self.compr_data_size -= self.pool.size(handle)
        self.pool.free(handle)
        if kind == RAW:
            self.huge_pages -= 1

    # -- reading -------------------------------------------------------------------------------
    def read_page(self, pn: int) -> bytes:
        with self.lock:
            kind = self.kind.item(pn)
            if kind == EMPTY:
                return ZERO_PAGE
            value = self.value.item(pn)
            if kind == SAME:
                return ZERO_PAGE if value == 0 else fill_page(value)
            try:
                payload = self.pool.read(value)
            except Exception as exc:
                self.failed_reads += 1
                raise StorageFailure(f"reading page {pn} from the pool: {exc}") from exc
        if kind == RAW:
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
    def note_invalid_io(self) -> None:
        self.invalid_io += 1

    def index_bytes(self) -> int:
        return int(self.kind.nbytes + self.value.nbytes)

    def stats(self) -> dict[str, Any]:
        """zram's mm_stat/io_stat names, plus what zswapfs adds."""
        with self.lock:
            pool = self.pool
            pool_stats = pool.stats()
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
                "metadata_bytes": pool_stats["metadata_bytes"] + self.index_bytes(),
                "pool_stats": pool_stats,
            }
