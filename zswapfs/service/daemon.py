"""The daemon: builds codec, pool, store and the mount's files, mounts, serves, unmounts.

Two frontends serve the same files (files.py): the native one (default; nativefs.py: libfuse's
worker threads in C) and the reference one (fs.py: pyfuse3 + trio), chosen by `frontend`.
Lifetime: mount() makes the mount (live from then on); the ready pipe, when given, is told so the
launching `zswapfs mount` can return; serve() answers requests until SIGTERM, SIGINT or SIGHUP
(or an external unmount) ends it; unmount() undoes the mount. The finally clause runs on every
path, so a started daemon never leaves a dead mount behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zswapfs import nativefs
from zswapfs.engine.backing import BackingError, BackingFile
from zswapfs.engine.codec import make_codec
from zswapfs.engine.maintenance import Maintenance
from zswapfs.engine.native import make_store, set_workers, spawn_keeper
from zswapfs.engine.recompress import Recompression
from zswapfs.engine.store import PageStore, StoreError
from zswapfs.files import ImageFiles, UnknownCommand
from zswapfs.service import safepath
from zswapfs.service.config import MountConfig
from zswapfs.service.hardening import harden, sd_notify

if TYPE_CHECKING:
    from zswapfs.service.metrics import MetricsServer

log = logging.getLogger(__name__)


class MountError(Exception):
    pass


def rss_bytes() -> int:
    """This process's resident memory (VmRSS), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def check_mountpoint(mountpoint: str) -> None:
    if not os.path.exists(mountpoint):
        raise MountError(f"mountpoint {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is busy: something is already mounted there")
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse)")


def prepare_backing_directory(path: str) -> None:
    """The backing file's directory: each missing level created 0700 (and logged); the whole
    chain checked so that no other user can swap the file for a link (safepath)."""
    what = f"backing file {path}"
    try:
        for d in safepath.ensure_directory(os.path.dirname(os.path.abspath(path)), what):
            log.info("created directory %s (mode 0700) for the backing file", d)
    except safepath.UnsafePath as exc:
        raise MountError(str(exc)) from None


def build(cfg: MountConfig) -> PageStore:
    """Codec, pool, backing file and store for *cfg*; MountError if the backing file is bad."""
    codec = make_codec(cfg.codec)
    backing = None
    if cfg.backing:
        prepare_backing_directory(cfg.backing)
        try:
            backing = BackingFile(
                cfg.backing, cfg.npages, persistent=cfg.mode == "image", force=cfg.force
            )
        except BackingError as exc:
            raise MountError(str(exc)) from None
    set_workers(None if cfg.page_workers < 0 else cfg.page_workers)
    return make_store(
        cfg.engine,
        cfg.npages,
        codec,
        cfg.pool,
        max_chain=cfg.max_chain,
        backing=backing,
        mem_limit=cfg.mem_limit,
        huge_to_backing=cfg.writeback_huge_first,
        low_watermark=cfg.low_watermark,
    )


def recompression_for(cfg: MountConfig, store: PageStore) -> Recompression | None:
    if cfg.recompress == "off":
        return None
    if cfg.pool == "zbud":
        log.info("recompression off: zbud holds two objects a page whatever their size")
        return None
    return Recompression(
        store,
        level=int(cfg.recompress.partition(":")[2]),
        idle=cfg.recompress_idle,
        dict_size=cfg.dict_size,
        dedup=cfg.dedup,
        idle_priority=cfg.recompress_priority == "idle",
    )


def _metrics_server(cfg: MountConfig, source: Callable[[], dict[str, Any]]) -> MetricsServer | None:
    """The metrics endpoint, bound now (a taken port fails the mount before it is made) and
    started once the mount is live; None without a metrics port (prometheus-client is then
    not even imported: the daemon's own memory, docs/performance.md)."""
    if not cfg.metrics_port:
        return None
    from zswapfs.service.metrics import MetricsError, MetricsServer

    try:
        return MetricsServer(source, cfg.metrics_address, cfg.metrics_port)
    except MetricsError as exc:
        raise MountError(str(exc)) from None


