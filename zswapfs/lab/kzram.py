"""Kernel zram as a yardstick: configure /dev/zram0, write pages to it, read mm_stat, restore.

Only a zram device that is not in use (disksize 0) is touched, and it is always reset and given
back its previous compression algorithm, even when a measurement fails.

Two zswapfs runs (a bench and a test, two test runs) never share the device: `configured` holds
an exclusive flock on /run/zswapfs-DEV.lock from before it reads the device's state until after
it has reset it, and a second run waits for the first. /run is writable by root alone, so no
unprivileged process can create or hold that lock. (Not a lock on the device node itself: an
open file on /dev/zram0 makes its reset fail with EBUSY.)
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

#: zram's per-slot metadata (struct zram_table_entry: handle + flags), allocated for the disk
ZRAM_SLOT_BYTES = 16
MM_STAT = (
    "orig_data_size",
    "compr_data_size",
    "mem_used_total",
    "mem_limit",
    "mem_used_max",
    "same_pages",
    "pages_compacted",
    "huge_pages",
    "huge_pages_since",
)


class ZramUnavailable(Exception):
    pass


def _sys(dev: str) -> Path:
    return Path("/sys/block") / dev


def lock_path(dev: str = "zram0") -> Path:
    return Path("/run") / f"zswapfs-{dev}.lock"


@contextlib.contextmanager
def _locked(dev: str, wait: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock on *dev* for the block; yields False (holding nothing) when
    *wait* is off and another run holds it."""
    fd = os.open(lock_path(dev), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        got = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            got = False
        yield got
    finally:
        os.close(fd)  # releases the lock


def _in_use(base: Path) -> bool:
    return (base / "disksize").read_text().strip() != "0"


def unavailable(dev: str = "zram0") -> str | None:
    """Why *dev* cannot be used for a measurement, or None. A device another zswapfs run holds
    is available: `configured` waits for that run to reset it."""
    base = _sys(dev)
    if not base.exists():
        return f"/dev/{dev} does not exist (modprobe zram)"
    if os.geteuid() != 0:
        return "configuring zram needs root"
    with _locked(dev, wait=False) as ours:
        if ours and _in_use(base):
            return f"/dev/{dev} is in use (disksize is not 0): not ours to reset"
    return None


def _current_algorithm(base: Path) -> str:
    text = (base / "comp_algorithm").read_text()
    return next((w[1:-1] for w in text.split() if w.startswith("[")), text.split()[0])


@contextlib.contextmanager
def configured(disksize: int, algorithm: str = "lz4", dev: str = "zram0") -> Iterator[Path]:
    """/dev/DEV set up with *algorithm* and *disksize*, reset and restored on exit; the
    device's lock is held throughout (waiting for another zswapfs run to finish with it)."""
    why = unavailable(dev)
    if why:
        raise ZramUnavailable(why)
    base = _sys(dev)
    with _locked(dev):
        if _in_use(base):  # checked again under the lock: someone outside zswapfs took it
            raise ZramUnavailable(f"/dev/{dev} is in use (disksize is not 0): not ours to reset")
        previous = _current_algorithm(base)
        try:
            (base / "comp_algorithm").write_text(algorithm)
            (base / "disksize").write_text(str(disksize))
            yield Path("/dev") / dev
        finally:
            (base / "reset").write_text("1")
            with contextlib.suppress(OSError):
                (base / "comp_algorithm").write_text(previous)


def mm_stat(dev: str = "zram0") -> dict[str, int]:
    values = (_sys(dev) / "mm_stat").read_text().split()
    return {k: int(v) for k, v in zip(MM_STAT, values, strict=False)}


def write_pages(device: Path, data: bytes, chunk: int = 1 << 20) -> None:
    """Write *data* to the start of *device* with O_DIRECT (no page-cache copy)."""
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT wants
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        for off in range(0, len(data), chunk):
            piece = data[off : off + chunk]
            buf[: len(piece)] = piece
            view = memoryview(buf)[: len(piece)]
            os.pwrite(fd, view, off)
            view.release()
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


def measure(data: bytes, algorithm: str = "lz4") -> dict[str, int]:
    """mm_stat of zram after *data* (whole pages) is written to a fresh zram0."""
    disksize = max(len(data), 1 << 20)
    with configured(disksize, algorithm) as device:
        write_pages(device, data)
        stats = mm_stat()
    stats["disksize"] = disksize
    stats["metadata_bytes"] = disksize // 4096 * ZRAM_SLOT_BYTES
    return stats
