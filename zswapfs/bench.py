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

A memory timeline per pool and corpus follows the pool's memory through a cycle: fill with the
corpus, free a random half (overwritten with zero pages), compact step by step.

With fio options (`--fio`), every pool x codec is also mounted for real (`zswapfs mount` in the
background, under /tmp/zswapfs-bench7-*) and the job files of bench/fio/ run against the image
with O_DIRECT; the same jobs run on the null-FUSE baseline (zswapfs.nullfs: the same FUSE layer
over a store that keeps nothing), so each configuration is quoted against it. Every mount is
unmounted in a finally clause.

Outputs: bench.json, bench.txt (the tables) and PNG plots (matplotlib, Agg) in the out directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zswapfs import kzram
from zswapfs.capture import capture_command
from zswapfs.codec import PAGE_SIZE, CodecError, make_codec
from zswapfs.pools import POOL_NAMES, make_pool
from zswapfs.procs import reap
from zswapfs.replay import load_corpus, replay
from zswapfs.store import PageStore, StoreError

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


# -- the run -------------------------------------------------------------------------------------
FIO_DIR = Path(__file__).resolve().parent.parent / "bench" / "fio"
#: job files run through each mount, in this order: the sequential job fills the region first,
#: so the random job reads stored pages, not never-written ones
FIO_JOBS = ("seqwrite-128k", "randrw-4k", "verify-randrw")
#: jobs bounded by time (FIO_RUNTIME); the verify job is bounded by its size instead, so that its
#: verify phase always runs to the end. The null-FUSE baseline runs the timed jobs only: it drops
#: writes, so verification would fail there
TIMED_JOBS = ("seqwrite-128k", "randrw-4k")
NULL_FUSE = "null-fuse"
#: a mount's stats kept beside its fio rows
MOUNT_FIGURES = ("orig_data_size", "compr_data_size", "mem_used_total", "metadata_bytes",
                 "same_pages", "huge_pages", "failed_reads", "failed_writes",
                 "rss_bytes")  # fmt: skip
MOUNT_TIMEOUT = 60.0