def choose_frontend(cfg: MountConfig, store: PageStore, files: ImageFiles) -> Any:
    """The frontend *cfg* asks for; the reference one, with a log line, when the native one
    cannot serve *store* (the Python engine, or no compiled build)."""
    if cfg.frontend == "native":
        why = nativefs.unavailable(store)
        if why is None:
            return nativefs.NativeFrontend(files, threads=cfg.threads, clone_fd=cfg.clone_fd)
        log.warning("native frontend unavailable (%s): serving with pyfuse3", why)
    # imported only here: pyfuse3 and trio cost the native daemon memory it never uses
    from zswapfs.fs import Pyfuse3Frontend, ZswapOperations

    ops = ZswapOperations(store, files.image_name.decode(), files.stats_source,
                          files.direct_io, files.control)  # fmt: skip
    ops.files = files
    return Pyfuse3Frontend(ops)


#: mount options of both frontends: default_permissions, and no allow_other: only the user who
#: mounted (root) can reach the mount at all, whatever the file modes say (docs/security.md)
OPTIONS = frozenset({"default_permissions", "fsname=zswapfs", "subtype=zswapfs"})


class Service:
    """What serves one mount in one process: the store, the maintenance thread, the files, the
    frontend and the metrics endpoint; start(), serve() and stop() around them."""

    def __init__(self, mountpoint: str, cfg: MountConfig, store: PageStore,
                 metrics: MetricsServer | None, supervised: bool = False) -> None:  # fmt: skip
        self.mountpoint = mountpoint
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.supervised = supervised
        self.image = os.path.join(mountpoint, cfg.name)
        self.maintenance = Maintenance(
            store.pool,
            cfg.maintenance_interval,
            cfg.aggressive_maintenance,
            store=store,
            high_watermark=cfg.high_watermark,
            huge_first=cfg.writeback_huge_first,
            idle_writeback=cfg.idle_writeback,
            recompression=recompression_for(cfg, store),
        )
        store.on_pressure = self.maintenance.wake
        self.files = ImageFiles(
            store, cfg.name, stats_source=self.stats, direct_io=cfg.direct_io, control=self.control
        )
        self.frontend = choose_frontend(cfg, store, self.files)

    def stats(self) -> dict[str, Any]:
        out = self.store.stats()
        out.update(pid=os.getpid(), mountpoint=self.mountpoint, image=self.image,
                   rss_bytes=rss_bytes())  # fmt: skip
        out["supervisor_pid"] = os.getppid() if self.supervised else None
        out["maintenance"] = self.maintenance.stats()
        out.update(self.frontend.stats())
        return out

    def control(self, command: str) -> None:
        if command == "compact":
            log.info("compact: %s", self.maintenance.compact_now())
        else:
            raise UnknownCommand(command)

    def describe(self) -> str:
        return (f"{self.image}: {self.cfg.size} bytes, codec {self.store.codec.name}, pool "
                f"{self.cfg.pool}, engine {self.store.engine}, frontend "
                f"{self.frontend.describe()}")  # fmt: skip

    def start(self) -> None:
        self.maintenance.start()
        if self.metrics is not None:
            self.metrics.start()

    def stop(self, unmount: bool = True) -> None:
        """The background thread and metrics stopped; with *unmount*, the mount undone, the
        image flushed and everything closed (without: a handover, the state left as it is)."""
        if self.metrics is not None:
            self.metrics.stop()
        self.maintenance.stop()
        if not unmount:
            return
        if self.supervised:
            from zswapfs.service.supervisor import unmount_lazily

            unmount_lazily(self.mountpoint)  # a session taken over has no mount of libfuse's
        self.frontend.unmount()
        store = self.store
        if store.backing is not None:
            try:
                written = store.flush()
                if store.persistent:
                    log.info("flushed %d pages to %s", written, store.backing.path)
            except StoreError as exc:
                log.error("flush at unmount failed: %s", exc)
        self.frontend.close()
        store.close()
        log.info("unmounted %s", self.mountpoint)


def supervised(cfg: MountConfig) -> str | None:
    """Why *cfg*'s mount runs without a supervisor, or None when it has one: only the native
    frontend over the compiled engine can take a session and a pool over (docs/restart.md)."""
    if not cfg.supervise:
        return "supervise is off"
    if cfg.frontend != "native":
        return "the pyfuse3 frontend cannot take a FUSE session over"
    if cfg.engine != "native":
        return "the python engine keeps its pool in this process's memory"
    from zswapfs.engine import native

    if native.UNAVAILABLE:
        return native.UNAVAILABLE
    return None


