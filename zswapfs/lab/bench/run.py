"""The bench run: in-process replay of each pool x codec per corpus, zram row, memory timelines."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zswapfs.engine.codec import PAGE_SIZE, CodecError, make_codec
from zswapfs.engine.pools import POOL_NAMES
from zswapfs.engine.store import StoreError
from zswapfs.lab import kzram
from zswapfs.lab.bench.corpus import BenchError, Corpus, load_spec
from zswapfs.lab.bench.fio import FIO_JOBS, FioOptions, run_fio
from zswapfs.lab.replay import replay, replay_store, stats_density


@dataclass
class BenchRun:
    corpora: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    timelines: list[dict[str, Any]] = field(default_factory=list)
    fio: list[dict[str, Any]] = field(default_factory=list)
    fio_mounts: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "?"


def machine_info() -> dict[str, Any]:
    uname = os.uname()
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    fio = "-"
    if shutil.which("fio"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            fio = subprocess.run(
                ["fio", "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
    return {
        "kernel": uname.release,
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory": mem,
        "python": sys.version.split()[0],
        "lz4": _version("lz4"),
        "zstandard": _version("zstandard"),
        "fio": fio,
        "loadavg_start": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def zram_row(corpus: Corpus) -> dict[str, Any]:
    z = kzram.measure(corpus.data, "lz4")
    return {
        "corpus": corpus.name,
        "pool": "zram",
        "codec": "lz4",
        "pages": corpus.pages,
        "orig_data_size": z["orig_data_size"],
        "compr_data_size": z["compr_data_size"],
        "mem_used_total": z["mem_used_total"],
        "metadata_bytes": z["metadata_bytes"],
        "same_pages": z["same_pages"],
        "huge_pages": z["huge_pages"],
        "density": stats_density(z),
        "pool_density": z["orig_data_size"] / z["mem_used_total"],
        "efficiency": z["compr_data_size"] / z["mem_used_total"],
    }


def check_configurations(pools: list[str], codecs: list[str]) -> None:
    """Refuse unknown pools and codecs before anything long starts."""
    if not pools or not codecs:
        raise BenchError("at least one pool and one codec are needed")
    for pool in pools:
        if pool not in POOL_NAMES:
            raise BenchError(f"unknown pool {pool!r}: expected one of {', '.join(POOL_NAMES)}")
    for codec in codecs:
        try:
            make_codec(codec)
        except CodecError as exc:
            raise BenchError(str(exc)) from None


def _thin(points: list[tuple[float, int, int]], most: int) -> list[tuple[float, int, int]]:
    if len(points) <= most:
        return points
    stride = -(-len(points) // most)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def memory_timeline(
    corpus: Corpus,
    pool: str,
    codec: str,
    samples: int = 100,
    seed: int = 2,
    engine: str = "native",
) -> dict[str, Any]:
    """Pool memory through fill (every corpus page), free (a random half overwritten with zero
    pages) and compaction (compact_step until nothing is worth moving), sampled about *samples*
    times a phase; every page is read back and checked at the end."""
    npages = corpus.pages
    store = replay_store(engine, npages, pool, codec)
    data = corpus.data
    t0 = time.perf_counter()
    phases: dict[str, list[float]] = {}
    points: list[tuple[float, int, int]] = []

    def point() -> tuple[float, int, int]:
        return (time.perf_counter() - t0, store.pool.pages_used * PAGE_SIZE, store.compr_data_size)

    every = max(1, npages // samples)
    try:
        points.append(point())
        for pn in range(npages):
            store.write_page(pn, data[pn * PAGE_SIZE : (pn + 1) * PAGE_SIZE])
            if pn % every == every - 1:
                points.append(point())
        points.append(point())
        phases["fill"] = [0.0, points[-1][0]]
        after_fill = points[-1][1]
        victims = random.Random(seed).sample(range(npages), npages // 2)
        zero = bytes(PAGE_SIZE)
        for i, pn in enumerate(victims):
            store.write_page(pn, zero)
            if i % every == every - 1:
                points.append(point())
        points.append(point())
        phases["free"] = [phases["fill"][1], points[-1][0]]
        after_free = points[-1][1]
        steps: list[tuple[float, int, int]] = []
        for _ in range(4 * store.pool.objects + 16):  # as Pool.compact: a guard, not a budget
            if store.pool.compact_step() < 0:
                break
            steps.append(point())
        points += _thin(steps, samples)
        points.append(point())
        phases["compact"] = [phases["free"][1], points[-1][0]]
        freed = set(victims)
        for pn in range(npages):
            want = zero if pn in freed else data[pn * PAGE_SIZE : (pn + 1) * PAGE_SIZE]
            if store.read_page(pn) != want:
                raise BenchError(f"{pool}/{codec}: page {pn} read back wrong after compaction")
    finally:
        store.pool.close()
    return {
        "corpus": corpus.name,
        "pool": pool,
        "codec": codec,
        "pages": npages,
        "freed_pages": len(victims),
        "compact_steps": len(steps),
        "phases": {k: [round(a, 4), round(b, 4)] for k, (a, b) in phases.items()},
        "mem_after_fill": after_fill,
        "mem_after_free": after_free,
        "mem_after_compact": points[-1][1],
        "seconds": [round(p[0], 4) for p in points],
        "mem_used": [p[1] for p in points],
        "compr_data_size": [p[2] for p in points],
    }


def planned_steps(
    corpora: int,
    pools: list[str],
    codecs: list[str],
    with_zram: bool,
    fio: bool,
    timeline: bool = True,
) -> int:
    """How many times run() calls its progress callback (one call a step): a progress bar's
    length. Per corpus: loading it, the zram row (or the note why there is none), every pool x
    codec, a timeline per pool; with fio: a header, then every job on every mount (null-FUSE at
    the start and the end, every pool x codec), skipped jobs included."""
    per_corpus = 1 + int(with_zram) + len(pools) * len(codecs) + (len(pools) if timeline else 0)
    steps = corpora * per_corpus
    if fio:
        steps += 1 + (2 + len(pools) * len(codecs)) * len(FIO_JOBS)
    return steps


def run(
    specs: list[str],
    pools: list[str],
    codecs: list[str],
    with_zram: bool = True,
    churn: float = 0.3,
    progress: Callable[[str], None] = lambda msg: None,
    fio: FioOptions | None = None,
    timeline: bool = True,
    recompress: str | None = "zstd:9",
    engine: str = "native",
) -> BenchRun:
    """*recompress* ("zstd:LEVEL", the daemon's default, or None) adds "density after settling"
    and "time to settle" to each replayed row: the background recompression and dedup run
    until they change nothing, as they would once the writes ended."""
    check_configurations(pools, codecs)
    if fio is not None:
        why = fio.unavailable()
        if why:
            raise BenchError(f"fio rows: {why}")
    result = BenchRun(machine=machine_info())
    result.settings = {
        "pools": pools,
        "codecs": codecs,
        "churn": churn,
        "recompress": recompress,
        "engine": engine,
        "zram": with_zram,
        "timeline_codec": codecs[0] if timeline else None,
        "fio": fio.as_dict() if fio else None,
    }
    with tempfile.TemporaryDirectory(prefix="zswapfs-bench-") as tmp:
        corpora = []
        for spec in specs:
            progress(f"corpus {spec}")
            corpora.append(load_spec(spec, Path(tmp)))
    for corpus in corpora:
        result.corpora.append({"name": corpus.name, "source": corpus.source, "pages": corpus.pages})
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
                try:
                    replayed = replay(
                        corpus.data, pool, codec, churn, recompress=recompress, engine=engine
                    ).as_dict()
                except StoreError as exc:
                    raise BenchError(f"{corpus.name}: {pool} {codec}: {exc}") from None
                result.rows.append({"corpus": corpus.name, **replayed})
        if timeline:
            for pool in pools:
                progress(f"{corpus.name}: {pool} {codecs[0]} memory through fill/free/compact")
                try:
                    result.timelines.append(memory_timeline(corpus, pool, codecs[0], engine=engine))
                except StoreError as exc:
                    raise BenchError(f"{corpus.name}: {pool} timeline: {exc}") from None
    if fio is not None:
        result.fio, result.fio_mounts = run_fio(pools, codecs, fio, progress)
    result.machine["loadavg_end"] = list(os.getloadavg())
    return result
