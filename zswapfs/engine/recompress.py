"""Density in the background: idle pages recompressed with zstd and a trained dictionary, and
identical pages merged (dedup). The write path stays at the write codec's (lz4's) speed.

The maintenance thread calls `Recompression.step()` once a pass. A step:
  1. sends back to the write codec the recompressed pages that were read twice (store.rewarm):
     a page read often should not pay zstd's decompression every time;
  2. trains a dictionary (zstandard's trainer) on a sample of stored pages when there is none
     yet, or when as many pages were recompressed since the last training as were stored then
     (the contents have turned over); the store keeps the new one in a fresh codec slot, and an
     old slot (with its dictionary) is dropped when its last page leaves it;
  3. merges byte-identical pool pages among the idle ones (store.dedup_scan: a digest finds
     candidates, the bytes are compared under the store lock);
  4. recompresses idle pages, coldest first (stale swap slots, never read again, are the
     coldest there are), in batches with a pause between them; a page that does not gain at
     least MIN_GAIN bytes is marked and not tried again until rewritten, so incompressible
     ("huge") pages are tried once.
Every page is its own pair of store-lock holds (read, commit) with the codec work in between,
unlocked; a page rewritten meanwhile is left alone (the store's in-flight marks).

What it may touch: the store through recompress_page, rewarm_page, dedup_scan, idle_pages and
add_slot only.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import numpy as np

from zswapfs.engine.codec import PAGE_SIZE, CodecError, DictZstdCodec, train_dictionary
from zswapfs.engine.store import FIRST_HANDLE, PageStore, StoreError

log = logging.getLogger(__name__)

#: pages sampled to train a dictionary (zstd's trainer wants ~100x the dictionary's size)
TRAIN_SAMPLE = 1024
#: stored pages needed before a dictionary is worth training
TRAIN_MIN_PAGES = 256
#: a recompressed page must be at least this much smaller (one zsmalloc size class)
MIN_GAIN = 16
#: pages read and recompressed between two pauses
BATCH = 64
#: most idle pages one step considers (and dedup compares at once)
STEP_PAGES = 16384
#: share of the time the loop may work (it rests the rest): the request path keeps the GIL
#: most of the time while the loop catches up with a burst of idle pages
DUTY = 0.25


class Recompression:
    def __init__(
        self,
        store: PageStore,
        level: int = 9,
        idle: float = 20.0,
        dict_size: int = 16 << 10,
        dedup: bool = True,
        min_pages: int = TRAIN_MIN_PAGES,
        pages_per_step: int = STEP_PAGES,
        duty: float = DUTY,
        stopping: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.level = level
        self.idle = idle
        self.dict_size = dict_size
        self.dedup = dedup
        self.min_pages = min_pages
        self.pages_per_step = pages_per_step
        self.duty = duty
        self.stopping = stopping or threading.Event()
        self.trainings = 0
        self.train_failures = 0
        self._recompressed_at_training = 0
        self._stored_at_training = 0
        self._rnd = random.Random(0)

    def step(self) -> int:
        """One round of the work above; returns the pages it changed."""
        changed = self._rewarm()
        self._maybe_train()
        if not self.store.current_slot:
            return changed
        pages = self.store.idle_pages(self.pages_per_step, max(0, int(self.idle)))
        if self.dedup and len(pages) > 1:
            changed += self.store.dedup_scan(pages, between=self._yield)
        started = time.perf_counter()
        for i, index in enumerate(pages):
            if self.stopping.is_set():
                break
            if self.store.recompress_page(index, MIN_GAIN) == "done":
                changed += 1
            self._yield()
            if i % BATCH == BATCH - 1:
                self._rest(started)
                started = time.perf_counter()
        return changed

    def _yield(self) -> None:
        """Let a request thread waiting for the GIL have it now, not at the end of the
        interpreter's switch interval (5 ms): the loop's Python between codec calls holds it."""
        if self.duty < 1:
            time.sleep(0)

    def _rest(self, started: float) -> None:
        """Sleep so the loop works at most *duty* of the time: a batch that took t seconds is
        followed by t * (1 - duty) / duty seconds of rest."""
        if self.duty < 1:
            spent = time.perf_counter() - started
            time.sleep(spent * (1 - self.duty) / self.duty)

    def _rewarm(self) -> int:
        done = 0
        for index in list(self.store.rewarm):
            if self.stopping.is_set():
                break
            done += self.store.rewarm_page(index) == "done"
        return done

    def _maybe_train(self) -> None:
        store = self.store
        if store.stored_pages - store.same_pages < self.min_pages:
            return
        turned_over = store.pages_recompressed - self._recompressed_at_training
        if store.current_slot and turned_over < max(self._stored_at_training, self.min_pages):
            return
        sample = self._sample()
        if len(sample) < self.min_pages // 4:
            return
        try:
            dictionary = train_dictionary(sample, self.dict_size, self.level)
            codec = DictZstdCodec(self.level, dictionary)
            store.add_slot(codec, len(dictionary))
        except (CodecError, StoreError) as exc:
            self.train_failures += 1
            log.warning("recompression: no new dictionary (%s)", exc)
            # try again after as much turnover again
            self._recompressed_at_training = store.pages_recompressed
            return
        self.trainings += 1
        self._recompressed_at_training = store.pages_recompressed
        self._stored_at_training = store.stored_pages - store.same_pages
        log.info(
            "recompression: dictionary %d (%d bytes) trained on %d pages",
            self.trainings,
            len(dictionary),
            len(sample),
        )

    def _sample(self) -> list[bytes]:
        """Up to TRAIN_SAMPLE stored pages, decoded, picked at random."""
        store = self.store
        held = np.flatnonzero(store.table >= FIRST_HANDLE)
        if len(held) > TRAIN_SAMPLE:
            held = held[np.sort(self._rnd.sample(range(len(held)), TRAIN_SAMPLE))]
        out = []
        for index in held.tolist():
            page = store.peek_page(int(index))
            if page is not None and len(page) == PAGE_SIZE:
                out.append(page)
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "idle_s": self.idle,
            "dict_size": self.dict_size,
            "dedup": self.dedup,
            "dict_trainings": self.trainings,
            "dict_train_failures": self.train_failures,
        }
