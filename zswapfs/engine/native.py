"""The compiled engine (``csrc/``, built as ``_native``) behind the PageStore and Pool interfaces.

NativeStore is a PageStore whose hot path is compiled: ``write(offset, data)`` and ``read(offset,
size)`` are one call into C per request, with the GIL released for the page loop (same-filled
detection, compression, placement in the C pool: zsmalloc, zbud or z3fold, index swap, counters,
access stamps). The C side owns the pool and the counters; the index and meta arrays are numpy
arrays it writes through their buffers, so every PageStore method written in Python works unchanged
over them: writeback_page, flush, cold_pages, stats, the reject path. The store lock is a C mutex
(``_native.Lock``) that ``with store.lock:`` holds from Python too.

A page the C loop does not decide goes back to PageStore's Python code, page by page:
  - a non-same-filled page while the pool is at its memory limit and there is no backing file
    or the write to it failed, or one PageStore would reject (compression failure,
    incompressible page past the low watermark with huge_to_backing, no room in the pool):
    PageStore.write_page, which counts and routes it (a page over the limit that the backing
    file takes is C's own: store.py's _reject, the file write under the file lock);
  - a second read of a page recompressed by the background loop (the first is decoded in C
    with the slot's digested dictionary), or a page only the backing file holds whose read
    failed or came short: PageStore.read_page (a read from the backing file that succeeds is
    C's own: a pread of the BackingFile's descriptor, which close() detaches first);
  - a page whose old object is recompressed (a codec slot counts it) or shared (dedup counts
    its references): PageStore.write_page, whose _swap (here: the bookkeeping in Python, the
    swap in C) keeps those counts.

NativeZsPool, NativeZbudPool and NativeZ3foldPool are the C pool (one type, its strategy chosen
at set-up) with Pool's Python conveniences (compact, migrate_top, stats) on top; their placement
decisions, handles and counters are those of pools/zsmalloc.py and pools/buddy.py step for step
(tests/test_engine_diff.py checks it).

The maintenance thread's writeback batches (writeback_pages: decode, backing-file write under
the file lock, commit) run in C with the GIL released, as do the background recompression's
batches (recompress_pages: pages of the write codec into the current dictionary slot); the C
side keeps each slot's digested dictionary (_set_slot, kept in step with add_slot and
_leave_slot), the per-slot page counts (slot_pages, a numpy array it shares) and the
recompression counters.

A write request of at least BATCH_MIN_PAGES whole pages has its pages compressed by the page
workers (C threads, one per spare core) alongside the request thread before the loop places
them in order; see csrc/workers.h.

``make_store`` picks the engine.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from zswapfs.engine.backing import BackingFile
from zswapfs.engine.codec import (
    PAGE_SIZE,
    Codec,
    DictZstdCodec,
    Lz4Codec,
    NoneCodec,
    ZstdCodec,
    make_codec,
)
from zswapfs.engine.pools import POOL_NAMES, Pool, PoolFull, make_pool
from zswapfs.engine.pools.buddy import BuddyPool
from zswapfs.engine.pools.zsmalloc import DEFAULT_CHAIN, ZsPool
from zswapfs.engine.store import (
    FIRST_HANDLE,
    SLOT_MASK,
    SLOT_SHIFT,
    SLOTS,
    PageStore,
    StorageFailure,
    StoreError,
)

log = logging.getLogger(__name__)

ENGINE_NAMES = ("native", "python")

try:
    from zswapfs.engine import _native
except ImportError as exc:  # built without a compiler, or liblz4/libzstd missing
    _native = None  # type: ignore[assignment]
    UNAVAILABLE: str | None = f"the compiled engine is not built ({exc})"
else:
    _native._set_errors(PoolFull, StorageFailure, StoreError)
    UNAVAILABLE = None

#: write requests of at least this many whole pages compress on the page workers too
BATCH_MIN_PAGES = 8


def default_workers() -> int:
    """One page worker for every core this process may run on beyond the request thread's,
    at most 3: none on one core, where a second thread only takes turns."""
    return max(0, min(len(os.sched_getaffinity(0)) - 1, 3))


def set_workers(n: int | None = None, min_pages: int = BATCH_MIN_PAGES, lead: bool = True) -> None:
    """Page workers for big write requests (None: default_workers(), which is also what C
    starts with until this is called); lead=False (tests) has the workers alone compress a
    batch's pages."""
    if _native is not None:
        _native._set_workers(default_workers() if n is None else n, min_pages, lead)


