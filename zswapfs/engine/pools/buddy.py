"""zbud and z3fold: a few objects a pool page, placed by 64-byte chunks.

Layout (as in the kernel's zbud): a pool page is 64 chunks of 64 bytes. zbud keeps up to two
objects a page: the *first* buddy left-justified at chunk 0, the *last* right-justified so it ends
at the page's end; when either is freed, its chunks and the slack between the buddies form one
free run.
z3fold adds a *middle* object between them, placed right after the first, and compacts a page in
place: when a page's first and last are both free its middle moves to chunk 0 and becomes the
first; when the gap beside the middle is BIG_GAP chunks or more it slides next to its neighbour.

Page metadata is kept outside the page, in arrays indexed by pool page number (pn): chunks and
handle of each buddy, the middle's start chunk, and the links of the unbuddied lists:
  unbuddied[k]  pages with room, by the free chunks an allocation can use (the largest run the
                placement rules allow): allocation takes the first page from the list with the
                fewest free chunks that still fit, as zbud's for_each_unbuddied_list does
A page with no room is on no unbuddied list ("buddied"). The kernel's zbud also keeps an LRU of
pages for its own reclaim; here writeback picks cold image pages in the store instead (by access
age, see engine/store.py), so the pool keeps none.

Location word: pn << 15 | bud << 13 | length, bud 0 first, 1 middle, 2 last.
Pool page -> objects: the handle arrays of the three buddies.

What may move an object: free() of a neighbour (z3fold's in-page compaction of the middle), and
compact(), which empties the page using the fewest chunks into pages with room, one source page
a lock hold. Both run under the pool lock and rewrite the handle table only.
"""

from __future__ import annotations

from array import array
from typing import Any

from zswapfs.engine.arena import PAGE_SIZE, ArenaFull
from zswapfs.engine.pools import MAX_OBJECT, Pool, PoolFull

#: chunk size and count, as in the kernel's zbud (CHUNK_SHIFT 6); here the page header lives in
#: arrays, so all 64 chunks hold data and a raw 4096-byte page fits as a lone first buddy
CHUNK = 64
NCHUNKS = PAGE_SIZE // CHUNK
#: z3fold slides the middle object only across a gap at least this big (kernel BIG_CHUNK_GAP 3)
BIG_GAP = 3
FIRST, MIDDLE, LAST = 0, 1, 2
_NONE = -1
_LEN_MASK = 0x1FFF


def chunks_for(size: int) -> int:
    return (size + CHUNK - 1) // CHUNK


