"""What the magic costs a notebook user, each figure against a baseline measured in the same run.

    python benchmarks/bench_magic.py        (or: python benchmarks/run.py magic)

Rows (`run()` returns them for benchmarks/run.py):
- `%load_ext tetra_magic` in a fresh interpreter, timed inside it, against `%load_ext
  autoreload` (a stock IPython extension): what loading costs before any cell needs the REST
  client, widgets or the local endpoint.
- a trivial `%%tetra --local` cell (`1 + 1`), execute request to the kernel going idle, as a
  frontend sees it, against the same cell run locally in the same kernel: the whole remote
  round trip (analysis, packing, /run, the worker's run, /stream, /status, unpacking) on a
  warm local endpoint.
- the same, with cells 1.5 s apart, as a person runs them: back to back, a job often goes to
  a worker whose runpod SDK loop is in its pause between jobs (up to a second), which the
  first figure includes and this one mostly does not.
- the same `%%tetra` cell against ipyparallel's `%%px` on one local engine, where ipyparallel is
  installed (`pip install ipyparallel`): the nearest existing way to run a cell elsewhere.

It starts its own local endpoint (2 workers) in a temporary TETRA_MAGIC_HOME, sharing the
worker venv with the tests (TETRA_MAGIC_WORKER_ENV, or a per-user temp dir), and one kernel.
The kernel uses the plain-text view.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jupyter_client.manager import start_new_kernel  # noqa: E402

from tetra_magic.local import launcher  # noqa: E402

LOADS = 5
ROUND_TRIPS = 20
WARMUP = 3
PACED_RUNS, PACED_GAP_S = 10, 1.5
TIME_LOAD = """
import time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
start = time.perf_counter()
shell.run_line_magic("load_ext", {name!r})
print(time.perf_counter() - start)
"""
TETRA_CELL = "%%tetra --local\n1 + 1"
LOCAL_CELL = "1 + 1"
PX_CELL = "%%px\n1 + 1"
PX_START = (
    "import ipyparallel as ipp\n"
    "cluster = ipp.Cluster(n=1, log_level=40)\n"
    "client = cluster.start_and_connect_sync()\n"
    "client.wait_for_engines(1, timeout=120)\n"
    "client[:].activate()"
)


def _load_time(extension: str) -> float:
    """Median in-process time of `%load_ext extension` across fresh interpreters."""
    times = []
    for _ in range(LOADS):
        out = subprocess.run(
            [sys.executable, "-c", TIME_LOAD.format(name=extension)],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout.split()[-1]))
    return statistics.median(times)


class _Kernel:
    """One kernel, its cells timed from execute request to idle, as a frontend waits."""

    def __init__(self) -> None:
        self.manager, self.client = start_new_kernel(kernel_name="python3", startup_timeout=60)

    def run(self, code: str, timeout: float = 300) -> float:
        start = time.perf_counter()
        msg_id = self.client.execute(code)
        while True:
            msg = self.client.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"]))
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return time.perf_counter() - start

    def median(self, code: str, runs: int = ROUND_TRIPS, gap: float = 0.0) -> float:
        for _ in range(WARMUP):
            self.run(code)
        times = []
        for _ in range(runs):
            time.sleep(gap)
            times.append(self.run(code))
        return statistics.median(times)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@contextlib.contextmanager
def _environment() -> Iterator[None]:
    """A private local endpoint and the text view, for kernels started inside."""
    shared = os.environ.get("TETRA_MAGIC_WORKER_ENV") or str(
        Path(tempfile.gettempdir()) / f"tetra-magic-tests-{os.getuid()}" / "worker-env"
    )
    with tempfile.TemporaryDirectory(prefix="tetra-bench-") as home:
        values = {
            "TETRA_MAGIC_HOME": home,
            "TETRA_MAGIC_WORKER_ENV": shared,
            "TETRA_MAGIC_DISPLAY": "text",
        }
        saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        try:
            launcher.ensure_running(workers=2, idle_timeout=None)
            yield
        finally:
            launcher.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _row(name: str, value: float, baseline_name: str, baseline: float) -> dict[str, Any]:
    return {"name": name, "value_s": value, "baseline_name": baseline_name, "baseline_s": baseline}


def run() -> list[dict[str, Any]]:
    rows = [
        _row(
            "%load_ext tetra_magic",
            _load_time("tetra_magic"),
            "%load_ext autoreload",
            _load_time("autoreload"),
        )
    ]
    with _environment():
        kernel = _Kernel()
        try:
            kernel.run("%load_ext tetra_magic")
            tetra = kernel.median(TETRA_CELL)
            local = kernel.median(LOCAL_CELL)
            rows.append(_row("%%tetra --local cell round trip", tetra, "local cell", local))
            paced = kernel.median(TETRA_CELL, runs=PACED_RUNS, gap=PACED_GAP_S)
            rows.append(_row(f"same, cells {PACED_GAP_S:g} s apart", paced, "local cell", local))
            if importlib.util.find_spec("ipyparallel") is not None:
                kernel.run(PX_START)
                px = kernel.median(PX_CELL)
                rows.append(
                    _row("%%tetra --local cell round trip", tetra, "%%px cell, 1 local engine", px)
                )
                kernel.run("cluster.stop_cluster_sync()")
        finally:
            kernel.close()
    return rows
