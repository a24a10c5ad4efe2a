"""The page store: the page table and the accounting.

An image page is named by its *index* (zram's word: page N of the image, bytes N*4096 on);
allocator pages are pool pages (pools/), stored objects are named by their handles.

Two numpy arrays sized for the whole image (np.zeros is calloc'd: parts never touched cost no
memory), 8 bytes a page in all:
  table[index] uint32   EMPTY (0)   never written: zeros, or in image mode whatever the backing
                                 file holds
                     SAME (1)    same-filled: the fill word is 0, or is kept in `fill` (index ->
                                 word), a dict because non-zero same-filled pages are rare
                     BACKED (2)  written back: the page lives in the backing file only
                     >= 3        a pool handle. An object of exactly PAGE_SIZE bytes is the raw
                                 page (incompressible, "huge"); anything shorter is compressed.
  meta[index]  uint32  bits 0-22 (AGE_MASK): second (since start, +1, saturating after 97 days)
                     of the last read or write, the age writeback and recompression pick cold
                     pages by; bit 23 (SHARED): the page's object is, or was, shared with
                     other pages (dedup): its rewrite must drop a reference, not free it, so
                     a compiled request loop leaves such a page to this code; bits 24-29:
                     the page's codec slot, 0 for the write codec (lz4), else the
                     recompression codec and dictionary it was recompressed with
                     (`codecs[slot]`); bit 30 (MARK): in slot 0, recompression was tried and
                     did not pay (not tried again until rewritten); in a later slot, the page
                     was read since it was recompressed (a second read sends it back to the
                     write codec); bit 31 (DIRTY): image mode only, the page is newer here
                     than in the backing file.
The pool adds its handle table (8 bytes a live object) and its per-page tables (see pools/).
The compiled engine keeps table and meta as the two halves of one 64-bit word a page, in a memfd
that outlives its process (csrc/store.h; docs/restart.md): `table` and `meta` are then strided
views of it, and _swap commits a page's entry and meta in one store before it lets the old
object go.
Shared objects (dedup) have a reference count in `shared` (handle -> references beyond the
first); recompression slots count their pages in `slot_pages`, and a slot's codec (with its
dictionary) is dropped when its last page leaves it and a newer slot has taken over.

Lock order: _file_lock -> store.lock -> pool.lock (the file lock only around backing-file writes,
see below). The store lock guards the table, meta and the counters.
A reader copies the object out while holding the store lock (so no writer can free the handle
under it) and decompresses after letting go. A writer compresses and places the new object
before it takes the store lock, then swaps the table entry and frees the old object under it.
Writeback and flush (background or fsync, other threads) take the store lock to read the entry
and again to commit it; file I/O and codec calls happen with no lock held. Comparing the entry
is not enough to know the page was left alone meanwhile: pools reuse a freed handle first, so a
page rewritten twice can come back to the very handle that was read (ABA). So a page under
writeback, flush, recompression or dedup is registered in `_inflight`, every rewrite of it (in
_swap) marks it there, and the commit is refused when it was marked. Two threads may have one
page in flight at once (a flush beside a background step): the entry counts its owners and a
mark stays until the last of them lets go, so one owner's claim never hides a rewrite the other
must see (it may refuse a commit it could have made: the page is tried again later). The file
write itself is ordered too: a page the write path sends to the backing file (_reject) is
written and committed under the file lock, and writeback and flush check, under the same lock,
that the page was not rewritten before they write their (older) copy (_write_file).

Errors: the store raises StoreError subclasses, never errno values; fs.py maps them.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from zswapfs.engine.backing import BackingError, BackingFile
from zswapfs.engine.codec import PAGE_SIZE, Codec, CodecError, fill_page, same_filled_value
from zswapfs.engine.pools import Pool, PoolFull

log = logging.getLogger(__name__)

EMPTY, SAME, BACKED = 0, 1, 2
FIRST_HANDLE = 3
DIRTY = 1 << 31
MARK = 1 << 30
SHARED = 1 << 23
SLOT_SHIFT = 24
#: codec slots a page can name: 0 is the write codec, 1..63 recompression codecs (dictionaries)
SLOTS = 64
SLOT_MASK = (SLOTS - 1) << SLOT_SHIFT
AGE_MASK = SHARED - 1
ZERO_PAGE = bytes(PAGE_SIZE)


class StoreError(Exception):
    """Base of every failure the store reports."""


class StoreFull(StoreError):
    """No room for the page: the pool is full or at its memory limit (ENOSPC)."""


class StorageFailure(StoreError):
    """A stored page could not be written or read back (EIO)."""


class PageStore:
    #: which engine serves requests: this readable Python one, or "native" (native.py)
    engine = "python"

    def __init__(
        self,
        npages: int,
        codec: Codec,
        pool: Pool,
        backing: BackingFile | None = None,
        mem_limit: int = 0,
        huge_to_backing: bool = False,
        low_watermark: int = 90,
    ) -> None:
        if npages <= 0:
            raise ValueError("a store needs at least one page")
        self.npages = npages
        self.codec = codec
        self.pool = pool
        self.backing = backing
        self.persistent = backing is not None and backing.persistent
        self.mem_limit = mem_limit
        #: with a backing file, incompressible pages skip the pool above this many bytes
        self.huge_to_backing = huge_to_backing
        #: pool bytes where writeback stops (low_watermark % of the limit); the maintenance
        #: thread writes back down to it, huge pages skip the pool above it
        self.low_water = mem_limit * low_watermark // 100
        #: called (from the writing thread) when a write finds the pool at or over its limit
        self.on_pressure: Callable[[], None] = lambda: None
        self.lock = threading.Lock()
        self.table = np.zeros(npages, dtype=np.uint32)
        self.meta = np.zeros(npages, dtype=np.uint32)
        self.fill: dict[int, int] = {}
        #: codec of each slot (0: the write codec; others: recompression, see meta's slot bits)
        self.codecs: list[Codec | None] = [codec] + [None] * (SLOTS - 1)
        #: pages held in each slot (slot 0 not counted: it is every other stored page)
        self.slot_pages = np.zeros(SLOTS, dtype=np.int64)
        #: the slot recompression writes to now; older slots are dropped once empty
        self.current_slot = 0
        #: bytes a slot's codec keeps (its dictionary), counted in mem_used_total
        self.slot_bytes = [0] * SLOTS
        #: dedup: handle -> references beyond the first
        self.shared: dict[int, int] = {}
        #: recompressed pages read twice: to go back to the write codec (maintenance does it)
        self.rewarm: set[int] = set()
        self._t0 = time.monotonic()
        #: when not 0, what now() answers (set_clock): a clock the tests move by hand
        self._fixed_now = 0
        #: pages being written back or flushed -> rewritten meanwhile (store lock held)
        self._inflight: dict[int, list[int]] = {}
        #: held across a backing-file write and its commit (see _write_file)
        self._file_lock = threading.Lock()
        self.stored_pages = 0
        self.same_pages = 0
        self.huge_pages = 0
        self.compr_data_size = 0
        self.failed_reads = 0
        self.failed_writes = 0
        self.invalid_io = 0
        self.bd_count = 0
        self.bd_reads = 0
        self.bd_writes = 0
        self.bd_errors = 0
        self.written_back_pages = 0
        #: pages the pool did not take, by reason (zswap's names; see write_page)
        self.pool_limit_hit = 0
        self.reject_compress_fail = 0
        self.reject_compress_poor = 0
        self.reject_alloc_fail = 0
        self.reject_reclaim_fail = 0
        self.recompressions = 0
        self.recompress_saved_bytes = 0
        self.recompress_not_worth = 0
        self.pages_rewarmed = 0
        self.dedup_merges = 0
        #: discard (FALLOCATE punch hole): whole pages freed (zram's notify_free), requests
        self.notify_free = 0
        self.discards = 0
        #: requests served (write and read calls): the background loop's sign of load
        self.requests = 0
        #: times a new process took this store's state over (the compiled engine's, under a
        #: supervisor: docs/restart.md); this engine's state dies with its process
        self.takeovers = 0

    def now(self) -> int:
        """Seconds since the store started, plus one (0 means never touched)."""
        if self._fixed_now:
            return self._fixed_now
        return min(int(time.monotonic() - self._t0) + 1, AGE_MASK)

    def set_clock(self, now: int | None = None, advance: float = 0) -> None:
        """The page clock that stamps accesses, for tests and benchmarks: fixed at *now* (None:
        the real clock again), and/or moved *advance* seconds on."""
        self._t0 -= advance
        if now is not None and not 0 < now <= AGE_MASK:
            raise ValueError(f"a clock reading is 1..{AGE_MASK}")
        self._fixed_now = now or 0

    @property
    def pool_bytes(self) -> int:
        return self.pool.pages_used * PAGE_SIZE

    def _check_range(self, what: str, offset: int, size: int) -> None:
        """ValueError unless [offset, offset + size) lies inside the image (the compiled
        engine's check, written the same way: no sum that could wrap in C)."""
        end = self.npages * PAGE_SIZE
        if not (0 <= offset <= end and 0 <= size <= end - offset):
            raise ValueError(f"{what} of {size} bytes at {offset}: past the end of the image")

    # -- writing -------------------------------------------------------------------------------
    def _stamp(self) -> int:
        """meta of a page written now."""
        return self.now() | (DIRTY if self.persistent else 0)

    def write(self, offset: int, data: bytes) -> None:
        """Store *data* at byte *offset* of the image (ValueError for a range not inside it):
        whole pages as they are, a partial head or tail page by read-modify-write. One call a
        request, one clock read for all its pages."""
        self._check_range("write", offset, len(data))
        self.requests += 1
        stamp = self._stamp()
        index, head = divmod(offset, PAGE_SIZE)
        view = memoryview(data)
        try:
            if head:
                n = min(PAGE_SIZE - head, len(view))
                self._write_partial(index, head, view[:n], stamp)
                view, index = view[n:], index + 1
            while len(view) >= PAGE_SIZE:
                self.write_page(index, bytes(view[:PAGE_SIZE]), stamp)
                view, index = view[PAGE_SIZE:], index + 1
            if len(view):
                self._write_partial(index, 0, view, stamp)
        except StoreError:
            raise
        except Exception as exc:  # a bug below must not pass for a stored page
            with self.lock:
                self.failed_writes += 1
            raise StorageFailure(f"writing page {index}: {exc!r}") from exc

    def _write_partial(self, index: int, offset: int, data: memoryview, stamp: int) -> None:
        """Read-modify-write of part of one page."""
        old = self.read_page(index)
        self.write_page(index, old[:offset] + bytes(data) + old[offset + len(data) :], stamp)

    def write_page(self, index: int, page: bytes, stamp: int = 0) -> None:
        """Store one whole page. On failure the page keeps its previous contents.

        The one place that decides where a page goes: same-filled pages into the index alone;
        others into the pool unless the pool rejects them, each rejection counted under its
        zswap name: pool_limit_hit (the pool is at its memory limit), reject_compress_fail (the
        codec raised), reject_compress_poor (an incompressible page while the pool is past its
        low watermark, with --writeback-huge-first), reject_alloc_fail (the pool has no room).
        A rejected page goes to the backing file; with none, the write fails (ENOSPC, or EIO for
        a codec failure; reject_reclaim_fail counts the pages refused at the limit)."""
        stamp = stamp or self._stamp()
        word = same_filled_value(page)
        if word is not None:
            with self.lock:
                self._swap(index, SAME, 0, stamp, word)
            return
        payload, reject = self._encode(index, page)
        if payload is not None:
            try:
                handle = self.pool.store(payload)
            except PoolFull:
                reject = "reject_alloc_fail"
            except Exception as exc:
                with self.lock:
                    self.failed_writes += 1
                raise StorageFailure(f"placing page {index}: {exc!r}") from exc
            else:
                with self.lock:
                    self._swap(index, handle, len(payload), stamp)
                return
        self._reject(index, page, payload, reject, stamp)

    def _encode(self, index: int, page: bytes) -> tuple[bytes | None, str]:
        """(what the pool would hold for *page*, "") or (None or the payload, the counter of
        why the pool does not take it)."""
        if self.mem_limit and self.pool_bytes >= self.mem_limit:
            self.on_pressure()
            return None, "pool_limit_hit"
        try:
            payload = self.codec.compress(page)
        except Exception as exc:
            log.error("compressing page %d: %r", index, exc)
            return None, "reject_compress_fail"
        if len(payload) < self.pool.raw_threshold:
            return payload, ""
        if (
            self.huge_to_backing
            and self.backing is not None
            and self.mem_limit
            and self.pool_bytes >= self.low_water
        ):
            return None, "reject_compress_poor"
        return page, ""  # incompressible: stored raw ("huge")

    def _reject(
        self, index: int, page: bytes, payload: bytes | None, reject: str, stamp: int
    ) -> None:
        """A page the pool did not take: to the backing file. The one fallback, when the file
        fails too: keep the page in the pool over its limit, if the pool has room at all."""
        with self.lock:
            setattr(self, reject, getattr(self, reject) + 1)
            if self.backing is None:
                self.failed_writes += 1
                if reject == "pool_limit_hit":
                    self.reject_reclaim_fail += 1
        if self.backing is None:
            if reject == "reject_compress_fail":
                raise StorageFailure(f"page {index}: the codec failed and there is no backing file")
            raise StoreFull(f"page {index}: {reject.replace('_', ' ')} and no backing file")
        with self._file_lock:  # no older copy from writeback or flush may land after this one
            try:
                self.backing.write_page(index, page)
            except BackingError as exc:
                log.error("%s: keeping page %d in the pool over its limit", exc, index)
                with self.lock:
                    self.bd_errors += 1
            else:
                with self.lock:
                    self.bd_writes += 1
                    self._swap(index, BACKED, 0, stamp & AGE_MASK)  # the file holds it: clean
                return
        if payload is None:
            try:
                payload = self.codec.compress(page)
            except Exception:
                payload = page
            if len(payload) >= self.pool.raw_threshold:
                payload = page
        try:
            handle = self.pool.store(payload)
        except Exception as exc:
            with self.lock:
                self.failed_writes += 1
            raise StorageFailure(
                f"page {index}: no room in the pool, and the backing file failed"
            ) from exc
        with self.lock:
            self._swap(index, handle, len(payload), stamp)

    def _swap(self, index: int, entry: int, size: int, meta: int, word: int = 0) -> None:
        """Point page *index* at a new entry with its *meta* (and a same-filled page's fill
        *word*), and release the old one (store lock held). The compiled engine commits entry
        and meta in one store, before the old is let go (csrc/store.h: S1, S2); here the order
        is free, as nothing outlives the process."""
        if self._inflight and index in self._inflight:
            self._inflight[index][1] = 1
        old = self.table.item(index)
        if old == SAME:
            self.same_pages -= 1
            self.stored_pages -= 1
            self.fill.pop(index, None)
        elif old == BACKED:
            self.bd_count -= 1
        elif old >= FIRST_HANDLE:
            self.stored_pages -= 1
            slot = (self.meta.item(index) & SLOT_MASK) >> SLOT_SHIFT
            if slot:
                self._leave_slot(slot)
                self.rewarm.discard(index)
            refs = self.shared.get(old)
            if refs:  # another page still uses the object
                if refs == 1:
                    del self.shared[old]
                else:
                    self.shared[old] = refs - 1
            else:
                old_size = self.pool.free(old)
                self.compr_data_size -= old_size
                if old_size == PAGE_SIZE:
                    self.huge_pages -= 1
        self.table[index] = entry
        self.meta[index] = meta
        if entry == SAME and word:
            self.fill[index] = word
        if entry == BACKED:
            self.bd_count += 1
            return
        if entry == EMPTY:  # discarded: nothing held
            return
        self.stored_pages += 1
        if entry == SAME:
            self.same_pages += 1
        else:
            self.compr_data_size += size
            if size == PAGE_SIZE:
                self.huge_pages += 1

    def _commit(self, index: int, entry: int, meta: int) -> None:
        """Page *index*'s entry and meta set as they are, nothing let go (store lock held)."""
        self.table[index] = entry
        self.meta[index] = meta

    def _crash(self, name: str) -> None:
        """A crash point (csrc/common.h): the compiled engine's tests kill the process here."""

    def _leave_slot(self, slot: int) -> None:
        """A page leaves recompression slot *slot* (store lock held); an old slot's codec and
        dictionary go with its last page."""
        self.slot_pages[slot] -= 1
        if not self.slot_pages[slot] and slot != self.current_slot:
            self.codecs[slot] = None
            self.slot_bytes[slot] = 0

    # -- discard -------------------------------------------------------------------------------
    def discard(self, offset: int, length: int) -> None:
        """A discard (FALLOCATE's punch hole: swap freeing slots through a loop device). The
        whole pages of [offset, offset + length) are freed and read back as zeros (in image
        mode they become zero pages newer than the backing file, which may hold older
        contents); the parts of pages at either end are zeroed by a write. Counted once a
        request (discards) and once a whole page (notify_free, zram's name)."""
        self._check_range("discard", offset, length)
        with self.lock:
            self.discards += 1
        end = offset + length
        first, last = -(-offset // PAGE_SIZE), end // PAGE_SIZE
        if first >= last:  # inside one page
            if length:
                self.write(offset, bytes(length))
            return
        if offset < first * PAGE_SIZE:
            self.write(offset, bytes(first * PAGE_SIZE - offset))
        stamp = self.now() | DIRTY
        try:
            for index in range(first, last):
                self.discard_page(index, stamp)
        except StoreError:
            raise
        except Exception as exc:  # a bug below must not pass for a discarded page
            with self.lock:
                self.failed_writes += 1
            raise StorageFailure(f"discarding page {index}: {exc!r}") from exc
        if end > last * PAGE_SIZE:
            self.write(last * PAGE_SIZE, bytes(end - last * PAGE_SIZE))

    def discard_page(self, index: int, stamp: int) -> None:
        """Free page *index*: empty (zeros), or in image mode a zero page stamped *stamp*
        (which carries DIRTY: the file's copy is older)."""
        with self.lock:
            if self.persistent:
                self._swap(index, SAME, 0, stamp)
            else:
                self._swap(index, EMPTY, 0, 0)
            self.notify_free += 1

    # -- reading -------------------------------------------------------------------------------
    def read_page(self, index: int) -> bytes:
        codec = self.codec
        with self.lock:
            entry = self.table.item(index)
            if entry >= FIRST_HANDLE or entry == SAME:
                meta = self.meta.item(index)
                slot = (meta & SLOT_MASK) >> SLOT_SHIFT
                if slot:  # recompressed: a second read sends it back to the write codec
                    codec = self.codecs[slot]  # type: ignore[assignment]
                    if meta & MARK:
                        self.rewarm.add(index)
                    meta |= MARK
                self.meta[index] = (meta & ~AGE_MASK) | self.now()
            if entry == SAME:
                word = self.fill.get(index)
                return ZERO_PAGE if word is None else fill_page(word)
            if entry >= FIRST_HANDLE:
                try:
                    payload = self.pool.read(entry)
                except Exception as exc:
                    self.failed_reads += 1
                    raise StorageFailure(f"reading page {index} from the pool: {exc!r}") from exc
        if entry == EMPTY and not self.persistent:
            return ZERO_PAGE
        if entry in (EMPTY, BACKED):
            return self._read_backing(index)
        if len(payload) == PAGE_SIZE:
            return payload
        try:
            return codec.decompress(payload)
        except CodecError as exc:
            with self.lock:
                self.failed_reads += 1
            raise StorageFailure(f"decoding page {index}: {exc}") from exc

    def _read_backing(self, index: int) -> bytes:
        """A page that lives only in the backing file (the index only moves a page there, so
        it cannot change under this unlocked read)."""
        assert self.backing is not None
        try:
            page = self.backing.read_page(index)
        except BackingError as exc:
            with self.lock:
                self.failed_reads += 1
                self.bd_errors += 1
            raise StorageFailure(str(exc)) from exc
        with self.lock:
            self.bd_reads += 1
        return page

    def read(self, offset: int, size: int) -> bytes:
        """*size* bytes at byte *offset* of the image (ValueError for a range not inside it).
        One call a request."""
        self._check_range("read", offset, size)
        self.requests += 1
        first, last = offset // PAGE_SIZE, (offset + size - 1) // PAGE_SIZE
        try:
            if first == last:
                data = self.read_page(first)
            else:
                data = b"".join([self.read_page(index) for index in range(first, last + 1)])
        except StoreError:
            raise
        except Exception as exc:  # a bug below must not pass for a page read
            with self.lock:
                self.failed_reads += 1
            raise StorageFailure(f"reading {size} bytes at {offset}: {exc!r}") from exc
        skip = offset - first * PAGE_SIZE
        if skip == 0 and len(data) == size:
            return data
        return data[skip : skip + size]

    # -- writeback and flush (other threads) ---------------------------------------------------
    def _peek(self, index: int) -> tuple[int, bytes | None]:
        """(entry, what is stored) of page *index*, read under the store lock and registered in
        flight (the caller must end that with _rewritten): the raw pool payload, the page itself
        for a same-filled page, None for a page not in memory."""
        with self.lock:
            held = self._inflight.get(index)
            if held:  # another thread has it in flight too: its rewritten mark stays
                held[0] += 1
            else:
                self._inflight[index] = [1, 0]
            entry = self.table.item(index)
            if entry == SAME:
                return entry, fill_page(self.fill.get(index, 0))
            if entry < FIRST_HANDLE:
                return entry, None
            try:
                return entry, self.pool.read(entry)
            except BaseException:  # raised to the caller: nobody will take it out of flight
                self._rewritten(index)
                raise

    def _decode(self, index: int, payload: bytes) -> bytes:
        """Page *index* from its pool payload: a raw page as it is, else by the page's codec slot.
        Read outside the lock: a page rewritten meanwhile may decode wrong or fail, and the
        in-flight mark then refuses whatever the caller would have committed."""
        if len(payload) == PAGE_SIZE:
            return payload
        codec = self.codecs[(self.meta.item(index) & SLOT_MASK) >> SLOT_SHIFT]
        if codec is None:
            raise CodecError(f"page {index}: its codec slot holds no codec")
        return codec.decompress(payload)

    def _page_of(self, index: int) -> tuple[int, bytes | None]:
        """(entry, contents) of a page held in memory, registered in flight (see _peek);
        decompression happens after the lock is let go."""
        entry, payload = self._peek(index)
        if entry >= FIRST_HANDLE and payload is not None:
            payload = self._decode(index, payload)
        return entry, payload

    def _rewritten(self, index: int) -> bool:
        """Take *index* out of flight for one owner (store lock held): was it rewritten since
        _page_of? With two owners (a flush on the request thread and a background step), a
        rewrite seen while either held it counts for both, until the last one lets go: one
        owner's claim must never clear what the other has to know."""
        held = self._inflight.get(index)
        if held is None:
            return True
        held[0] -= 1
        if not held[0]:
            del self._inflight[index]
        return bool(held[1])

    def _was_rewritten(self, index: int) -> bool:
        """Like _rewritten, but *index* stays in flight (store lock held)."""
        held = self._inflight.get(index)
        return held is None or bool(held[1])

    def _write_file(self, index: int, page: bytes) -> bool:
        """Write *page*, read by _page_of, to the backing file unless the page was rewritten
        since; False if it was. Under the file lock: a rewrite that sends the page to the file
        (_reject) either comes first and is seen here, or waits and writes after this."""
        assert self.backing is not None
        with self._file_lock:
            with self.lock:
                if self._was_rewritten(index):
                    return False
            self.backing.write_page(index, page)
        return True

    def writeback_page(self, index: int) -> bool:
        """Move page *index* from the pool to the backing file. False when it is not in the pool,
        was rewritten meanwhile, or the backing file failed (the page then stays in the pool)."""
        assert self.backing is not None
        try:
            entry, page = self._page_of(index)
        except (CodecError, KeyError) as exc:
            with self.lock:
                self._rewritten(index)
            log.error("writeback of page %d: cannot read it: %s", index, exc)
            return False
        clean = self.persistent and not self.meta.item(index) & DIRTY
        if entry >= FIRST_HANDLE and page is not None and not clean:
            try:
                self._write_file(index, page)  # when it was rewritten, the commit below refuses
            except BackingError as exc:
                with self.lock:
                    self.bd_errors += 1
                log.error("writeback: %s; page %d stays in the pool", exc, index)
                page = None  # nothing to commit
        with self.lock:
            if self._rewritten(index) or entry < FIRST_HANDLE or page is None:
                return False  # rewritten while we wrote (the pool copy is newer), or failed
            self._crash("writeback.written")
            self._swap(index, BACKED, 0, self.meta.item(index) & AGE_MASK)  # clean, no codec
            self.written_back_pages += 1
            if not clean:
                self.bd_writes += 1
        return True

    def close(self) -> None:
        """Release the pool, then the backing file (no request may run any more)."""
        self.pool.close()
        if self.backing is not None:
            self.backing.close()

    def writeback_pages(self, indices: list[int]) -> int:
        """writeback_page for each page, in order (the maintenance thread's batch); returns
        how many were moved to the backing file."""
        return sum(self.writeback_page(index) for index in indices)

    def flush(self) -> int:
        """Image mode: write every page newer in memory than in the backing file, then fsync
        the file. Returns the pages written. Raises StorageFailure if the file fails."""
        if not self.persistent or self.backing is None:
            return 0
        written = self.flush_pages(np.flatnonzero(self.meta & DIRTY).tolist())
        try:
            self.backing.sync()
        except BackingError as exc:
            with self.lock:
                self.bd_errors += 1
            raise StorageFailure(f"flush: {exc}") from exc
        return written

    def flush_pages(self, indices: list[int]) -> int:
        """flush_page for each page, in order; returns how many were written."""
        return sum(self.flush_page(index) for index in indices)

    def flush_page(self, index: int) -> bool:
        """Write page *index* to the backing file (image mode) and mark it clean, unless it was
        rewritten meanwhile (then it stays dirty for the next flush). True when it was written.
        Raises StorageFailure if the file fails."""
        assert self.backing is not None
        try:
            _, page = self._page_of(index)
            written = page is not None and self._write_file(index, page)
        except (BackingError, CodecError) as exc:
            with self.lock:
                self._rewritten(index)
                self.bd_errors += 1
            raise StorageFailure(f"flush: {exc}") from exc
        with self.lock:
            if not self._rewritten(index):  # rewritten meanwhile: stays dirty for next time
                self.meta[index] = self.meta.item(index) & ~DIRTY
                if page is not None:
                    self.bd_writes += 1
        return written

    # -- recompression and dedup (the maintenance thread) ----------------------------------------
    def add_slot(self, codec: Codec, nbytes: int) -> int:
        """Make *codec* (holding *nbytes*, its dictionary) the codec recompression writes with;
        returns its slot. The previous slot stays until its last page leaves it."""
        with self.lock:
            old = self.current_slot
            slot = self._free_slot()
            self.codecs[slot] = codec
            self.slot_bytes[slot] = nbytes
            self.current_slot = slot
            if old and not self.slot_pages[old]:
                self.codecs[old] = None
                self.slot_bytes[old] = 0
            return slot

    def _free_slot(self) -> int:
        """The lowest codec slot holding no codec (store lock held); StoreFull if none."""
        for slot in range(1, SLOTS):
            if self.codecs[slot] is None:
                return slot
        raise StoreFull("every recompression slot is in use")

    def idle_pages(self, count: int, min_idle: int) -> list[int]:
        """Up to *count* pages held in the write codec's slot, idle at least *min_idle* seconds
        and not yet tried, coldest first (stale swap slots are the coldest there are). Read
        without the lock: a hint that recompress_page checks again."""
        meta = self.meta
        candidates = np.flatnonzero(
            (self.table >= FIRST_HANDLE) & ((meta & (SLOT_MASK | MARK)) == 0)
        )
        if not len(candidates):
            return []
        ages = meta[candidates] & AGE_MASK
        keep = ages <= self.now() - min_idle
        candidates, ages = candidates[keep], ages[keep]
        if len(candidates) > count:
            pick = np.argpartition(ages, count - 1)[:count]
            candidates, ages = candidates[pick], ages[pick]
        return [int(index) for index in candidates[np.argsort(ages, kind="stable")]]

    def peek_page(self, index: int) -> bytes | None:
        """The contents of pool page *index* without counting it as a read (no age, no mark);
        None if it holds no pool object or cannot be decoded."""
        with self.lock:
            entry = self.table.item(index)
            if entry < FIRST_HANDLE:
                return None
            payload = self.pool.read(entry)
            codec = self.codecs[(self.meta.item(index) & SLOT_MASK) >> SLOT_SHIFT]
        if len(payload) == PAGE_SIZE:
            return payload
        try:
            return codec.decompress(payload) if codec is not None else None
        except CodecError:
            return None

    def _claim(self, index: int) -> tuple[int, bytes] | None:
        """(handle, payload) of a pool page whose object is its own, registered in flight;
        None (and out of flight) for any other page."""
        entry, payload = self._peek(index)
        if entry >= FIRST_HANDLE and payload is not None:
            with self.lock:
                if entry not in self.shared:
                    return entry, payload
        with self.lock:
            self._rewritten(index)
        return None

    def _recode(self, index: int, to_slot: int, min_gain: int) -> str:
        """Re-encode page *index* from its slot's codec into *to_slot*'s. "done", "skip" (did not
        gain *min_gain* bytes: marked tried), or "gone" (rewritten, shared or not in the pool)."""
        claimed = self._claim(index)
        if claimed is None:
            return "gone"
        handle, payload = claimed
        to_codec = self.codecs[to_slot]
        new_handle = 0
        try:
            assert to_codec is not None
            page = self._decode(index, payload)
            new = to_codec.compress(page)
            if len(new) >= self.pool.raw_threshold:
                new = page
            if len(new) + min_gain <= len(payload):
                new_handle = self.pool.store(new)
        except (CodecError, PoolFull) as exc:
            log.warning("re-encoding page %d: %s", index, exc)
        with self.lock:
            if self._rewritten(index) or self.table.item(index) != handle or handle in self.shared:
                if new_handle:
                    self.pool.free(new_handle)
                return "gone"
            meta = self.meta.item(index)
            if not new_handle:
                self.meta[index] = meta | MARK
                self.recompress_not_worth += 1
                return "skip"
            self._crash("recode.placed")
            new_meta = (meta & (AGE_MASK | DIRTY)) | to_slot << SLOT_SHIFT  # not SHARED
            self._swap(index, new_handle, len(new), new_meta)
            if to_slot:
                self.slot_pages[to_slot] += 1
                self.recompressions += 1
                self.recompress_saved_bytes += len(payload) - len(new)
            else:
                self.pages_rewarmed += 1
            return "done"

    def recompress_page(self, index: int, min_gain: int = 16) -> str:
        """Recompress an idle page with the current recompression codec (see _recode)."""
        if not self.current_slot:
            return "gone"
        return self._recode(index, self.current_slot, min_gain)

    def recompress_pages(self, indices: list[int], min_gain: int = 16) -> int:
        """recompress_page for each of *indices*, in order; returns the pages recompressed."""
        return sum(self.recompress_page(index, min_gain) == "done" for index in indices)

    def rewarm_page(self, index: int) -> str:
        """Send a recompressed page that is read again back to the write codec."""
        with self.lock:
            self.rewarm.discard(index)
        return self._recode(index, 0, -PAGE_SIZE)

    def dedup_scan(self, pages: list[int], between: Callable[[], None] = lambda: None) -> int:
        """Merge pool pages among *pages* whose stored objects are byte-identical (same codec
        slot, same payload: the same page). A digest only finds candidates; the bytes are
        compared under the store lock before two pages share one object. Returns the merges."""
        seen: dict[tuple[int, bytes], tuple[int, int]] = {}
        merged = 0
        for index in pages:
            between()
            with self.lock:
                handle = self.table.item(index)
                if handle < FIRST_HANDLE:
                    continue
                slot = self.meta.item(index) & SLOT_MASK
                payload = self.pool.read(handle)
            if len(payload) == PAGE_SIZE:
                continue  # raw pages: rarely equal, and huge_pages counts them one by one
            key = (slot, hashlib.blake2b(payload, digest_size=16).digest())
            first = seen.setdefault(key, (index, handle))
            if first[0] == index:
                continue
            with self.lock:
                other_pn, other = first
                if (
                    self.table.item(other_pn) != other
                    or self.meta.item(other_pn) & SLOT_MASK != slot
                    or self.table.item(index) != handle
                    or self.meta.item(index) & SLOT_MASK != slot
                    or handle == other
                    or handle in self.shared
                    or self.pool.read(other) != payload  # byte for byte, never by digest alone
                    or self.pool.read(handle) != payload
                ):
                    continue
                # a page in flight elsewhere (flush) keeps the same bytes: no rewrite to mark.
                # Both pages marked shared, then the page switched to the other's object in
                # one commit, then its own let go (csrc/store.h: S1, S2)
                self.meta[other_pn] = self.meta.item(other_pn) | SHARED
                self._commit(index, other, self.meta.item(index) | SHARED)
                self._crash("dedup.commit")
                size = self.pool.free(handle)
                self.compr_data_size -= size
                self.shared[other] = self.shared.get(other, 0) + 1
                self.dedup_merges += 1
                merged += 1
        return merged

    def cold_pages(self, count: int, huge_first: bool = False, min_idle: int = 0) -> list[int]:
        """Up to *count* pool pages, least recently used first (idle at least *min_idle*
        seconds when given); with *huge_first*, incompressible pages before the others.
        Read without the lock: a hint, which writeback_page checks again."""
        candidates = np.flatnonzero(self.table >= FIRST_HANDLE)
        if min_idle:
            ages = self.meta[candidates] & AGE_MASK
            candidates = candidates[ages <= self.now() - min_idle]
        if not len(candidates):
            return []
        want = min(len(candidates), count * (4 if huge_first else 1))
        ages = self.meta[candidates] & AGE_MASK
        if want < len(candidates):
            pick = np.argpartition(ages, want - 1)[:want]
            candidates, ages = candidates[pick], ages[pick]
        ordered = candidates[np.argsort(ages, kind="stable")].tolist()
        if huge_first:
            huge = [index for index in ordered if self._is_huge(index)]
            chosen = set(huge)
            ordered = huge + [index for index in ordered if index not in chosen]
        return ordered[:count]

    def _is_huge(self, index: int) -> bool:
        entry = self.table.item(index)
        try:
            return entry >= FIRST_HANDLE and self.pool.size(entry) == PAGE_SIZE
        except KeyError:
            return False

    # -- figures -------------------------------------------------------------------------------
    def _codec_pages(self) -> dict[str, int]:
        """Pool pages by the codec that holds them (store lock held)."""
        out = {self.codec.name: self.stored_pages - self.same_pages - int(self.slot_pages.sum())}
        for slot in range(1, SLOTS):
            codec = self.codecs[slot]
            if codec is not None and self.slot_pages[slot]:
                out[f"{codec.name}#{slot}"] = int(self.slot_pages[slot])
        return out

    def mem_used_pages(self) -> int:
        return self.pool.pages_used

    def note_invalid_io(self) -> None:
        with self.lock:
            self.invalid_io += 1

    def metadata_bytes(self) -> int:
        """Index and tables outside the pool's arena (the index counted whole, as allocated)."""
        return int(self.table.nbytes + self.meta.nbytes) + self.pool.metadata_bytes()

    def stats(self) -> dict[str, Any]:
        """zram's mm_stat/io_stat/bd_stat and zswap's names, plus what zswapfs adds."""
        with self.lock:
            pool = self.pool
            return {
                "disksize": self.npages * PAGE_SIZE,
                "orig_data_size": self.stored_pages * PAGE_SIZE,
                "compr_data_size": self.compr_data_size,
                "mem_used_total": pool.pages_used * PAGE_SIZE + sum(self.slot_bytes),
                "mem_limit": self.mem_limit,
                "mem_used_max": pool.arena.pages_max * PAGE_SIZE,
                "same_pages": self.same_pages,
                "pages_compacted": pool.pages_compacted,
                "huge_pages": self.huge_pages,
                "stored_pages": self.stored_pages,
                "failed_reads": self.failed_reads,
                "failed_writes": self.failed_writes,
                "invalid_io": self.invalid_io,
                "bd_count": self.bd_count,
                "bd_reads": self.bd_reads,
                "bd_writes": self.bd_writes,
                "bd_errors": self.bd_errors,
                "written_back_pages": self.written_back_pages,
                "pool_limit_hit": self.pool_limit_hit,
                "reject_compress_fail": self.reject_compress_fail,
                "reject_compress_poor": self.reject_compress_poor,
                "reject_alloc_fail": self.reject_alloc_fail,
                "reject_reclaim_fail": self.reject_reclaim_fail,
                "recompressions": self.recompressions,
                "recompressed_pages": int(self.slot_pages.sum()),
                "recompress_saved_bytes": self.recompress_saved_bytes,
                "recompress_not_worth": self.recompress_not_worth,
                "pages_rewarmed": self.pages_rewarmed,
                "notify_free": self.notify_free,
                "discards": self.discards,
                "codec_pages": self._codec_pages(),
                "dict_count": sum(1 for b in self.slot_bytes if b),
                "dict_bytes": sum(self.slot_bytes),
                "pages_deduped": sum(self.shared.values()),
                "dedup_saved_bytes": sum(pool.size(h) * refs for h, refs in self.shared.items()),
                "dedup_merges": self.dedup_merges,
                "takeovers": self.takeovers,
                "engine": self.engine,
                "codec": self.codec.name,
                "pool": pool.name,
                "backing": self.backing.path if self.backing else None,
                "mode": "image" if self.persistent else "swap",
                "metadata_bytes": self.metadata_bytes(),
                "pool_stats": pool.stats(),
            }
