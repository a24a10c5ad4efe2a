"""Real memory's density through a mount as the background work settles it, against kernel zram
on the same pages.

Per corpus (memory captured from a bundled workload: Python dicts, an in-memory SQLite table,
Node.js objects), a mount of the default configuration (lz4, zsmalloc, recompression zstd:9
after 20 s idle, dedup) gets the corpus with `dd bs=1M oflag=direct`, then its density
(original bytes / (pool memory + tables, dictionaries included)) is read every few seconds
until the settle time. /dev/zram0 (lz4) gets the same pages in the same run; its density counts
its slot table as metadata. Density is not noisy as times are: one round is the default.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from typing import Any

from bench import harness
from zswapfs.lab import bench, kzram
from zswapfs.lab.replay import stats_density

NAME = "density"
QUESTION = "how much denser than zram real memory ends up once the background work settled"
BASELINE = "zram lz4"
NEEDS = ("root", "fuse", "zram")
ROUNDS = 1
CORPORA = ("py_dicts", "sqlite_mem", "node_objects")
UNITS = {f"density {c}": "x" for c in CORPORA} | {f"1.5x zram after {c}": "s" for c in CORPORA}


def run(ctx: harness.Context) -> dict[str, Any]:
    corpora = ctx.pick(
        ("py_dicts",), tuple(c for c in CORPORA if c != "node_objects" or shutil.which("node"))
    )
    mib = ctx.pick(16, 128)
    settle, every = ctx.pick(6.0, 60.0), ctx.pick(2.0, 5.0)
    extra = ctx.pick(("--recompress-idle", "1"), ())
    files = {c: harness.real_corpus(ctx, c, mib) for c in corpora}

    def measure(target: str, _round: int) -> dict[str, float]:
        corpus, pages = files[target]
        size = pages * 4096
        zram = stats_density(kzram.measure(corpus.read_bytes(), "lz4"))
        mnt = ctx.workdir / f"mnt-{target}-{_round}"
        mnt.mkdir()
        log = ctx.workdir / f"{target}.log"
        with bench.fio.zswapfs_mounted(mnt, size, "zsmalloc", "lz4", log, extra) as img:
            subprocess.run(
                ["dd", f"if={corpus}", f"of={img}", "bs=1M", "oflag=direct"],
                check=True,
                capture_output=True,
            )
            written, first, trace = time.monotonic(), None, []
            while True:
                at = time.monotonic() - written
                d = stats_density(bench.fio.read_mount_stats(mnt))
                trace.append((round(at, 1), d))
                if first is None and d >= 1.5 * zram:
                    first = at
                if at >= settle:
                    break
                time.sleep(min(every, settle - at + 0.05))
        ctx.log(f"  {target}: zram {zram:.3f}, written {trace[0][1]:.3f}, settled {d:.3f}")
        out = {"zram": zram, "written": trace[0][1], "settled": d, "pages": pages}
        if first is not None:
            out["first"] = first
        return out

    raw = harness.interleave(corpora, ctx.rounds, measure, ctx.log)
    samples: dict[str, dict[str, list[float]]] = {}
    for c in corpora:
        samples[f"density {c}"] = {
            "zram lz4": raw["zram"][c],
            "zswapfs as written": raw["written"][c],
            "zswapfs settled": raw["settled"][c],
        }
        if c in raw.get("first", {}):
            samples[f"1.5x zram after {c}"] = {"zswapfs settled": raw["first"][c]}
    params = {
        "corpora": {c: {"mib": mib, "pages": files[c][1]} for c in corpora},
        "settle_s": settle,
        "sample_every_s": every,
        "mount_options": list(extra),
        "pool": "zsmalloc",
        "codec": "lz4",
    }
    return harness.make_result(sys.modules[__name__], ctx, params, samples)


def tables(doc: dict[str, Any]) -> dict[str, str]:
    med, rat, p = doc["medians"], doc["ratios"], doc["params"]
    head = [
        "corpus",
        "pages",
        "zram lz4",
        "zswapfs as written",
        f"{p['settle_s']:g} s after the writes",
        "settled / zram",
        "1.5x zram reached after",
    ]
    rows = []
    for c, info in p["corpora"].items():
        m, first = med[f"density {c}"], med.get(f"1.5x zram after {c}", {}).get("zswapfs settled")
        rows.append(
            [
                c,
                harness.fmt(info["pages"]),
                harness.fmt(m["zram lz4"], 3),
                harness.fmt(m["zswapfs as written"], 3),
                harness.fmt(m["zswapfs settled"], 3),
                f"**{harness.fmt(rat[f'density {c}']['zswapfs settled'], 3)}**",
                "not within the run" if first is None else f"{first:.0f} s",
            ]
        )
    return {"settled": harness.table(head, rows)}
