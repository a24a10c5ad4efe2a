"""python -m bench {run,docs,compare,list}: the suite's one entry point (see bench/__init__.py)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from bench import NAMES, harness, load

DOCS = ("performance.md", "density.md", "swap.md", "restart.md", "maintenance.md")
BLOCK = re.compile(r"<!-- bench:(\w+):(\w+) -->\n(.*?)<!-- /bench -->\n", re.S)
REFERENCE = "<!-- reference table, not a measurement -->"


def run(names: list[str], quick: bool, out: Path, rounds: int | None) -> int:
    """Run the benchmarks; a machine lacking what one needs skips it (said, and counted)."""
    failed, skipped = [], []
    for name in names:
        mod = load(name)
        n = rounds or (1 if quick else mod.ROUNDS)
        print(f"== {name}: {mod.QUESTION}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"zswapfs-bench-{name}-") as d:
            ctx = harness.Context(quick=quick, rounds=n, workdir=Path(d))
            try:
                harness.needs(*mod.NEEDS)
                doc = mod.run(ctx)
            except harness.Skipped as exc:
                print(f"   skipped: {exc}", file=sys.stderr)
                skipped.append(name)
                continue
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            errors = harness.check_result(doc)
            if errors:  # never written over a good result
                print(f"   malformed result: {'; '.join(errors)}", file=sys.stderr)
                failed.append(name)
                continue
            path = harness.write_result(doc, out)
            side = doc["extra"].get("pyperf_file")
            if side:
                shutil.copyfile(ctx.workdir / side, out / side)
        for tname, text in mod.tables(doc).items():
            print(f"\n{name}:{tname}\n{text}\n", flush=True)
        print(f"   wrote {path}", file=sys.stderr, flush=True)
    print(
        f"{len(names) - len(failed) - len(skipped)} ran, {len(skipped)} skipped"
        f"{' (' + ', '.join(skipped) + ')' if skipped else ''}, {len(failed)} failed"
        f"{' (' + ', '.join(failed) + ')' if failed else ''}",
        file=sys.stderr,
    )
    return 1 if failed else (3 if skipped else 0)


def render_block(name: str, tname: str, results: Path) -> str:
    path = results / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"no result file {path} for the table bench:{name}:{tname}")
    doc = harness.load_result(path)
    tables = load(name).tables(doc)
    if tname not in tables:
        raise SystemExit(f"{name} makes no table {tname!r} (it makes {', '.join(tables)})")
    try:
        shown = path.resolve().relative_to(harness.REPO)
    except ValueError:
        shown = path
    return f"{tables[tname]}\n\n{harness.source_line(doc, str(shown))}\n"


def unblocked_tables(text: str) -> list[int]:
    """Line numbers of tables neither inside a bench block nor marked as reference tables."""
    inside = [(m.start(), m.end()) for m in BLOCK.finditer(text)]
    bad, offset, prev = [], 0, ""
    for no, line in enumerate(text.splitlines(keepends=True), 1):
        if line.startswith("|") and not prev.startswith("|"):
            in_block = any(a <= offset < b for a, b in inside)
            if not in_block and prev.strip() != REFERENCE:
                bad.append(no)
        prev, offset = line, offset + len(line)
    return bad


def docs(results: Path, check: bool, docdir: Path) -> int:
    """Rebuild every bench block of the docs from the result files; with check, only compare."""
    stale = []
    for fname in DOCS:
        path = docdir / fname
        text = path.read_text()
        new = BLOCK.sub(
            lambda m: (
                f"<!-- bench:{m[1]}:{m[2]} -->\n{render_block(m[1], m[2], results)}"
                "<!-- /bench -->\n"
            ),
            text,
        )
        for no in unblocked_tables(new):
            stale.append(
                f"{fname}:{no}: a table with no result file behind it (put it in a"
                f" bench block, or mark it '{REFERENCE}')"
            )
        if new != text:
            if check:
                stale.append(f"{fname}: its tables differ from the result files (make bench-docs)")
            else:
                path.write_text(new)
                print(f"rebuilt the tables of {path}", file=sys.stderr)
    for line in stale:
        print(line, file=sys.stderr)
    return 1 if stale else 0


def _overlap(a: list[float], b: list[float]) -> bool:
    return not (max(a) < min(b) or max(b) < min(a))


def compare(old: Path, new: Path) -> int:
    """Per-benchmark ratios new / old: pyperf's compare_to (with its significance test) for the
    in-process timings; for the whole-system ones, a change counts as significant only when
    both runs have three rounds or more and their rounds do not overlap."""
    seen = 0
    for path in sorted(new.glob("*.pyperf.json")):
        other = old / path.name
        if other.is_file():
            seen += 1
            print(f"== {path.name} (pyperf compare_to {other} {path})", flush=True)
            subprocess.run(
                [sys.executable, "-m", "pyperf", "compare_to", str(other), str(path), "--table"],
                check=False,
            )
    for path in sorted(new.glob("*.json")):
        other = old / path.name
        if path.name.endswith(".pyperf.json") or not other.is_file():
            continue
        a, b = harness.load_result(other), harness.load_result(path)
        if a.get("benchmark") != b.get("benchmark"):
            continue
        seen += 1
        print(f"== {b['benchmark']}: {b['question']}")
        print(
            f"   old {a['machine']['commit']} ({a['machine']['date']}), new"
            f" {b['machine']['commit']} ({b['machine']['date']})"
        )
        for metric, by in b["samples"].items():
            for target, values in by.items():
                before = a["samples"].get(metric, {}).get(target)
                if not before:
                    continue
                ma, mb = a["medians"][metric][target], b["medians"][metric][target]
                if min(len(before), len(values)) < 3:
                    sig = "too few rounds to tell"
                elif _overlap(before, values):
                    sig = "within noise (rounds overlap)"
                else:
                    sig = "significant"
                ratio = f"{mb / ma:.3f}x" if ma else "-"
                print(
                    f"   {metric:28} {target:22} {ma:12.4g} -> {mb:12.4g} {b['units'][metric]:8}"
                    f" {ratio:>8}  {sig}"
                )
    if not seen:
        print(f"nothing to compare: no result file is in both {old} and {new}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run benchmarks and write their result files")
    r.add_argument("names", nargs="*", help=f"default: all ({', '.join(NAMES)})")
    r.add_argument("--quick", action="store_true", help="each once and small (a smoke test)")
    r.add_argument("--rounds", type=int, help="override each benchmark's rounds")
    r.add_argument("--out", type=Path, help="default: docs/results (bench/out with --quick)")
    d = sub.add_parser("docs", help="rebuild the docs' tables from result files")
    d.add_argument("--results", type=Path, default=harness.RESULTS)
    d.add_argument("--check", action="store_true", help="only say what is stale (exit 1)")
    d.add_argument("--docdir", type=Path, default=harness.REPO / "docs")
    c = sub.add_parser("compare", help="two result directories side by side")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    sub.add_parser("list", help="the benchmarks and what each answers")
    args = p.parse_args(argv)
    if args.cmd == "run":
        out = args.out or (harness.REPO / "bench" / "out" if args.quick else harness.RESULTS)
        return run(args.names or list(NAMES), args.quick, out, args.rounds)
    if args.cmd == "docs":
        return docs(args.results, args.check, args.docdir)
    if args.cmd == "compare":
        return compare(args.old, args.new)
    for name in NAMES:
        mod = load(name)
        print(f"{name:14} {mod.QUESTION}\n{'':14} baseline: {mod.BASELINE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
