"""Many workers from one notebook: `--map` and `--bg`, each against a baseline measured in the
same run.

    python benchmarks/bench_fan_out.py        (or: python benchmarks/run.py fan_out)

Rows (`run()` returns them for benchmarks/run.py):
- 8 items of `time.sleep(2)` with `--map` on a local endpoint of 4 workers, against the ideal:
  two rounds of one `time.sleep(2)` cell, that single cell timed in the same run (so the ideal
  carries the same round-trip cost a job has). The issue's bar: at most 1.15x.
- a `--bg` cell's submission (execute request to idle: the kernel is free again), against a
  trivial foreground cell (`1 + 1`) run the same way. The bar: at most 2x.
- 1,000 tiny items (`y = i * i`) with `--map`, batched by its default, against ipyparallel's
  `map_sync` of the same function on as many local engines as the endpoint has workers, each
  started in the same kernel: a DirectView (one chunk per engine, ipyparallel's fastest) and a
  load-balanced view, one task per item (as an endpoint's queue hands out jobs) and in chunks
  of --map's own batch size. The bar: at most 2x the time (at least half the throughput).
  Where ipyparallel is not installed (`pip install -e '.[bench]'`) these rows are left out.

It starts its own traced local endpoint of 4 workers (bench_magic.environment) and one kernel
with the plain-text view.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_magic import Kernel, _median, _row, environment

from tetra_magic.job.fan_out import default_batch

WORKERS = 4
ITEMS = 8
SLEEP = "import time\ntime.sleep(2)\n"
RUNS = 3
TINY_ITEMS = 1000
TINY_MAP = f"%%tetra --local --map i in range({TINY_ITEMS})\ny = i * i"
PARALLEL_START = (
    "import ipyparallel as ipp\n"
    f"cluster = ipp.Cluster(n={WORKERS}, log_level=40)\n"
    "client = cluster.start_and_connect_sync()\n"
    f"client.wait_for_engines({WORKERS}, timeout=120)\n"
    "def square(i):\n    return i * i\n"
)
# Each view's map of the tiny function, as the cell that times it writes it.
TINY_CHUNK = default_batch(TINY_ITEMS, WORKERS)  # --map's own batches, for the like-for-like row
PARALLEL_MAPS = {
    "DirectView.map_sync": "client[:].map_sync(square, ITEMS)",
    "LoadBalancedView.map_sync": "client.load_balanced_view().map_sync(square, ITEMS)",
    f"LoadBalancedView.map_sync, chunksize {TINY_CHUNK}": (
        f"client.load_balanced_view().map_sync(square, ITEMS, chunksize={TINY_CHUNK})"
    ),
}


def run() -> list[dict[str, Any]]:
    with environment(WORKERS):
        kernel = Kernel()
        try:
            kernel.run("%load_ext tetra_magic")
            single = _median(kernel.cells(f"%%tetra --local\n{SLEEP}", runs=RUNS))
            fanned = _median(
                kernel.cells(f"%%tetra --local --map i in range({ITEMS})\n{SLEEP}", runs=RUNS)
            )
            trivial = _median(kernel.cells("%%tetra --local\n1 + 1"))
            submits = kernel.cells("%%tetra --local --bg\nx = 1 + 1")
            kernel.run("%tetra wait")
            background = statistics.median(idle - sent for sent, idle in submits)
            tiny = _median(kernel.cells(TINY_MAP, runs=RUNS))
            parallel = _parallel_maps(kernel)
        finally:
            kernel.close()
    rounds = ITEMS // WORKERS
    tiny_name = f"--map: {TINY_ITEMS} tiny items on {WORKERS} workers"
    parallel_rows = [
        _row(tiny_name, tiny, f"ipyparallel {view}, {WORKERS} engines", seconds)
        for view, seconds in parallel.items()
    ]
    return [
        *parallel_rows,
        _row(
            f"--map: {ITEMS} x sleep(2) on {WORKERS} workers",
            fanned,
            f"ideal: {rounds} x one sleep(2) cell",
            rounds * single,
        ),
        _row("--bg: submitted, kernel free", background, "a trivial foreground cell", trivial),
    ]


def _parallel_maps(kernel: Kernel) -> dict[str, float]:
    """ipyparallel's map_sync of the same tiny function, per view, timed as cells in `kernel`
    (its cluster started there first, not timed); none without ipyparallel."""
    if importlib.util.find_spec("ipyparallel") is None:
        return {}
    kernel.run(PARALLEL_START)
    try:
        return {
            view: _median(
                kernel.cells(f"y = {call.replace('ITEMS', f'range({TINY_ITEMS})')}", runs=RUNS)
            )
            for view, call in PARALLEL_MAPS.items()
        }
    finally:
        kernel.run("cluster.stop_cluster_sync()")


if __name__ == "__main__":
    for row in run():
        ratio = row["value_s"] / row["baseline_s"]
        print(f"{row['name']:<45} {row['value_s']:8.3f} s  {ratio:5.2f}x  {row['baseline_name']}")
