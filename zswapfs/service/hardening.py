"""Making the daemon safe for swap duty, and telling systemd it is ready.

A swap backend that is itself swapped out, or killed by the OOM killer, or made to wait for
memory that only swapping could free, can deadlock the machine. So a swap daemon:
  * locks its memory: mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT). ONFAULT locks pages as
    they are touched instead of populating every mapping at once (the arena reserves far more
    than it uses). Locked pages cannot be dropped with MADV_DONTNEED, which is why the arena
    frees pages by punching holes in memfds.
  * marks itself an IO flusher: prctl(PR_SET_IO_FLUSHER), so its own allocations never recurse
    into I/O (reclaim that would swap into this very daemon).
  * is never chosen by the OOM killer: oom_score_adj -1000.
  * keeps its own memory small (bound_heap): locked memory cannot be handed back with
    MADV_DONTNEED either, so what glibc's allocator keeps after a burst (a dictionary trained,
    a big request) would stay resident for good. Allocations from 128 KiB up are mapped and
    unmapped on free (a fixed M_MMAP_THRESHOLD: glibc otherwise raises it after each such free
    and serves the next from a heap it never shrinks), and threads share two arenas.
Each step needs privileges (root, or CAP_IPC_LOCK / CAP_SYS_RESOURCE); a step that fails gives a
warning naming what is missing and the daemon goes on.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket

log = logging.getLogger(__name__)

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters
#: allocations this large or larger are mapped on their own and unmapped when freed
MMAP_THRESHOLD = 128 << 10
#: malloc arenas the daemon's threads share (glibc's default: 8 a core)
ARENA_MAX = 2
PR_SET_IO_FLUSHER = 57

_libc = ctypes.CDLL(None, use_errno=True)


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


def bound_heap() -> None:
    """glibc's allocator set to give big freed blocks back at once (see the module doc); a libc
    without mallopt (musl) is left as it is."""
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_ARENA_MAX, ARENA_MAX)


def harden(lock_memory: bool = True) -> list[str]:
    """Apply the swap-duty measures; returns a warning for each that could not be applied."""
    bound_heap()
    warnings = []
    if lock_memory:
        if _libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
            warnings.append(
                f"cannot lock the daemon's memory (mlockall: {_errno_text()}; needs root or "
                "CAP_IPC_LOCK): it may be swapped out, which can deadlock a swap backend"
            )
    if _libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        warnings.append(
            f"cannot mark the daemon an IO flusher (prctl PR_SET_IO_FLUSHER: {_errno_text()}; "
            "needs CAP_SYS_RESOURCE)"
        )
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError as exc:
        warnings.append(f"cannot set oom_score_adj -1000 ({exc.strerror}; needs CAP_SYS_RESOURCE)")
    for w in warnings:
        log.warning("%s", w)
    return warnings


def sd_notify(message: str) -> bool:
    """Send *message* (e.g. 'READY=1') to systemd when started as a Type=notify service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", message, exc)
        return False
    return True
