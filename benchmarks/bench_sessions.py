"""What reading a large session value costs a cell, against a trivial cell in the same run.

    python benchmarks/run.py sessions

Rows (`run()` returns them for benchmarks/run.py):
- a session cell that reads a 200 MB value the session holds (`float(big[:10].sum())`), against
  a trivial `%%tetra --local` cell (`x = 1`): the value stays on the worker and the notebook
  holds a remote reference to it, so reading it should cost about what a trivial cell does
  (the target is within 1.5x); a figure far above that means the value, or its pickle, is
  handled per cell somewhere (sent, hashed, sized).
- the same trivial cell in the session, against the plain one: what a session itself adds
  (opening it, the summary of what it holds, the record the kernel keeps).

The 200 MB value is made by a session cell first, untimed. The three cells are then run in
turn, after warm-up rounds, so a slow spell of the machine falls on all of them alike; each
figure is the median, execute request to the kernel going idle, as a frontend sees it. The
endpoint and the kernel are bench_magic's: a private local endpoint in a temporary
TETRA_MAGIC_HOME, with one worker (every cell reaches the process that holds the session,
whatever the endpoint's routing), and one kernel with the plain-text view.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_magic import Kernel, environment

ROUNDS = 15
WARMUP = 3
SESSION = "%%tetra --local --session bench"
MAKE = f"{SESSION} --deps numpy\nimport numpy as np\nbig = np.ones(25_000_000)"  # 200 MB of float64
READ = f"{SESSION}\nhead = float(big[:10].sum())"
TRIVIAL = "%%tetra --local\nx = 1"
TRIVIAL_IN_SESSION = f"{SESSION}\nx = 1"
CELLS = {"read": READ, "trivial": TRIVIAL, "trivial in session": TRIVIAL_IN_SESSION}


def _interleaved(kernel: Kernel) -> dict[str, float]:
    """The median time of each of CELLS, run in turn ROUNDS times after WARMUP rounds."""
    times: dict[str, list[float]] = {name: [] for name in CELLS}
    for round_ in range(WARMUP + ROUNDS):
        for name, code in CELLS.items():
            sent, idle = kernel.run(code)
            if round_ >= WARMUP:
                times[name].append(idle - sent)
    return {name: statistics.median(spans) for name, spans in times.items()}


def _row(name: str, value: float, baseline_name: str, baseline: float) -> dict[str, Any]:
    return {"name": name, "value_s": value, "baseline_name": baseline_name, "baseline_s": baseline}


def run() -> list[dict[str, Any]]:
    with environment(workers=1):
        kernel = Kernel()
        try:
            kernel.run("%load_ext tetra_magic")
            kernel.run(MAKE)
            shown = kernel.value("repr(big)")
            if not shown.startswith("<remote bench.big"):
                raise RuntimeError(f"the 200 MB value came home: big is {shown[:80]}")
            medians = _interleaved(kernel)
            if kernel.value("head") != 10.0:
                raise RuntimeError("the session cell did not read the 200 MB value")
        finally:
            kernel.close()
    trivial = "trivial %%tetra --local cell (x = 1)"
    return [
        _row(
            "session cell reading a 200 MB remote value",
            medians["read"],
            trivial,
            medians["trivial"],
        ),
        _row(
            "the trivial cell in a session",
            medians["trivial in session"],
            trivial,
            medians["trivial"],
        ),
    ]
