"""`zswapfs bench`: compare pool strategies and codecs on real page corpora, beside kernel zram.

Corpus specifications:
    FILE                      a corpus file (raw 4 KiB pages, as `zswapfs capture` writes)
    capture:'COMMAND ARGS'    start COMMAND, snapshot it (SIGUSR1 to its parent or 5 s), replay
    builtin:NAME[:MiB]        capture a bundled workload: py_dicts, sqlite_mem, node_objects
    synthetic:PAGES           generated pages (zero, text-like, half-random, random): for tests

For each corpus, every pool x codec is replayed in-process, without FUSE (the daemon's own store,
codec and pool code, on the engine it ships, the compiled one, unless `--engine python` asks for the
reference; each row names its engine): density, allocator efficiency, store/load rate, and memory
after a churn (a share of pages rewritten with other pages) before and after compaction. A kernel
zram row (lz4) is measured on the same pages when /dev/zram0 is free, and zram0 is reset afterwards.

A memory timeline per pool and corpus follows the pool's memory through a cycle: fill with the
corpus, free a random half (overwritten with zero pages), compact step by step.

With fio options (`--fio`), every pool x codec is also mounted for real (`zswapfs mount` in the
background, under /tmp/zswapfs-fio-*) and the job files of zswapfs/lab/fio/ run against the image
with O_DIRECT; the same jobs run on the null-FUSE baseline (zswapfs.lab.nullfs: a minimal pyfuse3
file that drops writes and reads zeros), so each configuration is quoted against it. Every mount is
unmounted in a finally clause.

Outputs: bench.json, bench.txt (the tables) and PNG plots (matplotlib, Agg) in the out directory.
"""

from zswapfs.lab.bench.corpus import BUILTIN, BenchError, Corpus, load_spec, synthetic_corpus
from zswapfs.lab.bench.fio import FIO_DIR, FIO_JOBS, FioOptions, null_baseline, parse_fio, run_fio
from zswapfs.lab.bench.plots import plotting_unavailable, write_plots
from zswapfs.lab.bench.report import format_table, write_outputs
from zswapfs.lab.bench.run import (
    BenchRun,
    machine_info,
    memory_timeline,
    planned_steps,
    run,
    zram_row,
)

__all__ = [
    "BUILTIN",
    "FIO_DIR",
    "FIO_JOBS",
    "BenchError",
    "BenchRun",
    "Corpus",
    "FioOptions",
    "format_table",
    "load_spec",
    "machine_info",
    "memory_timeline",
    "null_baseline",
    "planned_steps",
    "parse_fio",
    "plotting_unavailable",
    "run",
    "run_fio",
    "synthetic_corpus",
    "write_outputs",
    "write_plots",
    "zram_row",
]