class BuddyPool(Pool):
    """Shared machinery; subclasses say how many buddies a page holds and where they go."""

    three = False  # z3fold: a middle buddy

    def __init__(self, max_pages: int, **_: Any) -> None:
        super().__init__(max_pages)
        # per pool page
        self._chunks = [array("B"), array("B"), array("B")]  # first, middle, last
        self._handle = [array("I"), array("I"), array("I")]
        self._mid_start = array("B")
        self._free_at = array("b")  # the unbuddied list the page is on, -1 none
        self._prev = array("i")
        self._next = array("i")
        self._heads = array("i", [_NONE]) * (NCHUNKS + 1)
        # pages on unbuddied lists and the chunks they use, kept as they change (freeable_pages)
        self._listed_pages = 0
        self._listed_chunks = 0

    @staticmethod
    def headroom(max_chain: int | None = None) -> int:
        """A page never holds less than one object, so the image's own page count is enough
        for what is stored; but an overwrite places the new object before it frees the old
        one, so a full image needs a few pages to spare."""
        return 64

    # -- page tables ---------------------------------------------------------------------------
    def _track_pages(self) -> None:
        need = self.arena.high_water - len(self._mid_start)
        if need <= 0:
            return
        grow = max(need, len(self._mid_start) // 8, 64)
        zeros_b, zeros_i = bytes(grow), bytes(4 * grow)
        for arr in (*self._chunks, self._mid_start):
            arr.extend(array("B", zeros_b))
        for arr in self._handle:
            arr.extend(array("I", zeros_i))
        for arr in (self._prev, self._next):
            arr.extend(array("i", zeros_i))
        self._free_at.extend(array("b", zeros_b))

    def _first_chunk(self, pn: int, bud: int) -> int:
        """First chunk of buddy *bud* of page *pn*."""
        if bud == FIRST:
            return 0
        if bud == LAST:
            return NCHUNKS - self._chunks[LAST][pn]
        return self._mid_start[pn]

    def free_chunks(self, pn: int) -> int:
        """Chunks an allocation could use in page *pn* under the placement rules."""
        f, m, last = self._chunks[FIRST][pn], self._chunks[MIDDLE][pn], self._chunks[LAST][pn]
        if not self.three:
            return 0 if f and last else NCHUNKS - f - last
        if f and m and last:
            return 0
        if m:
            ms = self._mid_start[pn]
            before = 0 if f else ms
            after = 0 if last else NCHUNKS - ms - m
            return max(before, after)
        return NCHUNKS - f - last

    def _choose_bud(self, pn: int, n: int) -> int:
        """Which buddy of page *pn* takes an object of *n* chunks (it fits: checked by caller)."""
        chunks = self._chunks
        if chunks[FIRST][pn] == 0:
            if self.three and chunks[MIDDLE][pn] and n > self._mid_start[pn]:
                return LAST
            return FIRST
        if chunks[LAST][pn] == 0:
            return LAST
        return MIDDLE

    # -- lists ---------------------------------------------------------------------------------
    def _list_del(self, pn: int) -> None:
        k = self._free_at[pn]
        if k < 0:
            return
        prev, nxt = self._prev[pn], self._next[pn]
        if prev != _NONE:
            self._next[prev] = nxt
        else:
            self._heads[k] = nxt
        if nxt != _NONE:
            self._prev[nxt] = prev
        self._free_at[pn] = _NONE
        self._listed_pages -= 1
        self._listed_chunks -= NCHUNKS - k

    def _list_add(self, pn: int) -> None:
        """(Re)file page *pn* on the unbuddied list of its free chunks, or on none."""
        self._list_del(pn)
        k = self.free_chunks(pn)
        if k == 0:
            return
        head = self._heads[k]
        self._prev[pn] = _NONE
        self._next[pn] = head
        if head != _NONE:
            self._prev[head] = pn
        self._heads[k] = pn
        self._free_at[pn] = k
        self._listed_pages += 1
        self._listed_chunks += NCHUNKS - k

    # -- finding room --------------------------------------------------------------------------
    def _find_page(self, n: int, exclude: set[int] | None = None) -> int:
        """First page on the tightest unbuddied list that fits *n* chunks, skipping *exclude*."""
        for k in range(n, NCHUNKS + 1):
            pn = self._heads[k]
            while exclude and pn in exclude:
                pn = self._next[pn]
            if pn != _NONE:
                return pn
        return _NONE

    def _new_page(self) -> int:
        try:
            pn = self.arena.alloc_page()
        except ArenaFull as exc:
            raise PoolFull(str(exc)) from exc
        self._track_pages()
        for b in (FIRST, MIDDLE, LAST):
            self._chunks[b][pn] = 0
        self._mid_start[pn] = 0
        self._free_at[pn] = _NONE
        return pn

    def _put(self, pn: int, handle: int, size: int) -> int:
        """Claim a buddy of *pn* for an object; returns its location word."""
        n = chunks_for(size)
        bud = self._choose_bud(pn, n)
        self._chunks[bud][pn] = n
        self._handle[bud][pn] = handle
        if bud == MIDDLE:
            self._mid_start[pn] = self._chunks[FIRST][pn]
        self._list_add(pn)
        return pn << 15 | bud << 13 | size

    # -- the interface -------------------------------------------------------------------------
    def _offset(self, loc: int) -> tuple[int, int]:
        pn, bud = loc >> 15, (loc >> 13) & 3
        return pn, self._first_chunk(pn, bud) * CHUNK

    def read(self, handle: int) -> bytes:
        with self.lock:
            loc = self.handles.get(handle)
            return self.arena.read(*self._offset(loc), loc & _LEN_MASK)

    def store(self, data: bytes) -> int:
        """Room for *data* and its contents under one hold of the lock."""
        size = len(data)
        if not 1 <= size <= MAX_OBJECT:
            raise ValueError(f"object size {size} out of range 1..{MAX_OBJECT}")
        with self.lock:
            handle = self.handles.new(0)
            pn = self._find_page(chunks_for(size))
            if pn == _NONE:
                try:
                    pn = self._new_page()
                except PoolFull:
                    self.handles.release(handle)
                    raise
            loc = self._put(pn, handle, size)
            self.handles.set(handle, loc)
            self.arena.write(*self._offset(loc), data)
            self.bytes_stored += size
            return handle

    def free(self, handle: int) -> int:
        with self.lock:
            loc = self.handles.get(handle)
            self.handles.release(handle)
            self.bytes_stored -= loc & _LEN_MASK
            self._clear(loc >> 15, (loc >> 13) & 3)
            return loc & _LEN_MASK

    def _clear(self, pn: int, bud: int) -> None:
        """Drop buddy *bud* of page *pn*; free the page if it is empty."""
        self._chunks[bud][pn] = 0
        chunks = self._chunks
        if not (chunks[FIRST][pn] or chunks[MIDDLE][pn] or chunks[LAST][pn]):
            self._list_del(pn)
            self.arena.free_page(pn)
            return
        if self.three:
            self._compact_page(pn)
        self._list_add(pn)

    def _move_middle(self, pn: int, new_start: int, to_bud: int) -> None:
        n = self._chunks[MIDDLE][pn]
        handle = self._handle[MIDDLE][pn]
        loc = self.handles.get(handle)
        size = loc & _LEN_MASK
        data = self.arena.read(pn, self._mid_start[pn] * CHUNK, size)
        self._chunks[MIDDLE][pn] = 0
        self._chunks[to_bud][pn] = n
        self._handle[to_bud][pn] = handle
        if to_bud == MIDDLE:
            self._mid_start[pn] = new_start
        self.arena.write(pn, self._first_chunk(pn, to_bud) * CHUNK, data)
        self.handles.set(handle, pn << 15 | to_bud << 13 | size)
        self.objects_moved += 1

    def _compact_page(self, pn: int) -> None:
        """z3fold's in-page compaction of the middle object (kernel z3fold_compact_page)."""
        f, m, last = self._chunks[FIRST][pn], self._chunks[MIDDLE][pn], self._chunks[LAST][pn]
        if not m:
            return
        ms = self._mid_start[pn]
        if not f and not last:
            self._move_middle(pn, 0, FIRST)
        elif f and not last and ms - f >= BIG_GAP:
            self._move_middle(pn, f, MIDDLE)
        elif last and not f and NCHUNKS - last - (ms + m) >= BIG_GAP:
            self._move_middle(pn, NCHUNKS - last - m, MIDDLE)

    # -- compaction across pages ---------------------------------------------------------------
    def _emptiest(self) -> int:
        for k in range(NCHUNKS, 0, -1):
            if self._heads[k] != _NONE:
                return self._heads[k]
        return _NONE

    def freeable_pages(self) -> int:
        """Pages a perfect repacking of the pages with room would free (cf. zs_can_compact),
        from counters kept by the list operations: O(1)."""
        used = self._listed_chunks
        return max(0, self._listed_pages - (used + NCHUNKS - 1) // NCHUNKS - 1)

    def compact_step(self, budget: int = 3) -> int:
        """Move every object of the emptiest page (three at most, whatever the budget) into
        other pages with room; one lock hold. Returns 1 when a page was freed, -1 when no page
        can be emptied."""
        with self.lock:
            src = self._emptiest()
            if src == _NONE:
                return -1
            buds = [b for b in (FIRST, MIDDLE, LAST) if self._chunks[b][src]]
            # every object must find a home elsewhere (a different page each), or nothing moves
            homes = []
            taken = {src}
            for b in sorted(buds, key=lambda b: -self._chunks[b][src]):
                dst = self._find_page(self._chunks[b][src], exclude=taken)
                if dst == _NONE:
                    return -1
                taken.add(dst)
                homes.append((b, dst))
            for b, dst in homes:
                handle = self._handle[b][src]
                size = self.handles.get(handle) & _LEN_MASK
                data = self.arena.read(*self._offset(src << 15 | b << 13), size)
                loc = self._put(dst, handle, size)
                self.arena.write(*self._offset(loc), data)
                self.handles.set(handle, loc)
                self._chunks[b][src] = 0
                self.objects_moved += 1
            self._list_del(src)
            self.arena.free_page(src)
            self.pages_compacted += 1
            return 1

    def migrate_page(self, pn: int) -> bool:
        """Move live pool page *pn* to the lowest free page below it: isolate (the page must
        be live), migrate (copy the 4 KiB, move the page's records and list links, rewrite its
        objects' handles), or putback (no lower page: nothing touched)."""
        with self.lock:
            arena = self.arena
            if arena.is_free(pn) or pn >= len(self._mid_start):
                return False
            new = arena.alloc_page(below=pn)
            if new < 0:
                return False
            self._track_pages()
            arena.copy_page(pn, new)
            for b in (FIRST, MIDDLE, LAST):
                self._chunks[b][new] = self._chunks[b][pn]
                self._handle[b][new] = self._handle[b][pn]
                if self._chunks[b][pn]:
                    handle = self._handle[b][pn]
                    size = self.handles.get(handle) & _LEN_MASK
                    self.handles.set(handle, new << 15 | b << 13 | size)
            self._mid_start[new] = self._mid_start[pn]
            self._free_at[new] = _NONE
            self._list_del(pn)
            self._list_add(new)
            for b in (FIRST, MIDDLE, LAST):
                self._chunks[b][pn] = 0
            arena.free_page(pn)
            self.migrated_pages += 1
            return True

    # -- figures -------------------------------------------------------------------------------
    def metadata_bytes(self) -> int:
        tables = (
            *self._chunks,
            *self._handle,
            self._mid_start,
            self._free_at,
            self._prev,
            self._next,
            self._heads,
        )
        return super().metadata_bytes() + sum(t.itemsize * len(t) for t in tables)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        with self.lock:
            unbuddied = sum(1 for k in range(1, NCHUNKS + 1) for _ in self._walk(self._heads[k]))
        out["unbuddied_pages"] = unbuddied
        out["buddied_pages"] = self.pages_used - unbuddied
        return out

    def _walk(self, pn: int) -> Any:
        while pn != _NONE:
            yield pn
            pn = self._next[pn]


class ZbudPool(BuddyPool):
    """Two objects a page: first left-justified, last right-justified."""

    name = "zbud"
    three = False


class Z3foldPool(BuddyPool):
    """Three objects a page: first, middle and last, with in-page compaction of the middle."""

    name = "z3fold"
    three = True