@dataclass
class FioOptions:
    runtime: float = 10.0
    size: int = 256 << 20  # the region the timed jobs use (and the image size)
    verify_size: int = 64 << 20  # the region the verify job writes and verifies
    jobs_dir: Path = FIO_DIR

    def unavailable(self) -> str | None:
        """Why fio rows cannot be measured here, or None."""
        for tool in ("fio", "fusermount3"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse is missing"
        missing = [j for j in FIO_JOBS if not (self.jobs_dir / f"{j}.fio").is_file()]
        if missing:
            return f"fio job files {', '.join(missing)} not found in {self.jobs_dir}"
        if self.runtime < 0.1:  # fio reads runtime=0 as "no limit"
            return "the fio runtime must be at least 0.1 s"
        if min(self.size, self.verify_size) < 1 << 20 or (self.size | self.verify_size) % 4096:
            return "fio sizes must be at least 1 MiB and multiples of 4096"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"runtime_s": self.runtime, "size": self.size, "verify_size": self.verify_size,
                "jobs": list(FIO_JOBS), "jobs_dir": str(self.jobs_dir)}  # fmt: skip


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
            fio = subprocess.run(["fio", "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()  # fmt: skip
    return {"kernel": uname.release, "cpus": os.cpu_count(), "cpu_model": cpu, "memory": mem,
            "python": sys.version.split()[0], "lz4": _version("lz4"),
            "zstandard": _version("zstandard"), "fio": fio,
            "loadavg_start": list(os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip


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
    corpus: Corpus, pool: str, codec: str, samples: int = 100, seed: int = 2
) -> dict[str, Any]:
    """Pool memory through fill (every corpus page), free (a random half overwritten with zero
    pages) and compaction (compact_step until nothing is worth moving), sampled about *samples*
    times a phase; every page is read back and checked at the end."""
    npages = corpus.pages
    store = PageStore(npages, make_codec(codec), make_pool(pool, npages))
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
        "corpus": corpus.name, "pool": pool, "codec": codec, "pages": npages,
        "freed_pages": len(victims), "compact_steps": len(steps),
        "phases": {k: [round(a, 4), round(b, 4)] for k, (a, b) in phases.items()},
        "mem_after_fill": after_fill, "mem_after_free": after_free,
        "mem_after_compact": points[-1][1],
        "seconds": [round(p[0], 4) for p in points], "mem_used": [p[1] for p in points],
        "compr_data_size": [p[2] for p in points],
    }  # fmt: skip


# -- fio through real mounts ---------------------------------------------------------------------
def _log_tail(log: Path) -> str:
    try:
        return "\n" + log.read_text(errors="replace")[-1500:]
    except OSError:
        return ""


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait for process *pid* (one this bench started) to exit; True if it did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _force_unmount(mountpoint: Path) -> None:
    if os.path.ismount(mountpoint):
        res = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        if res.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


@contextlib.contextmanager
def zswapfs_mounted(
    mountpoint: Path, size: int, pool: str, codec: str, log: Path
) -> Iterator[Path]:
    """A background `zswapfs mount` of *pool*/*codec*; yields the image path. Always unmounted
    (`zswapfs umount`, else fusermount3 -u -z, and the daemon is stopped if it lingers)."""
    pid: int | None = None
    try:
        res = subprocess.run(
            [sys.executable, "-m", "zswapfs", "mount", str(mountpoint), "--size", str(size),
             "--pool", pool, "--codec", codec, "--log", str(log)],
            capture_output=True, text=True, timeout=MOUNT_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if res.returncode != 0:
            raise BenchError(f"mount {pool}/{codec}: {res.stderr.strip()}{_log_tail(log)}")
        pid = int(read_mount_stats(mountpoint)["pid"])
        yield mountpoint / "swap.img"
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run([sys.executable, "-m", "zswapfs", "umount", str(mountpoint)],
                           capture_output=True, timeout=MOUNT_TIMEOUT)  # fmt: skip
        _force_unmount(mountpoint)
        if pid is not None and not _wait_gone(pid, 30):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if "Traceback" in _log_tail(log):
        raise BenchError(f"the {pool}/{codec} daemon logged a traceback:{_log_tail(log)}")


@contextlib.contextmanager
def null_mounted(mountpoint: Path, size: int, log: Path) -> Iterator[Path]:
    """The null-FUSE baseline (python -m zswapfs.nullfs) mounted; yields the image path."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zswapfs.nullfs", str(mountpoint), "--size", str(size)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise BenchError(f"null-FUSE daemon exited with {proc.returncode}{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"null-FUSE daemon did not mount{_log_tail(log)}")
            time.sleep(0.02)
        yield mountpoint / "swap.img"
    finally:
        _force_unmount(mountpoint)
        reap(proc, wait=15)


def read_mount_stats(mountpoint: Path) -> dict[str, Any]:
    with open(mountpoint / "stats") as f:
        return dict(json.load(f))


def parse_fio(report: dict[str, Any], job: str) -> dict[str, Any]:
    """IOPS, bandwidth and p99 completion latency of one fio job's JSON report."""
    j = report["jobs"][0]
    if j["error"]:
        raise BenchError(f"fio job {job} failed: error {j['error']}")
    row: dict[str, Any] = {"job": job, "runtime_s": j["job_runtime"] / 1000}
    for d in ("read", "write"):
        s = j[d]
        row[f"{d}_iops"] = s["iops"]
        row[f"{d}_bw_bytes"] = s["bw_bytes"]
        row[f"{d}_bytes"] = s["io_bytes"]
        pct = s["clat_ns"].get("percentile") or {}
        row[f"{d}_p99_us"] = pct["99.000000"] / 1000 if s["io_bytes"] and pct else None
        row[f"{d}_mean_us"] = s["clat_ns"]["mean"] / 1000 if s["io_bytes"] else None
    row["iops"] = row["read_iops"] + row["write_iops"]
    row["bw_bytes"] = row["read_bw_bytes"] + row["write_bw_bytes"]
    return row


def run_fio_job(image: Path, job: str, opts: FioOptions, workdir: Path) -> dict[str, Any]:
    """Run bench/fio/JOB.fio on *image*; its files (JSON, verify state) stay in *workdir*."""
    out = workdir / f"{job}.json"
    size = opts.size if job in TIMED_JOBS else opts.verify_size
    env = {**os.environ, "FIO_RUNTIME": f"{round(opts.runtime * 1000)}ms"}
    cmd = ["fio", f"--filename={image}", f"--size={size}", "--output-format=json",
           f"--output={out}", str(opts.jobs_dir / f"{job}.fio")]  # fmt: skip
    try:
        res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                             timeout=opts.runtime * 4 + 600)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise BenchError(f"fio job {job} on {image} did not finish") from None
    if res.returncode != 0:
        raise BenchError(f"fio job {job} on {image} failed: {res.stderr.strip()[-800:]}")
    row = parse_fio(json.loads(out.read_text()), job)
    row["size"] = size
    return row


def _fio_config(
    label: tuple[str, str],
    mounted: contextlib.AbstractContextManager[Path],
    mountpoint: Path,
    opts: FioOptions,
    workdir: Path,
    progress: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    pool, codec = label
    rows = []
    stats = None
    with mounted as image:
        for job in FIO_JOBS:
            if pool == NULL_FUSE and job not in TIMED_JOBS:
                progress(f"fio {pool} {job}: skipped (writes are dropped, nothing to verify)")
                continue
            row = {"pool": pool, "codec": codec, **run_fio_job(image, job, opts, workdir)}
            p99 = max(row["read_p99_us"] or 0, row["write_p99_us"] or 0)
            progress(f"fio {pool} {codec} {job}: {row['iops']:.0f} IOPS,"
                     f" {row['bw_bytes'] / 2**20:.1f} MiB/s, p99 {p99:.0f} us")  # fmt: skip
            rows.append(row)
        if pool != NULL_FUSE:
            st = read_mount_stats(mountpoint)
            stats = {"pool": pool, "codec": codec, **{k: st[k] for k in MOUNT_FIGURES}}
            stats["density"] = st["orig_data_size"] / max(1, st["mem_used_total"])
            if st["failed_reads"] or st["failed_writes"]:
                raise BenchError(f"{pool}/{codec}: the mount reported failed reads/writes: {st}")
    return rows, stats


def run_fio(
    pools: list[str],
    codecs: list[str],
    opts: FioOptions,
    progress: Callable[[str], None] = lambda msg: None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """fio rows for the null-FUSE baseline and every pool x codec mount, with vs_null ratios."""
    why = opts.unavailable()
    if why:
        raise BenchError(f"fio rows: {why}")
    # twice the region the jobs touch: a swap image is not used to its last page, and zbud/z3fold
    # arenas have no slack for the rewrite of a page in an image full of one-object pages
    image_size = 2 * max(opts.size, opts.verify_size)
    rows: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    # the baseline first and last: how far it drifts in between says how far the machine did
    configs = [(NULL_FUSE, "start"), *((p, c) for p in pools for c in codecs), (NULL_FUSE, "end")]
    progress(f"fio: {len(configs)} mounts x {len(FIO_JOBS)} jobs, timed jobs {opts.runtime:g} s")
    tmp = Path(tempfile.mkdtemp(prefix="zswapfs-bench7-", dir="/tmp"))
    try:
        for n, (pool, codec) in enumerate(configs):
            mp = tmp / f"mnt{n}"
            mp.mkdir()
            workdir = tmp / f"work{n}"
            workdir.mkdir()
            log = tmp / f"daemon{n}.log"
            mounted = (
                null_mounted(mp, image_size, log)
                if pool == NULL_FUSE
                else zswapfs_mounted(mp, image_size, pool, codec, log)
            )
            job_rows, stats = _fio_config((pool, codec), mounted, mp, opts, workdir, progress)
            rows += job_rows
            if stats:
                mounts.append(stats)
    finally:
        for mp in tmp.glob("mnt*"):
            _force_unmount(mp)
        if not any(os.path.ismount(mp) for mp in tmp.glob("mnt*")):
            shutil.rmtree(tmp, ignore_errors=True)
    null = null_baseline(rows)
    for r in rows:
        base = null.get(r["job"])
        r["vs_null"] = r["iops"] / base["mean_iops"] if base and base["mean_iops"] else None
    return rows, mounts


def null_baseline(fio_rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per job: the null-FUSE IOPS at the start and the end of the fio rows, their mean (what
    vs_null divides by) and the drift between them, (end - start) / mean."""
    out: dict[str, dict[str, float]] = {}
    for r in fio_rows:
        if r["pool"] == NULL_FUSE:
            out.setdefault(r["job"], {})[f"{r['codec']}_iops"] = r["iops"]
    for figures in out.values():
        values = list(figures.values())
        mean = sum(values) / len(values)
        figures["mean_iops"] = mean
        if len(values) == 2 and mean:
            figures["drift"] = (
                figures.get("end_iops", mean) - figures.get("start_iops", mean)
            ) / mean
    return out


def run(
    specs: list[str],
    pools: list[str],
    codecs: list[str],
    with_zram: bool = True,
    churn: float = 0.3,
    progress: Callable[[str], None] = lambda msg: None,
    fio: FioOptions | None = None,
    timeline: bool = True,
) -> BenchRun:
    check_configurations(pools, codecs)
    if fio is not None:
        why = fio.unavailable()
        if why:
            raise BenchError(f"fio rows: {why}")
    result = BenchRun(machine=machine_info())
    result.settings = {"pools": pools, "codecs": codecs, "churn": churn, "zram": with_zram,
                       "timeline_codec": codecs[0] if timeline else None,
                       "fio": fio.as_dict() if fio else None}  # fmt: skip
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
                try:
                    replayed = replay(corpus.data, pool, codec, churn).as_dict()
                except StoreError as exc:
                    raise BenchError(f"{corpus.name}: {pool} {codec}: {exc}") from None
                result.rows.append({"corpus": corpus.name, **replayed})
        if timeline:
            for pool in pools:
                progress(f"{corpus.name}: {pool} {codecs[0]} memory through fill/free/compact")
                try:
                    result.timelines.append(memory_timeline(corpus, pool, codecs[0]))
                except StoreError as exc:
                    raise BenchError(f"{corpus.name}: {pool} timeline: {exc}") from None
    if fio is not None:
        result.fio, result.fio_mounts = run_fio(pools, codecs, fio, progress)
    result.machine["loadavg_end"] = list(os.getloadavg())
    return result


# -- output --------------------------------------------------------------------------------------
MIB = 2**20


def format_table(run_: BenchRun) -> str:
    head = (f"{'corpus':<14}{'pool':<10}{'codec':<9}{'density':>8}{'vs zram':>8}{'pool-only':>10}"
            f"{'effic.':>7}{'store/s':>9}{'load/s':>9}{'churn MiB':>10}{'compact':>9}")  # fmt: skip
    lines = [head, "-" * len(head)]
    zram = {r["corpus"]: r["density"] for r in run_.rows if r["pool"] == "zram"}
    for r in run_.rows:
        vs = f"{r['density'] / zram[r['corpus']]:.3f}" if r["corpus"] in zram else "-"
        rate = (f"{r['store_pages_per_s']:>9.0f}{r['load_pages_per_s']:>9.0f}"
                if "store_pages_per_s" in r else f"{'-':>9}{'-':>9}")  # fmt: skip
        churn = (f"{r['churn_mem_used'] / MIB:>10.1f}{r['compacted_mem_used'] / MIB:>9.1f}"
                 if r.get("churn_mem_used") else f"{'-':>10}{'-':>9}")  # fmt: skip
        lines.append(f"{r['corpus']:<14}{r['pool']:<10}{r['codec']:<9}{r['density']:>8.3f}{vs:>8}"
                     f"{r['pool_density']:>10.3f}{r['efficiency']:>7.3f}{rate}{churn}")  # fmt: skip
    if run_.timelines:
        lines += ["", "pool memory through fill / free a random half (zero pages) / compact, MiB",
                  f"{'corpus':<14}{'pool':<10}{'codec':<9}{'filled':>9}{'freed':>9}"
                  f"{'compacted':>11}{'steps':>7}{'seconds':>9}"]  # fmt: skip
        for t in run_.timelines:
            lines.append(f"{t['corpus']:<14}{t['pool']:<10}{t['codec']:<9}"
                         f"{t['mem_after_fill'] / MIB:>9.1f}{t['mem_after_free'] / MIB:>9.1f}"
                         f"{t['mem_after_compact'] / MIB:>11.1f}{t['compact_steps']:>7}"
                         f"{t['seconds'][-1]:>9.2f}")  # fmt: skip
    if run_.fio:
        fs = run_.settings.get("fio") or {}
        lines += ["", f"fio through a mount: O_DIRECT psync, 50%-compressible buffers; timed jobs"
                      f" {fs.get('runtime_s', '?'):g} s on {fs.get('size', 0) / MIB:.0f} MiB,"
                      f" verify job on {fs.get('verify_size', 0) / MIB:.0f} MiB"]  # fmt: skip
        head = (f"{'pool':<10}{'codec':<9}{'job':<15}{'IOPS':>8}{'MiB/s':>8}{'p99 r us':>10}"
                f"{'p99 w us':>10}{'vs null':>9}")  # fmt: skip
        lines += [head, "-" * len(head)]
        for r in run_.fio:
            p99 = "".join(f"{r[k]:>10.0f}" if r[k] is not None else f"{'-':>10}"
                          for k in ("read_p99_us", "write_p99_us"))  # fmt: skip
            vs = f"{r['vs_null']:>9.3f}" if r.get("vs_null") is not None else f"{'-':>9}"
            lines.append(f"{r['pool']:<10}{r['codec']:<9}{r['job']:<15}{r['iops']:>8.0f}"
                         f"{r['bw_bytes'] / MIB:>8.1f}{p99}{vs}")  # fmt: skip
        drift = [f"{job} {b['drift']:+.1%}" for job, b in null_baseline(run_.fio).items()
                 if "drift" in b]  # fmt: skip
        if drift:
            lines.append(f"vs null: IOPS / mean of the null-FUSE start and end rows; the baseline"
                         f" moved {', '.join(drift)} from start to end")  # fmt: skip
    if run_.fio_mounts:
        lines += ["", "each mount after its fio jobs",
                  f"{'pool':<10}{'codec':<9}{'stored MiB':>11}{'pool MiB':>10}{'density':>9}"
                  f"{'daemon RSS MiB':>16}"]  # fmt: skip
        for m in run_.fio_mounts:
            lines.append(f"{m['pool']:<10}{m['codec']:<9}{m['orig_data_size'] / MIB:>11.1f}"
                         f"{m['mem_used_total'] / MIB:>10.1f}{m['density']:>9.3f}"
                         f"{m['rss_bytes'] / MIB:>16.1f}")  # fmt: skip
    return "\n".join(lines)


def write_outputs(run_: BenchRun, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.json"
    doc = {"machine": run_.machine, "settings": run_.settings, "corpora": run_.corpora,
           "rows": run_.rows, "fio": run_.fio, "fio_null": null_baseline(run_.fio),
           "fio_mounts": run_.fio_mounts,
           "timelines": run_.timelines}  # fmt: skip
    path.write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / "bench.txt").write_text(format_table(run_) + "\n")
    return [path, out_dir / "bench.txt"]


# -- plots ---------------------------------------------------------------------------------------
POOL_COLORS = {"zbud": "#d9822b", "z3fold": "#3b9a4a", "zsmalloc": "#2f6db5"}
REFERENCE_COLOR = "#7a7a7a"
PHASE_SHADES = ("#fdf6d8", "#fbe3e0", "#e3f2e5")
FIGSIZE = (7.0, 4.0)
DPI = 80


def plotting_unavailable() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots need matplotlib: pip install 'zswapfs[bench]' (or pass --no-plots)"
    return None


def _shade(color: str, i: int, n: int) -> tuple[float, float, float]:
    """The i-th of n shades of *color*: the first full, later ones mixed with white."""
    r, g, b = (int(color[k : k + 2], 16) / 255 for k in (1, 3, 5))
    mix = 0.55 * i / max(1, n - 1)
    return (r + (1 - r) * mix, g + (1 - g) * mix, b + (1 - b) * mix)


def _config_colors(pools: list[str], codecs: list[str]) -> dict[str, tuple[float, float, float]]:
    colors = {}
    for pool in pools:
        for i, codec in enumerate(codecs):
            colors[f"{pool} {codec}"] = _shade(POOL_COLORS.get(pool, "#555555"), i, len(codecs))
    return colors


def write_plots(run_: BenchRun, out_dir: Path) -> list[Path]:
    """density.png, throughput.png, fio.png (with fio rows), memory-CORPUS.png (with timelines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    out_dir.mkdir(parents=True, exist_ok=True)
    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7})
    written: list[Path] = []
    replays = [r for r in run_.rows if r["pool"] != "zram"]
    pools = list(dict.fromkeys(r["pool"] for r in replays))
    codecs = list(dict.fromkeys(r["codec"] for r in replays))
    colors = _config_colors(pools, codecs)
    corpora = [c["name"] for c in run_.corpora]

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)

    # density: grouped bars per corpus, zram as the grey first bar of each group
    if replays:
        fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
        labels = (["zram lz4"] if any(r["pool"] == "zram" for r in run_.rows) else []) + list(
            colors
        )
        width = 0.85 / len(labels)
        by_key = {(r["corpus"], f"{r['pool']} {r['codec']}"): r for r in run_.rows}
        for i, label in enumerate(labels):
            xs = [g + (i - (len(labels) - 1) / 2) * width for g in range(len(corpora))]
            ys = [by_key[(c, label)]["density"] if (c, label) in by_key else 0 for c in corpora]
            is_zram = label == "zram lz4"
            ax.bar(xs, ys, width, label=label,
                   color=REFERENCE_COLOR if is_zram else colors[label],
                   hatch="//" if is_zram else None, edgecolor="white", linewidth=0.3)  # fmt: skip
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(corpora)), corpora)
        ax.set_ylabel("density: stored / (pool + metadata)")
        ax.set_title("Density per pool and codec (kernel zram lz4 hatched grey)")
        ax.legend(ncol=min(5, len(labels)), loc="upper center", bbox_to_anchor=(0.5, -0.08),
                  frameon=False)  # fmt: skip
        save(fig, "density.png")

        # in-process throughput: store and load pages/s per configuration, a bar per corpus
        fig, axes = plt.subplots(2, 1, figsize=(FIGSIZE[0], FIGSIZE[1] + 0.8), sharex=True,
                                 layout="constrained")  # fmt: skip
        configs = list(colors)
        width = 0.8 / max(1, len(corpora))
        panels = (
            (axes[0], "store_pages_per_s", "store (compress + place)"),
            (axes[1], "load_pages_per_s", "load (read + decompress)"),
        )
        for ax, key, title in panels:
            for j, c in enumerate(corpora):
                xs = [k + (j - (len(corpora) - 1) / 2) * width for k in range(len(configs))]
                ys = [by_key[(c, cf)][key] / 1000 if (c, cf) in by_key else 0 for cf in configs]
                ax.bar(xs, ys, width, color=[colors[cf] for cf in configs],
                       alpha=1.0 - 0.45 * j / max(1, len(corpora) - 1), edgecolor="black",
                       linewidth=0.3, label=c)  # fmt: skip
            ax.set_ylabel("k pages/s")
            ax.set_title(f"In-process {title}; bars left to right: {', '.join(corpora)}")
        axes[1].set_xticks(range(len(configs)), [cf.replace(" ", "\n") for cf in configs])
        save(fig, "throughput.png")

    # fio through a real mount: IOPS and p99 per job, null-FUSE first
    if run_.fio:
        fio_configs = list(dict.fromkeys(f"{r['pool']} {r['codec']}" for r in run_.fio))
        jobs = list(dict.fromkeys(r["job"] for r in run_.fio))
        by_job = {(f"{r['pool']} {r['codec']}", r["job"]): r for r in run_.fio}
        baseline = null_baseline(run_.fio)
        fig, axes = plt.subplots(1, len(jobs), figsize=FIGSIZE, sharey=False,
                                 layout="constrained", squeeze=False)  # fmt: skip
        for ax, job in zip(axes[0], jobs, strict=True):
            ys = [by_job[(cf, job)]["iops"] if (cf, job) in by_job else 0 for cf in fio_configs]
            cols = [colors.get(cf, REFERENCE_COLOR) for cf in fio_configs]
            ax.barh(range(len(fio_configs)), ys, color=cols, edgecolor="black", linewidth=0.3)
            null = baseline.get(job)
            if null:
                ax.axvline(null["mean_iops"], color=REFERENCE_COLOR, linestyle="--", linewidth=0.8)
            ax.set_title(job)
            ax.set_xlabel("IOPS (read + write)")
            ax.set_yticks(range(len(fio_configs)),
                          fio_configs if ax is axes[0][0]
                          else [""] * len(fio_configs))  # fmt: skip
            ax.invert_yaxis()
        fig.suptitle("fio through the FUSE mount (O_DIRECT); dashed: null-FUSE mean")
        save(fig, "fio.png")

    # memory through fill / free half / compact, one panel per pool, a figure per corpus
    for corpus in corpora:
        lines = [t for t in run_.timelines if t["corpus"] == corpus]
        if not lines:
            continue
        fig, axes = plt.subplots(1, len(lines), figsize=FIGSIZE, sharey=True,
                                 layout="constrained", squeeze=False)  # fmt: skip
        for ax, t in zip(axes[0], lines, strict=True):
            color = POOL_COLORS.get(t["pool"], "#555555")
            for (a, b), shade in zip(t["phases"].values(), PHASE_SHADES, strict=False):
                ax.axvspan(a, b, color=shade, linewidth=0)
            ax.plot(t["seconds"], [m / MIB for m in t["mem_used"]], color=color,
                    label="pool memory")  # fmt: skip
            ax.plot(t["seconds"], [m / MIB for m in t["compr_data_size"]], color=color,
                    linestyle="--", linewidth=0.9, label="compressed bytes")  # fmt: skip
            ax.set_title(f"{t['pool']} {t['codec']}")
            ax.set_xlabel("seconds")
        axes[0][0].set_ylabel("MiB")
        handles, _ = axes[0][0].get_legend_handles_labels()
        phases = list(lines[0]["phases"])
        for phase, shade in zip(phases, PHASE_SHADES, strict=False):
            handles.append(Patch(color=shade, label=f"{phase} phase"))
        axes[0][0].legend(handles=handles, loc="upper left", frameon=False)
        fig.suptitle(f"{corpus}: fill, free a random half, compact")
        save(fig, f"memory-{corpus}.png")
    return written
