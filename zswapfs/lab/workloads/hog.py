"""Workload: fill MiB of memory with checksummed, partly compressible pages, then read every page
back and verify its checksum. Run inside a memory-limited cgroup it forces the kernel to swap.

    python -m zswapfs.lab.workloads.hog MIB [SEED]

Prints one JSON line (pages, seconds to fill and to verify, bad pages) and exits 0 only if every
page verified. Pages are a random head of 0, 1, 2 or 3 KiB (by page number) followed by a
pattern holding the page number: compressible, never same-filled.
"""

from __future__ import annotations

import json
import sys
import time
import zlib

import numpy as np

PAGE = 4096
CHUNK = 4096  # pages filled at a time (16 MiB): keeps temporaries small under a tight limit


def main() -> int:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    npages = mib * 256
    rng = np.random.default_rng(seed)
    mem = np.empty((npages, PAGE), dtype=np.uint8)
    sums = np.empty(npages, dtype=np.uint32)
    t0 = time.monotonic()
    for first in range(0, npages, CHUNK):
        last = min(first + CHUNK, npages)
        block = mem[first:last]
        numbers = np.arange(first, last, dtype=np.uint32)
        block[:] = (
            numbers.view(np.uint8)
            .reshape(-1, 4)
            .repeat(PAGE // 4, axis=0)
            .reshape(last - first, PAGE)
        )
        block[:, 1::64] = 0x5A  # a texture, so a pattern page is not same-filled
        for kind in (1, 2, 3):
            rows = np.flatnonzero(numbers % 4 == kind)
            block[rows, : kind * 1024] = rng.integers(
                0, 256, (len(rows), kind * 1024), dtype=np.uint8
            )
        for i in range(last - first):
            sums[first + i] = zlib.crc32(block[i])
    t1 = time.monotonic()
    bad = sum(1 for pn in range(npages) if zlib.crc32(mem[pn]) != sums[pn])
    t2 = time.monotonic()
    print(
        json.dumps(
            {
                "pages": npages,
                "fill_s": round(t1 - t0, 2),
                "verify_s": round(t2 - t1, 2),
                "bad_pages": bad,
            }
        ),
        flush=True,
    )
    return 0 if bad == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
