"""zsmalloc-style pool: size classes, multi-page zspages, fullness groups, movable objects.

Layout
  Objects are grouped by size into classes 16 bytes apart, from 32 to 4096 bytes (255 classes).
  A class keeps its objects in *zspages*: chains of 1..max_chain pool pages, the chain length
  chosen to use the largest whole percentage of the zspage, the shortest chain on a tie (the
  kernel's get_pages_per_zspage). Worked example: class 3072 in one page holds 1 object and uses
  75%; in 2 pages, 2 objects, 75%; in 3 pages, 4 objects and 100%, so its zspages are 3 pages.
  Neighbouring classes whose zspages have the same (pages, objects) geometry are merged into the
  larger one: they would waste nothing more by sharing, and fewer classes mean fewer half-full
  zspages. Objects may span the boundary between two pages of a zspage.

  Slot k of a zspage starts k*size bytes into the chain. An allocated slot starts with a 4-byte
  header (handle << 1 | 1) and the object after it; a free slot's header is (next_free + 1) << 1
  (0 ends the list). Slots at or above the zspage's bump index have never been used and are not
  read. Sizes are multiples of 16, so a header never straddles two pages.

  The *huge* class: every class whose best geometry is one object in one page merges into the
  4096-byte class. Its objects (incompressible pages stored raw) get a pool page of their own and
  no zspage record: the location word names the page directly (HUGE_LOC) and page_owner[pn] holds
  HUGE_OWNER | handle, so a huge page costs 4 bytes of tables beyond its handle. huge_class_size
  is the smallest slot size that lands there; the store keeps any page whose payload would land
  there uncompressed.

Fullness groups
  A zspage is in group 0 (empty: transient, empty zspages are freed at once), 11 (full) or 1..10
  by tenths of its slots in use. Allocation takes the fullest non-full zspage of the class, so
  partly used zspages fill before new ones are made. Compaction moves objects from the emptiest
  zspage into the fullest, as the kernel's __zs_compact does, and frees the emptied zspage.

Location word (see pools/__init__.py): zspage_id << 24 | obj_idx << 13 | length, or
HUGE_LOC | pn << 13 | length. Pool page -> objects: page_owner[pn] names the zspage (or, for a
huge page, the handle); the slot headers name the handles.

What may move an object: compaction, under the pool lock, at most COMPACT_BUDGET objects of one
source zspage per lock hold. What may move a pool page: migrate_page, one page per lock hold; it
rewires the zspage's page chain (or a huge object's handle), objects keep their locations.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

from zswapfs.engine.arena import PAGE_SIZE, ArenaFull
from zswapfs.engine.pools import MAX_OBJECT, Pool, PoolFull

#: bytes of in-object header (the handle); the kernel uses a whole word, 4 bytes are enough here
HDR = 4
#: class spacing and the smallest class, as in the kernel (PAGE_SIZE >> CLASS_BITS with 8 bits)
DELTA = 16
MIN_SIZE = 32
#: default longest zspage chain (CONFIG_ZSMALLOC_CHAIN_SIZE)
DEFAULT_CHAIN = 8
#: fullness groups: 0 empty, 1..10 by tenths in use, 11 full
NGROUPS = 12
GROUP_FULL = 11
_NONE = -1
#: objects one compaction step may move under the lock (~10 us each): bounds a foreground wait
COMPACT_BUDGET = 32
#: location tag of a huge object, and page-owner tag of a huge page
HUGE_LOC = 1 << 62
HUGE_OWNER = 1 << 31
_PN_MASK = 0xFFFFFFFF
_LEN_MASK = 0x1FFF
_IDX_MASK = 0x7FF


@dataclass
class SizeClass:
    index: int
    size: int
    pages: int
    objs: int
    huge: bool
    zspages: int = 0
    inuse: int = 0


def best_pages_per_zspage(size: int, max_chain: int) -> int:
    """The chain length (1..max_chain) that leaves the smallest share of the zspage unused."""
    best, best_used = 1, -1
    for pages in range(1, max_chain + 1):
        span = pages * PAGE_SIZE
        used = (span - span % size) * 100 // span
        if used > best_used:
            best, best_used = pages, used
    return best


def build_classes(max_chain: int) -> tuple[list[SizeClass], list[int], int]:
    """Class table, slot-size-index -> class index map, and huge_class_size."""
    nsizes = (PAGE_SIZE - MIN_SIZE) // DELTA + 1
    lookup = [0] * nsizes
    classes: list[SizeClass] = []
    prev: SizeClass | None = None
    huge_class_size = PAGE_SIZE
    for i in range(nsizes - 1, -1, -1):  # top down, so merges go into the larger class
        size = MIN_SIZE + i * DELTA
        pages = best_pages_per_zspage(size, max_chain)
        objs = pages * PAGE_SIZE // size
        if objs == 1 and pages == 1:
            huge_class_size = size
        if prev is not None and prev.pages == pages and prev.objs == objs:
            lookup[i] = prev.index
            continue
        prev = SizeClass(len(classes), size, pages, objs, huge=(objs == 1))
        classes.append(prev)
        lookup[i] = prev.index
    return classes, lookup, huge_class_size


class ZsPool(Pool):
    name = "zsmalloc"

    def __init__(self, max_pages: int, max_chain: int = DEFAULT_CHAIN) -> None:
        if not 1 <= max_chain <= 16:
            raise ValueError(f"zsmalloc chain length {max_chain} out of range 1..16")
        super().__init__(max_pages)
        self.max_chain = max_chain
        self.classes, self._lookup, self.huge_class_size = build_classes(max_chain)
        self._heads = array("i", [_NONE]) * (NGROUPS * len(self.classes))
        # per zspage
        self._zs_class = array("H")
        self._zs_inuse = array("H")
        self._zs_bump = array("H")
        self._zs_free = array("i")  # free-slot head
        self._zs_first = array("I")
        self._zs_prev = array("i")
        self._zs_next = array("i")
        self._zs_group = array("b")
        self._zs_unused = array("I")  # stack of released zspage ids
        # per pool page
        self._page_next = array("I")
        self._page_owner = array("I")
        self._compact_cursor = 0

    @staticmethod
    def headroom(max_chain: int | None) -> int:
        """Pages beyond the image's own that a full image may need: one partly filled zspage
        per class."""
        chain = max_chain or DEFAULT_CHAIN
        return len(build_classes(chain)[0]) * chain

    # -- geometry ------------------------------------------------------------------------------
    @property
    def raw_threshold(self) -> int:
        """Payloads this long or longer land in the huge class: a whole page each."""
        return self.huge_class_size - HDR

    def class_for(self, size: int) -> SizeClass:
        slot = size + HDR
        if slot >= self.huge_class_size:
            return self.classes[0]  # the 4096 class, built first
        return self.classes[self._lookup[(max(slot, MIN_SIZE) - MIN_SIZE + DELTA - 1) // DELTA]]

    # -- zspage lists --------------------------------------------------------------------------
    def _link(self, z: int, c: int, g: int) -> None:
        slot = c * NGROUPS + g
        head = self._heads[slot]
        self._zs_prev[z] = _NONE
        self._zs_next[z] = head
        if head != _NONE:
            self._zs_prev[head] = z
        self._heads[slot] = z
        self._zs_group[z] = g

    def _unlink(self, z: int) -> None:
        prev, nxt = self._zs_prev[z], self._zs_next[z]
        if prev != _NONE:
            self._zs_next[prev] = nxt
        else:
            self._heads[self._zs_class[z] * NGROUPS + self._zs_group[z]] = nxt
        if nxt != _NONE:
            self._zs_prev[nxt] = prev

    def _regroup(self, z: int, cls: SizeClass) -> None:
        inuse = self._zs_inuse[z]
        if inuse == cls.objs:
            g = GROUP_FULL
        elif inuse == 0:
            g = 0
        else:
            g = 1 + inuse * 10 // cls.objs
        if g != self._zs_group[z]:
            self._unlink(z)
            self._link(z, cls.index, g)

    def _fullest(self, cls: SizeClass, exclude: int = _NONE) -> int:
        base = cls.index * NGROUPS
        for g in range(GROUP_FULL - 1, 0, -1):
            z = self._heads[base + g]
            if z == exclude and z != _NONE:
                z = self._zs_next[z]
            if z != _NONE:
                return z
        return _NONE

    def _emptiest(self, cls: SizeClass) -> int:
        base = cls.index * NGROUPS
        for g in range(1, GROUP_FULL):
            z = self._heads[base + g]
            if z != _NONE:
                return z
        return _NONE

    # -- zspage life ---------------------------------------------------------------------------
    def _new_zspage(self, cls: SizeClass) -> int:
        pages: list[int] = []
        try:
            for _ in range(cls.pages):
                pages.append(self.arena.alloc_page())
        except ArenaFull as exc:
            for pn in pages:
                self.arena.free_page(pn)
            raise PoolFull(str(exc)) from exc
        if self._zs_unused:
            z = self._zs_unused.pop()
            self._zs_class[z] = cls.index
            self._zs_inuse[z] = 0
            self._zs_bump[z] = 0
            self._zs_free[z] = _NONE
            self._zs_first[z] = pages[0]
        else:
            z = len(self._zs_class)
            self._zs_class.append(cls.index)
            self._zs_inuse.append(0)
            self._zs_bump.append(0)
            self._zs_free.append(_NONE)
            self._zs_first.append(pages[0])
            self._zs_prev.append(_NONE)
            self._zs_next.append(_NONE)
            self._zs_group.append(0)
        self._track_pages()
        for i, pn in enumerate(pages):
            self._page_owner[pn] = z
            self._page_next[pn] = pages[i + 1] if i + 1 < len(pages) else 0
        self._link(z, cls.index, 0)
        cls.zspages += 1
        return z

    def _track_pages(self) -> None:
        """Grow the per-pool-page tables to cover every page the arena has handed out."""
        need = self.arena.high_water - len(self._page_next)
        if need > 0:
            grow = max(need, len(self._page_next) // 8, 64)
            self._page_next.extend(array("I", bytes(4 * grow)))
            self._page_owner.extend(array("I", bytes(4 * grow)))

    def _release_zspage(self, z: int, cls: SizeClass) -> None:
        self._unlink(z)
        self._zs_group[z] = _NONE
        pn = self._zs_first[z]
        for _ in range(cls.pages):
            nxt = self._page_next[pn]
            self.arena.free_page(pn)
            pn = nxt
        self._zs_unused.append(z)
        cls.zspages -= 1

    def _page_at(self, z: int, k: int) -> int:
        pn = self._zs_first[z]
        for _ in range(k):
            pn = self._page_next[pn]
        return pn

    # -- bytes in a zspage ---------------------------------------------------------------------
    def _copy_out(self, z: int, start: int, length: int) -> bytes:
        pn = self._page_at(z, start >> 12)
        off = start & (PAGE_SIZE - 1)
        first = PAGE_SIZE - off
        arena = self.arena
        if length <= first:
            return arena.read(pn, off, length)
        return arena.read(pn, off, first) + arena.read(self._page_next[pn], 0, length - first)

    def _copy_in(self, z: int, start: int, data: bytes) -> None:
        pn = self._page_at(z, start >> 12)
        off = start & (PAGE_SIZE - 1)
        first = PAGE_SIZE - off
        arena = self.arena
        if len(data) <= first:
            arena.write(pn, off, data)
        else:
            arena.write(pn, off, data[:first])
            arena.write(self._page_next[pn], 0, data[first:])

    def _header(self, z: int, start: int) -> int:
        return int.from_bytes(self._copy_out(z, start, HDR), "little")

    def _set_header(self, z: int, start: int, value: int) -> None:
        self._copy_in(z, start, value.to_bytes(HDR, "little"))

    # -- slot allocation (pool lock held) ------------------------------------------------------
    def _take_slot(self, cls: SizeClass, z: int) -> int:
        idx = self._zs_free[z]
        if idx != _NONE:
            self._zs_free[z] = (self._header(z, idx * cls.size) >> 1) - 1
        else:
            idx = self._zs_bump[z]
            self._zs_bump[z] = idx + 1
        self._zs_inuse[z] += 1
        cls.inuse += 1
        self._regroup(z, cls)
        return idx

    def _drop_slot(self, cls: SizeClass, z: int, idx: int) -> None:
        cls.inuse -= 1
        inuse = self._zs_inuse[z] - 1
        self._zs_inuse[z] = inuse
        if inuse == 0:
            self._release_zspage(z, cls)
            return
        self._set_header(z, idx * cls.size, (self._zs_free[z] + 1) << 1)
        self._zs_free[z] = idx
        self._regroup(z, cls)

    def _put(self, cls: SizeClass, z: int, handle: int, size: int) -> int:
        idx = self._take_slot(cls, z)
        self._set_header(z, idx * cls.size, handle << 1 | 1)
        return z << 24 | idx << 13 | size

    # -- the interface -------------------------------------------------------------------------
    def _zspage_for(self, cls: SizeClass, handle: int) -> int:
        """The fullest non-full zspage of *cls*, or a new one; on PoolFull the freshly taken
        *handle* is given back (pool lock held)."""
        z = self._fullest(cls)
        if z == _NONE:
            try:
                z = self._new_zspage(cls)
            except PoolFull:
                self.handles.release(handle)
                raise
        return z

    def store(self, data: bytes) -> int:
        """Room and contents under one hold of the lock, header and payload in one copy."""
        size = len(data)
        if not 1 <= size <= MAX_OBJECT:
            raise ValueError(f"object size {size} out of range 1..{MAX_OBJECT}")
        cls = self.class_for(size)
        with self.lock:
            if cls.huge:
                handle = self._alloc_huge(cls, size)
                self.arena.write((self.handles.table[handle] >> 13) & _PN_MASK, 0, data)
                return handle
            handle = self.handles.new(0)
            z = self._zspage_for(cls, handle)
            idx = self._take_slot(cls, z)
            self._copy_in(z, idx * cls.size, (handle << 1 | 1).to_bytes(HDR, "little") + data)
            self.handles.set(handle, z << 24 | idx << 13 | size)
            self.bytes_stored += size
            return handle

    def _alloc_huge(self, cls: SizeClass, size: int) -> int:
        try:
            pn = self.arena.alloc_page()
        except ArenaFull as exc:
            raise PoolFull(str(exc)) from exc
        try:
            handle = self.handles.new(HUGE_LOC | pn << 13 | size)
        except PoolFull:
            self.arena.free_page(pn)
            raise
        self._track_pages()
        self._page_owner[pn] = HUGE_OWNER | handle
        cls.zspages += 1
        cls.inuse += 1
        self.bytes_stored += size
        return handle

    def _locate(self, loc: int) -> tuple[int, int, int, SizeClass]:
        """Zspage, byte offset of the payload in it, length and class of a non-huge object."""
        z = loc >> 24
        cls = self.classes[self._zs_class[z]]
        return z, ((loc >> 13) & _IDX_MASK) * cls.size + HDR, loc & _LEN_MASK, cls

    def read(self, handle: int) -> bytes:
        with self.lock:
            loc = self.handles.get(handle)
            if loc & HUGE_LOC:
                return self.arena.read((loc >> 13) & _PN_MASK, 0, loc & _LEN_MASK)
            z, start, length, _ = self._locate(loc)
            return self._copy_out(z, start, length)

    def free(self, handle: int) -> int:
        with self.lock:
            loc = self.handles.get(handle)
            length = loc & _LEN_MASK
            if loc & HUGE_LOC:
                cls = self.classes[0]
                self.arena.free_page((loc >> 13) & _PN_MASK)
                cls.zspages -= 1
                cls.inuse -= 1
            else:
                z, _, _, cls = self._locate(loc)
                self._drop_slot(cls, z, (loc >> 13) & _IDX_MASK)
            self.handles.release(handle)
            self.bytes_stored -= length
            return length

    # -- compaction ----------------------------------------------------------------------------
    @staticmethod
    def freeable_zspages(cls: SizeClass) -> int:
        """zs_can_compact: how many zspages the class's unused slots add up to."""
        if cls.huge:
            return 0
        return (cls.zspages * cls.objs - cls.inuse) // cls.objs

    def compact_class_step(self, cls: SizeClass, budget: int = COMPACT_BUDGET) -> int:
        """Move up to *budget* objects from the class's emptiest zspage into its fullest ones;
        one lock hold. Returns the pages freed (0: progress, the zspage is not empty yet), or -1
        when the class has nothing worth moving.
        """
        with self.lock:
            if self.freeable_zspages(cls) == 0:
                return -1
            src = self._emptiest(cls)
            if src == _NONE:
                return -1
            for idx in range(self._zs_bump[src]):
                if budget == 0:
                    return 0
                start = idx * cls.size
                hdr = self._header(src, start)
                if not hdr & 1:
                    continue
                dst = self._fullest(cls, exclude=src)
                if dst == _NONE:
                    return -1
                handle = hdr >> 1
                length = self.handles.get(handle) & _LEN_MASK
                data = self._copy_out(src, start + HDR, length)
                loc = self._put(cls, dst, handle, length)
                self._copy_in(dst, ((loc >> 13) & _IDX_MASK) * cls.size + HDR, data)
                self.handles.set(handle, loc)
                self.objects_moved += 1
                budget -= 1
                released = self._zs_inuse[src] == 1
                self._drop_slot(cls, src, idx)
                if released:
                    self.pages_compacted += cls.pages
                    return cls.pages
            return 0

    def compact_step(self, budget: int = COMPACT_BUDGET) -> int:
        """One bounded step on the next class worth compacting (see Pool.compact_step)."""
        n = len(self.classes)
        for i in range(n):
            cls = self.classes[(self._compact_cursor + i) % n]
            step = self.compact_class_step(cls, budget)
            if step >= 0:
                self._compact_cursor = cls.index
                return step
        return -1

    def freeable_pages(self) -> int:
        with self.lock:
            return sum(self.freeable_zspages(c) * c.pages for c in self.classes)

    # -- page migration ------------------------------------------------------------------------
    def migrate_page(self, pn: int) -> bool:
        """Move live pool page *pn* to the lowest free page below it (isolate, migrate, putback).

        isolate: the page must be live and owned (a huge page or a zspage page);
        migrate: take a lower free page, copy the 4 KiB, point the owner's chain (or the huge
                 object's handle) at the copy, free the old page;
        putback: if there is no lower page, nothing was touched and the page stays where it is.
        Readers copy objects out under the pool lock, which this holds, so no reader can see a
        half-moved page and no pin is needed.
        """
        with self.lock:
            arena = self.arena
            if arena.is_free(pn) or pn >= len(self._page_owner):  # isolate failed
                return False
            new = arena.alloc_page(below=pn)
            if new < 0:  # putback: no hole below
                return False
            self._track_pages()
            arena.copy_page(pn, new)
            owner = self._page_owner[pn]
            if owner & HUGE_OWNER:
                handle = owner & ~HUGE_OWNER
                length = self.handles.get(handle) & _LEN_MASK
                self.handles.set(handle, HUGE_LOC | new << 13 | length)
            else:
                z = owner
                if self._zs_first[z] == pn:
                    self._zs_first[z] = new
                else:
                    prev = self._zs_first[z]
                    while self._page_next[prev] != pn:
                        prev = self._page_next[prev]
                    self._page_next[prev] = new
                self._page_next[new] = self._page_next[pn]
            self._page_owner[new] = owner
            arena.free_page(pn)
            self.migrated_pages += 1
            return True

    # -- figures -------------------------------------------------------------------------------
    def metadata_bytes(self) -> int:
        tables = (
            self._heads,
            self._zs_class,
            self._zs_inuse,
            self._zs_bump,
            self._zs_free,
            self._zs_first,
            self._zs_prev,
            self._zs_next,
            self._zs_group,
            self._zs_unused,
            self._page_next,
            self._page_owner,
        )
        return super().metadata_bytes() + sum(t.itemsize * len(t) for t in tables)

    def class_table(self) -> list[dict[str, int]]:
        """Rows like the kernel's zsmalloc `classes` file, for classes in use."""
        rows = []
        for cls in sorted(self.classes, key=lambda c: c.size):
            if not cls.zspages:
                continue
            rows.append(
                {
                    "class_size": cls.size,
                    "objs_per_zspage": cls.objs,
                    "pages_per_zspage": cls.pages,
                    "obj_allocated": cls.zspages * cls.objs,
                    "obj_used": cls.inuse,
                    "pages_used": cls.zspages * cls.pages,
                    "pages_freeable": self.freeable_zspages(cls) * cls.pages,
                }
            )
        return rows

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["huge_class_size"] = self.huge_class_size
        out["classes"] = self.class_table()
        return out
