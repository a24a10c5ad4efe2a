"""Command line: zswapfs mount | umount | stats.

User-facing failures are one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from zswapfs import config as cfgmod
from zswapfs.config import ConfigError, MountConfig

log = logging.getLogger("zswapfs")

#: how long `mount` waits for a background daemon to report the mount live
START_TIMEOUT = 30.0
#: how long `umount` waits for the daemon to exit after the unmount
STOP_TIMEOUT = 30.0


class CliError(Exception):
    pass


def _setup_logging(verbose: bool, logfile: str | None = None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


# -- mount ---------------------------------------------------------------------------------------
def _mount_config(args: argparse.Namespace) -> MountConfig:
    cfg = MountConfig()
    if args.config:
        cfg = cfgmod.from_mapping(cfgmod.load_toml(args.config), cfg, where=f"{args.config}: ")
    overrides: dict[str, Any] = {}
    if args.size is not None:
        overrides["size"] = cfgmod.parse_size(args.size, "--size")
    if args.mem_limit is not None:
        overrides["mem_limit"] = cfgmod.parse_size(args.mem_limit, "--mem-limit")
    if args.backing is not None:
        overrides["backing"] = os.path.abspath(args.backing)
    if args.no_lock_memory:
        overrides["lock_memory"] = False
    for flag in ("aggressive_maintenance", "writeback_huge_first"):
        if getattr(args, flag):
            overrides[flag] = True
    for key in ("codec", "pool", "name", "max_chain", "maintenance_interval", "high_watermark",
                "low_watermark", "mode", "idle_writeback"):  # fmt: skip
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return dataclasses.replace(cfg, **overrides).check()


def _usage_lines(image: str) -> str:
    return (
        f"image: {image}\n"
        "use it as swap:\n"
        f"  dev=$(losetup --direct-io=on -f --show {image})\n"
        '  mkswap "$dev" && swapon -p 100 "$dev"\n'
        "and undo it:\n"
        f'  swapoff "$dev"; losetup -d "$dev"; zswapfs umount {os.path.dirname(image)}\n'
    )


def _default_log(mountpoint: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.abspath(mountpoint)).strip("_") or "root"
    return f"/tmp/zswapfs-{tag}.log"


def cmd_mount(args: argparse.Namespace) -> int:
    from zswapfs import daemon

    cfg = _mount_config(args)
    if args.mountpoint:
        mountpoint = os.path.abspath(args.mountpoint)
    elif cfg.mountpoint or args.config:
        from zswapfs.swap import RUN_DIR

        mountpoint = cfg.mountpoint or str(RUN_DIR / Path(args.config).stem)
        os.makedirs(mountpoint, exist_ok=True)  # a derived mountpoint is ours to create
    else:
        raise CliError("mount needs a MOUNTPOINT (or a --config whose name or key gives one)")
    try:
        daemon.check_mountpoint(mountpoint)
    except daemon.MountError as exc:
        raise CliError(str(exc)) from None
    image = os.path.join(mountpoint, cfg.name)
    if args.resolved_config:
        cfg = MountConfig(**json.loads(args.resolved_config)).check()
    if args.foreground:
        _setup_logging(args.verbose, args.log)
        if args.ready_fd is None:
            print(_usage_lines(image) + "Ctrl-C unmounts.", flush=True)
        try:
            daemon.run(mountpoint, cfg, ready_fd=args.ready_fd)
        except daemon.MountError as exc:
            if args.ready_fd is not None:
                os.write(args.ready_fd, f"ERROR {exc}\n".encode())
            raise CliError(str(exc)) from None
        return 0
    return _spawn(args, cfg, mountpoint, image)


def _spawn(args: argparse.Namespace, cfg: MountConfig, mountpoint: str, image: str) -> int:
    """Start the daemon in its own session and return once it reports the mount live."""
    logfile = args.log or _default_log(mountpoint)
    read_end, write_end = os.pipe()
    cmd = [
        sys.executable, "-m", "zswapfs", "mount", mountpoint, "--foreground",
        "--ready-fd", str(write_end), "--log", logfile,
        "--resolved-config", json.dumps(dataclasses.asdict(cfg)),
    ]  # fmt: skip
    if args.verbose:
        cmd.append("--verbose")
    try:
        out = open(logfile, "ab")
    except OSError as exc:
        raise CliError(f"cannot open log file {logfile}: {exc.strerror}") from None
    with out:
        proc = subprocess.Popen(
            cmd,
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        msg = ready.read().decode(errors="replace").strip()  # EOF: ready, or the daemon died
    if msg == "READY":
        print(_usage_lines(image) + f"daemon pid {proc.pid}, log {logfile}")
        return 0
    try:
        status = proc.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        status = proc.wait()
    reason = msg.removeprefix("ERROR ").strip() or f"daemon exited with status {status}"
    raise CliError(f"mount failed: {reason} (log: {logfile})")


# -- umount, stats -------------------------------------------------------------------------------
def read_stats(mountpoint: str) -> dict[str, Any]:
    path = os.path.join(mountpoint, "stats")
    if not os.path.ismount(mountpoint):
        raise CliError(f"{mountpoint} is not mounted")
    try:
        with open(path) as f:
            return dict(json.load(f))
    except OSError as exc:
        raise CliError(f"{mountpoint} is not a zswapfs mount ({path}: {exc.strerror})") from None
    except json.JSONDecodeError:
        raise CliError(f"{path} does not hold zswapfs stats") from None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    pid = int(read_stats(mountpoint)["pid"])
    res = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if res.returncode != 0:
        raise CliError(f"cannot unmount {mountpoint}: {res.stderr.strip() or 'fusermount3 failed'}")
    deadline = time.monotonic() + STOP_TIMEOUT
    while process_alive(pid):
        if time.monotonic() > deadline:
            raise CliError(f"unmounted {mountpoint}, but daemon {pid} has not exited")
        time.sleep(0.05)
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def format_stats(st: dict[str, Any]) -> str:
    lines = [f"{st.get('image', '')}  codec {st['codec']}  pool {st['pool']}  pid {st.get('pid')}"]
    sizes = ("disksize", "orig_data_size", "compr_data_size", "mem_used_total", "mem_used_max",
             "mem_limit", "metadata_bytes")  # fmt: skip
    for key in sizes:
        lines.append(f"  {key:<18} {st[key]:>14}  ({_human(st[key])})")
    for key in ("stored_pages", "same_pages", "huge_pages", "pages_compacted",
                "failed_reads", "failed_writes", "invalid_io"):  # fmt: skip
        lines.append(f"  {key:<18} {st[key]:>14}")
    if st["mem_used_total"]:
        lines.append(f"  {'ratio':<18} {st['orig_data_size'] / st['mem_used_total']:>14.2f}")
    pool = st.get("pool_stats", {})
    lines.append(f"  pool {st['pool']}:")
    for key, value in pool.items():
        if not isinstance(value, list):
            lines.append(f"    {key:<24} {value:>12}")
    classes = pool.get("classes") or []
    if classes:
        cols = list(classes[0])
        lines.append("  " + " ".join(f"{c:>16}" for c in cols))
        for row in classes:
            lines.append("  " + " ".join(f"{row[c]:>16}" for c in cols))
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    st = read_stats(os.path.abspath(args.mountpoint))
    print(json.dumps(st, indent=1) if args.json else format_stats(st))
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    before = read_stats(mountpoint)
    try:
        with open(os.path.join(mountpoint, "control"), "w") as control:
            control.write("compact\n")
    except OSError as exc:
        raise CliError(f"compact on {mountpoint} failed: {exc.strerror}") from None
    after = read_stats(mountpoint)
    mb = 1 << 20
    print(
        f"mem_used_total {before['mem_used_total'] / mb:.1f} MiB -> "
        f"{after['mem_used_total'] / mb:.1f} MiB; rss {before['rss_bytes'] / mb:.1f} MiB -> "
        f"{after['rss_bytes'] / mb:.1f} MiB; pages compacted "
        f"{after['pages_compacted'] - before['pages_compacted']}, migrated "
        f"{after['pool_stats']['migrated_pages'] - before['pool_stats']['migrated_pages']}, "
        f"segments released "
        f"{after['pool_stats']['segments_released'] - before['pool_stats']['segments_released']}"
    )
    return 0


def cmd_swapon(args: argparse.Namespace) -> int:
    from zswapfs import swap

    try:
        swap.need_root("swapon")
        target = swap.resolve(args.name, args.config)
        dev = swap.swapon(target)
    except swap.SwapError as exc:
        raise CliError(f"swapon: {exc}") from None
    print(f"{target.image} on {dev}, swap priority {target.cfg.swap_priority}")
    return 0


def cmd_swapoff(args: argparse.Namespace) -> int:
    from zswapfs import swap

    try:
        swap.need_root("swapoff")
        target = swap.resolve(args.name, args.config)
        devices = swap.swapoff(target, keep_mount=args.keep_mount)
    except swap.SwapError as exc:
        raise CliError(f"swapoff: {exc}") from None
    print(f"swap off: {', '.join(devices) or 'no loop device'}; "
          f"{'mount kept' if args.keep_mount else 'unmounted'} {target.mountpoint}")  # fmt: skip
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from zswapfs import capture

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if (args.pid is None) == (not command):
        raise CliError("capture needs exactly one of --pid PID or -- COMMAND ...")
    try:
        if args.pid is not None:
            with open(args.out, "wb") as out:
                res = capture.capture_pid(args.pid, out)
        else:
            delay = None if args.on_signal else (args.delay if args.delay is not None else 5.0)
            res = capture.capture_command(command, Path(args.out), delay)
    except capture.CaptureError as exc:
        raise CliError(f"capture: {exc}") from None
    except OSError as exc:
        raise CliError(f"capture: {args.out}: {exc.strerror}") from None
    print(
        f"captured {res.pages} pages ({res.pages * 4096 >> 20} MiB) from {res.regions} anonymous"
        f" regions of process {res.pid} into {args.out}"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from zswapfs import bench

    def progress(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    fio = None
    if args.fio:
        fio = bench.FioOptions(
            runtime=args.fio_runtime,
            size=cfgmod.parse_size(args.fio_size, "--fio-size"),
            verify_size=cfgmod.parse_size(args.fio_verify_size, "--fio-verify-size"),
        )
    if not args.no_plots:
        why = bench.plotting_unavailable()
        if why:
            raise CliError(f"bench: {why}")
    try:
        result = bench.run(
            args.corpus or ["builtin:py_dicts:64"],
            [p.strip() for p in args.pools.split(",") if p.strip()],
            [c.strip() for c in args.codecs.split(",") if c.strip()],
            with_zram=not args.no_zram,
            churn=args.churn,
            progress=progress,
            fio=fio,
        )
    except (bench.BenchError, ValueError) as exc:
        raise CliError(f"bench: {exc}") from None
    print(bench.format_table(result))
    paths = bench.write_outputs(result, Path(args.out))
    if not args.no_plots:
        paths += bench.write_plots(result, Path(args.out))
    for path in paths:
        print(f"wrote {path}")
    return 0


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
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount and wait for the daemon to exit")
    u.add_argument("mountpoint")
    u.set_defaults(func=cmd_umount)

    s = sub.add_parser("stats", help="zram-style figures of a mount")
    s.add_argument("mountpoint")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)

    for verb, fn, text in (
        ("swapon", cmd_swapon, "mount (if needed), losetup, mkswap and swapon an image"),
        ("swapoff", cmd_swapoff, "swapoff, detach the loop device and unmount"),
    ):
        v = sub.add_parser(verb, help=text)
        v.add_argument("name", nargs="?", help="reads /etc/zswapfs/NAME.toml")
        v.add_argument("--config", help="a TOML file instead (NAME: its stem)")
        if verb == "swapoff":
            v.add_argument("--keep-mount", action="store_true", help="leave the daemon running")
        v.set_defaults(func=fn)

    k = sub.add_parser("compact", help="compact the pool and release memory now")
    k.add_argument("mountpoint")
    k.set_defaults(func=cmd_compact)

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
    c.set_defaults(func=cmd_capture)

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
        help="also mount every pool x codec (and the null-FUSE baseline) and run the bench/fio"
        " jobs on the image (default: in-process replay only)",
    )
    b.add_argument("--fio-runtime", type=float, default=10.0, help="seconds per timed fio job")
    b.add_argument("--fio-size", default="256M", help="region the timed fio jobs use (256M)")
    b.add_argument("--fio-verify-size", default="64M", help="region the verify job checks (64M)")
    b.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    b.set_defaults(func=cmd_bench)
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
