"""`zswapfs swapon` / `zswapfs swapoff`: a zswapfs image as swap, set up and torn down whole.

swapon: mount the image (unless its mount is already live, e.g. run by zswapfs@NAME.service), attach
a loop device with direct I/O (no page-cache copy of swapped pages), mkswap, swapon with the
configured priority (default 100, as zram-generator) and --discard=pages (docs/swap.md). Any step
that fails undoes the ones before it. swapoff: swapoff and detach every loop device on the image,
then unmount (unless --keep-mount), leaving nothing behind.

Configuration: /etc/zswapfs/NAME.toml, or --config FILE (NAME is then the file's stem); the
mountpoint is the file's `mountpoint` key or /run/zswapfs/NAME.

Stripes (`stripes = N`, or --stripes N): N images, each served by its own daemon at MOUNTPOINT-0
.. MOUNTPOINT-(N-1), each 1/N of the size and of the memory limit, with backing files BACKING.0
.. BACKING.(N-1); all swapped on at the same priority, so the kernel spreads swap pages across
them round-robin. One pyfuse3 session serves its requests on one thread under one GIL: separate
daemons let swap-out and swap-in use several cores (docs/swap.md has the figures).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from zswapfs.engine.codec import PAGE_SIZE
from zswapfs.service import config as cfgmod
from zswapfs.service.config import MountConfig

log = logging.getLogger(__name__)

CONFIG_DIR = Path("/etc/zswapfs")
RUN_DIR = Path("/run/zswapfs")


class SwapError(Exception):
    pass


@dataclasses.dataclass
class Target:
    name: str
    cfg: MountConfig
    mountpoint: Path
    config_path: Path

    @property
    def image(self) -> Path:
        return self.mountpoint / self.cfg.name

    def stripes(self) -> list[Target]:
        """The images this swap is made of: itself, or its N stripes (see the module doc)."""
        n = self.cfg.stripes
        if n == 1:
            return [self]
        size = self.cfg.size // n // PAGE_SIZE * PAGE_SIZE
        limit = self.cfg.mem_limit // n // PAGE_SIZE * PAGE_SIZE
        out = []
        for i in range(n):
            mp = Path(f"{self.mountpoint}-{i}")
            cfg = dataclasses.replace(
                self.cfg,
                size=size,
                mem_limit=max(limit, 64 * PAGE_SIZE) if limit else 0,
                backing=f"{self.cfg.backing}.{i}" if self.cfg.backing else "",
                mountpoint=str(mp),
                stripes=1,
            ).check()
            out.append(Target(f"{self.name}-{i}", cfg, mp, self.config_path))
        return out


def resolve(name: str | None, config_path: str | None, stripes: int | None = None) -> Target:
    if config_path:
        path = Path(config_path)
        name = name or path.stem
    elif name:
        if "/" in name or name in (".", ".."):
            raise SwapError(f"{name!r} is not a swap name (a file name under {CONFIG_DIR})")
        path = CONFIG_DIR / f"{name}.toml"
    else:
        raise SwapError("give a NAME (for /etc/zswapfs/NAME.toml) or --config FILE")
    cfg = cfgmod.from_mapping(cfgmod.load_toml(path), where=f"{path}: ")
    if stripes is not None:
        cfg = dataclasses.replace(cfg, stripes=stripes)
    cfg = cfg.check()
    mountpoint = Path(cfg.mountpoint) if cfg.mountpoint else RUN_DIR / name
    return Target(name, cfg, mountpoint, path)


def need_root(verb: str) -> None:
    if os.geteuid() != 0:
        raise SwapError(f"zswapfs {verb} needs root: losetup, mkswap and swapon do")


def _run(*cmd: str) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise SwapError(f"{cmd[0]} is not installed") from None
    if res.returncode != 0:
        raise SwapError(f"{' '.join(cmd)}: {res.stderr.strip() or 'failed'}")
    return res.stdout.strip()


def loop_devices(image: Path) -> list[str]:
    out = _run("losetup", "-j", str(image))
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


def active_swaps() -> set[str]:
    with open("/proc/swaps") as f:
        return {line.split()[0] for line in f.read().splitlines()[1:] if line.strip()}


def swapon(target: Target) -> list[str]:
    """Swap on every stripe of *target*; returns the loop devices in use as swap. If one stripe
    fails, the stripes already on are taken down again."""
    need_root("swapon")
    done: list[Target] = []
    devices = []
    try:
        for stripe in target.stripes():
            devices.append(_swapon_one(stripe))
            done.append(stripe)
    except SwapError:
        for stripe in done:
            try:
                _swapoff_one(stripe, keep_mount=False)
            except SwapError as exc:
                log.error("undoing swapon of %s: %s", stripe.image, exc)
        raise
    return devices


def _swapon_one(target: Target) -> str:
    """Mount (unless live), losetup, mkswap and swapon one image; its loop device."""
    cfg, mp = target.cfg, target.mountpoint
    mounted_here = False
    if not os.path.ismount(mp):
        mp.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "zswapfs",
                "mount",
                str(mp),
                "--resolved-config",
                json.dumps(dataclasses.asdict(cfg)),
            ],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise SwapError(res.stderr.strip().removeprefix("zswapfs: "))
        mounted_here = True
    elif not (mp / "stats").exists():
        raise SwapError(f"{mp} is mounted, but not by zswapfs")
    image = target.image
    for dev in loop_devices(image):
        if dev in active_swaps():
            return dev  # already on
    dev = ""
    try:
        dev = _run("losetup", "--direct-io=on", "-f", "--show", str(image))
        _run("mkswap", "-L", f"zswapfs-{target.name}"[:16], dev)
        # discard: swap tells the loop device which clusters it freed (a program that exits
        # frees its slots), the loop device tells the image (FALLOCATE punch hole), and the
        # native frontend frees those pages in the pool; where the image cannot (pyfuse3), the
        # loop device quietly stops asking at the first EOPNOTSUPP
        discard = ["--discard=pages"] if cfg.discard else []
        _run("swapon", *discard, "-p", str(cfg.swap_priority), dev)
    except SwapError:
        if dev:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        if mounted_here:
            subprocess.run(
                [sys.executable, "-m", "zswapfs", "umount", str(mp)], capture_output=True
            )
        raise
    return dev


def swapoff(target: Target, keep_mount: bool = False) -> list[str]:
    """Swap off every stripe of *target*; returns the loop devices taken down."""
    need_root("swapoff")
    devices = []
    for stripe in target.stripes():
        devices += _swapoff_one(stripe, keep_mount)
    return devices


def _swapoff_one(target: Target, keep_mount: bool) -> list[str]:
    mp = target.mountpoint
    devices = loop_devices(target.image) if os.path.ismount(mp) else []
    swaps = active_swaps()
    for dev in devices:
        if dev in swaps:
            _run("swapoff", dev)
        _run("losetup", "-d", dev)
    if not keep_mount and os.path.ismount(mp):
        res = subprocess.run(
            [sys.executable, "-m", "zswapfs", "umount", str(mp)], capture_output=True, text=True
        )
        if res.returncode != 0:
            raise SwapError(res.stderr.strip().removeprefix("zswapfs: "))
    return devices
