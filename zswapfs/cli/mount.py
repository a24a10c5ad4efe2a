"""Verbs that serve and inspect one mount: mount, umount, stats, compact."""

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from zswapfs.cli import CliError
from zswapfs.lab.procs import process_alive
from zswapfs.service import config as cfgmod
from zswapfs.service import safepath
from zswapfs.service.config import MountConfig

#: how long `mount` waits for a background daemon to report the mount live
START_TIMEOUT = 30.0
#: how long `umount` waits for the daemon to exit after the unmount
STOP_TIMEOUT = 30.0


def _setup_logging(verbose: bool, logfile: str | None = None) -> None:
    """Log to *logfile* (opened as safepath.open_append does: no links, FIFOs or foreign files)
    or to stderr (the terminal, the journal under systemd, or the file `mount` opened for us)."""
    handler: logging.Handler
    if logfile:
        try:
            fd = safepath.open_append(logfile)
        except safepath.UnsafePath as exc:
            raise CliError(str(exc)) from None
        handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
    else:
        handler = logging.StreamHandler(sys.stderr)
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
    if args.no_dedup:
        overrides["dedup"] = False
    if args.no_supervise:
        overrides["supervise"] = False
    if args.dict_size is not None:
        overrides["dict_size"] = cfgmod.parse_size(args.dict_size, "--dict-size")
    for flag in ("aggressive_maintenance", "writeback_huge_first", "force"):
        if getattr(args, flag):
            overrides[flag] = True
    for key in (
        "codec",
        "pool",
        "engine",
        "page_workers",
        "frontend",
        "threads",
        "clone_fd",
        "name",
        "max_chain",
        "maintenance_interval",
        "high_watermark",
        "low_watermark",
        "mode",
        "idle_writeback",
        "recompress",
        "recompress_idle",
        "recompress_priority",
        "metrics_port",
        "metrics_address",
    ):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return dataclasses.replace(cfg, **overrides).check()


def _usage_lines(image: str) -> str:
    return (
        f"image: {image}\n"
        "use it as swap:\n"
        f"  dev=$(losetup --direct-io=on -f --show {image})\n"
        '  mkswap "$dev" && swapon --discard=pages -p 100 "$dev"\n'
        "and undo it:\n"
        f'  swapoff "$dev"; losetup -d "$dev"; zswapfs umount {os.path.dirname(image)}\n'
    )


def cmd_mount(args: argparse.Namespace) -> int:
    from zswapfs.service import daemon

    cfg = _mount_config(args)
    if cfg.stripes > 1:
        raise CliError(
            f"stripes: a swap of {cfg.stripes} stripes is set up by `zswapfs swapon`, which mounts"
            " each stripe itself"
        )
    if args.mountpoint:
        mountpoint = os.path.abspath(args.mountpoint)
    elif cfg.mountpoint or args.config:
        from zswapfs.service.swap import RUN_DIR

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
            return daemon.run(mountpoint, cfg, ready_fd=args.ready_fd, verbose=args.verbose)
        except daemon.MountError as exc:
            if args.ready_fd is not None:
                os.write(args.ready_fd, f"ERROR {exc}\n".encode())
            raise CliError(str(exc)) from None
    return _spawn(args, cfg, mountpoint, image)


