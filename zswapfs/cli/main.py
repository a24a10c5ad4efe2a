"""Command line entry: the argument parser and main(); each verb lives in its group module.

A verb's module is imported only when that verb runs, so parsing and a verb's own first checks
need nothing but the standard library: `zswapfs swapon` run by an unprivileged user stops at its
root check without loading the engine (numpy, lz4, pyfuse3), whatever it could import.
"""

import argparse
import importlib
import sys
from collections.abc import Callable

from zswapfs.cli import CliError

Verb = Callable[[argparse.Namespace], int]


def _verb(module: str, name: str) -> Verb:
    """zswapfs.cli.MODULE.NAME, imported when it is called."""

    def call(args: argparse.Namespace) -> int:
        fn: Verb = getattr(importlib.import_module(f"zswapfs.cli.{module}"), name)
        return fn(args)

    return call


# -- entry ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zswapfs", description="compressed swap image on FUSE")
    sub = p.add_subparsers(dest="verb", required=True)

    m = sub.add_parser("mount", help="mount an image (returns once the mount is live)")
    m.add_argument(
        "mountpoint",
        nargs="?",
        help="default: the config's mountpoint key, or /run/zswapfs/NAME for --config NAME.toml",
    )
    m.add_argument("--size", help="image size, e.g. 1G (default 1G)")
    m.add_argument("--codec", help="lz4 (default), zstd[:LEVEL] or none")
    m.add_argument("--pool", help="zsmalloc (default), zbud or z3fold")
    m.add_argument("--engine", help="native (compiled, default) or python (the reference)")
    m.add_argument(
        "--page-workers",
        type=int,
        help="native engine: threads that compress big writes beside the request thread "
        "(default: one per spare core, at most 3; 0: none)",
    )
    m.add_argument(
        "--frontend",
        choices=("native", "pyfuse3"),
        help="native (default): requests served in C by libfuse's worker threads; pyfuse3: the "
        "reference frontend (pyfuse3 + trio, no discard)",
    )
    m.add_argument("--threads", type=int, help="native frontend: most worker threads (4)")
    m.add_argument(
        "--clone-fd",
        action="store_true",
        default=None,
        help="native frontend: a /dev/fuse descriptor of its own for each worker thread",
    )
    m.add_argument(
        "--no-supervise",
        action="store_true",
        help="no supervisor: a crash of the daemon ends the mount (default: a supervisor restarts"
        " it and the new process takes the pool over; docs/restart.md)",
    )
    m.add_argument("--name", help="image file name (default swap.img)")
    m.add_argument("--max-chain", type=int, help="longest zspage, in pages (default 8)")
    m.add_argument("--maintenance-interval", type=float, help="seconds between checks (1)")
    m.add_argument(
        "--aggressive-maintenance",
        action="store_true",
        help="compact and migrate on every pass whatever they would gain (a test knob)",
    )
    m.add_argument("--config", help="TOML file with the same keys")
    m.add_argument(
        "--no-lock-memory",
        action="store_true",
        help="do not mlockall (only for images not used as swap)",
    )
    m.add_argument("--foreground", "-f", action="store_true", help="serve in this process")
    m.add_argument(
        "--log",
        help="log file (default: stderr in the foreground or under systemd,"
        " /var/log/zswapfs/MOUNTPOINT.log otherwise)",
    )
    m.add_argument("--verbose", "-v", action="store_true")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.add_argument("--resolved-config", help=argparse.SUPPRESS)
    r = m.add_argument_group("density in the background")
    r.add_argument(
        "--recompress",
        help="recompress idle pages: zstd:LEVEL with a trained dictionary (default zstd:9), off",
    )
    r.add_argument("--recompress-idle", type=float, help="seconds idle first (default 20)")
    r.add_argument(
        "--recompress-priority",
        choices=("idle", "normal"),
        help="idle (default): the loop runs at nice 19, on CPU other programs leave; normal: "
        "it competes for CPU like any thread, keeping pace under sustained load",
    )
    r.add_argument("--dict-size", help="bytes of each trained dictionary (default 16K)")
    r.add_argument("--no-dedup", action="store_true", help="do not merge identical pages")
    w = m.add_argument_group("writeback and memory limit")
    w.add_argument("--backing", help="backing file (raw image, page N at N*4096)")
    w.add_argument(
        "--force",
        action="store_true",
        help="take over an existing backing file "
        "zswapfs did not create (swap mode destroys its contents)",
    )
    w.add_argument("--mem-limit", help="pool memory budget, e.g. 256M (default: none)")
    w.add_argument("--high-watermark", type=int, help="%% of mem-limit to start writeback (100)")
    w.add_argument("--low-watermark", type=int, help="%% of mem-limit to stop writeback (90)")
    w.add_argument(
        "--mode",
        choices=["swap", "image"],
        help="swap: backing emptied at start"
        " (default); image: persistent, fsync and unmount flush to it",
    )
    w.add_argument(
        "--writeback-huge-first",
        action="store_true",
        help="write back incompressible pages before others",
    )
    w.add_argument(
        "--idle-writeback", type=float, help="write back pages idle this many seconds (0: off)"
    )
    mx = m.add_argument_group("metrics")
    mx.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (default: none)",
    )
    mx.add_argument(
        "--metrics-address",
        metavar="ADDR",
        help="address the metrics port listens on (default 127.0.0.1)",
    )
    m.set_defaults(func=_verb("mount", "cmd_mount"))

    rs = sub.add_parser(
        "restart",
        help="replace the process serving a mount with the installed version, live",
        description="The supervisor of MOUNTPOINT starts the installed zswapfs, which checks that"
        " it can take the mount's state over; then the serving process hands over and the new one"
        " serves the same mount, pool and swap, with nothing unmounted or swapped off. A version"
        " that cannot take the state over refuses and the old one goes on serving. The"
        " configuration stays the one the mount was made with. See docs/restart.md.",
    )
    rs.add_argument("mountpoint", nargs="?", help="default: the mountpoint of --config")
    rs.add_argument("--config", help="the TOML file the mount was made from (its mountpoint)")
    rs.set_defaults(func=_verb("mount", "cmd_restart"))

    sv = sub.add_parser("serve", help=argparse.SUPPRESS)  # a supervisor's child (supervisor.py)
    sv.add_argument("mountpoint")
    sv.add_argument("--resolved-config", required=True)
    sv.add_argument("--channel-fd", type=int, required=True)
    sv.add_argument("--takeover", action="store_true")
    sv.add_argument("--verbose", "-v", action="store_true")
    sv.set_defaults(func=_verb("mount", "cmd_serve"))

    u = sub.add_parser("umount", help="unmount and wait for the daemon to exit")
    u.add_argument("mountpoint")
    u.set_defaults(func=_verb("mount", "cmd_umount"))

    s = sub.add_parser("stats", help="zram-style figures of a mount")
    s.add_argument("mountpoint")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--prometheus", action="store_true", help="Prometheus text format")
    s.set_defaults(func=_verb("mount", "cmd_stats"))

    for verb, text in (
        ("swapon", "mount (if needed), losetup, mkswap and swapon an image"),
        ("swapoff", "swapoff, detach the loop device and unmount"),
    ):
        v = sub.add_parser(verb, help=text)
        v.add_argument("name", nargs="?", help="reads /etc/zswapfs/NAME.toml")
        v.add_argument("--config", help="a TOML file instead (NAME: its stem)")
        v.add_argument(
            "--stripes",
            type=int,
            help="N images, each its own daemon, at one swap priority (default: the config's"
            " stripes key, 1)",
        )
        if verb == "swapoff":
            v.add_argument("--keep-mount", action="store_true", help="leave the daemon running")
        v.set_defaults(func=_verb("swap", f"cmd_{verb}"))

    from zswapfs.cli import listing  # standard library only: the root check stays cheap

    ls = sub.add_parser(
        "list",
        aliases=["status"],
        help="one line per mounted zswapfs image, like zramctl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="columns:\n" + listing.columns_help(),
    )
    ls.add_argument("mountpoint", nargs="*", help="only these mounts (default: all)")
    ls.add_argument(
        "--output",
        "-o",
        metavar="COLUMNS",
        help="comma list of columns, or +LIST to add to the default ones",
    )
    ls.add_argument("--json", action="store_true", help="JSON, sizes in bytes")
    ls.add_argument("--bytes", "-b", action="store_true", help="sizes in bytes, not 1.5G")
    ls.add_argument("--noheadings", "-n", action="store_true", help="no header line")
    ls.set_defaults(func=_verb("listing", "cmd_list"))

    k = sub.add_parser("compact", help="compact the pool and release memory now")
    k.add_argument("mountpoint")
    k.set_defaults(func=_verb("mount", "cmd_compact"))

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
    c.set_defaults(func=_verb("lab", "cmd_capture"))

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
    b.add_argument(
        "--engine",
        choices=("native", "python"),
        default="native",
        help="the engine the in-process replay runs on (default native, as the daemon)",
    )
    b.add_argument("--no-zram", action="store_true", help="leave /dev/zram0 alone")
    b.add_argument("--churn", type=float, default=0.3, help="share of pages rewritten (0..1)")
    b.add_argument(
        "--recompress",
        default="zstd:9",
        help="settle each replay with this background recompression (default zstd:9, as the"
        " daemon), or off",
    )
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
    b.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="a timestamped line a step on stderr (default: a progress bar on a"
        " terminal, nothing in a pipe)",
    )
    b.set_defaults(func=_verb("lab", "cmd_bench"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"zswapfs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from zswapfs.service.config import ConfigError  # loaded already if it was raised

        if not isinstance(exc, ConfigError):
            raise
        print(f"zswapfs: {exc}", file=sys.stderr)
        return 1
