"""Command line entry: the argument parser and main(); each verb lives in its group module."""

import argparse
import sys

from zswapfs.cli import CliError, lab, mount, swap
from zswapfs.service.config import ConfigError


# -- entry ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zswapfs", description="compressed swap image on FUSE")
    sub = p.add_subparsers(dest="verb", required=True)

    m = sub.add_parser("mount", help="mount an image (returns once the mount is live)")
    m.add_argument("mountpoint", nargs="?", help="default: the config's mountpoint key, or "
                   "/run/zswapfs/NAME for --config NAME.toml")  # fmt: skip
    m.add_argument("--size", help="image size, e.g. 1G (default 1G)")
    m.add_argument("--codec", help="lz4 (default), zstd[:LEVEL] or none")
    m.add_argument("--pool", help="zsmalloc (default), zbud or z3fold")
    m.add_argument("--engine", help="native (compiled, default; zsmalloc only) or python")
    m.add_argument("--name", help="image file name (default swap.img)")
    m.add_argument("--max-chain", type=int, help="longest zspage, in pages (default 8)")
    m.add_argument("--maintenance-interval", type=float, help="seconds between checks (1)")
    m.add_argument(
        "--aggressive-maintenance",
        action="store_true",
        help="compact and migrate on every pass whatever they would gain (a test knob)",
    )
    m.add_argument("--config", help="TOML file with the same keys")
    m.add_argument("--no-lock-memory", action="store_true",
                   help="do not mlockall (only for images not used as swap)")  # fmt: skip
    m.add_argument("--foreground", "-f", action="store_true", help="serve in this process")
    m.add_argument("--log", help="log file (default: stderr in the foreground, /tmp otherwise)")
    m.add_argument("--verbose", "-v", action="store_true")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.add_argument("--resolved-config", help=argparse.SUPPRESS)
    w = m.add_argument_group("writeback and memory limit")
    w.add_argument("--backing", help="backing file (raw image, page N at N*4096)")
    w.add_argument("--mem-limit", help="pool memory budget, e.g. 256M (default: none)")
    w.add_argument("--high-watermark", type=int, help="%% of mem-limit to start writeback (100)")
    w.add_argument("--low-watermark", type=int, help="%% of mem-limit to stop writeback (90)")
    w.add_argument("--mode", choices=["swap", "image"], help="swap: backing emptied at start"
                   " (default); image: persistent, fsync and unmount flush to it")  # fmt: skip
    w.add_argument("--writeback-huge-first", action="store_true",
                   help="write back incompressible pages before others")  # fmt: skip
    w.add_argument("--idle-writeback", type=float,
                   help="write back pages idle this many seconds (0: off)")  # fmt: skip
    m.set_defaults(func=mount.cmd_mount)

    u = sub.add_parser("umount", help="unmount and wait for the daemon to exit")
    u.add_argument("mountpoint")
    u.set_defaults(func=mount.cmd_umount)

    s = sub.add_parser("stats", help="zram-style figures of a mount")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=mount.cmd_stats)

    for verb, fn, text in (
        ("swapon", swap.cmd_swapon, "mount (if needed), losetup, mkswap and swapon an image"),
        ("swapoff", swap.cmd_swapoff, "swapoff, detach the loop device and unmount"),
    ):
        v = sub.add_parser(verb, help=text)
        v.add_argument("name", nargs="?", help="reads /etc/zswapfs/NAME.toml")
        v.add_argument("--config", help="a TOML file instead (NAME: its stem)")
        if verb == "swapoff":
            v.add_argument("--keep-mount", action="store_true", help="leave the daemon running")
        v.set_defaults(func=fn)

    k = sub.add_parser("compact", help="compact the pool and release memory now")
    k.add_argument("mountpoint")
    k.set_defaults(func=mount.cmd_compact)

    c = sub.add_parser(
        "capture",
        help="snapshot a process's private anonymous memory into a page corpus",
        description="Snapshot the resident private anonymous memory (heap, anonymous mappings,"
        " stack) of a running process (--pid) or of a command started here: when the command"
        " sends SIGUSR1 to its parent, or after --delay seconds (default 5) at the latest;"
        " --on-signal waits for the signal alone.",
    )
    c.add_argument("--pid", type=int)
    c.add_argument("--out", required=True, help="corpus file: raw 4 KiB pages")
    c.add_argument("--delay", type=float, help="seconds to let the command run first")
    c.add_argument("--on-signal", action="store_true", help="snapshot on SIGUSR1 from the command")
    c.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    c.set_defaults(func=lab.cmd_capture)

    b = sub.add_parser("bench", help="compare pools and codecs on real corpora, beside zram")
    b.add_argument("--pools", default="zbud,z3fold,zsmalloc")
    b.add_argument("--codecs", default="lz4,zstd:1,zstd:3")
    b.add_argument(
        "--corpus",
        action="append",
        help="FILE, capture:'COMMAND', builtin:NAME[:MiB] or synthetic:PAGES (repeatable;"
        " default builtin:py_dicts:64)",
    )
    b.add_argument(
        "--out", default="bench/results", help="directory for bench.json, bench.txt and PNG plots"
    )
    b.add_argument("--no-zram", action="store_true", help="leave /dev/zram0 alone")
    b.add_argument("--churn", type=float, default=0.3, help="share of pages rewritten (0..1)")
    b.add_argument(
        "--fio",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also mount every pool x codec (and the null-FUSE baseline) and run the fio"
        " jobs on the image (default: in-process replay only)",
    )
    b.add_argument("--fio-runtime", type=float, default=10.0, help="seconds per timed fio job")
    b.add_argument("--fio-size", default="256M", help="region the timed fio jobs use (256M)")
    b.add_argument("--fio-verify-size", default="64M", help="region the verify job checks (64M)")
    b.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    b.set_defaults(func=lab.cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, ConfigError) as exc:
        print(f"zswapfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
