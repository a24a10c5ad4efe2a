"""Shared fixtures and the test tiers.

Tiers (pytest markers, see pyproject.toml): `unit` (no mount), `mount` (a real FUSE mount),
`system` (loop devices, swap, memory cgroups, /dev/zram0). `make test` runs all three; select one
with `-m unit` etc. A test that cannot run here skips and says what is missing; with
ZSWAPFS_REQUIRE_SYSTEM=1 (set by .ci/run) every such skip fails instead, so CI cannot go green by
skipping.

Every test carries exactly one tier marker (module-wide `pytestmark` where a whole file is one
tier); collection stops with an error naming any test that has none or more than one.

No test checks how long something took: background work is waited for through events and counters
(`wait_for`, Maintenance.wait_passes) under a deadline, HANG, that only ends a hang.

Tier 3 tests start the real daemon as a subprocess on a temp mount and always
tear it down (fusermount3 -u -z, then terminate, then kill), even when the test fails."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from zswapfs.lab import cgroup
from zswapfs.lab.procs import reap

#: set by .ci/run: an environment skip is a failure
REQUIRE_SYSTEM = os.environ.get("ZSWAPFS_REQUIRE_SYSTEM") == "1"
TIERS = ("unit", "mount", "system")
#: seconds a test waits for something that should happen: long enough for a loaded one-core
#: machine, and reached only when the thing waited for is not coming
HANG = 120.0


@pytest.fixture(autouse=True)
def _remove_daemon_logs_the_test_made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Daemons started without --log (swapon, the systemd-style paths) log to the default log
    directory, one file a mountpoint; the files a test's temp mounts created there are removed
    after it (only those: files that were there before, or are not named after this run's temp
    directory, are not ours)."""
    from zswapfs.service.safepath import log_directory

    directory = log_directory()
    before = set(os.listdir(directory)) if directory.is_dir() else set()
    yield
    if not directory.is_dir():
        return
    ours = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(tmp_path_factory.getbasetemp())).strip("_")
    for name in set(os.listdir(directory)) - before:
        if name.startswith(ours) and name.endswith(".log"):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()


def pytest_sessionstart(session: pytest.Session) -> None:
    """`make sanitize` runs the suite against an instrumented copy of the compiled engine and
    says where it lies (ZSWAPFS_NATIVE_FROM): refuse to run against any other build."""
    where = os.environ.get("ZSWAPFS_NATIVE_FROM")
    if where:
        from zswapfs.engine import _native

        if where not in (_native.__file__ or ""):
            raise pytest.UsageError(f"the engine under test is {_native.__file__}, not {where}")


#: the frontends every test that mounts runs on (its `frontend` parameter); a test of what only
#: some can do says which with @pytest.mark.frontends("native")
FRONTENDS = ("native", "pyfuse3")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "frontend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("frontends")
        metafunc.parametrize("frontend", marker.args if marker else FRONTENDS)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a test without exactly one tier marker (before -m deselects any)."""
    wrong = []
    for item in items:
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"  {item.nodeid}: {', '.join(tiers) or 'no tier marker'}")
    if wrong:
        raise pytest.UsageError(
            f"every test needs exactly one tier marker ({', '.join(TIERS)}):\n" + "\n".join(wrong)
        )


def wait_for(cond: Callable[[], bool], what: str, timeout: float = HANG) -> None:
    """Poll *cond* until it holds; fail naming *what* if it has not after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SYSTEM and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"ZSWAPFS_REQUIRE_SYSTEM=1 and this test skipped: {reason}"


