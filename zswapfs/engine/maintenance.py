"""Background maintenance: one thread that writes cold pages back to the backing file, compacts
the pool, migrates pool pages down the arena and unmaps empty arena segments, in bounded steps,
while requests go on.

What a step may touch:
  compaction and migration: the pool only, under the pool lock only, for one compact_step (at
      most COMPACT_BUDGET objects of one source zspage, or one buddy page) or one migrate_page
      (one pool page). They never take the store lock nor touch the store's index: objects keep
      their handles when they move; pools rewrite only their own handle table.
  writeback: a batch of WRITEBACK_BATCH pages through store.writeback_pages, each page as
      store.writeback_page does it: the store lock (and the pool lock inside it, keeping the
      order store -> pool) to read the entry and again to commit it; the backing-file write
      under the file lock only (file -> store -> pool). The compiled engine runs the batch in C
      with the GIL released.
  recompression and dedup: see engine/recompress.py (each page its own read and commit under
      the store lock, codec work unlocked between them).
Between steps the thread sleeps for SLICE, which also hands the GIL back to the FUSE thread.

When it runs, every `interval` seconds (and at once when a write finds the pool at its limit):
  writeback   with a backing file and a memory limit: from the high watermark down to the low
              one, coldest pages first (incompressible ones first with huge_first), compacting
              after each batch so freed objects become free pages; and pages idle longer than
              idle_writeback seconds, whatever the watermarks
  recompression  idle pages to zstd with a trained dictionary, identical pages merged (when
              configured; after writeback, before compaction, which then returns what it freed)
  compaction  when pool.freeable_pages() is at least COMPACT_MIN_PAGES and COMPACT_MIN_SHARE of
              the pool (zs_can_compact's estimate of whole pages that moving objects would free),
              at most twice that many steps a pass (COMPACT_MIN_PAGES at least) so a pass ends
              while writes go on freeing objects
  migration   when the arena has at least MIGRATE_MIN_HOLES free pages below its top, enough to
              empty a whole segment; then segments without live pages are unmapped
`aggressive` (a test knob) does both on every pass whatever the estimates; compact_now (behind
`zswapfs compact`) does both to the end, once.

`passes_finished` counts passes that have ended (failed ones too) and `wait_passes(n, timeout)`
blocks until n have: a test waits on work having happened instead of guessing from elapsed time.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from zswapfs.engine.arena import SEG_PAGES
from zswapfs.engine.pools import Pool
from zswapfs.engine.recompress import Recompression
from zswapfs.engine.store import PageStore

log = logging.getLogger(__name__)

#: pause between two bounded steps: lets the FUSE thread take the GIL and the pool lock
SLICE = 0.0005
#: compaction is worth a pass when it would free this many pages (1 MiB) ...
COMPACT_MIN_PAGES = 256
#: ... and this share of the pool
COMPACT_MIN_SHARE = 0.02
#: migration is worth a pass when the holes could empty a whole segment
MIGRATE_MIN_HOLES = SEG_PAGES
#: pages chosen for writeback at a time (one vectorised pick of the coldest)
WRITEBACK_BATCH = 64


class Maintenance:
    def __init__(
        self,
        pool: Pool,
        interval: float = 1.0,
        aggressive: bool = False,
        store: PageStore | None = None,
        high_watermark: int = 100,
        huge_first: bool = False,
        idle_writeback: float = 0.0,
        recompression: Recompression | None = None,
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.aggressive = aggressive
        self.store = store
        self.high_watermark = high_watermark
        self.huge_first = huge_first
        self.idle_writeback = idle_writeback
        self.written_back = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pass_lock = threading.Lock()  # one pass at a time: the thread's or compact_now's
        self._thread: threading.Thread | None = None
        self.recompression = recompression
        if recompression is not None:
            recompression.stopping = self._stopping
        self.recompressed = 0
        self.runs = 0
        self.passes_finished = 0
        self._finished = threading.Condition()  # notified each time a pass ends
        self.compact_steps = 0
        self.pages_freed = 0
        self.migrated_pages = 0
        self.segments_released = 0
        self.seconds = 0.0

    # -- lifetime ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="zswapfs-maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, and wait for a pass run from elsewhere (compact_now, in a worker
        thread) to notice the stop and finish, so the pool is not closed under it."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._pass_lock:
            pass

    def wake(self) -> None:
        self._wake.set()

    def wait_passes(self, count: int, timeout: float) -> bool:
        """Block until *count* passes have ended since this object was made (the thread's and
        compact_now's alike), or *timeout* seconds; True if they have."""
        with self._finished:
            return self._finished.wait_for(lambda: self.passes_finished >= count, timeout)

    def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self.pass_once(force=self.aggressive)
            except Exception:  # a failed pass must not end maintenance, nor the daemon
                log.exception("maintenance pass failed")

    # -- work ----------------------------------------------------------------------------------
    def compact_worth_it(self) -> bool:
        freeable = self.pool.freeable_pages()
        return freeable >= max(COMPACT_MIN_PAGES, COMPACT_MIN_SHARE * self.pool.pages_used)

    def pass_once(self, force: bool = False, to_the_end: bool = False) -> None:
        """One maintenance pass; *force* skips the worth-it checks."""
        try:
            self._pass(force, to_the_end)
        finally:
            with self._finished:
                self.passes_finished += 1
                self._finished.notify_all()

    def _pass(self, force: bool, to_the_end: bool) -> None:
        with self._pass_lock:
            t0 = time.perf_counter()
            self.runs += 1
            pool = self.pool
            self.writeback()
            if self.recompression is not None:
                self.recompressed += self.recompression.step()
            if force or self.compact_worth_it():
                # a pass ends even while writes keep freeing objects faster than it moves them
                # (it would starve migration and the next passes): twice the steps the pool's
                # estimate of freeable pages asks for, unless it must compact to the end
                budget = -1 if to_the_end else max(COMPACT_MIN_PAGES, 2 * pool.freeable_pages())
                while budget and not self._stopping.is_set():
                    step = pool.compact_step()
                    if step < 0:
                        break
                    self.compact_steps += 1
                    self.pages_freed += step
                    budget -= 1
                    time.sleep(SLICE)
            if force or pool.arena.holes >= MIGRATE_MIN_HOLES:
                limit = pool.arena.holes  # this pass closes at most the holes it found
                while limit > 0 and not self._stopping.is_set() and pool.migrate_top():
                    self.migrated_pages += 1
                    limit -= 1
                    time.sleep(SLICE)
                self.segments_released += pool.release_segments()
            elif to_the_end:
                self.segments_released += pool.release_segments()
            self.seconds += time.perf_counter() - t0

    def writeback(self) -> None:
        store = self.store
        if store is None or store.backing is None:
            return
        if store.mem_limit:
            high = store.mem_limit * self.high_watermark // 100
            if store.pool_bytes >= high:
                self._writeback_until(store.low_water)
        if self.idle_writeback:
            idle = max(1, int(self.idle_writeback))
            while not self._stopping.is_set():
                batch = store.cold_pages(WRITEBACK_BATCH, min_idle=idle)
                if not batch or not self._write_back(batch):
                    break

    def _write_back(self, batch: list[int]) -> bool:
        moved = 0
        if self.store is not None and not self._stopping.is_set():
            moved = self.store.writeback_pages(batch)  # one call: in C on the compiled engine
            self.written_back += moved
        time.sleep(SLICE)
        return moved > 0

    def _writeback_until(self, low: int) -> None:
        store = self.store
        assert store is not None
        while store.pool_bytes > low and not self._stopping.is_set():
            batch = store.cold_pages(WRITEBACK_BATCH, huge_first=self.huge_first)
            if not batch or not self._write_back(batch):
                break  # nothing left in the pool, or the backing file fails
            # written-back objects leave holes: compact them into free pages
            while store.pool_bytes > low and not self._stopping.is_set():
                step = self.pool.compact_step()
                if step < 0:
                    break
                self.compact_steps += 1
                self.pages_freed += step
                time.sleep(SLICE)

    def compact_now(self) -> dict[str, int]:
        """Compact, migrate and release to the end (for `zswapfs compact`); returns what it did."""
        before = (self.pages_freed, self.migrated_pages, self.segments_released)
        self.pass_once(force=True, to_the_end=True)
        return {
            "pages_freed": self.pages_freed - before[0],
            "migrated_pages": self.migrated_pages - before[1],
            "segments_released": self.segments_released - before[2],
        }

    def stats(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "compact_steps": self.compact_steps,
            "pages_freed": self.pages_freed,
            "migrated_pages": self.migrated_pages,
            "segments_released": self.segments_released,
            "written_back": self.written_back,
            "seconds": round(self.seconds, 3),
            "interval": self.interval,
            "aggressive": self.aggressive,
            "recompression": (
                {"pages_changed": self.recompressed, **self.recompression.stats()}
                if self.recompression is not None
                else None
            ),
        }
