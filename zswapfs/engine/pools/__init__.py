"""Pools own placement: where a compressed object lives inside the arena's pages.

Every pool strategy (zsmalloc, zbud, z3fold: peers behind the same interface) hands out
*handles*. A handle is a small integer the store keeps in its page index; it never changes while
the object lives, even if the pool moves the object (compaction, page migration). This is the
indirect handle of the zbud migration seed ("use indirect zbud handle and radix tree"): the
handle indexes a table of 64-bit *locations*, and moving an object rewrites one table entry.

Handle encoding
  handles 0, 1 and 2 are never handed out (the store's index uses them for "empty", "same-filled"
  and "written back"),
  and every handle is below 2**31 (slot headers keep it shifted left by one).
  table[handle] for a live handle is the pool's location word, always < 2**63:
      zsmalloc: zspage_id << 24 | obj_idx << 13 | length      (length 1..4096, obj_idx < 2048)
                HUGE_LOC | pool_page << 13 | length            (a huge object: a page of its own)
      zbud, z3fold: pool_page << 15 | buddy << 13 | length     (buddy 0 first, 1 middle, 2 last)
  table[handle] for a free handle is FREE_TAG | next free handle (a free list through the table).

Two indexes, as the seed thread proposes:
  page number -> handle     the store's page index (store.py)
  pool page   -> objects    the pool's reverse map: each pool page knows its zspage, and each
                            allocated object carries its handle in a 4-byte header, so a scan of a
                            zspage finds every handle that points into it (compaction, migration).

Lock order (written once here and in store.py): store lock -> pool lock. A pool method takes the
pool lock for its own duration only; it never calls back into the store.
"""

from __future__ import annotations

import threading
from array import array
from typing import Any

from zswapfs.engine.arena import PAGE_SIZE, Arena

#: tag bit of a free handle-table entry; locations never set it
FREE_TAG = 1 << 63
#: largest object a pool stores: one page, raw
MAX_OBJECT = PAGE_SIZE
#: handles live in 31 bits (an allocated zsmalloc slot header is handle << 1 | 1 in 32 bits)
MAX_HANDLES = 1 << 31


class PoolFull(Exception):
    """The pool cannot place another object (arena exhausted)."""


class HandleTable:
    """handle -> location, in one array of unsigned 64-bit words (8 bytes a live object).

    Freed handles are chained through their own entries, so the table never holds a Python object
    per handle and a freed handle is reused before the table grows.
    """

    def __init__(self) -> None:
        self.table = array("Q", [FREE_TAG] * 3)  # entries 0, 1, 2: never handed out
        self._free_head = 0  # 0: no free handle
        self.live = 0

    def new(self, location: int) -> int:
        head = self._free_head
        if head:
            self._free_head = self.table[head] & ~FREE_TAG
            self.table[head] = location
            handle = head
        else:
            handle = len(self.table)
            if handle >= MAX_HANDLES:
                raise PoolFull(f"all {MAX_HANDLES} handles are in use")
            self.table.append(location)
        self.live += 1
        return handle

    def get(self, handle: int) -> int:
        loc = self.table[handle]
        if loc & FREE_TAG:
            raise KeyError(f"handle {handle} is not live")
        return loc

    def set(self, handle: int, location: int) -> None:
        self.table[handle] = location

    def release(self, handle: int) -> None:
        self.table[handle] = FREE_TAG | self._free_head
        self._free_head = handle
        self.live -= 1

    @property
    def nbytes(self) -> int:
        return self.table.itemsize * self.table.buffer_info()[1]


