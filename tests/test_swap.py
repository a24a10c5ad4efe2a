"""Real swap: swapon/swapoff, a memory-limited workload that must swap, units, config errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import swap_unavailable, wait_for, zswapfs_cmd
from tests.state_pages import kill_under_reclaim
from zswapfs.lab import cgroup
from zswapfs.service import swap
from zswapfs.service.config import ConfigError

REPO = Path(__file__).parent.parent
#: the highest swap priority: the kernel fills our device before any other swap on the machine,
#: instead of spreading pages round-robin over every device of equal priority
PRIORITY = 32767


needs_swap = pytest.mark.skipif(swap_unavailable() is not None, reason=str(swap_unavailable()))


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(zswapfs_cmd(*args), capture_output=True, text=True, timeout=timeout)


def loops_on(image: Path) -> list[str]:
    """Loop devices backed by *image*, read from the kernel's list (works when the mount under
    the image has died, where `losetup -j`, which stats the file, would not)."""
    out = subprocess.run(
        ["losetup", "--list", "--noheadings", "--raw", "-O", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
    ).stdout
    devices = []
    for line in out.splitlines():
        name, _, back = line.partition(" ")
        if back.startswith(str(image)):  # maybe followed by a "(deleted)" mark
            devices.append(name)
    return devices


#: seconds a hog may wait at its cgroup's limit without a swap write ending the wait
OOM_WAIT = 60.0


def hog_through(
    mps: list[Path],
    mib: int,
    limit: int = 128 << 20,
    command: list[str] | None = None,
    during: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the checksummed hog of *mib* MiB (or *command*) in a memory cgroup of *limit* bytes,
    so that it can only finish by swapping through the mounts *mps*; its report, and each
    mount's stats when its pool held most (the stats after it exits may show the pools emptied
    again by discard). *during* is called with the mounts' latest stats while it runs. The
    cgroup waits for memory instead of OOM-killing (cgroup.MemoryCgroup says why); a wait of
    OOM_WAIT seconds in a row, which no swap write in flight ended, fails the test."""
    peaks = [json.loads((mp / "stats").read_text()) for mp in mps]
    with cgroup.memory_cgroup(f"zswapfs-test-{os.getpid()}", limit, oom_killer=False) as cg:
        hog = cg.popen(
            command or [sys.executable, "-m", "zswapfs.lab.workloads.hog", str(mib)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            waiting_since = None
            while hog.poll() is None:
                latest = []
                for i, mp in enumerate(mps):
                    st = json.loads((mp / "stats").read_text())
                    latest.append(st)
                    if st["stored_pages"] > peaks[i]["stored_pages"]:
                        peaks[i] = st
                if during is not None:
                    during(latest)
                if not cg.under_oom():
                    waiting_since = None
                elif waiting_since is None:
                    waiting_since = time.monotonic()
                elif time.monotonic() - waiting_since > OOM_WAIT:
                    raise AssertionError(f"the hog waited {OOM_WAIT} s at its cgroup's limit")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    hog.wait(timeout=0.2)
            out, err = hog.communicate(timeout=280)  # inside the per-test timeout
        finally:
            if hog.poll() is None:
                hog.kill()
                hog.wait()
    assert hog.returncode == 0, (out, err)
    return json.loads(out), peaks


@pytest.fixture
def swap_config(tmp_path: Path, frontend: str) -> Iterator[Path]:
    """A swap0.toml for a 1 GiB image on tmp_path/mnt served by *frontend*; whatever the test
    does, swap is off, the loop device detached and the daemon unmounted afterwards."""
    config = tmp_path / "swap0.toml"
    mp = tmp_path / "mnt"
    config.write_text(
        f'size = "1G"\ncodec = "lz4"\nmountpoint = "{mp}"\nswap-priority = {PRIORITY}\n'
        f'frontend = "{frontend}"\n'
    )
    try:
        yield config
    finally:
        take_down(config, [mp])


def take_down(config: Path, mountpoints: list[Path]) -> None:
    """`zswapfs swapoff` the config, then undo whatever it could not: swap, loop devices and
    the mounts at *mountpoints*."""
    run("swapoff", "--config", str(config))
    for mp in mountpoints:
        for dev in loops_on(mp / "swap.img"):
            subprocess.run(["swapoff", dev], capture_output=True)
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        if os.path.ismount(mp):
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
    assert [devices[0], str(PRIORITY)] in [[e[0], e[-1]] for e in entry]
    before = json.loads((mp / "stats").read_text())
    report, [peak] = hog_through([mp], 512)
    assert report["bad_pages"] == 0 and report["pages"] == 131072
    after = json.loads((mp / "stats").read_text())
    stored = peak["stored_pages"] - before["stored_pages"]
    assert stored > 50_000, peak  # at least ~200 MiB went through the daemon
    assert peak["orig_data_size"] > 1.5 * peak["mem_used_total"]
    assert after["failed_reads"] == after["failed_writes"] == 0
    res = run("swapoff", "--config", str(swap_config))
    assert res.returncode == 0, res.stderr
    assert not loops_on(mp / "swap.img") and not os.path.ismount(mp)
    assert devices[0] not in Path("/proc/swaps").read_text()


@pytest.mark.system
@needs_swap
@pytest.mark.frontends("native")  # pyfuse3 has no FALLOCATE handler: nothing tells it
def test_a_program_that_exits_leaves_its_pages_to_discard(
    swap_config: Path, tmp_path: Path
) -> None:
    """A program swaps 384 MiB through zswapfs and exits: swap frees its slots and, swapped on
    with --discard=pages, discards the clusters they free; the loop device passes the discards
    on as FALLOCATE punch holes and the native frontend frees those pages in the pool, so the
    dead program's pages do not stay there (zram frees a slot on swap-in; without discard a
    loop-backed image would keep every one until overwritten)."""
    res = run("swapon", "--config", str(swap_config))
    assert res.returncode == 0, res.stderr
    mp = tmp_path / "mnt"
    [dev] = loops_on(mp / "swap.img")
    assert int(Path(f"/sys/block/{Path(dev).name}/queue/discard_max_bytes").read_text()) > 0, (
        "the loop device does not advertise discard (statfs or fallocate not answered)"
    )
    before = json.loads((mp / "stats").read_text())
    report, [during] = hog_through([mp], 384)
    assert report["bad_pages"] == 0

    def left() -> int:
        return int(json.loads((mp / "stats").read_text())["stored_pages"]) - before["stored_pages"]

    wait_for(lambda: left() <= 1000, "the exited program's pages discarded from the pool")
    after = json.loads((mp / "stats").read_text())
    assert after["notify_free"] > 50_000 and after["discards"] > 0, after
    assert after["failed_reads"] == after["failed_writes"] == 0
    assert during["stored_pages"] > before["stored_pages"] + 20_000, during  # it did swap


#: what the kernel logs when swap fails or a program is killed for memory
KERNEL_TROUBLE = re.compile(
    r"(read|write)-error on swap-device|I/O error|Killed process|Out of memory|oom-kill|"
    r"SIGBUS|Bad swap|swap_(read|write)page|fuse.*(abort|timeout)",
    re.IGNORECASE,
)


def kernel_log() -> list[str]:
    return subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()


@pytest.fixture(scope="module")
def real_memory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus of real memory: the heap of a Python program of dicts, captured (96 MiB)."""
    from zswapfs.lab.bench.corpus import BUILTIN
    from zswapfs.lab.capture import capture_command

    out = tmp_path_factory.mktemp("corpus") / "py_dicts.pages"
    capture_command(BUILTIN["py_dicts"](96), out)
    assert out.stat().st_size > 32 << 20
    return out


@pytest.mark.system
@needs_swap
@pytest.mark.frontends("native")  # the pyfuse3 frontend runs without a supervisor
@pytest.mark.parametrize("mode", ["swap", "image"])
def test_swap_survives_a_kill_and_a_restart_of_its_server(
    swap_config: Path, tmp_path: Path, real_memory: Path, mode: str
) -> None:
    """A program swaps 384 MiB of real memory (checksummed) through zswapfs in a 128 MiB
    cgroup; once it has swapped ~40 MiB the server is killed (-9) and a new one must serve
    within 30 s, and once ~160 MiB more went through, `zswapfs restart` replaces that one. The
    program ends with every page right and exit status 0, nothing in the kernel log says a
    swap read or write failed or a program was killed, the mount is still live. In image mode
    the backing file ends up holding the image exactly (flushed at the unmount).

    Between the kill and the takeover (the supervisor held up meanwhile) the kernel is asked to
    reclaim every page of the state (MADV_PAGEOUT), as kswapd or DAMON may: the dead server's
    keeper keeps them locked, none goes out. One that went would go to the only swap there is,
    this mount's, and the next server would hang in D state faulting it in (it did, before
    the keeper: docs/restart.md, "Between two servers")."""
    backing = tmp_path / "image.img"
    if mode == "image":
        with open(swap_config, "a") as f:
            f.write(f'mode = "image"\nbacking = "{backing}"\n')
    res = run("swapon", "--config", str(swap_config))
    assert res.returncode == 0, res.stderr
    mp = tmp_path / "mnt"
    first = json.loads((mp / "stats").read_text())
    before = len(kernel_log())
    done: dict[str, Any] = {}

    def step(latest: list[dict[str, Any]]) -> None:
        st = latest[0]
        stored = st["stored_pages"] - first["stored_pages"]
        if "killed" not in done and stored > 10_000:
            server = done["killed"] = st["pid"]
            done.update(kill_under_reclaim(server, st["supervisor_pid"], str(mp)))
        elif "killed" in done and "restarted" not in done and stored > 50_000:
            res = run("restart", str(mp))
            assert res.returncode == 0, res.stderr
            done["restarted"] = res.stdout

    command = [sys.executable, "-m", "zswapfs.lab.workloads.corpus_hog", str(real_memory), "384"]
    report, _ = hog_through([mp], 384, command=command, during=step)
    assert report["bad_pages"] == 0 and report["pages"] == 384 * 256
    assert "killed" in done and "restarted" in done, done
    assert done["between"] and done["between"][1] == 0 and "reclaim_hung" not in done, done
    assert done["asked"] >= done["between"][0] > 10_000 // 4, done
    st = json.loads((mp / "stats").read_text())
    assert st["takeovers"] == 2 and st["pid"] not in (done["killed"], done["after"])
    assert st["failed_reads"] == st["failed_writes"] == 0
    trouble = [line for line in kernel_log()[before:] if KERNEL_TROUBLE.search(line)]
    assert not trouble, trouble
    assert os.path.ismount(mp)
    if mode == "image":
        res = run("swapoff", "--keep-mount", "--config", str(swap_config))
        assert res.returncode == 0, res.stderr
        image = hashlib.sha256((mp / "swap.img").read_bytes()).hexdigest()
        res = run("umount", str(mp))
        assert res.returncode == 0, res.stderr
        assert hashlib.sha256(backing.read_bytes()).hexdigest() == image


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
    """`mount --config` through the command line (no root needed to reject a config) and
    swapon's resolution of the same file in-process (the swapon verb checks for root first)."""
    config = tmp_path / "swap0.toml"
    config.write_text(body)
    res = run("mount", "--config", str(config), timeout=60)
    assert res.returncode == 1 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    with pytest.raises(ConfigError, match=re.escape(message)):
        swap.resolve(None, str(config))


@pytest.mark.unit
def test_missing_named_config() -> None:
    with pytest.raises(ConfigError, match="/etc/zswapfs/no-such-swap-name-xyz.toml"):
        swap.resolve("no-such-swap-name-xyz", None)


UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def unprivileged_python() -> str | None:
    """An interpreter (3.11 or later) that uid 65534 can run: this test's own may live where
    that user cannot reach (a clone in a 0700 directory, /root/.pyenv)."""
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(python) or shutil.which("setpriv") is None:
            continue
        probe = subprocess.run(
            [*UNPRIVILEGED, python, "-c", "import sys; assert sys.version_info >= (3, 11)"],
            capture_output=True,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            timeout=60,
        )
        if probe.returncode == 0:
            return python
    return None


@pytest.mark.unit
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="dropping to an unprivileged user needs root and setpriv",
)
def test_not_root_is_a_clear_error() -> None:
    """swapon and swapoff as uid 65534: one line, exit status 1. The child runs a world-readable
    copy of the package, so where this checkout lives does not matter; the interpreter may lack
    every dependency, as the root check comes before any import beyond the standard library."""
    python = unprivileged_python()
    if python is None:
        pytest.skip("no Python 3.11+ interpreter that uid 65534 can run")
    copy = Path(tempfile.mkdtemp(prefix="zswapfs-unprivileged-"))
    try:
        shutil.copytree(
            REPO / "zswapfs", copy / "zswapfs", ignore=shutil.ignore_patterns("__pycache__")
        )
        for d, _, files in os.walk(copy):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        config = copy / "swap0.toml"
        config.write_text(f'size = "64M"\nmountpoint = "{copy / "mnt"}"\n')
        config.chmod(0o644)
        for verb in ("swapon", "swapoff"):
            res = subprocess.run(
                [*UNPRIVILEGED, python, "-m", "zswapfs", verb, "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(copy)},
            )
            assert res.stderr == f"zswapfs: {verb} needs root: losetup, mkswap and swapon do\n"
            assert res.returncode == 1 and res.stdout == ""
    finally:
        shutil.rmtree(copy)


@pytest.mark.unit
@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze missing (apt-get install systemd)",
)
def test_systemd_units_verify(tmp_path: Path) -> None:
    zswapfs = Path(sys.executable).parent / "zswapfs"
    assert zswapfs.exists()
    for unit in ("zswapfs@.service", "zswapfs-swap@.service"):
        text = (REPO / "systemd" / unit).read_text()
        assert "/usr/local/bin/zswapfs" in text
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/zswapfs", str(zswapfs)))
    res = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            "zswapfs@swap0.service",
            "zswapfs-swap@swap0.service",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    ours = [line for line in (res.stdout + res.stderr).splitlines() if "zswapfs" in line]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr
