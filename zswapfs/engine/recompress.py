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
Pacing: after every BATCH pages (of the dedup scan or of recompression) the loop rests so that
it works BUSY_DUTY of the time when the store served a request during the batch; otherwise it
works on without rest at nice 19 (other programs get ~98% of a core both want), or DUTY of the
time at normal priority. Work is the thread's CPU time, so time spent waiting for a core is not
counted: the
loop's Python holds the GIL the request thread needs, so while requests flow it takes little,
and it works at DUTY again once they stop.
Every page is its own pair of store-lock holds (read, commit) with the codec work in between,
unlocked; a page rewritten meanwhile is left alone (the store's in-flight marks). The pages of
a batch go to the store in one call (recompress_pages), which the compiled engine runs in C
with the GIL released.

A step runs with its thread at nice 19, as the kernel's khugepaged does, and the thread's own
nice value back after the step: on a busy machine the requests and the programs that swap get
nearly all the CPU, and the loop works through what they leave. Not SCHED_IDLE: a SCHED_IDLE
thread preempted while it holds the GIL or a store lock could leave a swap request waiting for as
long as other tasks keep every core busy, which is just when a machine swaps; at nice 19 it
still gets a slice now and then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
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
#: share of the time the loop may work at normal priority (recompress-priority = "normal") while
#: no requests come: the CPU is shared with every other program alike
DUTY = 0.25
#: the share while requests keep coming (any request during the last batch): the loop shares
#: the GIL with the request thread, so under load it all but steps aside
BUSY_DUTY = 0.03


#: the nice value of the loop's thread during a pass (khugepaged's)
LOW_NICE = 19


@contextlib.contextmanager
def low_priority() -> Iterator[bool]:
    """Run the block with this thread at nice LOW_NICE, then put its nice value back; yields
    False (and changes nothing) where the kernel refuses."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, LOW_NICE)
    except OSError as exc:
        log.debug("recompression: no nice %d (%s)", LOW_NICE, exc)
        yield False
        return
    try:
        yield True
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, before)
        except OSError as exc:  # without CAP_SYS_NICE a thread may not raise its priority again
            log.warning("maintenance thread stays at nice %d: %s", LOW_NICE, exc)


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
        busy_duty: float = BUSY_DUTY,
        stopping: threading.Event | None = None,
        idle_priority: bool = True,
    ) -> None:
        self.store = store
        self.level = level
        self.idle = idle
        self.dict_size = dict_size
        self.dedup = dedup
        self.min_pages = min_pages
        self.pages_per_step = pages_per_step
        self.duty = duty
        self.busy_duty = min(busy_duty, duty)
        self._paced = 0
        self._batch_started = time.thread_time()
        self._requests_seen = store.requests
        self.busy_rests = 0
        self._quiet_duty = duty
        self.stopping = stopping or threading.Event()
        self.idle_priority = idle_priority
        self.trainings = 0
        self.train_failures = 0
        self._recompressed_at_training = 0
        self._stored_at_training = 0
        self._rnd = random.Random(0)

    def step(self) -> int:
        """One round of the work above (at nice 19 unless idle_priority is off); returns the
        pages it changed."""
        if not self.idle_priority:
            self._quiet_duty = self.duty
            return self._step()
        with low_priority() as took:
            # at nice 19 a contended core goes to other tasks ~98% of the time: with no request
            # to share the GIL with, the loop may use what they leave
            self._quiet_duty = 1.0 if took else self.duty
            return self._step()

    def _step(self) -> int:
        changed = self._rewarm()
        self._maybe_train()
        if not self.store.current_slot:
            return changed
        pages = self.store.idle_pages(self.pages_per_step, max(0, int(self.idle)))
        self._batch_started = time.thread_time()
        self._requests_seen = self.store.requests
        if self.dedup and len(pages) > 1:
            changed += self.store.dedup_scan(pages, between=self._pace)
        for at in range(0, len(pages), BATCH):
            if self.stopping.is_set():
                break
            changed += self.store.recompress_pages(pages[at : at + BATCH], MIN_GAIN)
            self._pace(BATCH)
        return changed

    def _pace(self, pages: int = 1) -> None:
        """After *pages* pages: let a request thread waiting for the GIL have it now, not at
        the end of the interpreter's switch interval (5 ms); after each BATCH pages, rest."""
        if self.duty >= 1:
            return
        before = self._paced
        self._paced += pages
        if self._paced // BATCH == before // BATCH:
            time.sleep(0)
            return
        # a batch that took t seconds of CPU is followed by t * (1 - duty) / duty seconds of rest
        spent = time.thread_time() - self._batch_started
        duty = self._quiet_duty
        requests = self.store.requests
        if requests != self._requests_seen:
            duty = self.busy_duty
            self.busy_rests += 1
        time.sleep(spent * (1 - duty) / duty if duty < 1 else 0)
        self._requests_seen = self.store.requests
        self._batch_started = time.thread_time()

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
        turned_over = store.recompressions - self._recompressed_at_training
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
            self._recompressed_at_training = store.recompressions
            return
        self.trainings += 1
        self._recompressed_at_training = store.recompressions
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
            "idle_priority": self.idle_priority,
            "busy_rests": self.busy_rests,
            "dict_trainings": self.trainings,
            "dict_train_failures": self.train_failures,
        }