def workers() -> dict[str, int]:
    """The page workers' settings and counters (empty without the compiled engine)."""
    return dict(_native._workers()) if _native is not None else {}


def available() -> bool:
    return _native is not None


def spawn_keeper(channel_fd: int) -> int:
    """A keeper of this process's memory (csrc/keeper.c): a process sharing its address space,
    so that the state's pages stay mapped and locked after this process dies, until the
    channel *channel_fd* is hung up at the other end. Its pid (the caller's parent's child);
    OSError when there is none (no compiled engine: ENOSYS)."""
    if _native is None:
        raise OSError(errno.ENOSYS, "no compiled engine")
    return int(_native._spawn_keeper(channel_fd))


@dataclass(frozen=True)
class StateFds:
    """The memfds that hold a compiled store's state (docs/restart.md): the store's region (page
    words, fill words, slot codecs, counters), the pool's region (handle table, zspage chains)
    and the pool's arena (the pages). A supervisor keeps copies; a new process takes the store
    over from them (make_store's *takeover*)."""

    store: int
    pool: int
    arena: int

    def close(self) -> None:
        for fd in (self.store, self.pool, self.arena):
            try:
                os.close(fd)
            except OSError:
                pass


class TakeoverRefused(StoreError):
    """A store's state that this build will not take over (another format, another geometry,
    descriptors of another store): one line saying what differs."""


def _codec_args(codec: Codec) -> tuple[str, int] | None:
    """(codec kind, level) for the C side, or None for a codec it does not have."""
    if isinstance(codec, Lz4Codec):
        return "lz4", 0
    if isinstance(codec, ZstdCodec):
        return "zstd", codec.level
    if isinstance(codec, NoneCodec):
        return "none", 0
    return None


