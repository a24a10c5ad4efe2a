"""Kernel zram as a yardstick: configure /dev/zram0, write pages to it, read mm_stat, restore.

Only a zram device that is not in use (disksize 0) is touched, and it is always reset and given
back its previous compression algorithm, even when a measurement fails.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

#: zram's per-slot metadata (struct zram_table_entry: handle + flags), allocated for the disk
ZRAM_SLOT_BYTES = 16
MM_STAT = ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit", "mem_used_max",
           "same_pages", "pages_compacted", "huge_pages", "huge_pages_since")  # fmt: skip


class ZramUnavailable(Exception):
    pass


def _sys(dev: str) -> Path:
    return Path("/sys/block") / dev


def unavailable(dev: str = "zram0") -> str | None:
    """Why *dev* cannot be used for a measurement, or None."""
    base = _sys(dev)
    if not base.exists():
        return f"/dev/{dev} does not exist (modprobe zram)"
    if os.geteuid() != 0:
        return "configuring zram needs root"
    if (base / "disksize").read_text().strip() != "0":
        return f"/dev/{dev} is in use (disksize is not 0): not ours to reset"
    return None


def _current_algorithm(base: Path) -> str:
    text = (base / "comp_algorithm").read_text()
    return next((w[1:-1] for w in text.split() if w.startswith("[")), text.split()[0])


@contextlib.contextmanager
def configured(disksize: int, algorithm: str = "lz4", dev: str = "zram0") -> Iterator[Path]:
    """/dev/DEV set up with *algorithm* and *disksize*, reset and restored on exit."""
    why = unavailable(dev)
    if why:
        raise ZramUnavailable(why)
    base = _sys(dev)
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
