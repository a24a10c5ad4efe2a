"""Mount configuration: built-in defaults, a TOML file, and command-line overrides, checked once.

Every problem is a ConfigError naming the key or option, so the CLI can print one clear line.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from zswapfs.engine.codec import PAGE_SIZE, CodecError, make_codec
from zswapfs.engine.native import ENGINE_NAMES
from zswapfs.engine.pools import POOL_NAMES
from zswapfs.service import sizeexpr
from zswapfs.service.safepath import UnsafePath, check_directory

#: largest image: page numbers must fit the index and 2**32 pool pages
MAX_SIZE = 1 << 44
#: most swap stripes (one daemon each): the kernel stripes across any number, a few cores pay
MAX_STRIPES = 16
#: the frontends a mount can be served by (the first is the default)
FRONTEND_NAMES = ("native", "pyfuse3")


class ConfigError(Exception):
    pass


def parse_size(text: str | int, what: str = "size") -> int:
    """'1G', '512M', '4096', '64KiB', or an expression in zram-generator's grammar such as
    'min(ram / 2, 4G)' (zswapfs.service.sizeexpr) -> bytes (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if not isinstance(text, str):
        raise ConfigError(f'{what}: expected a size such as "1G" or "ram / 2", got {text!r}')
    try:
        return sizeexpr.evaluate(text)
    except sizeexpr.SizeError as exc:
        raise ConfigError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class MountConfig:
    size: int = 1 << 30
    codec: str = "lz4"
    pool: str = "zsmalloc"
    #: "native" (compiled; falls back to python when the extension is not built) or "python"
    engine: str = "native"
    #: native engine: page workers for big writes (-1: one per spare core, at most 3)
    page_workers: int = -1
    #: "native" (libfuse's worker threads in C, the default; needs the native engine) or
    #: "pyfuse3" (the reference frontend, fs.py: pyfuse3 + trio)
    frontend: str = "native"
    #: native frontend: most FUSE worker threads, and a /dev/fuse descriptor of their own each
    threads: int = 4
    clone_fd: bool = False
    name: str = "swap.img"
    max_chain: int = 8
    direct_io: bool = True
    maintenance_interval: float = 1.0
    aggressive_maintenance: bool = False
    backing: str = ""
    force: bool = False
    mem_limit: int = 0
    high_watermark: int = 100
    low_watermark: int = 90
    mode: str = "swap"
    writeback_huge_first: bool = False
    idle_writeback: float = 0.0
    lock_memory: bool = True
    swap_priority: int = 100
    #: a supervisor process keeps the mount's descriptors and restarts the serving process when
    #: it dies, taking its pool over (docs/restart.md); the native frontend and engine only
    supervise: bool = True
    #: servers that may die within 10 s before the supervisor gives the mount up (as systemd's
    #: StartLimitBurst: a server that keeps dying, on a request it is sent again, must end)
    restart_limit: int = 5
    #: swapon: swap on with --discard=pages, so slots swap frees reach the pool (docs/swap.md)
    discard: bool = True
    mountpoint: str = ""
    #: background recompression of idle pages: "zstd:LEVEL" (with a trained dictionary) or "off"
    recompress: str = "zstd:9"
    #: seconds a page must go unread and unwritten before it is recompressed
    recompress_idle: float = 20.0
    #: "idle": the loop runs at nice 19; "normal": like any other thread
    recompress_priority: str = "idle"
    #: bytes of each trained dictionary
    dict_size: int = 16 << 10
    #: merge identical pages (background, byte for byte)
    dedup: bool = True
    #: swapon only: this many images, each its own daemon, striped by the kernel at one priority
    stripes: int = 1
    metrics_port: int = 0  # 0: no metrics endpoint
    metrics_address: str = "127.0.0.1"

    def check(self) -> MountConfig:
        if self.size <= 0 or self.size % PAGE_SIZE:
            raise ConfigError(f"size: {self.size} bytes is not a positive multiple of {PAGE_SIZE}")
        if self.size > MAX_SIZE:
            raise ConfigError(f"size: {self.size} bytes is larger than the limit of {MAX_SIZE}")
        try:
            make_codec(self.codec)
        except CodecError as exc:
            raise ConfigError(f"codec: {exc}") from None
        if self.pool not in POOL_NAMES:
            raise ConfigError(
                f"pool: unknown pool {self.pool!r} (expected {', '.join(POOL_NAMES)})"
            )
        if self.engine not in ENGINE_NAMES:
            raise ConfigError(
                f"engine: unknown engine {self.engine!r} (expected {', '.join(ENGINE_NAMES)})"
            )
        if self.frontend not in FRONTEND_NAMES:
            raise ConfigError(
                f"frontend: unknown frontend {self.frontend!r} "
                f"(expected {', '.join(FRONTEND_NAMES)})"
            )
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"threads: {self.threads} out of range 1..256")
        if not -1 <= self.page_workers <= 64:
            raise ConfigError(f"page-workers: {self.page_workers} out of range 0..64 (-1: auto)")
        if not self.name or "/" in self.name or self.name in (".", "..", "stats"):
            raise ConfigError(f"name: {self.name!r} is not a usable file name")
        if not 1 <= self.max_chain <= 16:
            raise ConfigError(f"max-chain: {self.max_chain} out of range 1..16")
        if self.mode not in ("swap", "image"):
            raise ConfigError(f"mode: {self.mode!r} is not swap or image")
        if self.mode == "image" and not self.backing:
            raise ConfigError("mode: image mode keeps the image in a backing file: give backing")
        if self.mem_limit < 0 or (self.mem_limit and self.mem_limit < 64 * PAGE_SIZE):
            raise ConfigError(f"mem-limit: {self.mem_limit} bytes is below the minimum of 256K")
        if not 1 <= self.low_watermark <= self.high_watermark <= 100:
            raise ConfigError(
                f"watermarks: need 1 <= low ({self.low_watermark}) <= high "
                f"({self.high_watermark}) <= 100 (percent of mem-limit)"
            )
        if self.idle_writeback < 0:
            raise ConfigError(f"idle-writeback: {self.idle_writeback} s is negative")
        if (self.writeback_huge_first or self.idle_writeback) and not self.backing:
            raise ConfigError("writeback options need a backing file (backing)")
        if not 1 <= self.restart_limit <= 1000:
            raise ConfigError(f"restart-limit: {self.restart_limit} out of range 1..1000")
        if not -1 <= self.swap_priority <= 32767:
            raise ConfigError(f"swap-priority: {self.swap_priority} out of range -1..32767")
        if self.recompress != "off":
            name, _, level = self.recompress.partition(":")
            if name != "zstd" or not level.lstrip("-").isdigit() or not 1 <= int(level) <= 19:
                raise ConfigError(
                    f"recompress: {self.recompress!r} is not off or zstd:LEVEL (LEVEL 1..19)"
                )
        if self.recompress_priority not in ("idle", "normal"):
            raise ConfigError(
                f"recompress-priority: {self.recompress_priority!r} is not idle or normal"
            )
        if self.recompress_idle < 0:
            raise ConfigError(f"recompress-idle: {self.recompress_idle} s is negative")
        if not 1 << 10 <= self.dict_size <= 1 << 20:
            raise ConfigError(f"dict-size: {self.dict_size} bytes out of range 1K..1M")
        if not 1 <= self.stripes <= MAX_STRIPES:
            raise ConfigError(f"stripes: {self.stripes} out of range 1..{MAX_STRIPES}")
        if self.size // self.stripes < 1 << 20:
            raise ConfigError(
                f"stripes: {self.stripes} stripes of a {self.size}-byte image are "
                "smaller than 1 MiB each"
            )
        if self.mountpoint and not self.mountpoint.startswith("/"):
            raise ConfigError(f"mountpoint: {self.mountpoint!r} is not an absolute path")
        if not 0.001 <= self.maintenance_interval <= 3600:
            raise ConfigError(
                f"maintenance-interval: {self.maintenance_interval} s out of range 0.001..3600"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics-port: {self.metrics_port} out of range 0..65535 (0: off)")
        if not self.metrics_address:
            raise ConfigError("metrics-address: empty (127.0.0.1 serves this machine only)")
        return self

    @property
    def npages(self) -> int:
        return self.size // PAGE_SIZE


#: TOML key -> field; keys follow zram-generator's spelling where one exists
_KEYS = {
    "size": "size",
    "zram-size": "size",
    "codec": "codec",
    "compression-algorithm": "codec",
    "pool": "pool",
    "engine": "engine",
    "page-workers": "page_workers",
    "frontend": "frontend",
    "threads": "threads",
    "clone-fd": "clone_fd",
    "name": "name",
    "max-chain": "max_chain",
    "direct-io": "direct_io",
    "maintenance-interval": "maintenance_interval",
    "backing": "backing",
    "writeback-device": "backing",
    "force": "force",
    "mem-limit": "mem_limit",
    "high-watermark": "high_watermark",
    "low-watermark": "low_watermark",
    "mode": "mode",
    "writeback-huge-first": "writeback_huge_first",
    "idle-writeback": "idle_writeback",
    "lock-memory": "lock_memory",
    "swap-priority": "swap_priority",
    "discard": "discard",
    "supervise": "supervise",
    "restart-limit": "restart_limit",
    "mountpoint": "mountpoint",
    "stripes": "stripes",
    "recompress": "recompress",
    "recompress-idle": "recompress_idle",
    "recompress-priority": "recompress_priority",
    "dict-size": "dict_size",
    "dedup": "dedup",
    "metrics-port": "metrics_port",
    "metrics-address": "metrics_address",
}

#: what a TOML value of each field must be, and how to say so
_EXPECT: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
}


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            check_config_file(f.fileno(), path)
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    return data


