"""Tier 3: the real daemon as a subprocess on a temp mount."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import HANG, Mounted, needs_fio, needs_mount, stop_daemon, zswapfs_cmd
from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.lab.bench.fio import FIO_DIR
from zswapfs.lab.procs import process_alive

SIZE = 64 << 20


@pytest.mark.mount
@needs_mount
def test_round_trip_unaligned(mount: Callable[..., Mounted]) -> None:
    m = mount("--size", str(SIZE))
    rnd = random.Random(11)
    model = bytearray(SIZE)
    fd = os.open(m.image, os.O_RDWR)
    try:
        for i in range(300):
            off = rnd.randrange(SIZE - 300_000)
            n = rnd.randint(1, 300_000)
            if i % 3 == 0:
                data = rnd.randbytes(n)
            elif i % 3 == 1:
                data = (b"compressible %d " % i * (n // 10 + 1))[:n]
            else:
                data = bytes(n)
            assert os.pwrite(fd, data, off) == n
            model[off : off + n] = data
        for _ in range(100):
            off = rnd.randrange(SIZE)
            n = rnd.randint(1, 200_000)
            assert os.pread(fd, n, off) == bytes(model[off : off + n])
        assert os.pread(fd, SIZE, 0) == bytes(model)
    finally:
        os.close(fd)
    st = m.stats()
    assert st["orig_data_size"] >= st["compr_data_size"]
    assert st["failed_reads"] == st["failed_writes"] == 0


@pytest.mark.mount
@needs_mount
def test_stats_match_what_was_written(mount: Callable[..., Mounted]) -> None:
    m = mount("--size", str(SIZE))
    rnd = random.Random(2)
    fd = os.open(m.image, os.O_RDWR)
    try:
        for pn in range(0, 1000, 2):  # 500 pages: 100 zero, 100 random, 300 text-like
            if pn < 200:
                page = bytes(PAGE_SIZE)
            elif pn < 400:
                page = rnd.randbytes(PAGE_SIZE)
            else:
                page = (b"page %d of a test " % pn * 300)[:PAGE_SIZE]
            os.pwrite(fd, page, pn * PAGE_SIZE)
    finally:
        os.close(fd)
    st = m.stats()
    assert st["stored_pages"] == 500
    assert st["same_pages"] == 100
    assert st["huge_pages"] == 100
    assert st["orig_data_size"] == 500 * PAGE_SIZE
    assert st["orig_data_size"] > st["compr_data_size"]
    assert st["mem_used_total"] < st["orig_data_size"] * 0.5
    assert st["codec"] == "lz4" and st["pool"] == "zsmalloc"


@pytest.mark.mount
@needs_mount
def test_bad_input_gets_errno(mount: Callable[..., Mounted]) -> None:
    m = mount("--size", str(SIZE))
    mp = m.mountpoint

    def err(fn: Callable[[], object]) -> int:
        with pytest.raises(OSError) as info:
            fn()
        return info.value.errno or 0

    assert err(lambda: os.truncate(m.image, 4096)) == errno.EPERM
    assert err(lambda: os.truncate(m.image, SIZE * 2)) == errno.EPERM
    assert err(lambda: os.chmod(m.image, 0o644)) == errno.EPERM
    assert err(lambda: open(mp / "new", "w")) in (errno.EPERM, errno.EACCES)
    assert err(lambda: os.mkdir(mp / "d")) in (errno.EPERM, errno.EACCES)
    assert err(lambda: os.rename(m.image, mp / "other")) in (errno.EPERM, errno.EACCES)
    assert err(lambda: os.unlink(m.image)) in (errno.EPERM, errno.EACCES)
    assert err(lambda: open(mp / "stats", "w")) in (errno.EPERM, errno.EACCES)
    fd = os.open(m.image, os.O_RDWR)
    try:
        assert err(lambda: os.pwrite(fd, b"x" * 10, SIZE)) == errno.ENOSPC
        assert os.pwrite(fd, b"y" * 100, SIZE - 10) == 10
        assert os.pread(fd, 100, SIZE - 10) == b"y" * 10
        assert os.pread(fd, 100, SIZE + 4096) == b""
    finally:
        os.close(fd)
    with open(m.image, "r+b") as f:
        assert err(lambda: f.truncate(0)) == errno.EPERM
    assert os.stat(m.image).st_size == SIZE
    st = m.stats()
    assert st["invalid_io"] >= 1 and st["failed_writes"] == 0
    assert sorted(os.listdir(mp)) == ["control", "stats", "swap.img"]


@pytest.mark.mount
@needs_mount
@needs_fio
@pytest.mark.parametrize(
    "pool, codec", [("zsmalloc", "lz4"), ("zsmalloc", "zstd:1"), ("zbud", "lz4"), ("z3fold", "lz4")]
)
def test_fio_verify_randrw(
    mount: Callable[..., Mounted], tmp_path: Path, pool: str, codec: str
) -> None:
    m = mount("--size", str(SIZE), "--codec", codec, "--pool", pool)
    job = FIO_DIR / "verify-randrw.fio"
    out = tmp_path / "fio.json"
    res = subprocess.run(
        [
            "fio",
            f"--filename={m.image}",
            "--size=32M",
            "--output-format=json",
            f"--output={out}",
            str(job),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    job_out = json.loads(out.read_text())["jobs"][0]
    assert job_out["error"] == 0
    assert job_out["write"]["io_bytes"] > 0 and job_out["read"]["io_bytes"] > 0
    st = m.stats()
    assert st["pool"] == pool and st["codec"] == codec
    assert st["failed_reads"] == st["failed_writes"] == 0
    assert st["stored_pages"] > 0
    assert st["orig_data_size"] > st["compr_data_size"]
    assert st["pool_stats"]["objects"] == st["stored_pages"] - st["same_pages"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(zswapfs_cmd(*args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.mount
@needs_mount
def test_cli_background_mount_stats_umount(tmp_path: Path) -> None:
    mp = tmp_path / "bg"
    mp.mkdir()
    log = tmp_path / "bg.log"
    res = run_cli("mount", str(mp), "--size", "16M", "--codec", "zstd:3", "--log", str(log))
    try:
        assert res.returncode == 0, res.stderr
        assert os.path.ismount(mp)
        assert "losetup" in res.stdout and str(mp / "swap.img") in res.stdout
        with open(mp / "swap.img", "r+b") as f:
            f.write(b"hello " * 1000)
        st = json.loads(run_cli("stats", str(mp), "--json").stdout)
        assert st["codec"] == "zstd:3" and st["stored_pages"] == 2
        human = run_cli("stats", str(mp))
        assert human.returncode == 0 and "orig_data_size" in human.stdout
        pid = st["pid"]
        busy = run_cli("mount", str(mp))
        assert busy.returncode != 0 and "busy" in busy.stderr
        res = run_cli("umount", str(mp))
        assert res.returncode == 0, res.stderr
        assert not os.path.ismount(mp)
        assert not process_alive(pid), "umount returned before the daemon exited"
    finally:
        stop_daemon(mp, None)
    assert "Traceback" not in log.read_text()


@pytest.mark.unit
@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "12Q"], "size"),
        (["--size", "1000"], "multiple of 4096"),
        (["--size", "0"], "multiple of 4096"),
        (["--codec", "gzip"], "unknown codec"),
        (["--pool", "slab"], "unknown pool"),
    ],
)
def test_cli_mount_errors(tmp_path: Path, args: list[str], message: str) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    res = run_cli("mount", str(mp), *args)
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not os.path.ismount(mp)


@pytest.mark.unit
def test_cli_missing_mountpoint_and_not_mounted(tmp_path: Path) -> None:
    res = run_cli("mount", str(tmp_path / "nope"))
    assert res.returncode == 1 and "does not exist" in res.stderr
    for verb in ("umount", "stats"):
        res = run_cli(verb, str(tmp_path))
        assert res.returncode == 1 and "not mounted" in res.stderr


@pytest.mark.mount
@needs_mount
def test_sigterm_unmounts_cleanly(mount: Callable[..., Mounted]) -> None:
    m = mount("--size", "8M")
    m.proc.terminate()
    assert m.proc.wait(timeout=HANG) == 0
    assert not os.path.ismount(m.mountpoint)
