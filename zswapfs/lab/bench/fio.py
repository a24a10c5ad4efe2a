"""fio through real mounts: every pool x codec and the null-FUSE baseline, O_DIRECT."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zswapfs.lab.bench.corpus import BenchError
from zswapfs.lab.procs import reap

FIO_DIR = Path(__file__).resolve().parent.parent / "fio"
#: job files run through each mount, in this order: the sequential job fills the region first,
#: so the random job reads stored pages, not never-written ones
FIO_JOBS = ("seqwrite-128k", "randrw-4k", "verify-randrw")
#: jobs bounded by time (FIO_RUNTIME); the verify job is bounded by its size instead, so that its
#: verify phase always runs to the end. The null-FUSE baseline runs the timed jobs only: it drops
#: writes, so verification would fail there
TIMED_JOBS = ("seqwrite-128k", "randrw-4k")
NULL_FUSE = "null-fuse"
#: a mount's stats kept beside its fio rows
MOUNT_FIGURES = (
    "orig_data_size",
    "compr_data_size",
    "mem_used_total",
    "metadata_bytes",
    "same_pages",
    "huge_pages",
    "failed_reads",
    "failed_writes",
    "rss_bytes",
)
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
        return {
            "runtime_s": self.runtime,
            "size": self.size,
            "verify_size": self.verify_size,
            "jobs": list(FIO_JOBS),
            "jobs_dir": str(self.jobs_dir),
        }


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
    mountpoint: Path, size: int, pool: str, codec: str, log: Path, extra: tuple[str, ...] = ()
) -> Iterator[Path]:
    """A background `zswapfs mount` of *pool*/*codec* (and *extra* options); yields the image
    path. Always unmounted (`zswapfs umount`, else fusermount3 -u -z, and the daemon is stopped
    if it lingers)."""
    pid: int | None = None
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "zswapfs",
                "mount",
                str(mountpoint),
                "--size",
                str(size),
                "--pool",
                pool,
                "--codec",
                codec,
                "--log",
                str(log),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=MOUNT_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            raise BenchError(f"mount {pool}/{codec}: {res.stderr.strip()}{_log_tail(log)}")
        pid = int(read_mount_stats(mountpoint)["pid"])
        yield mountpoint / "swap.img"
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(
                [sys.executable, "-m", "zswapfs", "umount", str(mountpoint)],
                capture_output=True,
                timeout=MOUNT_TIMEOUT,
            )
        _force_unmount(mountpoint)
        if pid is not None and not _wait_gone(pid, 30):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if "Traceback" in _log_tail(log):
        raise BenchError(f"the {pool}/{codec} daemon logged a traceback:{_log_tail(log)}")


@contextlib.contextmanager
def null_mounted(mountpoint: Path, size: int, log: Path) -> Iterator[Path]:
    """The null-FUSE baseline (python -m zswapfs.lab.nullfs) mounted; yields the image path."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zswapfs.lab.nullfs", str(mountpoint), "--size", str(size)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
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


def fio_iops(
    target: Path, rw: str, bs: str, qd: int, runtime: float, workdir: Path, size: str = "256M"
) -> float:
    """IOPS of one time-bounded fio job on *target*: O_DIRECT, libaio at queue depth *qd*,
    fio's 50%-compressible buffers, over the first *size* bytes (the benches' common job)."""
    out = workdir / "fio.json"
    cmd = [
        "fio",
        "--name=job",
        f"--filename={target}",
        f"--size={size}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--iodepth={qd}",
        "--ioengine=libaio",
        "--direct=1",
        "--time_based",
        f"--runtime={runtime}",
        "--buffer_compress_percentage=50",
        "--refill_buffers",
        "--output-format=json",
        f"--output={out}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, cwd=workdir, timeout=runtime * 5 + 120)
    return float(parse_fio(json.loads(out.read_text()), rw)["iops"])


def run_fio_job(image: Path, job: str, opts: FioOptions, workdir: Path) -> dict[str, Any]:
    """Run zswapfs/lab/fio/JOB.fio on *image*; its files (JSON, verify state) stay in *workdir*."""
    out = workdir / f"{job}.json"
    size = opts.size if job in TIMED_JOBS else opts.verify_size
    env = {**os.environ, "FIO_RUNTIME": f"{round(opts.runtime * 1000)}ms"}
    cmd = [
        "fio",
        f"--filename={image}",
        f"--size={size}",
        "--output-format=json",
        f"--output={out}",
        str(opts.jobs_dir / f"{job}.fio"),
    ]
    try:
        res = subprocess.run(
            cmd,
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=opts.runtime * 4 + 600,
        )
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
            progress(
                f"fio {pool} {codec} {job}: {row['iops']:.0f} IOPS,"
                f" {row['bw_bytes'] / 2**20:.1f} MiB/s, p99 {p99:.0f} us"
            )
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
    tmp = Path(tempfile.mkdtemp(prefix="zswapfs-fio-", dir="/tmp"))
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