def _spawn(args: argparse.Namespace, cfg: MountConfig, mountpoint: str, image: str) -> int:
    """Start the daemon in its own session and return once it reports the mount live."""
    # the daemon logs to its stderr: the journal when we run under systemd, else a file opened
    # here, once, safely (never a predictable name in a world-writable directory)
    if args.log is None and safepath.stderr_is_journal():
        logfile, out = "the journal", 2
    else:
        try:
            logfile = args.log or safepath.default_log(mountpoint)
            out = safepath.open_append(logfile)
        except safepath.UnsafePath as exc:
            raise CliError(str(exc)) from None
    read_end, write_end = os.pipe()
    cmd = [
        sys.executable,
        "-m",
        "zswapfs",
        "mount",
        mountpoint,
        "--foreground",
        "--ready-fd",
        str(write_end),
        "--resolved-config",
        json.dumps(dataclasses.asdict(cfg)),
    ]
    if args.verbose:
        cmd.append("--verbose")
    try:
        proc = subprocess.Popen(
            cmd,
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    finally:
        if out != 2:
            os.close(out)
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


def cmd_serve(args: argparse.Namespace) -> int:
    """The server a supervisor starts (supervisor.py); not for users."""
    from zswapfs.service import daemon

    _setup_logging(args.verbose)
    cfg = MountConfig(**json.loads(args.resolved_config)).check()
    try:
        return daemon.serve_supervised(args.mountpoint, cfg, args.channel_fd, args.takeover)
    except daemon.MountError as exc:
        raise CliError(str(exc)) from None


def cmd_restart(args: argparse.Namespace) -> int:
    from zswapfs.service import supervisor

    if args.mountpoint:
        mountpoint = os.path.abspath(args.mountpoint)
    elif args.config:
        from zswapfs.service.swap import RUN_DIR

        cfg = cfgmod.from_mapping(cfgmod.load_toml(args.config), where=f"{args.config}: ")
        mountpoint = cfg.mountpoint or str(RUN_DIR / Path(args.config).stem)
    else:
        raise CliError("restart needs a MOUNTPOINT (or the --config it was mounted from)")
    try:  # the supervisor first: a mount whose server hangs must still be restartable
        answer = supervisor.request_restart(mountpoint)
    except (ConnectionRefusedError, FileNotFoundError):
        st = read_stats(mountpoint)  # says what is wrong if it is not a live zswapfs mount
        raise CliError(
            f"{mountpoint} is served without a supervisor (pid {st.get('pid')}): it cannot be "
            "restarted live; see docs/restart.md"
        ) from None
    except OSError as exc:
        raise CliError(f"the supervisor of {mountpoint} did not answer ({exc})") from None
    if answer.startswith("OK"):
        print(f"{mountpoint}: restarted, {answer[3:]}")
        return 0
    raise CliError(f"{mountpoint}: {answer.removeprefix('ERROR ')}")


# -- umount, stats -------------------------------------------------------------------------------
def read_stats(mountpoint: str) -> dict[str, Any]:
    path = os.path.join(mountpoint, "stats")
    if not os.path.ismount(mountpoint):
        try:
            os.stat(mountpoint)
        except PermissionError:  # a zswapfs mount lets in only the user who made it
            raise CliError(
                f"{mountpoint}: permission denied (run as the user who mounted it, "
                "root for the daemon)"
            ) from None
        except OSError:
            pass
        raise CliError(f"{mountpoint} is not mounted")
    try:
        with open(path) as f:
            return dict(json.load(f))
    except OSError as exc:
        raise CliError(f"{mountpoint} is not a zswapfs mount ({path}: {exc.strerror})") from None
    except json.JSONDecodeError:
        raise CliError(f"{path} does not hold zswapfs stats") from None


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    st = read_stats(mountpoint)
    pids = [int(st["pid"])] + ([int(st["supervisor_pid"])] if st.get("supervisor_pid") else [])
    res = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if res.returncode != 0:
        raise CliError(f"cannot unmount {mountpoint}: {res.stderr.strip() or 'fusermount3 failed'}")
    deadline = time.monotonic() + STOP_TIMEOUT
    for pid in pids:
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
    if st.get("supervisor_pid"):
        lines[0] += f"  supervisor {st['supervisor_pid']}  takeovers {st.get('takeovers', 0)}"
    sizes = (
        "disksize",
        "orig_data_size",
        "compr_data_size",
        "mem_used_total",
        "mem_used_max",
        "mem_limit",
        "metadata_bytes",
    )
    for key in sizes:
        lines.append(f"  {key:<18} {st[key]:>14}  ({_human(st[key])})")
    for key in (
        "stored_pages",
        "same_pages",
        "huge_pages",
        "pages_compacted",
        "failed_reads",
        "failed_writes",
        "invalid_io",
    ):
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
    if args.prometheus:
        from zswapfs.service.metrics import render

        print(render(st), end="")
    else:
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
