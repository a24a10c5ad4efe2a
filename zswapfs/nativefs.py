"""The native frontend's Python side: the C Frontend (engine/csrc/frontend.c) over a compiled
store and the ImageFiles both frontends share, with the same life cycle as the pyfuse3 one
(fs.py): mount, serve until a signal or an unmount, unmount.

READ, WRITE, FALLOCATE, FLUSH and FSYNC on the image are served in C by libfuse's worker threads,
the GIL never taken; lookup, getattr, setattr, open, release, readdir, statfs and the stats and
control files call ImageFiles under the GIL. serve() ends on SIGTERM, SIGINT or SIGHUP, which the
caller must block in every other thread (block_exit_signals, before any thread starts): only the
loop's thread takes them.
"""

from __future__ import annotations

import signal
from typing import Any

from zswapfs.engine import native
from zswapfs.engine.store import PageStore
from zswapfs.files import FsError, ImageFiles

#: the signals that end serve() (the C loop takes them)
EXIT_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: most worker threads by default: one request each at a time; a 2-core machine gains nothing
#: beyond a few (docs/performance.md)
DEFAULT_THREADS = 4


def unavailable(store: PageStore) -> str | None:
    """Why the native frontend cannot serve *store*, or None."""
    if native.UNAVAILABLE:
        return native.UNAVAILABLE
    if store.engine != "native":
        return "it serves the compiled engine only (this store runs the Python engine)"
    return None


def block_exit_signals() -> None:
    """Block the exit signals in this thread, and so in every thread it starts from now on."""
    signal.pthread_sigmask(signal.SIG_BLOCK, EXIT_SIGNALS)


def unblock_exit_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, EXIT_SIGNALS)


class NativeFrontend:
    name = "native"

    def __init__(
        self, files: ImageFiles, threads: int = DEFAULT_THREADS, clone_fd: bool = False
    ) -> None:
        why = unavailable(files.store)
        if why:
            raise RuntimeError(f"the native frontend: {why}")
        self.files = files
        self.threads = threads
        self.clone_fd = clone_fd
        store: Any = files.store  # a NativeStore: unavailable() said so
        self._fe = native._native.Frontend(store, files, FsError, threads, clone_fd)
        files.write_time = lambda: int(self._fe.last_write_ns)

    def mount(self, mountpoint: str, options: set[str]) -> None:
        """Mount (OSError when it cannot be made); the kernel's INIT is answered here. Reads
        and writes are capped at FRONTEND_MAX_IO (frontend.h says why)."""
        options = options | {f"max_read={native._native.FRONTEND_MAX_IO}"}
        self._fe.mount(mountpoint, ",".join(sorted(options)))

    def adopt(self, fd: int, options: set[str], init_request: bytes) -> None:
        """Take over the session of a mount another process made (docs/restart.md): *fd* its
        /dev/fuse descriptor, *init_request* the kernel's FUSE_INIT as that process read it.
        The requests the other process read and never answered are sent again."""
        options = options | {f"max_read={native._native.FRONTEND_MAX_IO}"}
        self._fe.adopt(fd, ",".join(sorted(options)), init_request)

    @property
    def init_request(self) -> bytes:
        """The kernel's FUSE_INIT as mount() read it (a takeover replays it)."""
        init = self._fe.init_request
        if init is None:
            raise RuntimeError("not mounted: no FUSE_INIT was read")
        return init

    def serve(self) -> str | None:
        """Serve until a signal (its name is returned), stop() or an unmount (None)."""
        signum = self._fe.serve()
        return signal.Signals(signum).name if signum else None

    def stop(self) -> None:
        self._fe.stop()

    def describe(self) -> str:
        """What serves the mount, for the log: threads, and the kernel transport in use (the
        /dev/fuse descriptor; FUSE over io_uring needs libfuse 3.18 and the fuse module's
        enable_uring, this build's libfuse says which it is)."""
        v = native._native.FUSE_VERSION
        transport = "/dev/fuse" + (" (libfuse < 3.18: no io_uring)" if v < 318 else "")
        return (f"native ({self.threads} threads{', clone_fd' if self.clone_fd else ''}, "
                f"libfuse {v // 100}.{v % 100}, transport {transport})")  # fmt: skip

    def unmount(self) -> None:
        self._fe.unmount()

    def disown(self) -> None:
        """The mount is the supervisor's from now on: this process never unmounts it (its
        end, or a handover, must leave the mount to the next server)."""
        self._fe.disown()

    def close(self) -> None:
        self._fe.close()

    @property
    def fd(self) -> int:
        return int(self._fe.fd)

    def stats(self) -> dict[str, Any]:
        return {
            "frontend": self.name,
            "threads": self.threads,
            "clone_fd": self.clone_fd,
            "requests_in_c": self._fe.c_requests,
            "requests_in_python": self._fe.py_requests,
        }
