"""What the kernel says about zswapfs mounts: which exist, their loop devices, their swap entries.

Everything here is read from the kernel at the moment of asking, never from a state file that can
go stale: the mounts from /proc/self/mountinfo (the daemon mounts with fsname "zswapfs" and
subtype "zswapfs", so its entries read `fuse.zswapfs zswapfs`), the loop devices from
/sys/block/loop*/loop/backing_file, swap areas and their priorities from /proc/swaps.
Each reader takes its file's path so tests can hand it a prepared copy.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the fstype and source of a zswapfs mount in mountinfo (daemon.py's fsname and subtype options)
FSTYPE = "fuse.zswapfs"
FSNAME = "zswapfs"
#: how long to wait for a mount's stats file: a stopped daemon leaves open() hanging
STATS_TIMEOUT = 2.0

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """mountinfo and /proc/swaps write space, tab, newline and backslash as \\040 etc."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    device: str = ""  # "major:minor" (a FUSE mount's minor names its connection in fusectl)


def mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """Every mount of this mount namespace, in mount order."""
    entries = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)  # optional fields end at a lone "-"
                entries.append(
                    MountEntry(
                        unescape(fields[4]), fields[sep + 1], unescape(fields[sep + 2]), fields[2]
                    )
                )
            except (ValueError, IndexError):
                continue  # not a line of the documented shape
    return entries


def zswapfs_mounts(path: str = "/proc/self/mountinfo") -> list[str]:
    """Mountpoints of the live zswapfs daemons' mounts, in mount order."""
    return [e.mountpoint for e in mountinfo(path) if e.fstype == FSTYPE and e.source == FSNAME]


def loop_devices(sys_block: str = "/sys/block") -> dict[str, str]:
    """/dev/loopN -> the file it is attached to, for every attached loop device."""
    out = {}
    for entry in sorted(Path(sys_block).glob("loop*")):
        try:
            backing = (entry / "loop" / "backing_file").read_text().rstrip("\n")
        except OSError:
            continue  # not attached (no loop/ directory) or detached meanwhile
        out[f"/dev/{entry.name}"] = backing.removesuffix(" (deleted)")
    return out


@dataclass(frozen=True)
class SwapArea:
    filename: str
    kind: str
    size_bytes: int
    used_bytes: int
    priority: int


def swaps(path: str = "/proc/swaps") -> dict[str, SwapArea]:
    """Active swap areas by file name (a device path such as /dev/loop0)."""
    out = {}
    with open(path) as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) < 5:
                continue
            name = unescape(fields[0])
            out[name] = SwapArea(
                name, fields[1], int(fields[2]) * 1024, int(fields[3]) * 1024, int(fields[4])
            )
    return out


class StatsUnreadable(Exception):
    """A mount's stats file could not be read; the message says why, in a few words."""


def read_stats(mountpoint: str, timeout: float = STATS_TIMEOUT) -> dict[str, Any]:
    """The JSON of *mountpoint*/stats. A hung daemon cannot hang the caller: the read runs in a
    daemon thread and is abandoned after *timeout* seconds."""
    result: list[dict[str, Any]] = []
    error: list[str] = []

    def read() -> None:
        try:
            with open(os.path.join(mountpoint, "stats")) as f:
                result.append(dict(json.load(f)))
        except OSError as exc:
            error.append(exc.strerror or str(exc))
        except (ValueError, TypeError):
            error.append("stats is not zswapfs JSON")

    reader = threading.Thread(target=read, name=f"stats {mountpoint}", daemon=True)
    reader.start()
    reader.join(timeout)
    if result:
        return result[0]
    raise StatsUnreadable(error[0] if error else f"no answer within {timeout:g} s")
