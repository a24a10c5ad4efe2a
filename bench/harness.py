"""The suite's harness: one way to run rounds, take medians, quote ratios and keep results.

Rules every whole-system benchmark follows (docs/benchmarks.md):
- Every target is measured in every round, and the targets take turns inside a round
  (`interleave`), so the drift of this shared machine hits them alike.
- A figure is the median of its rounds; a ratio is a median over its baseline's median, both
  from the same run. Nothing is compared with a figure of another run except by `compare`,
  which says whether the rounds overlap.
- A result file holds the rounds themselves, the medians, the ratios, the parameters and a
  description of the machine and the build (commit, kernel, libfuse, CPU count, load).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zswapfs.lab import cgroup, kzram
from zswapfs.lab.bench.run import machine_info

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
FORMAT = 1  # of a result file; bump when a key changes meaning


class Skipped(Exception):
    """This machine lacks what the benchmark needs (the message says what)."""


@dataclass
class Context:
    """What a benchmark's run() is given: the size of the run and where to work."""

    quick: bool
    rounds: int
    workdir: Path
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr, flush=True))

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


def needs(*what: str) -> None:
    """Raise Skipped unless this machine has each of: root, fuse, fio, zram, cgroup, swap-free."""
    for need in what:
        why = None
        if need == "root" and os.geteuid() != 0:
            why = "needs root"
        elif need == "fuse" and not os.path.exists("/dev/fuse"):
            why = "needs /dev/fuse"
        elif need == "fio" and not shutil.which("fio"):
            why = "needs fio (scripts/install-deps.sh installs it)"
        elif need == "zram":
            why = kzram.unavailable()
        elif need == "cgroup":
            why = cgroup.unavailable()
        elif need == "swap-free" and Path("/proc/swaps").read_text().count("\n") > 1:
            why = "another swap device is on: the comparison needs ours alone"
        if why:
            raise Skipped(why)


