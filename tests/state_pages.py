"""Where the pages of a supervised mount's state are (docs/restart.md, "Between two servers"):
read from the kernel, never from the daemon. The state is three memfds (zswapfs-store,
zswapfs-pool, zswapfs-arena) whose copies the supervisor holds; a page of them is safe from
reclaim only while it is mapped in a locked mapping: the server's, or, between a server's death
and the next one's takeover, its keeper's (the same address space). Page by page: the memfd's
data extents (SEEK_DATA), the holder's page table (/proc/PID/pagemap: present) and its
mapping (smaps: VmFlags lo, locked). Needs root."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

PAGE = 4096
STATE_MEMFDS = ("zswapfs-store", "zswapfs-pool", "zswapfs-arena")
PRESENT = 1 << 63
MADV_POPULATE_READ = 22
MADV_PAGEOUT = 21


def state_memfds(supervisor: int) -> dict[str, str]:
    """name -> /proc path of each memfd of the state, as the supervisor holds them."""
    found = {}
    fds = Path(f"/proc/{supervisor}/fd")
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            for name in STATE_MEMFDS:
                if target.startswith(f"/memfd:{name} "):
                    found[name] = str(fd)
    assert sorted(found) == sorted(STATE_MEMFDS), f"supervisor {supervisor} holds {found}"
    return found


def data_extents(fd: int) -> Iterator[tuple[int, int]]:
    """The memfd's allocated byte ranges (pages in memory or in swap), [start, end)."""
    size = os.fstat(fd).st_size
    at = 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError:  # ENXIO: no data past *at*
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        at = end


def keepers_of(supervisor: int) -> list[int]:
    """The supervisor's live children named zswapfs-keeper."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            if comm == "zswapfs-keeper" and int(ppid) == supervisor and state != "Z":
                pids.append(int(entry.name))
    return pids


def unlocked_state_pages(holder: int, supervisor: int) -> tuple[int, int]:
    """(pages the state's memfds hold, how many of them are not mapped in a locked mapping of
    process *holder*'s address space). Mapped in a VM_LOCKED mapping is what keeps a page from
    reclaim (try_to_unmap refuses it and marks it mlocked again); the page's own mlocked flag
    is not: it is only a hint the kernel may clear while the page is still locked."""
    maps = []  # [start, end, offset, inode, locked]
    current: list[Any] | None = None
    with open(f"/proc/{holder}/smaps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                current = None
                if len(fields) == 6 and fields[5].startswith("/memfd:zswapfs-"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    current = [start, end, int(fields[2], 16), int(fields[4]), False]
                    maps.append(current)
            elif line.startswith("VmFlags:") and current is not None:
                current[4] = "lo" in line.split()[1:]
    total = unlocked = 0
    with open(f"/proc/{holder}/pagemap", "rb") as pagemap:
        for path in state_memfds(supervisor).values():
            fd = os.open(path, os.O_RDONLY)
            try:
                inode = os.fstat(fd).st_ino
                for lo, hi in data_extents(fd):
                    npages = (hi - lo) // PAGE
                    total += npages
                    where = [
                        m for m in maps
                        if m[3] == inode and m[4] and m[2] <= lo and hi <= m[2] + m[1] - m[0]
                    ]  # fmt: skip
                    if not where:
                        unlocked += npages
                        continue
                    vaddr = where[0][0] + lo - where[0][2]
                    pagemap.seek(vaddr // PAGE * 8)
                    entries = np.frombuffer(pagemap.read(npages * 8), np.uint64)
                    unlocked += int(npages - ((entries & np.uint64(PRESENT)) != 0).sum())
            finally:
                os.close(fd)
    return total, unlocked


def page_out_state(supervisor: int) -> int:
    """Ask the kernel to reclaim every page of the state now (MADV_PAGEOUT through a mapping of
    each memfd here: what kswapd or DAMON would do to pages nobody keeps locked; pages mapped
    elsewhere or locked are left alone by it). The pages asked about."""
    asked = 0
    for path in state_memfds(supervisor).values():
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                for lo, hi in data_extents(fd):
                    m.madvise(MADV_POPULATE_READ, lo, hi - lo)
                    m.madvise(MADV_PAGEOUT, lo, hi - lo)
                    asked += (hi - lo) // PAGE
        finally:
            os.close(fd)
    return asked


def _abort(mountpoint: str) -> None:
    from zswapfs.service.supervisor import abort_connection, connection_of

    abort_connection(connection_of(mountpoint))


def kill_under_reclaim(server: int, supervisor: int, mountpoint: str) -> dict[str, Any]:
    """kill -9 of *server* with its supervisor held up (SIGSTOP), so that no server runs; then,
    if the dead server's keeper holds every page of the state locked, the kernel asked to
    reclaim them all (page_out_state); the supervisor let go, and the next server waited for.
    What was found: "between" (pages, how many not locked; None: no keeper), "asked" (pages
    asked to go), "after" (the next server's pid). A reclaim or a takeover that does not end
    within 30 s (a page went to the swap on this very mount, whose server is dead: the hang
    this guards against) aborts the mount's connection, so that the test fails (AssertionError)
    instead of hanging the machine; nothing here waits on the mount without a deadline."""
    from tests.conftest import _zombie, wait_for

    found: dict[str, Any] = {"between": None, "asked": 0}
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(server, signal.SIGKILL)
        wait_for(lambda: _zombie(server), f"server {server} to die", timeout=10)
        keepers = keepers_of(supervisor)
        if keepers:
            found["between"] = unlocked_state_pages(keepers[0], supervisor)
        if found["between"] and found["between"][1] == 0:
            worker = threading.Thread(
                target=lambda: found.__setitem__("asked", page_out_state(supervisor)),
                daemon=True,
            )
            worker.start()
            worker.join(30)
            if worker.is_alive():
                _abort(mountpoint)
                worker.join(30)
                found["reclaim_hung"] = True
    finally:
        os.kill(supervisor, signal.SIGCONT)
    after = [server]

    def poll() -> None:
        while after[0] == server:
            with open(os.path.join(mountpoint, "stats")) as f:
                after[0] = json.load(f)["pid"]

    worker = threading.Thread(target=poll, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        _abort(mountpoint)
        raise AssertionError(f"no server took {mountpoint} over within 30 s: {found}")
    found["after"] = after[0]
    return found