if _native is not None:

    class NativeArena:
        """The arena figures Pool and the maintenance thread read (pool.arena.*)."""

        def __init__(self, pool: _NativePool) -> None:
            self._pool = pool

        @property
        def holes(self) -> int:
            return self._pool.arena_holes

        @property
        def high_water(self) -> int:
            return self._pool.arena_high_water

        @property
        def pages_max(self) -> int:
            return self._pool.arena_pages_max

        @property
        def max_pages(self) -> int:
            return self._pool.arena_max_pages

        @property
        def pages_used(self) -> int:
            return self._pool.pages_used

        @property
        def segments_mapped(self) -> int:
            return self._pool.arena_segments_mapped

        @property
        def segments_released(self) -> int:
            return self._pool.arena_segments_released

        @property
        def warm_pages(self) -> int:
            return self._pool.arena_warm_pages

        def is_free(self, pn: int) -> bool:
            return self._pool._arena_is_free(pn)

        def release_empty_segments(self) -> int:
            return self._pool.release_segments()

        def close(self) -> None:
            self._pool.close()

    class _NativePool(_native.Pool, Pool):  # type: ignore[misc]
        """The C pool; the interface of pools/__init__.py's Pool."""

        def __init__(
            self,
            max_pages: int,
            max_chain: int = DEFAULT_CHAIN,
            state_fd: int = -1,
            arena_fd: int = -1,
        ) -> None:
            """A new pool over new memfds, or (both descriptors given, and owned by the pool
            from here on) the pool they hold, rebuilt when its store is taken over."""
            # Pool.__init__ is not called: the arena, handle table and lock are in C
            self._setup(max_pages, max_chain, self.name, state_fd, arena_fd)
            self.arena = NativeArena(self)  # type: ignore[assignment]

        @staticmethod
        def headroom(max_chain: int | None) -> int:
            """Pages beyond the image's own a full image may need (the Python pool's rule)."""
            raise NotImplementedError

    class NativeZsPool(_NativePool):
        """pools/zsmalloc.py's ZsPool in C."""

        name = "zsmalloc"
        headroom = staticmethod(ZsPool.headroom)

        def stats(self) -> dict[str, Any]:
            out = Pool.stats(self)
            out["huge_class_size"] = self.huge_class_size
            out["classes"] = self.class_table()
            return out

    class NativeBuddyPool(_NativePool):
        """pools/buddy.py's BuddyPool in C."""

        headroom = staticmethod(BuddyPool.headroom)

        def stats(self) -> dict[str, Any]:
            out = Pool.stats(self)
            unbuddied = self.unbuddied_pages
            out["unbuddied_pages"] = unbuddied
            out["buddied_pages"] = self.pages_used - unbuddied
            return out

    class NativeZbudPool(NativeBuddyPool):
        name = "zbud"

    class NativeZ3foldPool(NativeBuddyPool):
        name = "z3fold"

    NATIVE_POOLS: dict[str, type[_NativePool]] = {
        "zsmalloc": NativeZsPool,
        "zbud": NativeZbudPool,
        "z3fold": NativeZ3foldPool,
    }

    class _FillWords:
        """PageStore's `fill` (index -> the word of a non-zero same-filled page) as it is used
        there, kept in C: every method needs the store lock held, as PageStore's own code
        holds it (C checks and raises RuntimeError otherwise)."""

        def __init__(self, store: NativeStore) -> None:
            self.store = store

        def __setitem__(self, index: int, word: int) -> None:
            self.store._fill_set(index, word)

        def get(self, index: int, default: int | None = None) -> int | None:
            return self.store._fill_word(index) or default

        def pop(self, index: int, default: int | None = None) -> int | None:
            word = self.store._fill_word(index)
            self.store._fill_set(index, 0)
            return word or default

        def __contains__(self, index: object) -> bool:
            return isinstance(index, int) and self.store._fill_word(index) != 0

    class NativeStore(_native.Store, PageStore):
        """PageStore with the request loop in C (see the module docstring)."""

        engine = "native"

        def __init__(
            self,
            npages: int,
            codec: Codec,
            pool: Pool,
            backing: BackingFile | None = None,
            mem_limit: int = 0,
            huge_to_backing: bool = False,
            low_watermark: int = 90,
            region_fd: int = -1,
        ) -> None:
            """A new store over a new region memfd; with *region_fd* (owned by the store from
            here on), the store that region holds, checked (TakeoverRefused) and waiting for
            take_over() to make it whole."""
            kind = _codec_args(codec)
            if not isinstance(pool, _NativePool) or kind is None:
                if region_fd >= 0:
                    os.close(region_fd)
                raise ValueError("the native engine needs a native pool and lz4, zstd or none")
            PageStore.__init__(
                self, npages, codec, pool, backing, mem_limit, huge_to_backing, low_watermark
            )
            self.lock = self._lock  # type: ignore[assignment]
            self._file_lock = self._file_lock_c  # type: ignore[assignment]
            # the same-filled words and the pages in flight live in C
            del self._inflight
            self.fill = _FillWords(self)  # type: ignore[assignment]
            adopt = region_fd >= 0
            nbytes, off_entries, off_fill = _native._store_layout(npages)
            try:
                if not adopt:
                    region_fd = os.memfd_create("zswapfs-store", os.MFD_CLOEXEC)
                    os.ftruncate(region_fd, nbytes)
                elif os.fstat(region_fd).st_size != nbytes:
                    raise TakeoverRefused(
                        f"the store's state descriptor is {os.fstat(region_fd).st_size} bytes, "
                        f"not the {nbytes} of an image of {npages} pages"
                    )
                self._region = mmap.mmap(region_fd, nbytes)
            except BaseException:
                if region_fd >= 0:
                    os.close(region_fd)
                raise
            self._region_fd = region_fd
            # each page's word: entry (table) in the low half, meta in the high (csrc/store.h)
            words = np.frombuffer(self._region, np.uint32, 2 * npages, off_entries)
            self.table = words[0::2]
            self.meta = words[1::2]
            try:
                self._setup(
                    self._region,
                    npages,
                    pool,
                    kind[0],
                    kind[1],
                    mem_limit,
                    self.low_water,
                    huge_to_backing,
                    self.persistent,
                    backing.fd if backing is not None else -1,
                    self._t0,
                    self.slot_pages,
                    adopt,
                )
            except ValueError as exc:
                os.close(region_fd)
                self._region_fd = -1
                if adopt:
                    raise TakeoverRefused(str(exc)) from None
                raise
            if adopt:
                self._t0 = self._region_t0

        def state_fds(self) -> StateFds:
            """The descriptors of the memfds that hold this store's state (the store keeps
            them; a caller that hands them on dups them)."""
            pool_fd, arena_fd = self.pool._descriptors()  # type: ignore[attr-defined]
            return StateFds(self._region_fd, pool_fd, arena_fd)

        def take_over(self) -> int:
            """Make a store set up over another process's state whole (csrc/store.c's _adopt:
            counters recomputed, the pool rebuilt, every page of the state faulted in and so
            locked in this process), then rebuild what lives in Python: the slots' codecs
            from their records, the slots' page counts, dedup's references.
            TakeoverRefused when the state contradicts itself. The bytes of state faulted in."""
            resident = 0
            try:
                resident = self._adopt(self._region_fd)
            except ValueError as exc:
                raise TakeoverRefused(str(exc)) from None
            except OSError as exc:  # whole, but not all of it resident: say so, serve anyway
                log.error("the state taken over could not all be faulted in and locked (%s): "
                          "pages of it may go to swap", exc)  # fmt: skip
            for slot in range(1, SLOTS):
                record = self._slot_record(slot)
                if record is None:
                    continue
                name, level, dictionary = record
                try:
                    codec = (
                        DictZstdCodec(level, dictionary)
                        if name.endswith("+dict")
                        else make_codec(name)
                    )
                except Exception as exc:
                    raise TakeoverRefused(f"codec slot {slot} ({name}): {exc}") from None
                self.codecs[slot] = codec
                self.slot_bytes[slot] = len(dictionary)
                if isinstance(codec, DictZstdCodec):
                    self._set_slot(slot, name, level, dictionary, True)
            held = self.table >= FIRST_HANDLE
            slots = (self.meta[held] & SLOT_MASK) >> SLOT_SHIFT
            self.slot_pages[:] = np.bincount(slots, minlength=SLOTS)[:SLOTS]
            self.slot_pages[0] = 0
            handles, counts = np.unique(self.table[held], return_counts=True)
            self.shared = {
                int(h): int(c) - 1 for h, c in zip(handles, counts, strict=True) if c > 1
            }
            with self.lock:
                for slot in range(1, SLOTS):  # a slot left with no page by a dead process
                    if (
                        self.codecs[slot] is not None
                        and not self.slot_pages[slot]
                        and slot != self.current_slot
                    ):
                        self.codecs[slot] = None
                        self.slot_bytes[slot] = 0
                        self._drop_slot(slot)
            return resident

        # -- one call a request: write(offset, data) and read(offset, size) are the C
        # methods themselves (a failure that is not a StoreError is counted and raised as
        # StorageFailure there, as PageStore.write/read do)

        def write_page(self, index: int, page: bytes, stamp: int = 0) -> None:
            if len(page) != PAGE_SIZE:
                raise ValueError(f"a page is {PAGE_SIZE} bytes, not {len(page)}")
            _native.Store.write(self, index * PAGE_SIZE, page, stamp)

        def read_page(self, index: int) -> bytes:
            return _native.Store.read(self, index * PAGE_SIZE, PAGE_SIZE)

        def _write_slow(self, index: int, page: bytes, stamp: int) -> None:
            """A page the C loop hands back (memory limit, reject, no room, or an old object
            that is recompressed or shared): PageStore's Python write path decides where it
            goes and counts it."""
            PageStore.write_page(self, index, page, stamp)

        def _read_slow(self, index: int) -> bytes:
            """A page the C loop hands back (a recompressed page read a second time, which
            queues it to go back to the write codec; a slot C has no dictionary for; or a
            failed read of the backing file, counted and reported): PageStore's read path."""
            return PageStore.read_page(self, index)

        def set_clock(self, now: int | None = None, advance: float = 0) -> None:
            PageStore.set_clock(self, now, advance)
            self._set_clock(self._t0, self._fixed_now)

        def _discard_slow(self, index: int, stamp: int) -> None:
            """A page the C discard hands back (its old object is recompressed or shared):
            PageStore's discard_page, whose _swap keeps those counts."""
            PageStore.discard_page(self, index, stamp)

        def _swap(self, index: int, entry: int, size: int, meta: int, word: int = 0) -> None:
            """PageStore._swap's slot and dedup bookkeeping in Python, the rest in C (store
            lock held): the page's word committed first (a shared object kept), then a
            recompressed page leaves its slot (which may drop the slot's record: no page
            names it any more) and a shared object loses a reference."""
            old = self.table.item(index)
            slot = 0
            refs = 0
            if old >= FIRST_HANDLE:
                slot = (self.meta.item(index) & SLOT_MASK) >> SLOT_SHIFT
                refs = self.shared.get(old, 0)
            self._swap_entry(index, entry, size, meta, word, refs > 0)
            if slot:
                self._leave_slot(slot)
                self.rewarm.discard(index)
            if refs == 1:
                del self.shared[old]
            elif refs:
                self.shared[old] = refs - 1

        def _crash(self, name: str) -> None:
            _native._crash_point(name)

        # -- recompression: pages of the write codec into a dictionary slot, in C
        def add_slot(self, codec: Codec, nbytes: int) -> int:
            """PageStore's, with the dictionary digested for C before the slot is current
            and with no lock held (a batch that finds no dictionary leaves its pages to
            Python, so this only keeps them in C)."""
            # recorded in the region first (a new process rebuilds the codec from the record);
            # a dictionary codec digested for C too (others: recompressed in Python)
            digest = isinstance(codec, DictZstdCodec)
            record = (
                codec.name,
                getattr(codec, "level", 0),
                codec.dictionary if isinstance(codec, DictZstdCodec) else b"",
                digest,
            )
            with self.lock:
                ready = self._free_slot()
            self._set_slot(ready, *record)
            slot = PageStore.add_slot(self, codec, nbytes)
            if slot != ready:  # a slot freed meanwhile came first
                self._set_slot(slot, *record)
            with self.lock:
                for other in range(1, SLOTS):
                    if self.codecs[other] is None:
                        self._drop_slot(other)
            return slot

        def _leave_slot(self, slot: int) -> None:
            PageStore._leave_slot(self, slot)
            if self.codecs[slot] is None:
                self._drop_slot(slot)

        def recompress_pages(self, indices: list[int], min_gain: int = 16) -> int:
            """The batch in C with the GIL released; a page C leaves alone (recompressed or
            shared already, a slot without a dictionary) takes PageStore's Python path in its
            turn, and C goes on with the pages after it."""
            slot = self.current_slot
            if not slot:
                return 0
            return self._in_batches(
                indices,
                lambda rest: self._recompress_batch(rest, slot, min_gain),
                lambda index: PageStore.recompress_page(self, index, min_gain) == "done",
            )

        def writeback_pages(self, indices: list[int]) -> int:
            """The batch in C with the GIL released (decode, the backing-file write, the
            commit); a page C leaves alone (recompressed or shared, or a failure the Python
            path counts and logs) takes PageStore.writeback_page in its turn."""
            return self._in_batches(
                indices, self._writeback_batch, lambda index: PageStore.writeback_page(self, index)
            )

        def flush_pages(self, indices: list[int]) -> int:
            """The batch in C with the GIL released (decode, the backing-file write, the dirty
            bit); a page C leaves alone (a slot C has no dictionary for, or a failure the
            Python path counts and raises) takes PageStore.flush_page in its turn."""
            return self._in_batches(
                indices, self._flush_batch, lambda index: PageStore.flush_page(self, index)
            )

        def _flush_slow(self, index: int) -> None:
            """A page the frontend's fsync in C hands back: PageStore.flush_page."""
            PageStore.flush_page(self, index)

        @staticmethod
        def _in_batches(
            indices: list[int],
            batch: Callable[[list[int]], tuple[int, int]],
            one: Callable[[int], bool],
        ) -> int:
            """A C batch call over *indices* (it returns (done, at): pages done, and the
            position of the first page it left to Python, or -1); that page takes the Python
            path *one*, then C goes on with the pages after it. Returns the pages done."""
            total = 0
            while indices:
                done, at = batch(indices)
                total += done
                if at < 0:
                    break
                total += one(indices[at])
                indices = indices[at + 1 :]
            return total

        def close(self) -> None:
            """C lets the backing file's descriptor go first (under the file lock, so no read
            or write of it is in progress), then PageStore.close. The region stays mapped
            (the index views point into it) until the store goes; its descriptor is closed."""
            self._detach_backing()
            PageStore.close(self)
            if self._region_fd >= 0:
                os.close(self._region_fd)
                self._region_fd = -1

        def stats(self) -> dict[str, Any]:
            st = PageStore.stats(self)
            st["page_workers"] = workers()
            return st


