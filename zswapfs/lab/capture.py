"""Capture a real process's private anonymous memory as a page corpus.

A corpus is a plain file of 4 KiB pages, one after another: `dd` can write it to /dev/zram0 and
`zswapfs bench` can replay it. Pages are taken from the process's private anonymous mappings
(the heap, anonymous mmaps, the stack) and only where /proc/PID/pagemap says they are in memory
or in swap: pages never touched are not memory the kernel would ever swap.

The process is stopped (SIGSTOP) while its memory is read and continued afterwards, so the
snapshot is consistent; reading /proc/PID/mem needs ptrace rights over it (root, or its owner
with ptrace_scope 0).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.lab.procs import reap

log = logging.getLogger(__name__)

#: pagemap bits: page present in RAM, page in swap
_PRESENT = np.uint64(1 << 63)
_SWAPPED = np.uint64(1 << 62)
#: special mappings that are not the process's data
_SKIP = ("[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]", "[uprobes]")


class CaptureError(Exception):
    pass


@dataclass
class CaptureResult:
    pid: int
    regions: int
    pages: int


def anon_regions(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, name) of the readable private anonymous mappings of *pid*."""
    regions = []
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                addrs, perms, inode = parts[0], parts[1], parts[4]
                name = parts[5].strip() if len(parts) > 5 else ""
                if perms[0] != "r" or perms[3] != "p" or inode != "0":
                    continue
                if name in _SKIP or (name and not name.startswith("[")):
                    continue
                start, end = (int(a, 16) for a in addrs.split("-"))
                regions.append((start, end, name or "[anon]"))
    except FileNotFoundError:
        raise CaptureError(f"no process {pid}") from None
    except PermissionError:
        raise CaptureError(f"no permission to read the memory map of process {pid}") from None
    return regions


def _copy_region(
    pid: int, start: int, end: int, pagemap: BinaryIO, mem: BinaryIO, out: BinaryIO
) -> int:
    npages = (end - start) // PAGE_SIZE
    pagemap.seek(start // PAGE_SIZE * 8)
    entries = np.frombuffer(pagemap.read(npages * 8), dtype=np.uint64)
    resident = (entries & (_PRESENT | _SWAPPED)) != 0
    if not resident.any():
        return 0
    # runs of resident pages: read each run in one call
    edges = np.flatnonzero(np.diff(np.concatenate(([0], resident.view(np.int8), [0]))))
    copied = 0
    for first, last in zip(edges[::2], edges[1::2], strict=True):
        addr = start + int(first) * PAGE_SIZE
        try:
            mem.seek(addr)
            data = mem.read((int(last) - int(first)) * PAGE_SIZE)
        except OSError as exc:  # a mapping that went away or cannot be read: skip it
            log.debug("process %d: skipped %#x: %s", pid, addr, exc)
            continue
        out.write(data)
        copied += len(data) // PAGE_SIZE
    return copied


def capture_pid(pid: int, out: BinaryIO, stop: bool = True) -> CaptureResult:
    """Append the resident private anonymous pages of *pid* to *out*."""
    regions = anon_regions(pid)
    if stop:
        os.kill(pid, signal.SIGSTOP)
    try:
        with open(f"/proc/{pid}/pagemap", "rb") as pagemap, open(f"/proc/{pid}/mem", "rb") as mem:
            pages = sum(_copy_region(pid, s, e, pagemap, mem, out) for s, e, _ in regions)
    except PermissionError:
        raise CaptureError(f"no permission to read the memory of process {pid}") from None
    finally:
        if stop:
            os.kill(pid, signal.SIGCONT)
    return CaptureResult(pid, len(regions), pages)


def capture_command(
    command: list[str], out_path: Path, delay: float | None = None, timeout: float = 600
) -> CaptureResult:
    """Run *command* and snapshot it when this process gets SIGUSR1 (the command can send it
    to its parent) or, if *delay* is given, after *delay* seconds at the latest; then end it."""
    got = threading.Event()
    old = signal.signal(signal.SIGUSR1, lambda *_: got.set())
    try:
        proc = subprocess.Popen(command)
    except OSError as exc:
        raise CaptureError(f"cannot start {command[0]}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + (delay if delay is not None else timeout)
        while time.monotonic() < deadline and not got.is_set():
            if proc.poll() is not None:
                raise CaptureError(
                    f"{command[0]} exited with {proc.returncode} before the snapshot"
                )
            got.wait(0.05)
        if delay is None and not got.is_set():
            raise CaptureError(f"{command[0]} sent no SIGUSR1 within {timeout:.0f} s")
        with open(out_path, "wb") as out:
            return capture_pid(proc.pid, out)
    finally:
        signal.signal(signal.SIGUSR1, old)
        reap(proc, grace=10)