def check_config_file(fd: int, path: str | Path) -> None:
    """As sshd's StrictModes: when zswapfs runs as root, a config file another user could have
    written (not owned by root, writable by group or others, or in a directory such a user can
    change) is refused, since it decides which files root empties and writes."""
    if os.geteuid() != 0:
        return
    st = os.fstat(fd)
    if st.st_uid != 0:
        raise ConfigError(
            f"config file {path} is owned by uid {st.st_uid}, not root; as root zswapfs reads "
            f"only root's files: chown root {path}"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"config file {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run chmod go-w {path}"
        )
    try:
        check_directory(os.path.dirname(os.path.abspath(path)), f"config file {path}")
    except UnsafePath as exc:
        raise ConfigError(str(exc)) from None


def from_mapping(
    data: dict[str, Any], base: MountConfig | None = None, where: str = ""
) -> MountConfig:
    """Apply TOML-style keys onto *base*; unknown keys and wrong types are errors."""
    cfg = base or MountConfig()
    types = {f.name: f.type for f in fields(MountConfig)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        field = _KEYS.get(key)
        if field is None:
            raise ConfigError(f"{where}unknown key {key!r} (known: {', '.join(sorted(_KEYS))})")
        if field in ("size", "mem_limit", "dict_size"):
            value = parse_size(value, f"{where}{key}")
        else:
            kinds, what = _EXPECT[str(types[field])]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ConfigError(f"{where}{key}: expected {what}, got {value!r}")
        changes[field] = value
    return replace(cfg, **changes)