def interleave(
    targets: Iterable[str],
    rounds: int,
    measure: Callable[[str, int], dict[str, float]],
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Run measure(target, round) for every target in every round, targets taking turns (the
    order rotates each round, so no target always runs first after a pause). Returns
    samples[metric][target] = [one value per round]."""
    names = list(targets)
    samples: dict[str, dict[str, list[float]]] = {}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for target in order:
            for metric, value in measure(target, r).items():
                samples.setdefault(metric, {}).setdefault(target, []).append(float(value))
            if log:
                log(f"  round {r + 1}/{rounds} {target} done")
    return samples


def medians(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {m: {t: statistics.median(v) for t, v in by.items() if v} for m, by in samples.items()}


def ratios(med: dict[str, dict[str, float]], baseline: str) -> dict[str, dict[str, float]]:
    """Each target's median over the baseline's, per metric (metrics without it are left out)."""
    out: dict[str, dict[str, float]] = {}
    for metric, by in med.items():
        base = by.get(baseline)
        if base:
            out[metric] = {t: v / base for t, v in by.items()}
    return out


def _git(*args: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        res = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        )
        if res.returncode == 0:
            return res.stdout.strip()
    return "?"


def describe_build() -> dict[str, Any]:
    """The machine and the build a result comes from."""
    info = machine_info()
    info["commit"] = _git("rev-parse", "--short=12", "HEAD")
    info["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no").strip())
    libfuse = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        libfuse = (
            subprocess.run(
                ["pkg-config", "--modversion", "fuse3"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "?"
        )
    info["libfuse"] = libfuse
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return info


def make_result(
    module: Any,
    ctx: Context,
    params: dict[str, Any],
    samples: dict[str, dict[str, list[float]]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A result document for a benchmark module from its rounds."""
    med = medians(samples)
    return {
        "format": FORMAT,
        "benchmark": module.NAME,
        "question": module.QUESTION,
        "baseline": module.BASELINE,
        "units": module.UNITS,
        "quick": ctx.quick,
        "rounds": ctx.rounds,
        "params": params,
        "samples": samples,
        "medians": med,
        "ratios": ratios(med, module.BASELINE),
        "extra": extra or {},
        "machine": describe_build(),
    }


REQUIRED = (
    "format",
    "benchmark",
    "question",
    "baseline",
    "units",
    "quick",
    "rounds",
    "params",
    "samples",
    "medians",
    "ratios",
    "machine",
)
MACHINE_KEYS = ("commit", "kernel", "libfuse", "cpus", "date")


def check_result(doc: dict[str, Any]) -> list[str]:
    """What is wrong with a result document (empty when well formed)."""
    errors = [f"no {key}" for key in REQUIRED if key not in doc]
    if errors:
        return errors
    errors += [f"machine: no {k}" for k in MACHINE_KEYS if k not in doc["machine"]]
    if not doc["samples"]:
        errors.append("no samples")
    for metric, by in doc["samples"].items():
        if metric not in doc["units"]:
            errors.append(f"{metric}: no unit")
        for target, values in by.items():
            if not values or not all(isinstance(v, float) and math.isfinite(v) for v in values):
                errors.append(f"{metric}/{target}: bad samples {values!r}")
            med = doc["medians"].get(metric, {}).get(target)
            if med is None or med != statistics.median(values or [math.nan]):
                errors.append(f"{metric}/{target}: median {med!r} is not the rounds' median")
    return errors


def write_result(doc: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{doc['benchmark']}.json"
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def load_result(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


# -- tables ---------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    """A figure for a table: thousands separated, fixed digits, '-' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table(head: list[str], rows: list[list[str]], align: str = "") -> str:
    """A markdown table; align is one letter per column, l or r (default: first l, rest r)."""
    align = align or "l" + "r" * (len(head) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [head, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def source_line(doc: dict[str, Any], path: str) -> str:
    m = doc["machine"]
    if doc["quick"]:
        size = "quick run"
    elif doc["extra"].get("pyperf_file"):
        size = f"pyperf ({' '.join(doc['params']['pyperf'])}), medians of the values"
    else:
        size = f"{doc['rounds']} interleaved round{'s' * (doc['rounds'] > 1)}, medians"
    dirty = " (uncommitted changes)" if m.get("dirty") else ""
    return (
        f"_`{path}`: {size}; commit {m['commit']}{dirty}, {m['date']}, kernel {m['kernel']},"
        f" libfuse {m['libfuse']}, {m['cpus']} CPUs._"
    )


def target(
    st: contextlib.ExitStack,
    name: str,
    workdir: Path,
    size: int,
    zswapfs_options: Iterable[str] = (),
) -> Path:
    """The image of one target, set up for the rest of *st* (always torn down):
    "zram" (/dev/zram0, lz4), "c-ram" / "c-ram-1" (the minimal C libfuse file keeping pages in
    RAM, 4 threads / 1), "py-null" (the minimal pyfuse3 file, writes dropped), anything else a
    zswapfs mount (zsmalloc, lz4) with *zswapfs_options*."""
    from zswapfs.lab.bench import fio
    from zswapfs.lab.ramfs import ramfs_mounted

    if name == "zram":
        return Path(st.enter_context(kzram.configured(size, "lz4")))
    mnt, log = workdir / f"mnt-{name}", workdir / f"{name}.log"
    mnt.mkdir()
    if name in ("c-ram", "c-ram-1"):
        threads = 1 if name == "c-ram-1" else 4
        return Path(st.enter_context(ramfs_mounted(mnt, size, log, threads=threads)))
    if name == "py-null":
        return Path(st.enter_context(fio.null_mounted(mnt, size, log)))
    opts = tuple(zswapfs_options)
    return Path(st.enter_context(fio.zswapfs_mounted(mnt, size, "zsmalloc", "lz4", log, opts)))


def real_corpus(ctx: Context, name: str, mib: int) -> tuple[Path, int]:
    """A captured bundled workload's memory (zswapfs.lab.bench.corpus) as a file of whole MiBs
    in the work directory, read once so it sits in the page cache; (path, pages)."""
    from zswapfs.lab.bench.corpus import load_spec

    ctx.log(f"  capturing builtin:{name}:{mib}")
    corpus = load_spec(f"builtin:{name}:{mib}", ctx.workdir)
    usable = len(corpus.data) // (1 << 20) * (1 << 20)
    if not usable:
        raise RuntimeError(f"the {name} corpus is smaller than 1 MiB")
    path = ctx.workdir / f"{name}.raw"
    path.write_bytes(corpus.data[:usable])
    path.read_bytes()
    return path, usable // 4096
