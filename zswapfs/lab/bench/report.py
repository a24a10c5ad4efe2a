"""The bench's tables: text and JSON."""

from __future__ import annotations

import json
from pathlib import Path

from zswapfs.lab.bench.fio import null_baseline
from zswapfs.lab.bench.run import BenchRun

# -- output --------------------------------------------------------------------------------------
MIB = 2**20


def format_table(run_: BenchRun) -> str:
    head = (f"{'corpus':<14}{'pool':<10}{'codec':<9}{'density':>8}{'vs zram':>8}{'pool-only':>10}"
            f"{'effic.':>7}{'store/s':>9}{'load/s':>9}{'churn MiB':>10}{'compact':>9}")  # fmt: skip
    engines = sorted({r["engine"] for r in run_.rows if "engine" in r})
    lines = [f"in-process replay on the {' and '.join(engines) or '?'} engine", head]
    lines.append("-" * len(head))
    zram = {r["corpus"]: r["density"] for r in run_.rows if r["pool"] == "zram"}
    for r in run_.rows:
        vs = f"{r['density'] / zram[r['corpus']]:.3f}" if r["corpus"] in zram else "-"
        rate = (f"{r['store_pages_per_s']:>9.0f}{r['load_pages_per_s']:>9.0f}"
                if "store_pages_per_s" in r else f"{'-':>9}{'-':>9}")  # fmt: skip
        churn = (f"{r['churn_mem_used'] / MIB:>10.1f}{r['compacted_mem_used'] / MIB:>9.1f}"
                 if r.get("churn_mem_used") else f"{'-':>10}{'-':>9}")  # fmt: skip
        lines.append(f"{r['corpus']:<14}{r['pool']:<10}{r['codec']:<9}{r['density']:>8.3f}{vs:>8}"
                     f"{r['pool_density']:>10.3f}{r['efficiency']:>7.3f}{rate}{churn}")  # fmt: skip
    settled = [r for r in run_.rows if r.get("settled_density")]
    if settled:
        lines += ["", f"after the background recompression ({run_.settings.get('recompress')},"
                      " trained dictionary) and dedup settled, every page idle",
                  f"{'corpus':<14}{'pool':<10}{'codec':<9}{'density':>8}"
                  f"{'settled':>8}{'vs zram':>8}{'settle s':>9}{'recomp.':>8}"
                  f"{'dict KiB':>9}{'dedup':>7}"]  # fmt: skip
        for r in settled:
            vs = (f"{r['settled_density'] / zram[r['corpus']]:>8.3f}" if r["corpus"] in zram
                  else f"{'-':>8}")  # fmt: skip
            lines.append(f"{r['corpus']:<14}{r['pool']:<10}{r['codec']:<9}{r['density']:>8.3f}"
                         f"{r['settled_density']:>8.3f}{vs}{r['settle_seconds']:>9.2f}"
                         f"{r['recompressed_pages']:>8}{r['dict_bytes'] / 1024:>9.0f}"
                         f"{r['pages_deduped']:>7}")  # fmt: skip
    if run_.timelines:
        lines += ["", "pool memory through fill / free a random half (zero pages) / compact, MiB",
                  f"{'corpus':<14}{'pool':<10}{'codec':<9}{'filled':>9}{'freed':>9}"
                  f"{'compacted':>11}{'steps':>7}{'seconds':>9}"]  # fmt: skip
        for t in run_.timelines:
            lines.append(f"{t['corpus']:<14}{t['pool']:<10}{t['codec']:<9}"
                         f"{t['mem_after_fill'] / MIB:>9.1f}{t['mem_after_free'] / MIB:>9.1f}"
                         f"{t['mem_after_compact'] / MIB:>11.1f}{t['compact_steps']:>7}"
                         f"{t['seconds'][-1]:>9.2f}")  # fmt: skip
    if run_.fio:
        fs = run_.settings.get("fio") or {}
        lines += ["", f"fio through a mount: O_DIRECT psync, 50%-compressible buffers; timed jobs"
                      f" {fs.get('runtime_s', '?'):g} s on {fs.get('size', 0) / MIB:.0f} MiB,"
                      f" verify job on {fs.get('verify_size', 0) / MIB:.0f} MiB"]  # fmt: skip
        head = (f"{'pool':<10}{'codec':<9}{'job':<15}{'IOPS':>8}{'MiB/s':>8}{'p99 r us':>10}"
                f"{'p99 w us':>10}{'vs null':>9}")  # fmt: skip
        lines += [head, "-" * len(head)]
        for r in run_.fio:
            p99 = "".join(f"{r[k]:>10.0f}" if r[k] is not None else f"{'-':>10}"
                          for k in ("read_p99_us", "write_p99_us"))  # fmt: skip
            vs = f"{r['vs_null']:>9.3f}" if r.get("vs_null") is not None else f"{'-':>9}"
            lines.append(f"{r['pool']:<10}{r['codec']:<9}{r['job']:<15}{r['iops']:>8.0f}"
                         f"{r['bw_bytes'] / MIB:>8.1f}{p99}{vs}")  # fmt: skip
        drift = [f"{job} {b['drift']:+.1%}" for job, b in null_baseline(run_.fio).items()
                 if "drift" in b]  # fmt: skip
        if drift:
            lines.append(f"vs null: IOPS / mean of the null-FUSE start and end rows; the baseline"
                         f" moved {', '.join(drift)} from start to end")  # fmt: skip
    if run_.fio_mounts:
        lines += ["", "each mount after its fio jobs",
                  f"{'pool':<10}{'codec':<9}{'stored MiB':>11}{'pool MiB':>10}{'density':>9}"
                  f"{'daemon RSS MiB':>16}"]  # fmt: skip
        for m in run_.fio_mounts:
            lines.append(f"{m['pool']:<10}{m['codec']:<9}{m['orig_data_size'] / MIB:>11.1f}"
                         f"{m['mem_used_total'] / MIB:>10.1f}{m['density']:>9.3f}"
                         f"{m['rss_bytes'] / MIB:>16.1f}")  # fmt: skip
    return "\n".join(lines)


def write_outputs(run_: BenchRun, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.json"
    doc = {"machine": run_.machine, "settings": run_.settings, "corpora": run_.corpora,
           "rows": run_.rows, "fio": run_.fio, "fio_null": null_baseline(run_.fio),
           "fio_mounts": run_.fio_mounts,
           "timelines": run_.timelines}  # fmt: skip
    path.write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / "bench.txt").write_text(format_table(run_) + "\n")
    return [path, out_dir / "bench.txt"]
