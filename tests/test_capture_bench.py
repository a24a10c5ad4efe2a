"""capture (real process memory) and bench (replay + zram row) end to end, on small inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import HANG, wait_for, zswapfs_cmd
from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.engine.pools import POOL_NAMES
from zswapfs.lab import bench, kzram

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory")


@pytest.mark.unit
@needs_root
def test_capture_pid_finds_the_heap(tmp_path: Path) -> None:
    marker = "ZSWAPFS-CAPTURE-MARKER"
    prog = (
        f"x = [('{marker}' + str(i)) * 20 for i in range(20000)]\n"
        "print('ready', flush=True)\nimport time\ntime.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n", "the child died before building its heap"
        out = tmp_path / "c.pages"
        res = subprocess.run(
            zswapfs_cmd("capture", "--pid", str(proc.pid), "--out", str(out)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        data = out.read_bytes()
        assert len(data) % PAGE_SIZE == 0 and len(data) >= 4 << 20
        assert marker.encode() in data
        assert proc.poll() is None, "the captured process must go on running"
    finally:
        proc.kill()
        proc.communicate()  # reaps it and closes the pipe


@pytest.mark.unit
@needs_root
def test_capture_command_on_signal(tmp_path: Path) -> None:
    out = tmp_path / "w.pages"
    res = subprocess.run(
        zswapfs_cmd(
            "capture",
            "--on-signal",
            "--out",
            str(out),
            "--",
            sys.executable,
            "-m",
            "zswapfs.lab.workloads.py_dicts",
            "8",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    data = out.read_bytes()
    assert b"item-0000" in data and len(data) >= 8 << 20


@pytest.mark.unit
def test_capture_errors(tmp_path: Path) -> None:
    res = subprocess.run(
        zswapfs_cmd("capture", "--pid", "999999999", "--out", str(tmp_path / "x")),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "no process" in res.stderr
    res = subprocess.run(
        zswapfs_cmd("capture", "--out", str(tmp_path / "x")), capture_output=True, text=True
    )
    assert res.returncode == 1 and "exactly one" in res.stderr
    res = subprocess.run(
        zswapfs_cmd("capture", "--out", str(tmp_path / "x"), "--", "false"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "exited" in res.stderr


@pytest.mark.unit
def test_bench_replay_every_configuration(tmp_path: Path) -> None:
    codecs = ["lz4", "zstd:1", "zstd:3"]
    run = bench.run(["synthetic:800"], list(POOL_NAMES), codecs, with_zram=False, churn=0.3)
    rows = {(r["pool"], r["codec"]): r for r in run.rows}
    assert set(rows) == {(p, c) for p in POOL_NAMES for c in codecs}
    for r in rows.values():
        assert r["pages"] == 800 and r["orig_data_size"] == 800 * PAGE_SIZE
        assert r["density"] > 1.0, r  # a compressible mix
        assert 0 < r["efficiency"] <= 1.0
        assert r["compacted_mem_used"] <= r["churn_mem_used"]
    # zstd:3 squeezes text better than lz4 in every pool
    for p in POOL_NAMES:
        assert rows[(p, "zstd:3")]["compr_data_size"] < rows[(p, "lz4")]["compr_data_size"]
    paths = bench.write_outputs(run, tmp_path)
    assert all(p.exists() for p in paths)


@pytest.mark.unit
def test_bench_random_pages_do_not_compress(tmp_path: Path) -> None:
    corpus = tmp_path / "random.pages"
    corpus.write_bytes(os.urandom(300 * PAGE_SIZE))
    run = bench.run([str(corpus)], list(POOL_NAMES), ["lz4"], with_zram=False, churn=0)
    for r in run.rows:
        assert r["pool_density"] == pytest.approx(1.0), r
        assert r["huge_pages"] == 300


needs_zram = pytest.mark.skipif(kzram.unavailable() is not None, reason=str(kzram.unavailable()))


@pytest.mark.system
@needs_zram
def test_zram_row_and_restore() -> None:
    base = Path("/sys/block/zram0")
    algo_before = (base / "comp_algorithm").read_text()
    data = bench.synthetic_corpus(500)
    row = bench.zram_row(bench.Corpus("s", data, "synthetic:500"))
    assert row["orig_data_size"] == 500 * PAGE_SIZE
    assert row["same_pages"] == 50 and row["density"] > 1.0
    assert (base / "disksize").read_text().strip() == "0", "zram0 must be reset"
    assert (base / "comp_algorithm").read_text() == algo_before


def flock_waiters(path: Path) -> int:
    """Processes blocked in flock on *path*, from /proc/locks ("N: -> FLOCK ... MAJ:MIN:INODE")."""
    st = path.stat()
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if " -> FLOCK " in line and where in line.split())


@pytest.mark.system
@needs_zram
def test_zram_runs_wait_for_each_other() -> None:
    """While one run holds zram0's lock, a second `configured` blocks on it and sets the device
    up only after the first has let go."""
    order: list[str] = []
    failed: list[BaseException] = []

    def second_run() -> None:
        try:
            with kzram.configured(1 << 20) as dev:
                order.append("second configured")
                assert (Path("/sys/block") / dev.name / "disksize").read_text().strip() != "0"
        except BaseException as exc:  # reported below
            failed.append(exc)

    with kzram._locked("zram0") as ours:
        assert ours, "another run holds zram0"
        second = threading.Thread(target=second_run)
        second.start()
        wait_for(
            lambda: bool(order or failed or flock_waiters(kzram.lock_path()) > 0),
            "the second run to block on the lock",
        )
        assert not order and not failed, (order, failed)
        order.append("first released")
    second.join(HANG)
    assert not second.is_alive() and not failed, failed
    assert order == ["first released", "second configured"]
    assert (Path("/sys/block/zram0/disksize")).read_text().strip() == "0", "zram0 must be reset"
