"""Workload: copy a page corpus (real memory captured from a process) into anonymous memory,
then read every page back twice and verify it. Run inside a memory-limited cgroup it forces the
kernel to swap real memory contents, not synthetic ones.

    python -m zswapfs.lab.workloads.corpus_hog CORPUS [MIB]

MIB (default: the corpus's size) repeats the corpus as needed. Prints one JSON line (pages,
seconds to copy and to verify, bad pages) and exits 0 only if every page verified both times.
"""

from __future__ import annotations

import json
import sys
import time
import zlib

import numpy as np

PAGE = 4096
CHUNK = 4096  # pages copied at a time (16 MiB)


def main() -> int:
    corpus = np.fromfile(sys.argv[1], dtype=np.uint8)
    cpages = len(corpus) // PAGE
    if not cpages:
        print(json.dumps({"error": f"{sys.argv[1]} holds no whole page"}))
        return 2
    corpus = corpus[: cpages * PAGE].reshape(cpages, PAGE)
    npages = int(sys.argv[2]) * 256 if len(sys.argv) > 2 else cpages
    sums = np.array([zlib.crc32(p.tobytes()) for p in corpus], dtype=np.uint32)
    del corpus  # the file is read again chunk by chunk: only the copy stays resident
    mem = np.empty((npages, PAGE), dtype=np.uint8)
    t0 = time.monotonic()
    with open(sys.argv[1], "rb") as f:
        for first in range(0, npages, CHUNK):
            last = min(first + CHUNK, npages)
            for pn in range(first, last):
                if pn % cpages == 0:
                    f.seek(0)
                mem[pn] = np.frombuffer(f.read(PAGE), dtype=np.uint8)
    t1 = time.monotonic()
    bad = 0
    for _ in range(2):
        bad += sum(1 for pn in range(npages) if zlib.crc32(mem[pn]) != sums[pn % cpages])
    t2 = time.monotonic()
    print(
        json.dumps(
            {
                "pages": npages,
                "copy_s": round(t1 - t0, 2),
                "verify_s": round(t2 - t1, 2),
                "bad_pages": bad,
            }
        ),
        flush=True,
    )
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
