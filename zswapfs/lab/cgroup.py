"""A memory-limited cgroup for running a workload that must swap (tests and benchmarks).

cgroup v2 where /sys/fs/cgroup is a unified hierarchy (memory.max), else the v1 memory
controller at /sys/fs/cgroup/memory (memory.limit_in_bytes). Only the cgroup this module made is
ever removed; its processes are killed first, so rmdir always succeeds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
#: seconds remove() waits for killed processes to leave: generous, as it only ends a hang
REMOVE_WAIT = 60.0


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "making a memory cgroup needs root"
    if (ROOT / "cgroup.controllers").exists():
        if "memory" not in (ROOT / "cgroup.controllers").read_text().split():
            return "cgroup v2 without the memory controller"
        return None
    if not (ROOT / "memory" / "memory.limit_in_bytes").exists():
        return "no memory cgroup controller (v1 /sys/fs/cgroup/memory or v2)"
    return None


class MemoryCgroup:
    """*oom_killer* False (v1 only): a process at the limit waits for memory instead of being
    killed. The v1 controller kills when its reclaim has seen no progress for a few rounds,
    and with a swap device whose writes complete later than the call that issues them (any
    device served from user space, unlike zram) that happens now and then to a program that
    would have gone on (docs/swap.md): the writes in flight complete, free their pages and wake
    it. When nothing is in flight (zram) the wait never ends: a caller watches under_oom()."""

    def __init__(self, name: str, limit: int, oom_killer: bool = True) -> None:
        v2 = (ROOT / "cgroup.controllers").exists()
        self.path = (ROOT if v2 else ROOT / "memory") / name
        self.path.mkdir()
        if v2:
            (self.path / "memory.max").write_text(str(limit))
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            if not oom_killer:
                (self.path / "memory.oom_control").write_text("1")

    def popen(self, cmd: list[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start *cmd* inside the cgroup (it joins before it runs a line of its own)."""
        procs = str(self.path / "cgroup.procs")
        return subprocess.Popen(
            cmd, preexec_fn=lambda: Path(procs).write_text("0"), text=True, **kwargs
        )  # type: ignore[call-overload]

    def under_oom(self) -> bool:
        """Is a process of the cgroup waiting at its limit (v1, the OOM killer off)?"""
        control = self.path / "memory.oom_control"
        return control.exists() and "under_oom 1" in control.read_text()

    def stat(self, key: str) -> int:
        for name in ("memory.stat",):
            for line in (self.path / name).read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
        return 0

    def remove(self) -> None:
        """Kill what runs in the cgroup and remove it. A killed process can take a while to go
        (one swapping in from a slow device exits only when that read completes), so this waits
        up to REMOVE_WAIT seconds for the cgroup to empty before rmdir."""
        deadline = time.monotonic() + REMOVE_WAIT
        while time.monotonic() < deadline:
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self.path.rmdir()


@contextlib.contextmanager
def memory_cgroup(name: str, limit: int, oom_killer: bool = True) -> Iterator[MemoryCgroup]:
    cg = MemoryCgroup(name, limit, oom_killer)
    try:
        yield cg
    finally:
        cg.remove()
