"""The installed package: wheel contents, a bench run from a fresh venv; bench progress output."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import mount_unavailable
from zswapfs.cli.lab import Progress
from zswapfs.lab import bench

REPO = Path(__file__).resolve().parent.parent


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.unit
def test_progress_bar_on_a_terminal_quiet_in_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", tty)
    progress = Progress(3, verbose=False)
    for step in ("corpus a", "a: zsmalloc lz4", "a: zsmalloc timeline"):
        progress(step)
    progress.close()
    assert "3/3" in tty.getvalue() and "a: zsmalloc" in tty.getvalue()

    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    progress = Progress(2, verbose=False)
    progress("corpus a")
    progress.close()
    assert pipe.getvalue() == ""

    progress = Progress(2, verbose=True)
    progress("corpus a")
    assert pipe.getvalue().endswith("] corpus a\n")


@pytest.mark.unit
def test_planned_steps_counts_every_progress_call() -> None:
    calls: list[str] = []
    pools, codecs = ["zsmalloc", "zbud"], ["lz4", "zstd:1"]
    bench.run(
        ["synthetic:64", "synthetic:32"],
        pools,
        codecs,
        with_zram=False,
        churn=0.0,
        progress=calls.append,
    )
    assert len(calls) == bench.planned_steps(2, pools, codecs, with_zram=False, fio=False) == 14


@pytest.mark.unit
def test_wheel_declares_the_bench_files() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '"zswapfs.lab" = ["workloads/*.js", "fio/*.fio"]' in text
    assert sorted(p.name for p in bench.FIO_DIR.glob("*.fio")) == sorted(
        f"{j}.fio" for j in bench.FIO_JOBS
    )


def install_unavailable() -> str | None:
    why = mount_unavailable()  # the bench below runs its fio jobs through real mounts
    if why:
        return why
    if shutil.which("fio") is None:
        return "fio is not installed"
    res = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    if res.returncode != 0:
        return "pip is not available in this interpreter"
    return None


@pytest.mark.system
@pytest.mark.timeout(900)
@pytest.mark.skipif(install_unavailable() is not None, reason=str(install_unavailable()))
def test_wheel_in_a_fresh_venv_runs_bench(tmp_path: Path) -> None:
    """Build the wheel, install it (dependencies from the package index) into a venv outside
    the checkout, and run a short bench with fio rows from a directory outside the checkout:
    the job files must come from the installed package."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = tmp_path / "wheels"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = wheels.glob("zswapfs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for job in bench.FIO_JOBS:
        assert f"zswapfs/lab/fio/{job}.fio" in names
    assert "zswapfs/lab/workloads/node_objects.js" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    res = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr

    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import zswapfs.lab.bench as b; print(b.FIO_DIR); print(b.FioOptions().unavailable())",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    ).stdout.split("\n")
    fio_dir = Path(where[0])
    assert fio_dir.is_relative_to(venv), f"bench found its jobs in {fio_dir}, not the venv"
    assert sorted(p.name for p in fio_dir.glob("*.fio")) == sorted(
        f"{j}.fio" for j in bench.FIO_JOBS
    )
    assert where[1] == "None"

    res = subprocess.run(
        [
            str(venv / "bin" / "zswapfs"),
            "bench",
            "--corpus",
            "synthetic:256",
            "--pools",
            "zsmalloc",
            "--codecs",
            "lz4",
            "--no-zram",
            "--no-plots",
            "--churn",
            "0.1",
            "--fio",
            "--fio-runtime",
            "0.2",
            "--fio-size",
            "4M",
            "--fio-verify-size",
            "2M",
            "--out",
            "out",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # no progress output in a pipe
    doc = json.loads((work / "out" / "bench.json").read_text())
    assert [(r["pool"], r["codec"]) for r in doc["rows"]] == [("zsmalloc", "lz4")]
    assert {r["pool"] for r in doc["fio"]} == {"zsmalloc", "null-fuse"}
    assert "zsmalloc" in res.stdout
