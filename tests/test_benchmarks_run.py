"""benchmarks/run.py: one table for every module, and a failing module reported, not fatal."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("bench_runner", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_runner"] = module
    spec.loader.exec_module(module)
    return module


GOOD = """
def run():
    return [{"name": "fast thing", "value_s": 0.002, "baseline_name": "slow thing",
             "baseline_s": 0.004}]
"""
BROKEN = """
def run():
    raise RuntimeError("the server did not start")
"""
INCOMPLETE = """
def run():
    return [{"name": "no baseline", "value_s": 1.0}]
"""


def test_every_module_gets_rows_and_a_failure_is_a_row(tmp_path: Path) -> None:
    runner = _runner()
    for name, text in {"good": GOOD, "broken": BROKEN, "incomplete": INCOMPLETE}.items():
        (tmp_path / f"bench_{name}.py").write_text(text)
    modules = runner.discover([], tmp_path)
    assert [m.stem for m in modules] == ["bench_broken", "bench_good", "bench_incomplete"]
    rows = [row for module in modules for row in runner.measure(module, timeout=60)]
    text = runner.table(rows)
    assert "RuntimeError: the server did not start" in text
    assert "run() rows lack ['baseline_name', 'baseline_s']" in text
    good = next(row for row in rows if row.module == "bench_good")
    assert good.ratio == 0.5
    line = next(line for line in text.splitlines() if "fast thing" in line)
    assert line.split()[-7:] == ["2.00", "ms", "0.50x", "slow", "thing", "4.00", "ms"]
    assert runner.discover(["good"], tmp_path) == [tmp_path / "bench_good.py"]
