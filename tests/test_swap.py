"""Real swap: swapon/swapoff, a memory-limited workload that must swap, units, config errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import mount_unavailable, zswapfs_cmd
from zswapfs.lab import cgroup

REPO = Path(__file__).parent.parent


def swap_unavailable() -> str | None:
    why = mount_unavailable()
    if why:
        return why
    for tool in ("losetup", "mkswap", "swapon", "swapoff"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control missing)"
    return cgroup.unavailable()


needs_swap = pytest.mark.skipif(swap_unavailable() is not None, reason=str(swap_unavailable()))


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(zswapfs_cmd(*args), capture_output=True, text=True, timeout=timeout)


def loops_on(image: Path) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
    return [line.split(":")[0] for line in out.splitlines() if line.strip()]


@pytest.fixture
def swap_config(tmp_path: Path) -> Iterator[Path]:
    """A swap0.toml for a 1 GiB image on tmp_path/mnt; whatever the test does, swap is off,
    the loop device detached and the daemon unmounted afterwards."""
    config = tmp_path / "swap0.toml"
    mp = tmp_path / "mnt"
    config.write_text(f'size = "1G"\ncodec = "lz4"\nmountpoint = "{mp}"\nswap-priority = 100\n')
    yield config
    run("swapoff", "--config", str(config))
    image = mp / "swap.img"
    if os.path.ismount(mp):
        for dev in loops_on(image):
            subprocess.run(["swapoff", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


@pytest.mark.system
@needs_swap
def test_swap_end_to_end(swap_config: Path, tmp_path: Path) -> None:
    """A 128 MiB memory cgroup runs a program that fills 512 MiB with checksummed, partly
    compressible pages and verifies them all: it can only pass by swapping through zswapfs."""
    res = run("swapon", "--config", str(swap_config))
    assert res.returncode == 0, res.stderr
    mp = tmp_path / "mnt"
    devices = loops_on(mp / "swap.img")
    assert len(devices) == 1
    entry = [line.split() for line in Path("/proc/swaps").read_text().splitlines()[1:]]
    assert [devices[0], "100"] in [[e[0], e[-1]] for e in entry]
    before = json.loads((mp / "stats").read_text())
    with cgroup.memory_cgroup(f"zswapfs-test-{os.getpid()}", 128 << 20) as cg:
        hog = cg.popen([sys.executable, "-m", "zswapfs.lab.workloads.hog", "512"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            out, err = hog.communicate(timeout=400)
        finally:
            if hog.poll() is None:
                hog.kill()
                hog.wait()
    assert hog.returncode == 0, (out, err)
    report = json.loads(out)
    assert report["bad_pages"] == 0 and report["pages"] == 131072
    after = json.loads((mp / "stats").read_text())
    stored = after["stored_pages"] - before["stored_pages"]
    assert stored > 50_000, after  # at least ~200 MiB went through the daemon
    assert after["orig_data_size"] > 1.5 * after["mem_used_total"]
    assert after["failed_reads"] == after["failed_writes"] == 0
    res = run("swapoff", "--config", str(swap_config))
    assert res.returncode == 0, res.stderr
    assert not loops_on(mp / "swap.img") and not os.path.ismount(mp)
    assert devices[0] not in Path("/proc/swaps").read_text()


@pytest.mark.system
@needs_swap
def test_swapon_twice_and_keep_mount(swap_config: Path, tmp_path: Path) -> None:
    assert run("swapon", "--config", str(swap_config)).returncode == 0
    again = run("swapon", "--config", str(swap_config))
    assert again.returncode == 0 and len(loops_on(tmp_path / "mnt" / "swap.img")) == 1
    res = run("swapoff", "--keep-mount", "--config", str(swap_config))
    assert res.returncode == 0, res.stderr
    assert os.path.ismount(tmp_path / "mnt") and not loops_on(tmp_path / "mnt" / "swap.img")


@pytest.mark.unit
@pytest.mark.parametrize(
    "body, message",
    [
        ('size = "1G"\nfrobnicate = 1\n', "unknown key 'frobnicate'"),
        ('size = "lots"\n', "size"),
        ('codec = "gzip"\n', "unknown codec"),
        ("swap-priority = 99999\n", "swap-priority"),
        ('mode = "image"\n', "backing"),
        ("mem-limit = true\n", "mem-limit"),
        ("size = \n", "swap0.toml"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    config = tmp_path / "swap0.toml"
    config.write_text(body)
    for verb in ("swapon", "mount"):
        res = run(verb, "--config", str(config), timeout=60)
        assert res.returncode == 1 and message in res.stderr, (verb, res.stderr)
        assert "Traceback" not in res.stderr


@pytest.mark.unit
def test_missing_named_config(tmp_path: Path) -> None:
    res = run("swapon", "no-such-swap-name-xyz", timeout=60)
    assert res.returncode == 1 and "/etc/zswapfs/no-such-swap-name-xyz.toml" in res.stderr


@pytest.mark.unit
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="dropping to an unprivileged user needs root and setpriv")  # fmt: skip
def test_not_root_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "swap0.toml"
    config.write_text(f'size = "64M"\nmountpoint = "{tmp_path / "mnt"}"\n')
    tmp_path.chmod(0o755)
    config.chmod(0o644)
    for verb in ("swapon", "swapoff"):
        res = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *zswapfs_cmd(verb,
             "--config", str(config))],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
        assert res.returncode == 1, res.stderr
        assert "needs root" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.unit
@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze missing (apt-get install systemd)")  # fmt: skip
def test_systemd_units_verify(tmp_path: Path) -> None:
    zswapfs = Path(sys.executable).parent / "zswapfs"
    assert zswapfs.exists()
    for unit in ("zswapfs@.service", "zswapfs-swap@.service"):
        text = (REPO / "systemd" / unit).read_text()
        assert "/usr/local/bin/zswapfs" in text
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/zswapfs", str(zswapfs)))
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "zswapfs@swap0.service",
         "zswapfs-swap@swap0.service"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "zswapfs" in line]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr
