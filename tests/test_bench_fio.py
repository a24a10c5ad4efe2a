"""`zswapfs bench` beyond the in-process replay: fio through real mounts, the null-FUSE baseline,
memory timelines and PNG plots. The mounted tests are short (fio jobs of half a second)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import needs_fio, needs_mount, zswapfs_cmd
from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.engine.pools import POOL_NAMES
from zswapfs.lab import bench

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def bench_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if "/zswapfs-fio-" in line.split()[1]]


def fio_report(iops: float, p99_ns: int, io_bytes: int) -> dict[str, Any]:
    side = {
        "iops": iops,
        "bw_bytes": int(iops * 4096),
        "io_bytes": io_bytes,
        "clat_ns": {"mean": p99_ns / 2, "percentile": {"99.000000": p99_ns}},
    }
    idle = {"iops": 0.0, "bw_bytes": 0, "io_bytes": 0, "clat_ns": {"mean": 0.0}}
    return {"jobs": [{"error": 0, "job_runtime": 2000, "read": side, "write": idle}]}


@pytest.mark.unit
def test_parse_fio_report() -> None:
    row = bench.parse_fio(fio_report(1500.0, 250_000, 4096 * 3000), "randrw-4k")
    assert row["iops"] == 1500.0 and row["read_iops"] == 1500.0 and row["write_iops"] == 0.0
    assert row["read_p99_us"] == 250.0 and row["write_p99_us"] is None
    assert row["bw_bytes"] == 1500 * 4096 and row["runtime_s"] == 2.0
    failed = fio_report(1.0, 1, 1)
    failed["jobs"][0]["error"] = 5
    with pytest.raises(bench.BenchError, match="error 5"):
        bench.parse_fio(failed, "x")


@pytest.mark.unit
def test_fio_options_checks(tmp_path: Path) -> None:
    assert "not found" in str(bench.FioOptions(jobs_dir=tmp_path).unavailable())
    assert "0.1 s" in str(bench.FioOptions(runtime=0).unavailable())
    assert "multiples" in str(bench.FioOptions(size=(1 << 20) + 1).unavailable())
    for job in bench.FIO_JOBS:
        assert (bench.FIO_DIR / f"{job}.fio").is_file()


@pytest.mark.unit
def test_bad_configurations_are_refused_up_front() -> None:
    with pytest.raises(bench.BenchError, match="unknown pool"):
        bench.run(["synthetic:10"], ["slab"], ["lz4"], with_zram=False)
    with pytest.raises(bench.BenchError, match="unknown codec"):
        bench.run(["synthetic:10"], ["zbud"], ["gzip"], with_zram=False)


@pytest.mark.unit
def test_memory_timeline_fill_free_compact() -> None:
    corpus = bench.Corpus("s", bench.synthetic_corpus(1200), "synthetic:1200")
    for pool in POOL_NAMES:
        t = bench.memory_timeline(corpus, pool, "lz4", samples=50)
        assert t["freed_pages"] == 600
        assert list(t["phases"]) == ["fill", "free", "compact"]
        fill, free, compact = t["phases"].values()
        assert fill[0] <= fill[1] <= free[1] <= compact[1] == t["seconds"][-1]
        assert t["seconds"] == sorted(t["seconds"])
        assert len(t["seconds"]) == len(t["mem_used"]) == len(t["compr_data_size"]) <= 220
        assert t["mem_used"][0] == 0 and t["mem_after_fill"] == max(t["mem_used"])
        # freeing half the pages never grows the pool; compaction never grows it either, and
        # after it the pool holds no more than the whole corpus did
        assert t["mem_after_compact"] <= t["mem_after_free"] <= t["mem_after_fill"]
        assert t["mem_after_compact"] < t["mem_after_fill"], pool
        # memory is never below the compressed bytes it holds
        assert all(m >= c for m, c in zip(t["mem_used"], t["compr_data_size"], strict=True))


@pytest.mark.unit
def test_plots_without_fio(tmp_path: Path) -> None:
    run = bench.run(["synthetic:400"], ["zbud", "zsmalloc"], ["lz4", "zstd:1"], with_zram=False)
    paths = bench.write_plots(run, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == [
        "density-settling.png",
        "density.png",
        "memory-synthetic400.png",
        "throughput.png",
    ]
    for r in run.rows:  # the background recompression settled every replay
        assert r["recompressed_pages"] > 0, r
        if (r["pool"], r["codec"]) == ("zsmalloc", "lz4"):  # size classes turn smaller
            assert r["settled_density"] > r["density"], r  # objects into less memory
        assert r["settle_timeline"][-1][1] == pytest.approx(r["settled_density"], abs=1e-3)
    for p in paths:
        w, h = png_size(p)
        assert 300 <= w <= 800 and 200 <= h <= 600, (p, w, h)
        assert p.stat().st_size < 200_000


@pytest.mark.mount
@needs_mount
def test_mount_is_released_when_the_body_fails(tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    pid = 0
    with pytest.raises(RuntimeError, match="boom"):
        with bench.fio.zswapfs_mounted(mp, 8 << 20, "z3fold", "lz4", tmp_path / "d.log") as image:
            assert image == mp / "swap.img" and os.path.ismount(mp)
            pid = bench.fio.read_mount_stats(mp)["pid"]
            raise RuntimeError("boom")
    assert not os.path.ismount(mp)
    assert pid, "the body never ran"
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid), "the daemon outlived its mount"
    with pytest.raises(bench.BenchError, match="unknown codec"):
        with bench.fio.zswapfs_mounted(mp, 8 << 20, "zbud", "gzip", tmp_path / "e.log"):
            pass
    assert not os.path.ismount(mp)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.mount
@needs_mount
def test_null_fuse_drops_writes_and_reads_zeros(tmp_path: Path) -> None:
    mp = tmp_path / "null"
    mp.mkdir()
    with bench.fio.null_mounted(mp, 4 << 20, tmp_path / "null.log") as image:
        assert os.path.getsize(image) == 4 << 20
        fd = os.open(image, os.O_RDWR)
        try:
            assert os.pwrite(fd, b"x" * PAGE_SIZE, PAGE_SIZE) == PAGE_SIZE
            assert os.pread(fd, PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
        finally:
            os.close(fd)
    assert not os.path.ismount(mp)


@pytest.mark.mount
@needs_mount
@needs_fio
def test_bench_end_to_end_with_fio(tmp_path: Path) -> None:
    """The CLI run the docs describe, small: two corpora (a compressible mix and random pages),
    every pool x two codecs in-process and through a mount, the null-FUSE row, JSON, table and
    PNG plots; no mount left behind."""
    rand = tmp_path / "random.pages"
    rand.write_bytes(os.urandom(200 * PAGE_SIZE))
    out = tmp_path / "out"
    codecs = ["lz4", "zstd:1"]
    res = subprocess.run(
        zswapfs_cmd(
            "bench",
            "--pools",
            ",".join(POOL_NAMES),
            "--codecs",
            ",".join(codecs),
            "--corpus",
            "synthetic:600",
            "--corpus",
            str(rand),
            "--no-zram",
            "--churn",
            "0",
            "--fio",
            "--verbose",
            "--fio-runtime",
            "0.5",
            "--fio-size",
            "8M",
            "--fio-verify-size",
            "4M",
            "--out",
            str(out),
        ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    assert not bench_mounts(), "the bench left a mount behind"
    assert "fio null-fuse start randrw-4k" in res.stderr  # progress lines
    doc = json.loads((out / "bench.json").read_text())
    assert doc["settings"]["fio"]["runtime_s"] == 0.5
    assert {"kernel", "cpus", "memory", "fio", "loadavg_start", "loadavg_end"} <= set(
        doc["machine"]
    )

    rows = {(r["corpus"], r["pool"], r["codec"]): r for r in doc["rows"]}
    assert set(rows) == {
        (c, p, k) for c in ("synthetic600", "random") for p in POOL_NAMES for k in codecs
    }
    for (corpus, _, _), r in rows.items():
        if corpus == "random":
            assert r["pool_density"] == pytest.approx(1.0), r
            assert r["huge_pages"] == 200
        else:
            assert r["density"] > 1.0, r
        assert r["store_pages_per_s"] > 0 and r["load_pages_per_s"] > 0

    lines = {(t["corpus"], t["pool"]) for t in doc["timelines"]}
    assert lines == {(c, p) for c in ("synthetic600", "random") for p in POOL_NAMES}

    fio = {(r["pool"], r["codec"], r["job"]): r for r in doc["fio"]}
    want = {(p, c, j) for p in POOL_NAMES for c in codecs for j in bench.FIO_JOBS}
    want |= {
        (bench.fio.NULL_FUSE, when, j) for when in ("start", "end") for j in bench.fio.TIMED_JOBS
    }
    assert set(fio) == want
    for (_, _, job), r in fio.items():
        assert r["iops"] > 0 and r["bw_bytes"] > 0, r
        assert r["write_p99_us"] and r["write_p99_us"] > 0, r
        if job == "randrw-4k":
            assert r["read_iops"] > 0 and r["read_p99_us"] > 0
        if job in bench.fio.TIMED_JOBS:
            assert r["vs_null"] > 0, r
    for job in bench.fio.TIMED_JOBS:
        null = doc["fio_null"][job]
        assert null["mean_iops"] == pytest.approx((null["start_iops"] + null["end_iops"]) / 2)
        drift = (null["end_iops"] - null["start_iops"]) / null["mean_iops"]
        assert null["drift"] == pytest.approx(drift)
        row = fio[("zbud", "lz4", job)]
        assert row["vs_null"] == pytest.approx(row["iops"] / null["mean_iops"])
    mounts = {(m["pool"], m["codec"]): m for m in doc["fio_mounts"]}
    assert set(mounts) == {(p, c) for p in POOL_NAMES for c in codecs}
    for m in mounts.values():
        assert m["orig_data_size"] > 0 and m["failed_reads"] == m["failed_writes"] == 0

    table = (out / "bench.txt").read_text()
    assert "null-fuse" in table and "verify-randrw" in table and "fill" in table
    pngs = [
        "density.png",
        "throughput.png",
        "fio.png",
        "memory-synthetic600.png",
        "memory-random.png",
    ]
    for name in pngs:
        w, h = png_size(out / name)
        assert w > 300 and h > 200