def run(mountpoint: str, cfg: MountConfig, ready_fd: int | None = None,
        verbose: bool = False) -> int:  # fmt: skip
    """Mount and serve until told to stop: under a supervisor that restarts a dead server
    (supervisor.py), or in this process alone. Raises MountError if the mount cannot be made;
    returns the exit status (1: the supervisor gave the mount up)."""
    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    why = supervised(cfg)
    if why is None:
        from dataclasses import replace

        from zswapfs.service import supervisor

        if cfg.clone_fd:
            log.warning("clone-fd is off under a supervisor: a worker's own descriptor would "
                        "end its requests with the process")  # fmt: skip
            cfg = replace(cfg, clone_fd=False)
        return supervisor.run(mountpoint, cfg, ready_fd, verbose)
    log.info("no supervisor (%s): a crash of this process ends the mount", why)
    run_alone(mountpoint, cfg, ready_fd)
    return 0


def run_alone(mountpoint: str, cfg: MountConfig, ready_fd: int | None = None) -> None:
    """Mount and serve in this process until told to stop."""
    if cfg.frontend == "native":  # only the C loop's thread takes them (nativefs)
        nativefs.block_exit_signals()
    metrics = _metrics_server(cfg, lambda: svc.stats())
    harden(lock_memory=cfg.lock_memory)
    store = build(cfg)
    svc = Service(mountpoint, cfg, store, metrics)
    frontend = svc.frontend
    if frontend.name != "native":
        nativefs.unblock_exit_signals()  # trio's signal receivers need them
    try:
        frontend.mount(mountpoint, set(OPTIONS))
    except OSError as exc:
        if metrics is not None:
            metrics.stop()
        frontend.close()
        store.close()
        raise MountError(f"cannot mount on {mountpoint}: {exc}") from None
    log.info("mounted %s", svc.describe())
    svc.start()
    try:
        if ready_fd is not None:
            os.write(ready_fd, b"READY\n")
            os.close(ready_fd)
        sd_notify(f"READY=1\nSTATUS=serving {svc.image}\nMAINPID={os.getpid()}")
        stopped_by = frontend.serve()
        if stopped_by:
            log.info("signal %s: unmounting", stopped_by)
    finally:
        sd_notify("STOPPING=1")
        svc.stop()


def check_session_fd(fd: int, mountpoint: str) -> None:
    """The /dev/fuse descriptor handed to a new server: TakeoverRefused unless it is one, still
    connected, and a zswapfs mount is at *mountpoint*."""
    import select
    import stat

    from zswapfs.engine.native import TakeoverRefused

    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(10, 229):
        raise TakeoverRefused(f"descriptor {fd} handed over is not a /dev/fuse session")
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
        raise TakeoverRefused("the FUSE session handed over is no longer connected (stale)")
    from zswapfs.service.mounts import zswapfs_mounts

    if mountpoint not in zswapfs_mounts():
        raise TakeoverRefused(f"no zswapfs mount at {mountpoint} to take over")