def make_store(
    engine: str,
    npages: int,
    codec: Codec,
    pool_name: str,
    max_chain: int | None = None,
    backing: BackingFile | None = None,
    mem_limit: int = 0,
    huge_to_backing: bool = False,
    low_watermark: int = 90,
    takeover: StateFds | None = None,
    check_only: bool = False,
) -> PageStore:
    """A store and its pool on the engine asked for: "native" falls back to the Python engine,
    with a log line, when the extension is not built or has no such pool or codec.

    With *takeover*, the compiled store whose state those memfds hold (the store owns them
    from here on), taken over and made whole; with *check_only* too, only checked (the
    region's formats, geometry and descriptors) and not changed at all, for `zswapfs restart`
    to ask a new version whether it can take over before the old one stops. TakeoverRefused
    says why not."""
    if takeover is not None:
        return _take_over(
            takeover, npages, codec, pool_name, max_chain, backing, mem_limit,
            huge_to_backing, low_watermark, check_only,
        )  # fmt: skip
    if engine not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINE_NAMES)}")
    if pool_name not in POOL_NAMES:
        raise ValueError(f"unknown pool {pool_name!r}: expected one of {', '.join(POOL_NAMES)}")
    if engine == "native":
        why = UNAVAILABLE
        if why is None and _codec_args(codec) is None:
            why = f"codec {codec.name} is Python only"
        if why is None:
            chain = max_chain or DEFAULT_CHAIN
            kind = NATIVE_POOLS[pool_name]
            pool: Pool = kind(npages + kind.headroom(chain), chain)  # buddy pools: no chain
            return NativeStore(
                npages, codec, pool, backing, mem_limit, huge_to_backing, low_watermark
            )
        # a missing build is worth a warning; a codec not compiled is a choice
        level = logging.WARNING if UNAVAILABLE else logging.INFO
        log.log(level, "native engine unavailable (%s): using the python engine", why)
    pool = make_pool(pool_name, npages, max_chain=max_chain or DEFAULT_CHAIN)
    return PageStore(npages, codec, pool, backing, mem_limit, huge_to_backing, low_watermark)


def _take_over(
    fds: StateFds,
    npages: int,
    codec: Codec,
    pool_name: str,
    max_chain: int | None,
    backing: BackingFile | None,
    mem_limit: int,
    huge_to_backing: bool,
    low_watermark: int,
    check_only: bool,
) -> NativeStore:
    why = UNAVAILABLE or (
        f"codec {codec.name} is Python only" if _codec_args(codec) is None else None
    )
    if why is not None or pool_name not in NATIVE_POOLS:
        fds.close()
        raise TakeoverRefused(f"only the compiled engine takes a store over ({why or pool_name})")
    chain = max_chain or DEFAULT_CHAIN
    kind = NATIVE_POOLS[pool_name]
    try:
        pool = kind(npages + kind.headroom(chain), chain, fds.pool, fds.arena)
    except ValueError as exc:  # the pool closed both of its descriptors
        os.close(fds.store)
        raise TakeoverRefused(str(exc)) from None
    except BaseException:
        os.close(fds.store)
        raise
    store = NativeStore(
        npages, codec, pool, backing, mem_limit, huge_to_backing, low_watermark, fds.store
    )
    if not check_only:
        store.take_over()
    return store
