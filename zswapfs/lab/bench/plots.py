"""The bench's PNG plots (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zswapfs.lab.bench.fio import null_baseline
from zswapfs.lab.bench.report import MIB
from zswapfs.lab.bench.run import BenchRun

# -- plots ---------------------------------------------------------------------------------------
POOL_COLORS = {"zbud": "#d9822b", "z3fold": "#3b9a4a", "zsmalloc": "#2f6db5"}
REFERENCE_COLOR = "#7a7a7a"
PHASE_SHADES = ("#fdf6d8", "#fbe3e0", "#e3f2e5")
FIGSIZE = (7.0, 4.0)
DPI = 80


def plotting_unavailable() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots need matplotlib: pip install 'zswapfs[bench]' (or pass --no-plots)"
    return None


def _shade(color: str, i: int, n: int) -> tuple[float, float, float]:
    """The i-th of n shades of *color*: the first full, later ones mixed with white."""
    r, g, b = (int(color[k : k + 2], 16) / 255 for k in (1, 3, 5))
    mix = 0.55 * i / max(1, n - 1)
    return (r + (1 - r) * mix, g + (1 - g) * mix, b + (1 - b) * mix)


def _config_colors(pools: list[str], codecs: list[str]) -> dict[str, tuple[float, float, float]]:
    colors = {}
    for pool in pools:
        for i, codec in enumerate(codecs):
            colors[f"{pool} {codec}"] = _shade(POOL_COLORS.get(pool, "#555555"), i, len(codecs))
    return colors


def write_plots(run_: BenchRun, out_dir: Path) -> list[Path]:
    """density.png, throughput.png, fio.png (with fio rows), memory-CORPUS.png (with timelines),
    density-settling.png (with settled replays)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    out_dir.mkdir(parents=True, exist_ok=True)
    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7})
    written: list[Path] = []
    replays = [r for r in run_.rows if r["pool"] != "zram"]
    pools = list(dict.fromkeys(r["pool"] for r in replays))
    codecs = list(dict.fromkeys(r["codec"] for r in replays))
    colors = _config_colors(pools, codecs)
    corpora = [c["name"] for c in run_.corpora]

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        written.append(path)

    # density: grouped bars per corpus, zram as the grey first bar of each group
    if replays:
        fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
        labels = (["zram lz4"] if any(r["pool"] == "zram" for r in run_.rows) else []) + list(
            colors
        )
        width = 0.85 / len(labels)
        by_key = {(r["corpus"], f"{r['pool']} {r['codec']}"): r for r in run_.rows}
        for i, label in enumerate(labels):
            xs = [g + (i - (len(labels) - 1) / 2) * width for g in range(len(corpora))]
            ys = [by_key[(c, label)]["density"] if (c, label) in by_key else 0 for c in corpora]
            is_zram = label == "zram lz4"
            ax.bar(
                xs,
                ys,
                width,
                label=label,
                color=REFERENCE_COLOR if is_zram else colors[label],
                hatch="//" if is_zram else None,
                edgecolor="white",
                linewidth=0.3,
            )
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(corpora)), corpora)
        ax.set_ylabel("density: stored / (pool + metadata)")
        ax.set_title("Density per pool and codec (kernel zram lz4 hatched grey)")
        ax.legend(
            ncol=min(5, len(labels)), loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False
        )
        save(fig, "density.png")

        # in-process throughput: store and load pages/s per configuration, a bar per corpus
        fig, axes = plt.subplots(
            2, 1, figsize=(FIGSIZE[0], FIGSIZE[1] + 0.8), sharex=True, layout="constrained"
        )
        configs = list(colors)
        width = 0.8 / max(1, len(corpora))
        panels = (
            (axes[0], "store_pages_per_s", "store (compress + place)"),
            (axes[1], "load_pages_per_s", "load (read + decompress)"),
        )
        for ax, key, title in panels:
            for j, c in enumerate(corpora):
                xs = [k + (j - (len(corpora) - 1) / 2) * width for k in range(len(configs))]
                ys = [by_key[(c, cf)][key] / 1000 if (c, cf) in by_key else 0 for cf in configs]
                ax.bar(
                    xs,
                    ys,
                    width,
                    color=[colors[cf] for cf in configs],
                    alpha=1.0 - 0.45 * j / max(1, len(corpora) - 1),
                    edgecolor="black",
                    linewidth=0.3,
                    label=c,
                )
            ax.set_ylabel("k pages/s")
            ax.set_title(f"In-process {title}; bars left to right: {', '.join(corpora)}")
        axes[1].set_xticks(range(len(configs)), [cf.replace(" ", "\n") for cf in configs])
        save(fig, "throughput.png")

    # fio through a real mount: IOPS and p99 per job, null-FUSE first
    if run_.fio:
        fio_configs = list(dict.fromkeys(f"{r['pool']} {r['codec']}" for r in run_.fio))
        jobs = list(dict.fromkeys(r["job"] for r in run_.fio))
        by_job = {(f"{r['pool']} {r['codec']}", r["job"]): r for r in run_.fio}
        baseline = null_baseline(run_.fio)
        fig, axes = plt.subplots(
            1, len(jobs), figsize=FIGSIZE, sharey=False, layout="constrained", squeeze=False
        )
        for ax, job in zip(axes[0], jobs, strict=True):
            ys = [by_job[(cf, job)]["iops"] if (cf, job) in by_job else 0 for cf in fio_configs]
            cols = [colors.get(cf, REFERENCE_COLOR) for cf in fio_configs]
            ax.barh(range(len(fio_configs)), ys, color=cols, edgecolor="black", linewidth=0.3)
            null = baseline.get(job)
            if null:
                ax.axvline(null["mean_iops"], color=REFERENCE_COLOR, linestyle="--", linewidth=0.8)
            ax.set_title(job)
            ax.set_xlabel("IOPS (read + write)")
            ax.set_yticks(
                range(len(fio_configs)),
                fio_configs if ax is axes[0][0] else [""] * len(fio_configs),
            )
            ax.invert_yaxis()
        fig.suptitle("fio through the FUSE mount (O_DIRECT); dashed: null-FUSE mean")
        save(fig, "fio.png")

    # memory through fill / free half / compact, one panel per pool, a figure per corpus
    for corpus in corpora:
        lines = [t for t in run_.timelines if t["corpus"] == corpus]
        if not lines:
            continue
        fig, axes = plt.subplots(
            1, len(lines), figsize=FIGSIZE, sharey=True, layout="constrained", squeeze=False
        )
        for ax, t in zip(axes[0], lines, strict=True):
            color = POOL_COLORS.get(t["pool"], "#555555")
            for (a, b), shade in zip(t["phases"].values(), PHASE_SHADES, strict=False):
                ax.axvspan(a, b, color=shade, linewidth=0)
            ax.plot(
                t["seconds"], [m / MIB for m in t["mem_used"]], color=color, label="pool memory"
            )
            ax.plot(
                t["seconds"],
                [m / MIB for m in t["compr_data_size"]],
                color=color,
                linestyle="--",
                linewidth=0.9,
                label="compressed bytes",
            )
            ax.set_title(f"{t['pool']} {t['codec']}")
            ax.set_xlabel("seconds")
        axes[0][0].set_ylabel("MiB")
        handles, _ = axes[0][0].get_legend_handles_labels()
        phases = list(lines[0]["phases"])
        for phase, shade in zip(phases, PHASE_SHADES, strict=False):
            handles.append(Patch(color=shade, label=f"{phase} phase"))
        axes[0][0].legend(handles=handles, loc="upper left", frameon=False)
        fig.suptitle(f"{corpus}: fill, free a random half, compact")
        save(fig, f"memory-{corpus}.png")

    # density over time while the background recompression settles, a panel per corpus
    settling = [r for r in replays if r.get("settle_timeline")]
    if settling:
        fig, axes = plt.subplots(
            1, len(corpora), figsize=FIGSIZE, sharey=True, layout="constrained", squeeze=False
        )
        zram = {r["corpus"]: r["density"] for r in run_.rows if r["pool"] == "zram"}
        for ax, corpus in zip(axes[0], corpora, strict=True):
            for r in (r for r in settling if r["corpus"] == corpus):
                label = f"{r['pool']} {r['codec']}"
                secs = [s for s, _ in r["settle_timeline"]]
                dens = [d for _, d in r["settle_timeline"]]
                ax.plot(secs, dens, color=colors[label], label=label, marker=".", markersize=3)
            if corpus in zram:
                ax.axhline(zram[corpus], color=REFERENCE_COLOR, linestyle="--", linewidth=0.8)
                ax.axhline(1.5 * zram[corpus], color=REFERENCE_COLOR, linestyle=":", linewidth=0.8)
            ax.set_title(corpus)
            ax.set_xlabel("seconds of recompression work")
        axes[0][0].set_ylabel("density: stored / (pool + dictionaries + metadata)")
        axes[0][0].legend(loc="lower right", frameon=False)
        fig.suptitle("Density while idle pages are recompressed (dashed: zram lz4, dotted: 1.5x)")
        save(fig, "density-settling.png")
    return written
