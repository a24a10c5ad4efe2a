"""`zswapfs bench`: compare pool strategies and codecs on real page corpora, beside kernel zram.

Corpus specifications:
    FILE                      a corpus file (raw 4 KiB pages, as `zswapfs capture` writes)
    capture:'COMMAND ARGS'    start COMMAND, snapshot it (SIGUSR1 to its parent or 5 s), replay
    builtin:NAME[:MiB]        capture a bundled workload: py_dicts, sqlite_mem, node_objects
    synthetic:PAGES           generated pages (zero, text-like, half-random, random): for tests

For each corpus, every pool x codec is replayed in-process (the daemon's own store, codec and pool
code, without FUSE): density, allocator efficiency, store/load rate, and memory after a churn
(a share of pages rewritten with other pages) before and after compaction. A kernel zram row
(lz4) is measured on the same pages when /dev/zram0 is free, and zram0 is reset afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zswapfs import kzram
from zswapfs.capture import capture_command
from zswapfs.codec import PAGE_SIZE
from zswapfs.replay import load_corpus, replay

WORKLOADS = Path(__file__).parent / "workloads"
BUILTIN = {
    "py_dicts": lambda mib: [sys.executable, "-m", "zswapfs.workloads.py_dicts", str(mib)],
    "sqlite_mem": lambda mib: [sys.executable, "-m", "zswapfs.workloads.sqlite_mem", str(mib)],
    "node_objects": lambda mib: ["node", str(WORKLOADS / "node_objects.js"), str(mib)],
}


class BenchError(Exception):
    pass


@dataclass
class Corpus:
    name: str
    data: bytes
    source: str

    @property
    def pages(self) -> int:
        return len(self.data) // PAGE_SIZE


def synthetic_corpus(npages: int, seed: int = 3) -> bytes:
    """A mix like real memory: zero pages, text-like, half random, fully random."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefghijklmnop") for _ in range(rnd.randint(2, 9)))
             for _ in range(300)]  # fmt: skip
    out = bytearray()
    for i in range(npages):
        kind = i % 10
        if kind == 0:
            page = bytes(PAGE_SIZE)
        elif kind == 9:
            page = rnd.randbytes(PAGE_SIZE)
        elif kind >= 7:
            page = rnd.randbytes(PAGE_SIZE // 2) + bytes(PAGE_SIZE // 2)
        else:
            page = b" ".join(rnd.choice(words) for _ in range(900))[:PAGE_SIZE]
            page = page.ljust(PAGE_SIZE, b"\0")
        out += page
    return bytes(out)


def load_spec(spec: str, workdir: Path) -> Corpus:
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        try:
            npages = int(arg)
        except ValueError:
            raise BenchError(f"synthetic corpus wants a page count, got {arg!r}") from None
        return Corpus(f"synthetic{npages}", synthetic_corpus(npages), spec)
    if kind in ("capture", "builtin"):
        if kind == "builtin":
            name, _, mib = arg.partition(":")
            if name not in BUILTIN:
                raise BenchError(f"unknown builtin workload {name!r} ({', '.join(BUILTIN)})")
            command, label = BUILTIN[name](int(mib or 128)), name
        else:
            command = shlex.split(arg)
            if not command:
                raise BenchError("capture: needs a command")
            label = Path(command[0]).name
        out = workdir / f"{label}.pages"
        capture_command(command, out, delay=None if kind == "builtin" else 5.0)
        return Corpus(label, load_corpus(out), spec)
    path = Path(spec)
    if not path.is_file():
        raise BenchError(f"corpus {spec}: no such file (or use capture:, builtin:, synthetic:)")
    return Corpus(path.stem, load_corpus(path), spec)


@dataclass
class BenchRun:
    corpora: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    uname = os.uname()
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {"kernel": uname.release, "cpus": os.cpu_count(), "memory": mem,
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip


def zram_row(corpus: Corpus) -> dict[str, Any]:
    z = kzram.measure(corpus.data, "lz4")
    return {
        "corpus": corpus.name, "pool": "zram", "codec": "lz4", "pages": corpus.pages,
        "orig_data_size": z["orig_data_size"], "compr_data_size": z["compr_data_size"],
        "mem_used_total": z["mem_used_total"], "metadata_bytes": z["metadata_bytes"],
        "same_pages": z["same_pages"], "huge_pages": z["huge_pages"],
        "density": z["orig_data_size"] / (z["mem_used_total"] + z["metadata_bytes"]),
        "pool_density": z["orig_data_size"] / z["mem_used_total"],
        "efficiency": z["compr_data_size"] / z["mem_used_total"],
    }  # fmt: skip


def run(
    specs: list[str],
    pools: list[str],
    codecs: list[str],
    with_zram: bool = True,
    churn: float = 0.3,
    progress: Callable[[str], None] = lambda msg: None,
) -> BenchRun:
    result = BenchRun(machine=machine_info())
    with tempfile.TemporaryDirectory(prefix="zswapfs-bench-") as tmp:
        corpora = []
        for spec in specs:
            progress(f"corpus {spec}")
            corpora.append(load_spec(spec, Path(tmp)))
    for corpus in corpora:
        result.corpora.append({"name": corpus.name, "source": corpus.source,
                               "pages": corpus.pages})  # fmt: skip
        if with_zram:
            why = kzram.unavailable()
            if why:
                progress(f"no zram row: {why}")
            else:
                progress(f"{corpus.name}: kernel zram lz4")
                result.rows.append(zram_row(corpus))
        for pool in pools:
            for codec in codecs:
                progress(f"{corpus.name}: {pool} {codec}")
                result.rows.append(
                    {"corpus": corpus.name, **replay(corpus.data, pool, codec, churn).as_dict()}
                )
    return result


def format_table(run_: BenchRun) -> str:
    head = (f"{'corpus':<14}{'pool':<10}{'codec':<9}{'density':>8}{'vs zram':>8}{'pool-only':>10}"
            f"{'effic.':>7}{'store/s':>9}{'load/s':>9}{'churn MiB':>10}{'compact':>9}")  # fmt: skip
    lines = [head, "-" * len(head)]
    zram = {r["corpus"]: r["density"] for r in run_.rows if r["pool"] == "zram"}
    for r in run_.rows:
        vs = f"{r['density'] / zram[r['corpus']]:.3f}" if r["corpus"] in zram else "-"
        rate = (f"{r['store_pages_per_s']:>9.0f}{r['load_pages_per_s']:>9.0f}"
                if "store_pages_per_s" in r else f"{'-':>9}{'-':>9}")  # fmt: skip
        churn = (f"{r['churn_mem_used'] / 2**20:>10.1f}{r['compacted_mem_used'] / 2**20:>9.1f}"
                 if r.get("churn_mem_used") else f"{'-':>10}{'-':>9}")  # fmt: skip
        lines.append(f"{r['corpus']:<14}{r['pool']:<10}{r['codec']:<9}{r['density']:>8.3f}{vs:>8}"
                     f"{r['pool_density']:>10.3f}{r['efficiency']:>7.3f}{rate}{churn}")  # fmt: skip
    return "\n".join(lines)


def write_outputs(run_: BenchRun, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.json"
    path.write_text(json.dumps({"machine": run_.machine, "corpora": run_.corpora,
                                "rows": run_.rows}, indent=1) + "\n")  # fmt: skip
    (out_dir / "bench.txt").write_text(format_table(run_) + "\n")
    return [path, out_dir / "bench.txt"]