def mount_unavailable() -> str | None:
    """Why a real FUSE mount cannot be made here, or None if it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    if os.geteuid() != 0:
        return "not root: the mount tests use allow_other, loop devices and O_DIRECT as root"
    return None


def swap_unavailable(cgroups: bool = True) -> str | None:
    """Why swap on a loop device (and, with *cgroups*, a memory cgroup) cannot be used here."""
    why = mount_unavailable()
    if why:
        return why
    for tool in ("losetup", "mkswap", "swapon", "swapoff"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control missing)"
    return cgroup.unavailable() if cgroups else None


#: hypothesis examples are scaled by this (make sanitize runs fewer under its slow instrumented
#: build: ZSWAPFS_EXAMPLES=0.2)
EXAMPLES_SCALE = float(os.environ.get("ZSWAPFS_EXAMPLES", "1"))


def examples(n: int) -> int:
    """*n* hypothesis examples, scaled by ZSWAPFS_EXAMPLES (at least 3)."""
    return max(3, round(n * EXAMPLES_SCALE))


#: the two engines the store-level tiers run on: the readable reference and the compiled one
#: that ships (a build without the compiled engine fails those tests, it does not skip them)
ENGINES = ("python", "native")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new_store(
    engine: str, npages: int, codec: Any = "lz4", pool: str = "zsmalloc", **options: Any
) -> Any:
    """A store on *engine* (make_store with a codec given by name or as an object); fails,
    never falls back, when the compiled engine is asked for and cannot be had."""
    from zswapfs.engine import native
    from zswapfs.engine.codec import make_codec

    store = native.make_store(
        engine, npages, make_codec(codec) if isinstance(codec, str) else codec, pool, **options
    )
    assert store.engine == engine, f"asked for the {engine} engine: {native.UNAVAILABLE}"
    return store


def corrupt_page(store: Any, pn: int) -> None:
    """Put an object that does not decode where page *pn*'s compressed object was (either
    engine: the compiled read loop then meets it in C)."""
    with store.lock:
        handle = store.table.item(pn)
        store.pool.free(handle)
        store.table[pn] = store.pool.store(b"\xff" * 100)


needs_mount = pytest.mark.skipif(mount_unavailable() is not None, reason=str(mount_unavailable()))
needs_fio = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")


def pool_resident(pid: int) -> int:
    """Bytes of shared memory resident in process *pid* (RssShmem): the pool's memfd pages, the
    only shared memory the daemon maps. Unlike the whole resident size it leaves out the Python
    heap, allocator caches and thread stacks, so it follows the pool and nothing else."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no RssShmem line")


@dataclass
class Mounted:
    mountpoint: Path
    proc: subprocess.Popen[bytes]
    log: Path
    name: str = "swap.img"
    expect_errors: list[str] = field(default_factory=list)

    @property
    def image(self) -> Path:
        return self.mountpoint / self.name

    def stats(self) -> dict[str, Any]:
        with open(self.mountpoint / "stats") as f:
            return dict(json.load(f))

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def server_pid(self) -> int:
        """The process that serves the mount: the supervisor's child, or (no supervisor: the
        pyfuse3 frontend, --no-supervise) the daemon itself."""
        return int(self.stats()["pid"])

    def kill_all(self) -> None:
        """A crash of everything (kill -9 of the supervisor, then of the server): what a
        machine's crash leaves, short of the kernel's own state."""
        server = self.server_pid()
        self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(server, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{server}").exists() or _zombie(server),
                 f"server {server} to die")  # fmt: skip


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def zswapfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "zswapfs", *args]


def start_daemon(mountpoint: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log.with_suffix(".stderr"), "wb") as err:
        proc = subprocess.Popen(
            zswapfs_cmd("mount", str(mountpoint), "--foreground", "--log", str(log), *args),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + HANG
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None:
            err = log.with_suffix(".stderr").read_text()
            raise RuntimeError(f"daemon exited with {proc.returncode}: {err}{log_tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"daemon did not mount within {HANG:.0f} s" + log_tail(log))
        time.sleep(0.02)
    return proc


def log_tail(log: Path) -> str:
    return "\n" + log.read_text()[-2000:] if log.exists() else ""


def stop_daemon(mountpoint: Path, proc: subprocess.Popen[bytes] | None) -> None:
    """Unmount and reap, whatever state things are in."""
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    if proc is not None:
        reap(proc, wait=10)


@pytest.fixture
def mount(tmp_path: Path, frontend: str) -> Iterator[Callable[..., Mounted]]:
    """Factory: mount(*cli_args) -> Mounted, served by the test's *frontend* (each test that
    mounts runs on every frontend, see FRONTENDS). Every daemon started is torn down afterwards,
    and a daemon log with a traceback or an unexpected ERROR line fails the test."""
    started: list[Mounted] = []

    def _mount(*args: str, name: str = "swap.img") -> Mounted:
        mp = tmp_path / f"mnt{len(started)}"
        mp.mkdir()
        log = tmp_path / f"daemon{len(started)}.log"
        args = ("--frontend", frontend, "--name", name, *args)
        m = Mounted(mp, start_daemon(mp, log, *args), log, name)
        started.append(m)
        return m

    yield _mount
    problems = []
    for m in started:
        stop_daemon(m.mountpoint, m.proc)
        text = m.log_text()
        if "Traceback" in text:
            problems.append(f"traceback in daemon log {m.log}:{log_tail(m.log)}")
        for line in text.splitlines():
            if " ERROR " in line and not any(e in line for e in m.expect_errors):
                problems.append(f"unexpected error in daemon log: {line}")
    assert not problems, "\n".join(problems)
