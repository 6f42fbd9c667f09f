"""Many notebooks on one local endpoint: the time per cell with 8 kernels sending cells at
once, against one kernel sending the same cells alone, in the same run.

    python benchmarks/run.py load

Rows: "8 kernels x 25 cells, per cell" (wall time of the whole load over its 200 cells)
against "1 kernel x 25 cells, per cell" (one notebook alone, its process warm on the worker).
Two workers could bring it to 0.5; what it costs above that is queueing and switching a worker
between kernels (each switch starts a fresh executor process for the kernel). The run
fails (an error row) if any cell failed, lost its value or showed another kernel's output.
It starts its own server (2 workers) in a temporary TETRA_MAGIC_HOME, sharing the worker venv
with the tests.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.kernels import loaded_kernels, private_local_endpoint  # noqa: E402
from helpers.load import run_load  # noqa: E402

CELLS = 25


def _per_cell(count: int) -> float:
    with loaded_kernels(count) as kernels:
        for kernel in kernels:
            kernel.run("%%tetra --local\npass")  # warm: the server and this kernel's process
        report = run_load(kernels, CELLS)
    problems = report.errors + report.lost + report.crossed
    if problems:
        raise RuntimeError(f"{len(problems)} cell(s) went wrong: {problems[:5]}")
    return report.seconds / report.cells


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as home, private_local_endpoint(Path(home), workers=2):
        alone = _per_cell(1)
        together = _per_cell(8)
    return [
        {
            "name": f"8 kernels x {CELLS} cells, per cell",
            "value_s": together,
            "baseline_name": f"1 kernel x {CELLS} cells, per cell",
            "baseline_s": alone,
        }
    ]
