"""The daemon: builds codec, pool, store and the mount's files, mounts, serves, unmounts.

Two frontends serve the same files (files.py): the native one (default; nativefs.py: libfuse's
worker threads in C) and the reference one (fs.py: pyfuse3 + trio), chosen by `frontend`.
Lifetime: mount() makes the mount (live from then on); the ready pipe, when given, is told so the
launching `zswapfs mount` can return; serve() answers requests until SIGTERM, SIGINT or SIGHUP
(or an external unmount) ends it; unmount() undoes the mount. The finally clause runs on every
path, so a started daemon never leaves a dead mount behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zswapfs import nativefs
from zswapfs.engine.backing import BackingError, BackingFile
from zswapfs.engine.codec import make_codec
from zswapfs.engine.maintenance import Maintenance
from zswapfs.engine.native import make_store, set_workers
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


def run(mountpoint: str, cfg: MountConfig, ready_fd: int | None = None) -> None:
    """Mount and serve until told to stop. Raises MountError if the mount cannot be made."""
    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    if cfg.frontend == "native":  # only the C loop's thread takes them (nativefs)
        nativefs.block_exit_signals()
    metrics = _metrics_server(cfg, lambda: stats())
    harden(lock_memory=cfg.lock_memory)
    store = build(cfg)
    image = os.path.join(mountpoint, cfg.name)
    maintenance = Maintenance(
        store.pool,
        cfg.maintenance_interval,
        cfg.aggressive_maintenance,
        store=store,
        high_watermark=cfg.high_watermark,
        huge_first=cfg.writeback_huge_first,
        idle_writeback=cfg.idle_writeback,
        recompression=recompression_for(cfg, store),
    )
    store.on_pressure = maintenance.wake

    def stats() -> dict[str, Any]:
        out = store.stats()
        out.update(pid=os.getpid(), mountpoint=mountpoint, image=image, rss_bytes=rss_bytes())
        out["maintenance"] = maintenance.stats()
        out.update(frontend.stats())
        return out

    def control(command: str) -> None:
        if command == "compact":
            log.info("compact: %s", maintenance.compact_now())
        else:
            raise UnknownCommand(command)

    files = ImageFiles(
        store, cfg.name, stats_source=stats, direct_io=cfg.direct_io, control=control
    )
    frontend = choose_frontend(cfg, store, files)
    if frontend.name != "native":
        nativefs.unblock_exit_signals()  # trio's signal receivers need them
    # default_permissions, and no allow_other: only the user who mounted (root) can reach the
    # mount at all, whatever the file modes say (docs/security.md)
    options = {"default_permissions", "fsname=zswapfs", "subtype=zswapfs"}
    try:
        frontend.mount(mountpoint, options)
    except OSError as exc:
        if metrics is not None:
            metrics.stop()
        frontend.close()
        store.close()
        raise MountError(f"cannot mount on {mountpoint}: {exc}") from None
    log.info(
        "mounted %s: %d bytes, codec %s, pool %s, engine %s, frontend %s",
        image,
        cfg.size,
        store.codec.name,
        cfg.pool,
        store.engine,
        frontend.describe(),
    )
    maintenance.start()
    if metrics is not None:
        metrics.start()
    try:
        if ready_fd is not None:
            os.write(ready_fd, b"READY\n")
            os.close(ready_fd)
        sd_notify(f"READY=1\nSTATUS=serving {image}\nMAINPID={os.getpid()}")
        stopped_by = frontend.serve()
        if stopped_by:
            log.info("signal %s: unmounting", stopped_by)
    finally:
        sd_notify("STOPPING=1")
        if metrics is not None:
            metrics.stop()
        maintenance.stop()
        frontend.unmount()
        if store.backing is not None:
            try:
                written = store.flush()
                if store.persistent:
                    log.info("flushed %d pages to %s", written, store.backing.path)
            except StoreError as exc:
                log.error("flush at unmount failed: %s", exc)
        frontend.close()
        store.close()
        log.info("unmounted %s", mountpoint)
