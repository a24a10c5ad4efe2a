"""`zswapfs list` (alias `status`): one line per mounted zswapfs image, like zramctl.

Everything comes from the kernel and the daemons at the moment of asking
(zswapfs.service.mounts): the mounts from mountinfo, each mount's figures from its `stats` file,
loop devices from sysfs, swap priorities from /proc/swaps. A mount whose stats cannot be read
(a dead or stopped daemon) still gets its line, with `?` in the figures and a warning on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zswapfs.cli import CliError
from zswapfs.service import mounts

PAGE_SIZE = 4096
UNREADABLE = "?"


@dataclass(frozen=True)
class Column:
    header: str
    help: str
    kind: str  # "text", "size" (bytes), "count" or "ratio"
    get: Callable[[dict[str, Any]], Any]
    from_stats: bool = True  # unknown when the stats cannot be read

    @property
    def key(self) -> str:
        return self.header.lower()


def _ratio(st: dict[str, Any]) -> float | None:
    total = st["mem_used_total"]
    return round(st["orig_data_size"] / total, 2) if total else None


COLUMNS = {
    c.header: c
    for c in (
        Column(
            "MOUNTPOINT", "where the image is mounted", "text", lambda r: r["mountpoint"], False
        ),
        Column("IMAGE", "the image file", "text", lambda r: r["stats"]["image"]),
        Column("SIZE", "image size (disksize)", "size", lambda r: r["stats"]["disksize"]),
        Column("CODEC", "compression codec", "text", lambda r: r["stats"]["codec"]),
        Column("POOL", "pool allocator", "text", lambda r: r["stats"]["pool"]),
        Column(
            "MODE", "swap (ephemeral) or image (persistent)", "text", lambda r: r["stats"]["mode"]
        ),
        Column("PID", "daemon process id", "count", lambda r: r["stats"]["pid"]),
        Column(
            "PAGES", "pages stored (stored_pages)", "count", lambda r: r["stats"]["stored_pages"]
        ),
        Column(
            "DATA",
            "uncompressed data stored (orig_data_size)",
            "size",
            lambda r: r["stats"]["orig_data_size"],
        ),
        Column(
            "COMPR",
            "compressed data stored (compr_data_size)",
            "size",
            lambda r: r["stats"]["compr_data_size"],
        ),
        Column(
            "TOTAL",
            "memory the pool holds (mem_used_total)",
            "size",
            lambda r: r["stats"]["mem_used_total"],
        ),
        Column(
            "RATIO",
            "DATA / TOTAL: how many times denser than uncompressed",
            "ratio",
            lambda r: _ratio(r["stats"]),
        ),
        Column(
            "MEM-LIMIT", "pool memory budget (0: none)", "size", lambda r: r["stats"]["mem_limit"]
        ),
        Column(
            "MEM-USED",
            "peak pool memory (mem_used_max)",
            "size",
            lambda r: r["stats"]["mem_used_max"],
        ),
        Column(
            "ZERO-PAGES",
            "same-filled pages, stored without pool memory",
            "count",
            lambda r: r["stats"]["same_pages"],
        ),
        Column(
            "HUGE-PAGES",
            "incompressible pages, stored raw",
            "count",
            lambda r: r["stats"]["huge_pages"],
        ),
        Column("BACKING", "backing file for writeback", "text", lambda r: r["stats"]["backing"]),
        Column(
            "BD-USED",
            "data held in the backing file (bd_count pages)",
            "size",
            lambda r: r["stats"]["bd_count"] * PAGE_SIZE if r["stats"]["backing"] else None,
        ),
        Column(
            "LOOP",
            "loop device(s) on the image",
            "text",
            lambda r: ",".join(r["loops"]) or None,
            False,
        ),
        Column(
            "PRIO",
            "swap priority, if the loop device is swap",
            "count",
            lambda r: r["swap"].priority if r["swap"] else None,
            False,
        ),
        Column(
            "SWAP-USED",
            "swap in use on the loop device, as the kernel counts it",
            "size",
            lambda r: r["swap"].used_bytes if r["swap"] else None,
            False,
        ),
    )
}
DEFAULT_COLUMNS = (
    "MOUNTPOINT",
    "SIZE",
    "CODEC",
    "POOL",
    "PAGES",
    "DATA",
    "COMPR",
    "TOTAL",
    "RATIO",
    "BACKING",
    "BD-USED",
    "LOOP",
    "PRIO",
)


def columns_help() -> str:
    return "\n".join(f"  {c.header:<11} {c.help}" for c in COLUMNS.values())


def choose_columns(spec: str | None) -> list[Column]:
    """zramctl's -o: a comma list of columns, or '+LIST' to add to the default ones."""
    if not spec:
        return [COLUMNS[h] for h in DEFAULT_COLUMNS]
    names = list(DEFAULT_COLUMNS) if spec.startswith("+") else []
    names += [n.strip().upper() for n in spec.removeprefix("+").split(",") if n.strip()]
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise CliError(f"list: unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
    if not names:
        raise CliError("list: --output names no column")
    return [COLUMNS[n] for n in names]


def gather(only: list[str] | None = None) -> list[dict[str, Any]]:
    """One record per zswapfs mount: mountpoint, stats (or None and the reason), loop devices
    on its image, and the swap area of the first of them that is swap."""
    live = mounts.zswapfs_mounts()
    if only:
        for mp in only:
            if mp not in live:
                raise CliError(f"list: {mp} is not a zswapfs mount")
        live = [mp for mp in live if mp in only]
    loops = mounts.loop_devices()
    swaps = mounts.swaps()
    rows = []
    for mp in live:
        row: dict[str, Any] = {"mountpoint": mp, "stats": None, "error": None}
        try:
            row["stats"] = mounts.read_stats(mp)
        except mounts.StatsUnreadable as exc:
            row["error"] = f"stats unreadable: {exc}"
        image = row["stats"].get("image") if row["stats"] else None
        row["loops"] = [
            dev
            for dev, path in loops.items()
            if path == image or (image is None and os.path.dirname(path) == mp)
        ]
        row["swap"] = next((swaps[d] for d in row["loops"] if d in swaps), None)
        rows.append(row)
    return rows


def human(n: int) -> str:
    """zramctl's sizes: 0B, 4K, 12.3M, 1G."""
    value = float(n)
    for unit in "BKMGTP":
        if abs(value) < 1024 or unit == "P":
            break
        value /= 1024
    if unit == "B":
        return f"{n}B"
    text = f"{value:.1f}".removesuffix(".0")
    return f"{text}{unit}"


def cell(col: Column, row: dict[str, Any], raw_bytes: bool) -> str:
    if col.from_stats and row["stats"] is None:
        return UNREADABLE
    value = col.get(row)
    if value is None:
        return "-"
    if col.kind == "size" and not raw_bytes:
        return human(int(value))
    if col.kind == "ratio":
        return f"{value:.2f}"
    return str(value)


def format_table(
    rows: list[dict[str, Any]], cols: list[Column], raw_bytes: bool, headings: bool = True
) -> str:
    table = [[cell(c, r, raw_bytes) for c in cols] for r in rows]
    if headings:
        table.insert(0, [c.header for c in cols])
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    lines = []
    for line in table:
        parts = [
            text.ljust(w) if c.kind == "text" else text.rjust(w)
            for text, w, c in zip(line, widths, cols, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def as_json(rows: list[dict[str, Any]], cols: list[Column]) -> str:
    out = []
    for r in rows:
        item = {c.key: (None if c.from_stats and r["stats"] is None else c.get(r)) for c in cols}
        item["error"] = r["error"]
        out.append(item)
    return json.dumps({"mounts": out}, indent=1)


def cmd_list(args: argparse.Namespace) -> int:
    cols = choose_columns(args.output)
    only = [os.path.abspath(p) for p in args.mountpoint] or None
    try:
        rows = gather(only)
    except OSError as exc:
        raise CliError(f"list: {exc.filename}: {exc.strerror}") from None
    for r in rows:
        if r["error"]:
            print(f"zswapfs: list: {r['mountpoint']}: {r['error']}", file=sys.stderr)
    if args.json:
        print(as_json(rows, cols))
    elif rows:
        print(format_table(rows, cols, args.bytes, headings=not args.noheadings))
    return 0