class Pool:
    """The interface every pool strategy implements.

    store(data) places an object and returns its handle (room and contents under one hold of the
    pool lock); read(handle) copies it out (under the pool lock, so it cannot move while being
    copied); free(handle) releases it and returns its length. compact() moves objects to free
    whole pool pages and returns how many pages it freed. Sizes are 1..4096.
    """

    name = "pool"

    def __init__(self, max_pages: int) -> None:
        self.arena = Arena(max_pages)
        self.handles = HandleTable()
        self.lock = threading.Lock()
        self.bytes_stored = 0
        self.pages_compacted = 0
        self.objects_moved = 0
        self.migrated_pages = 0

    # -- the interface -------------------------------------------------------------------------
    def store(self, data: bytes) -> int:
        """Place *data* (1..4096 bytes) as a new object; its handle. PoolFull when no room."""
        raise NotImplementedError

    def read(self, handle: int) -> bytes:
        raise NotImplementedError

    def free(self, handle: int) -> int:
        """Release the object; returns the length it had."""
        raise NotImplementedError

    def compact_step(self, budget: int = 32) -> int:
        """One bounded piece of compaction under one hold of the pool lock: move at most *budget*
        objects. Returns pool pages freed by it (0 means progress without a page freed yet), or
        -1 when nothing is worth moving."""
        raise NotImplementedError

    def compact(self) -> int:
        """Compact until nothing is worth moving; returns pool pages freed."""
        freed = 0
        # every step moves an object or frees a page, so this ends; the bound is only a guard
        for _ in range(4 * self.objects + 16):
            step = self.compact_step()
            if step < 0:
                break
            freed += step
        return freed

    def freeable_pages(self) -> int:
        """Pool pages a full compaction would free, estimated (zs_can_compact)."""
        raise NotImplementedError

    def migrate_page(self, pn: int) -> bool:
        """Move live pool page *pn* to a free page lower in the arena; False if it cannot."""
        raise NotImplementedError

    def migrate_top(self) -> bool:
        """Migrate the highest live pool page into a hole below it, if the arena has one."""
        arena = self.arena
        return (
            bool(arena.holes) and arena.high_water > 0 and self.migrate_page(arena.high_water - 1)
        )

    def release_segments(self) -> int:
        """Unmap arena segments that hold no live page."""
        with self.lock:
            return self.arena.release_empty_segments()

    @property
    def raw_threshold(self) -> int:
        """Compressed payloads this long or longer cost a whole page: the store keeps them raw."""
        return PAGE_SIZE

    def size(self, handle: int) -> int:
        """The length the object was allocated with."""
        with self.lock:
            return self.handles.get(handle) & 0x1FFF

    # -- figures -------------------------------------------------------------------------------
    @property
    def pages_used(self) -> int:
        return self.arena.pages_used

    @property
    def objects(self) -> int:
        return self.handles.live

    def metadata_bytes(self) -> int:
        """Bytes of bookkeeping outside the arena (tables, lists), not counting the arena."""
        return self.handles.nbytes

    def stats(self) -> dict[str, Any]:
        used = self.pages_used * PAGE_SIZE
        return {
            "pool_pages": self.pages_used,
            "pool_pages_max": self.arena.pages_max,
            "objects": self.objects,
            "bytes_stored": self.bytes_stored,
            "internal_fragmentation": used - self.bytes_stored,
            "metadata_bytes": self.metadata_bytes(),
            "pages_compacted": self.pages_compacted,
            "objects_moved": self.objects_moved,
            "migrated_pages": self.migrated_pages,
            "arena_segments": self.arena.segments_mapped,
            "segments_released": self.arena.segments_released,
            "arena_holes": self.arena.holes,
            "warm_pages": self.arena.warm_pages,
        }

    def close(self) -> None:
        self.arena.close()


POOL_NAMES = ("zsmalloc", "zbud", "z3fold")


def make_pool(name: str, image_pages: int, **options: Any) -> Pool:
    """Build the pool strategy *name* for an image of *image_pages* pages: its arena holds every
    page stored raw plus the pool's own worst-case slack (partly filled zspages)."""
    if name == "zsmalloc":
        from zswapfs.engine.pools.zsmalloc import ZsPool

        return ZsPool(image_pages + ZsPool.headroom(options.get("max_chain")), **options)
    if name in ("zbud", "z3fold"):
        from zswapfs.engine.pools.buddy import Z3foldPool, ZbudPool

        cls = ZbudPool if name == "zbud" else Z3foldPool
        return cls(image_pages + cls.headroom())
    raise ValueError(f"unknown pool {name!r}: expected one of {', '.join(POOL_NAMES)}")