def serve_supervised(mountpoint: str, cfg: MountConfig, channel_fd: int, takeover: bool) -> int:
    """The server under a supervisor (`zswapfs serve`, supervisor.py): it mounts and sends the
    state's descriptors, or (takeover) takes the state it is handed over, checks it (and, for
    a restart, waits for the old server to hand over), then serves until a signal or an
    unmount (it unmounts and exits 0) or a handover (it stops, leaves everything as it is and
    exits HANDED_OVER). Returns the exit status."""
    import socket
    import threading

    from zswapfs.engine.backing import BackingError, BackingFile
    from zswapfs.engine.native import StateFds, TakeoverRefused, make_store
    from zswapfs.service import supervisor as sup

    chan = socket.socket(fileno=channel_fd)
    nativefs.block_exit_signals()
    harden(lock_memory=cfg.lock_memory)
    # the keeper holds this process's memory, the state's pages locked, from its death until
    # the next server has taken them over (csrc/keeper.c); the supervisor reaps it
    try:
        sup.send(chan, {"keeper": spawn_keeper(channel_fd)})
    except OSError as exc:
        log.warning("no keeper (%s): if this process dies, the state's pages are not locked "
                    "until the next one maps them", exc)  # fmt: skip
    metrics = None
    if not takeover:
        try:
            metrics = _metrics_server(cfg, lambda: svc.stats())
            store = build(cfg)
            svc = Service(mountpoint, cfg, store, metrics, supervised=True)
            frontend = svc.frontend
            try:
                frontend.mount(mountpoint, set(OPTIONS))
            except OSError as exc:
                frontend.close()
                store.close()
                raise MountError(f"cannot mount on {mountpoint}: {exc}") from None
        except MountError as exc:
            if metrics is not None:
                metrics.stop()
            sup.send(chan, {"error": str(exc)})
            raise
        frontend.disown()  # the supervisor's mount now: unmount_lazily undoes it (stop)
        state = store.state_fds()  # type: ignore[attr-defined]
        fds = [frontend.fd, state.store, state.pool, state.arena]
        if store.backing is not None:
            fds.append(store.backing.fd)
        sup.send(chan, {"state": {"init": frontend.init_request.hex(), "pid": os.getpid()}}, fds)
        log.info("mounted %s (supervisor %d)", svc.describe(), os.getppid())
    else:
        msg, fds = sup.recv(chan)
        order = msg["takeover"]
        try:
            if len(fds) < 4:
                raise TakeoverRefused(f"{len(fds)} descriptors handed over, not 4 or 5")
            check_session_fd(fds[0], mountpoint)
            backing = None
            if cfg.backing:
                if len(fds) < 5:
                    raise TakeoverRefused("no backing file handed over")
                backing = BackingFile.adopt(fds[4], cfg.backing, cfg.npages,
                                            persistent=cfg.mode == "image")  # fmt: skip
                fds = fds[:4]
            elif len(fds) > 4:
                raise TakeoverRefused("a backing file handed over to a mount without one")
            store = make_store(
                cfg.engine, cfg.npages, make_codec(cfg.codec), cfg.pool,
                max_chain=cfg.max_chain, backing=backing, mem_limit=cfg.mem_limit,
                huge_to_backing=cfg.writeback_huge_first, low_watermark=cfg.low_watermark,
                takeover=StateFds(*fds[1:4]), check_only=True,
            )  # fmt: skip
            fds = fds[:1]  # the store owns the others now
        except (TakeoverRefused, BackingError, OSError, ValueError) as exc:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            log.error("refusing to take %s over: %s", mountpoint, exc)
            sup.send(chan, {"refused": str(exc)})
            return sup.REFUSED
        if order.get("check"):
            sup.send(chan, {"checked": True})
            try:
                go, _ = sup.recv(chan)
            except EOFError:
                go = {}
            if not go.get("go"):
                log.info("the supervisor did not hand %s over; leaving it as it is", mountpoint)
                return 0
        set_workers(None if cfg.page_workers < 0 else cfg.page_workers)
        t0 = time.monotonic()
        try:
            resident = store.take_over()  # type: ignore[attr-defined]
        except TakeoverRefused as exc:
            log.error("refusing to take %s over: %s", mountpoint, exc)
            sup.send(chan, {"refused": str(exc)})
            return sup.REFUSED
        svc = Service(mountpoint, cfg, store, None, supervised=True)
        frontend = svc.frontend
        try:
            frontend.adopt(fds[0], set(OPTIONS), bytes.fromhex(order["init"]))
        except (OSError, ValueError) as exc:  # e.g. a kernel before 6.9: no FUSE_NOTIFY_RESEND
            log.error("refusing to take %s over: %s", mountpoint, exc)
            sup.send(chan, {"refused": str(exc)})
            return sup.REFUSED
        try:
            svc.metrics = _metrics_server(cfg, lambda: svc.stats())
        except MountError as exc:  # the old server may hold the port a moment longer
            log.warning("%s: no metrics endpoint in this process", exc)
        log.info("took %s over in %.3f s: %d pages stored, %.1f MiB of state locked, "
                 "takeover %d (supervisor %d)", svc.describe(), time.monotonic() - t0,
                 store.stored_pages, resident / 2**20, store.takeovers,
                 os.getppid())  # fmt: skip
    svc.start()
    handover = threading.Event()

    def listen() -> None:
        while True:
            try:
                msg, fds = sup.recv(chan)
            except (EOFError, OSError):
                log.warning("the supervisor is gone: a crash of this process now ends the mount")
                return
            for fd in fds:
                os.close(fd)
            if msg.get("handover"):
                handover.set()
                frontend.stop()
                return

    sup.send(chan, {"ready": os.getpid()})
    threading.Thread(target=listen, name="supervisor-channel", daemon=True).start()
    try:
        stopped_by = frontend.serve()
    except BaseException:
        svc.stop(unmount=False)
        raise
    if handover.is_set():
        # Gone at once, as a crash would be: the state in the memfds is consistent at any
        # instant (csrc/pool.h, store.h), so the background thread is not waited for (a
        # dictionary being trained would hold the handover up); nothing is unmounted, flushed or
        # closed, all of it is the next server's.
        log.info("handed %s over to the next server", mountpoint)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(sup.HANDED_OVER)
    if stopped_by:
        log.info("signal %s: unmounting", stopped_by)
    svc.stop()
    return 0
