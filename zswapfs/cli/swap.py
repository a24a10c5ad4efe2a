"""Verbs that set an image up as swap: swapon, swapoff."""

import argparse

from zswapfs.cli import CliError


def cmd_swapon(args: argparse.Namespace) -> int:
    from zswapfs.service import swap

    try:
        swap.need_root("swapon")
        target = swap.resolve(args.name, args.config)
        dev = swap.swapon(target)
    except swap.SwapError as exc:
        raise CliError(f"swapon: {exc}") from None
    print(f"{target.image} on {dev}, swap priority {target.cfg.swap_priority}")
    return 0


def cmd_swapoff(args: argparse.Namespace) -> int:
    from zswapfs.service import swap

    try:
        swap.need_root("swapoff")
        target = swap.resolve(args.name, args.config)
        devices = swap.swapoff(target, keep_mount=args.keep_mount)
    except swap.SwapError as exc:
        raise CliError(f"swapoff: {exc}") from None
    print(f"swap off: {', '.join(devices) or 'no loop device'}; "
          f"{'mount kept' if args.keep_mount else 'unmounted'} {target.mountpoint}")  # fmt: skip
    return 0
