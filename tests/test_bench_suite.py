"""The benchmark suite (bench/): its harness's rules, the docs' tables against the result files,
and the quick mode of every benchmark as a smoke test (results well formed; never a speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bench
from bench import __main__ as cli
from bench import harness
from tests.conftest import mount_unavailable, swap_unavailable

REPO = Path(__file__).resolve().parent.parent


def fake_result(name: str, samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    mod = bench.load(name)
    ctx = harness.Context(
        quick=True,
        rounds=len(next(iter(next(iter(samples.values())).values()))),
        workdir=Path("/nonexistent"),
    )
    return harness.make_result(mod, ctx, {}, samples)


@pytest.mark.unit
def test_interleave_measures_every_target_every_round_taking_turns() -> None:
    calls: list[tuple[str, int]] = []

    def measure(target: str, r: int) -> dict[str, float]:
        calls.append((target, r))
        return {"m": float(len(calls))}

    samples = harness.interleave(["a", "b", "c"], 3, measure)
    assert [c[0] for c in calls] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert samples == {"m": {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}}


@pytest.mark.unit
def test_result_medians_ratios_and_the_check() -> None:
    doc = fake_result(
        "restart", {"longest read": {"quiet": [1.0, 3.0, 2.0], "kill": [4.0, 8.0, 6.0]}}
    )
    assert doc["medians"]["longest read"] == {"quiet": 2.0, "kill": 6.0}
    assert doc["ratios"]["longest read"]["kill"] == 3.0
    for key in harness.MACHINE_KEYS:
        assert key in doc["machine"]
    assert harness.check_result(doc) == []
    doc["medians"]["longest read"]["kill"] = 5.0
    assert harness.check_result(doc) == ["longest read/kill: median 5.0 is not the rounds' median"]
    del doc["machine"]["libfuse"]
    assert "machine: no libfuse" in harness.check_result(doc)
    assert harness.check_result({"benchmark": "x"})[0] == "no format"


@pytest.mark.unit
def test_compare_says_when_rounds_overlap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    harness.write_result(
        fake_result(
            "restart", {"longest read": {"quiet": [1.0, 1.1, 1.2], "kill": [5.0, 6.0, 7.0]}}
        ),
        old,
    )
    harness.write_result(
        fake_result(
            "restart", {"longest read": {"quiet": [1.15, 1.3, 1.4], "kill": [2.0, 2.5, 3.0]}}
        ),
        new,
    )
    assert cli.compare(old, new) == 0
    out = capsys.readouterr().out
    quiet = next(ln for ln in out.splitlines() if " quiet " in ln)
    kill = next(ln for ln in out.splitlines() if " kill " in ln)
    assert "1.182x" in quiet and "within noise" in quiet
    assert "0.417x" in kill and "significant" in kill
    assert cli.compare(old, tmp_path / "empty") == 1
    one = tmp_path / "one"
    harness.write_result(
        fake_result("restart", {"longest read": {"quiet": [9.0], "kill": [9.0]}}), one
    )
    assert cli.compare(old, one) == 0
    assert "too few rounds to tell" in capsys.readouterr().out


@pytest.mark.unit
def test_docs_blocks_are_rebuilt_from_result_files(tmp_path: Path) -> None:
    results, docdir = tmp_path / "results", tmp_path / "docs"
    docdir.mkdir()
    harness.write_result(
        fake_result(
            "restart", {"longest read": {"quiet": [0.01], "kill": [0.25], "restart": [0.04]}}
        )
        | {"extra": {"reads": 10, "takeovers": 2, "failed_reads": 0}},
        results,
    )
    for name in cli.DOCS:
        (docdir / name).write_text("# t\n")
    doc = docdir / "restart.md"
    doc.write_text("text\n<!-- bench:restart:stall -->\nold figures\n<!-- /bench -->\nmore\n")
    assert cli.docs(results, check=True, docdir=docdir) == 1  # stale
    assert cli.docs(results, check=False, docdir=docdir) == 0
    text = doc.read_text()
    assert "| server killed (-9) until the new one answers | 0.250 | 0.250 |" in text
    assert "old figures" not in text and text.endswith("<!-- /bench -->\nmore\n")
    assert cli.docs(results, check=True, docdir=docdir) == 0
    # a table typed by hand fails the check unless marked as a reference table
    doc.write_text(text + "\n| a | b |\n| --- | --- |\n| 1 | 2 |\n")
    assert cli.docs(results, check=True, docdir=docdir) == 1
    doc.write_text(text + f"\n{cli.REFERENCE}\n| a | b |\n| --- | --- |\n| 1 | 2 |\n")
    assert cli.docs(results, check=True, docdir=docdir) == 0
    (results / "restart.json").unlink()
    with pytest.raises(SystemExit, match="no result file"):
        cli.docs(results, check=True, docdir=docdir)


@pytest.mark.unit
def test_every_table_figure_in_the_docs_has_a_result_file_behind_it() -> None:
    """Every table of docs/performance.md, density.md, swap.md and restart.md is either built
    from a result file in docs/results (and identical to what `make bench-docs` builds now) or
    marked as a reference table (options, metric names: no measurement)."""
    blocks = 0
    for name in cli.DOCS:
        text = (REPO / "docs" / name).read_text()
        for m in cli.BLOCK.finditer(text):
            blocks += 1
            assert (harness.RESULTS / f"{m[1]}.json").is_file(), m[0][:60]
        assert cli.unblocked_tables(text) == [], name
    assert blocks >= 8
    assert cli.docs(harness.RESULTS, check=True, docdir=REPO / "docs") == 0
    for path in harness.RESULTS.glob("*.json"):
        if not path.name.endswith(".pyperf.json") and path.stem in bench.NAMES:
            doc = harness.load_result(path)
            assert harness.check_result(doc) == [], path
            assert not doc["quick"], f"{path}: a quick run is no figure for the docs"


@pytest.mark.unit
def test_no_benchmark_script_outside_the_suite() -> None:
    modules = {p.stem for p in (REPO / "bench").glob("*.py")}
    assert modules == {"__init__", "__main__", "harness", *bench.NAMES}
    for name in bench.NAMES:
        mod = bench.load(name)
        assert mod.QUESTION and mod.BASELINE and mod.UNITS and mod.ROUNDS >= 1
        assert callable(mod.run) and callable(mod.tables)


@pytest.mark.system
@pytest.mark.timeout(1200)
def test_quick_mode_runs_every_benchmark_and_writes_well_formed_results(tmp_path: Path) -> None:
    why = mount_unavailable() or swap_unavailable()
    if why:
        pytest.skip(why)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if res.returncode == 3:
        pytest.skip(f"benchmarks skipped on this machine: {res.stderr[-2000:]}")
    assert res.returncode == 0, res.stderr[-6000:]
    for name in bench.NAMES:
        doc = json.loads((out / f"{name}.json").read_text())
        assert harness.check_result(doc) == [], name
        assert doc["quick"] and doc["benchmark"] == name
        for tname, text in bench.load(name).tables(doc).items():
            assert text.startswith("| ") and text.count("\n") >= 2, (name, tname)
    pyperf_file = out / "inproc.pyperf.json"
    assert pyperf_file.is_file()
    # two runs side by side: pyperf's compare_to for the in-process timings, rounds for the rest
    res = subprocess.run(
        [sys.executable, "-m", "bench", "compare", str(out), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "pyperf compare_to" in res.stdout
    for name in bench.NAMES[1:]:
        assert f"== {name}:" in res.stdout
