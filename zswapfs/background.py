"""Background maintenance: one thread that compacts the pool, migrates pool pages down the arena
and unmaps empty arena segments, in bounded steps, while requests go on.

What a step may touch: the pool only, under the pool lock only, for one compact_step (at most
COMPACT_BUDGET objects of one source zspage, or one buddy page) or one migrate_page (one pool
page). It never takes the store lock and never reads or writes the store's index: objects keep
their handles when they move, pools rewrite only their own handle table. The lock order
store -> pool is kept because this thread takes just the inner lock. Between steps the thread
sleeps for SLICE, which also hands the GIL back to the FUSE thread.

When it runs, every `interval` seconds:
  compaction  when pool.freeable_pages() is at least COMPACT_MIN_PAGES and COMPACT_MIN_SHARE of
              the pool (zs_can_compact's estimate of whole pages that moving objects would free)
  migration   when the arena has at least MIGRATE_MIN_HOLES free pages below its top, enough to
              empty a whole segment; then segments without live pages are unmapped
`aggressive` (a test knob) does both on every pass whatever the estimates; compact_now (behind
`zswapfs compact`) does both to the end, once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from zswapfs.arena import SEG_PAGES
from zswapfs.pools import Pool

log = logging.getLogger(__name__)

#: pause between two bounded steps: lets the FUSE thread take the GIL and the pool lock
SLICE = 0.0005
#: compaction is worth a pass when it would free this many pages (1 MiB) ...
COMPACT_MIN_PAGES = 256
#: ... and this share of the pool
COMPACT_MIN_SHARE = 0.02
#: migration is worth a pass when the holes could empty a whole segment
MIGRATE_MIN_HOLES = SEG_PAGES


class Maintenance:
    def __init__(self, pool: Pool, interval: float = 1.0, aggressive: bool = False) -> None:
        self.pool = pool
        self.interval = interval
        self.aggressive = aggressive
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pass_lock = threading.Lock()  # one pass at a time: the thread's or compact_now's
        self._thread: threading.Thread | None = None
        self.runs = 0
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
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

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
        with self._pass_lock:
            t0 = time.perf_counter()
            self.runs += 1
            pool = self.pool
            if force or self.compact_worth_it():
                while not self._stopping.is_set():
                    step = pool.compact_step()
                    if step < 0:
                        break
                    self.compact_steps += 1
                    self.pages_freed += step
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
            "seconds": round(self.seconds, 3),
            "interval": self.interval,
            "aggressive": self.aggressive,
        }
