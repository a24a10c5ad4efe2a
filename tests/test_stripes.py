"""Striped swap: N images, each its own daemon, swapped on at one priority."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_swap import hog_through, loops_on, needs_swap, run, take_down

STRIPES = 2


@pytest.fixture
def striped_config(tmp_path: Path, frontend: str) -> Iterator[Path]:
    """A 512 MiB swap in two stripes on tmp_path/mnt-0 and tmp_path/mnt-1 served by *frontend*;
    whatever the test does, every stripe is swapped off, detached and unmounted afterwards."""
    config = tmp_path / "striped.toml"
    mp = tmp_path / "mnt"
    config.write_text(
        f'size = "512M"\nmountpoint = "{mp}"\nstripes = {STRIPES}\nswap-priority = 32767\n'
        f'frontend = "{frontend}"\n'
    )
    try:
        yield config
    finally:
        take_down(config, [Path(f"{mp}-{i}") for i in range(STRIPES)])


@pytest.mark.system
@needs_swap
def test_striped_swap_spreads_pages_over_every_stripe(striped_config: Path, tmp_path: Path) -> None:
    res = run("swapon", "--config", str(striped_config))
    assert res.returncode == 0, res.stderr
    stripes = [Path(f"{tmp_path / 'mnt'}-{i}") for i in range(STRIPES)]
    devices = [loops_on(s / "swap.img") for s in stripes]
    assert all(len(d) == 1 for d in devices), devices
    swaps = {
        e[0]: e for e in (ln.split() for ln in Path("/proc/swaps").read_text().splitlines()[1:])
    }
    for (dev,) in devices:
        assert swaps[dev][-1] == "32767"  # one priority: the kernel stripes across them
        assert int(swaps[dev][2]) < 300 * 1024  # each stripe is half the size (KiB)
    report, peaks = hog_through(stripes, 256, 96 << 20)
    assert report["bad_pages"] == 0
    stored = [st["stored_pages"] for st in peaks]  # at the peak: discard empties them after
    assert all(n > 5_000 for n in stored), stored  # every daemon took its share
    res = run("swapoff", "--config", str(striped_config))
    assert res.returncode == 0, res.stderr
    for s, (dev,) in zip(stripes, devices, strict=True):
        assert not os.path.ismount(s) and not loops_on(s / "swap.img")
        assert dev not in Path("/proc/swaps").read_text()


@pytest.mark.unit
def test_mount_refuses_a_striped_config(tmp_path: Path) -> None:
    config = tmp_path / "striped.toml"
    config.write_text(f'size = "64M"\nstripes = 2\nmountpoint = "{tmp_path / "mnt"}"\n')
    res = run("mount", "--config", str(config))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "zswapfs: stripes: a swap of 2 stripes is set up by `zswapfs swapon`, which mounts each"
        " stripe itself"
    ]


@pytest.mark.unit
@pytest.mark.parametrize("stripes", ["0", "17", "'two'"])
def test_bad_stripes_are_one_line(tmp_path: Path, stripes: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'size = "64M"\nstripes = {stripes}\nmountpoint = "{tmp_path / "mnt"}"\n')
    res = run("mount", "--config", str(config))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "stripes" in res.stderr
