"""Verbs that measure: capture, bench."""

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from zswapfs.cli import CliError
from zswapfs.service import config as cfgmod


def cmd_capture(args: argparse.Namespace) -> int:
    from zswapfs.lab import capture

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


class Progress:
    """The bench's progress callback: a progress bar on a terminal, nothing in a pipe; with
    verbose, one timestamped line a step wherever stderr goes."""

    def __init__(self, total: int, verbose: bool) -> None:
        self.verbose = verbose
        self.bar: Any = None
        if not verbose and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                file=sys.stderr,
                unit="step",
                leave=False,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n}/{total} [{elapsed}<{remaining}]",
            )

    def __call__(self, msg: str) -> None:
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
        elif self.bar is not None:
            self.bar.update(1)  # step n of total has started
            self.bar.set_description_str(msg)  # and refreshes, whatever tqdm's rate limit

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_bench(args: argparse.Namespace) -> int:
    from zswapfs.lab import bench

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
    specs = args.corpus or ["builtin:py_dicts:64"]
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    progress = Progress(
        bench.planned_steps(len(specs), pools, codecs, not args.no_zram, fio is not None),
        args.verbose,
    )
    try:
        result = bench.run(
            specs,
            pools,
            codecs,
            with_zram=not args.no_zram,
            churn=args.churn,
            recompress=None if args.recompress == "off" else args.recompress,
            engine=args.engine,
            progress=progress,
            fio=fio,
        )
    except (bench.BenchError, ValueError) as exc:
        raise CliError(f"bench: {exc}") from None
    finally:
        progress.close()
    print(bench.format_table(result))
    paths = bench.write_outputs(result, Path(args.out))
    if not args.no_plots:
        paths += bench.write_plots(result, Path(args.out))
    for path in paths:
        print(f"wrote {path}")
    return 0
