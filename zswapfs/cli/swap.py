"""Verbs that set an image up as swap: swapon, swapoff.

Each checks for root before it imports anything beyond the standard library, so an unprivileged
user gets that one line whatever the interpreter can import.
"""

import argparse
import os

from zswapfs.cli import CliError


def need_root(verb: str) -> None:
    if os.geteuid() != 0:
        raise CliError(f"{verb} needs root: losetup, mkswap and swapon do")


def cmd_swapon(args: argparse.Namespace) -> int:
    need_root("swapon")
    from zswapfs.service import swap

    try:
        target = swap.resolve(args.name, args.config, args.stripes)
        devices = swap.swapon(target)
    except swap.SwapError as exc:
        raise CliError(f"swapon: {exc}") from None
    for stripe, dev in zip(target.stripes(), devices, strict=True):
        print(f"{stripe.image} on {dev}, swap priority {stripe.cfg.swap_priority}")
    return 0


def cmd_swapoff(args: argparse.Namespace) -> int:
    need_root("swapoff")
    from zswapfs.service import swap

    try:
        target = swap.resolve(args.name, args.config, args.stripes)
        devices = swap.swapoff(target, keep_mount=args.keep_mount)
    except swap.SwapError as exc:
        raise CliError(f"swapoff: {exc}") from None
    kept = "mount kept" if args.keep_mount else "unmounted"
    mounts = ", ".join(str(s.mountpoint) for s in target.stripes())
    print(f"swap off: {', '.join(devices) or 'no loop device'}; {kept} {mounts}")
    return 0
