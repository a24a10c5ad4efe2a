"""zswapfs's benchmark suite: every figure the docs quote, from one command.

    make bench              every benchmark, full size, results in docs/results/
    make bench-quick        every benchmark once and small (a few minutes), in bench/out/
    make bench-docs         the tables of docs/*.md rebuilt from the result files
    python -m bench compare OLD_DIR NEW_DIR   two runs side by side (two checkouts, two builds)

Each benchmark is a module of this package declaring what it answers (QUESTION), the baseline
measured in the same run (BASELINE), its units and what the machine must have (NEEDS), with
run(ctx) -> result document and tables(result) -> {name: markdown}. The in-process timings run
under pyperf (calibrated loops, worker processes); the whole-system ones go through harness.py
(interleaved rounds, medians, ratios, a machine description in every result file).
`zswapfs bench` stays the users' own comparison of pools and codecs on their corpora.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# in the order `make bench` runs them: the quick in-process ones first
NAMES = (
    "inproc",
    "fuse_iops",
    "big_writes",
    "footprint",
    "density",
    "loop_cost",
    "compaction_latency",
    "swap_programs",
    "restart",
)


def load(name: str) -> ModuleType:
    if name not in NAMES:
        raise SystemExit(f"no benchmark {name!r} (known: {', '.join(NAMES)})")
    return importlib.import_module(f"bench.{name}")
