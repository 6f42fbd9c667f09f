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
- the same, with cells 1.5 s apart, as a person runs them.
- both against ipyparallel's `%%px` on one local engine, run the same two ways, where
  ipyparallel is installed (`pip install -e '.[bench]'`): the nearest existing way to run a
  cell elsewhere.
- where the back-to-back cell's time goes, step by step (each the median over the cells, as a
  share of the whole cell): stamps from the frontend (request sent, kernel idle), from the
  kernel (IPython's pre_run_cell event; the result's display formatter) and from the local
  endpoint (benchmarks/traced_endpoint.py: the job submitted, taken, each chunk posted, done,
  and asked for), all on the clock every process shares.

It starts its own local endpoint (2 workers, traced) in a temporary TETRA_MAGIC_HOME, sharing
the worker venv with the tests (TETRA_MAGIC_WORKER_ENV, or a per-user temp dir), and one
kernel. The kernel uses the plain-text view.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import signal
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
WORKERS = 2
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
# In the kernel: when each %%tetra cell starts, and when its result's display begins.
KERNEL_STAMPS = """
import time as _time
_bench_stamps = []
def _bench_start(info):
    if info.raw_cell.startswith("%%tetra"):
        _bench_stamps.append({"start": _time.time()})
def _bench_int(value, printer, cycle):
    if _bench_stamps and "display" not in _bench_stamps[-1]:
        _bench_stamps[-1]["display"] = _time.time()
    printer.text(repr(value))
get_ipython().events.register("pre_run_cell", _bench_start)
get_ipython().display_formatter.formatters["text/plain"].for_type(int, _bench_int)
"""
# The steps of one cell: a name, and the two stamps it lies between.
STEPS = [
    ("kernel: execute request to cell start", "sent", "start"),
    ("packing: options, analysis, pack, POST /run", "start", "submitted"),
    ("queue: until a worker takes the job", "submitted", "taken"),
    ("worker pickup: job to handler, first chunk posted", "taken", "first chunk"),
    ("executor: the request run, response chunk posted", "first chunk", "chunk:response"),
    ("response: the worker's job-done post", "chunk:response", "done"),
    ("HTTP: client learns the end, asks /status", "done", "asked after done"),
    ("unpacking: /status, response, values written back", "asked after done", "display"),
    ("display: Out[] shown, kernel idle", "display", "idle"),
]


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


class Kernel:
    """One kernel, its cells timed from execute request to idle, as a frontend waits."""

    def __init__(self) -> None:
        self.manager, self.client = start_new_kernel(kernel_name="python3", startup_timeout=60)

    def run(self, code: str, timeout: float = 300) -> tuple[float, float]:
        """Run `code`; when the request was sent and when the kernel went idle (time.time())."""
        sent = time.time()
        msg_id = self.client.execute(code)
        while True:
            msg = self.client.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"]))
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return sent, time.time()

    def cells(self, code: str, runs: int = ROUND_TRIPS, gap: float = 0.0) -> list[tuple]:
        """(sent, idle) of `runs` runs of `code`, `gap` s apart, after WARMUP unrecorded ones."""
        for _ in range(WARMUP):
            self.run(code)
        spans = []
        for _ in range(runs):
            time.sleep(gap)
            spans.append(self.run(code))
        return spans

    def value(self, expression: str) -> Any:
        """A literal value (numbers, strings, lists, dicts) from the kernel's namespace."""
        msg_id = self.client.execute("", user_expressions={"value": expression})
        while (reply := self.client.get_shell_msg(timeout=60))["parent_header"]["msg_id"] != msg_id:
            pass
        return ast.literal_eval(reply["content"]["user_expressions"]["value"]["data"]["text/plain"])

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def _median(spans: list[tuple]) -> float:
    return statistics.median(idle - sent for sent, idle in spans)


@contextlib.contextmanager
def environment(workers: int = WORKERS) -> Iterator[Path]:
    """A private, traced local endpoint of `workers` workers and the text view, for kernels
    started inside; yields the endpoint's trace file."""
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
        trace = Path(home) / "trace.jsonl"
        script = ROOT / "benchmarks" / "traced_endpoint.py"
        server = subprocess.Popen(
            [sys.executable, str(script), str(trace), "--workers", str(workers)],
            start_new_session=True,
        )
        try:
            _wait_idle(server, workers)
            yield trace
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _wait_idle(server: subprocess.Popen, workers: int, timeout: float = 300) -> None:
    """Wait until the traced server has recorded itself and its workers wait for jobs."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the traced local endpoint exited with {server.returncode}")
        endpoint = launcher.running()
        if endpoint is not None:
            headers = {"Authorization": f"Bearer {endpoint.api_key}"}
            health = requests.get(f"{endpoint.url}/health", headers=headers, timeout=5).json()
            if health["workers"]["idle"] >= workers:
                return
        time.sleep(0.1)
    raise RuntimeError("the traced local endpoint's workers did not come up")


def _jobs(trace: Path) -> list[dict[str, float]]:
    """Each job's stamps by event, in the order the jobs were submitted."""
    jobs: dict[str, dict[str, float]] = {}
    for line in trace.read_text().splitlines():
        entry = json.loads(line)
        stamps = jobs.setdefault(entry["job"], {})
        event, t = entry["event"], entry["t"]
        if event.startswith("chunk:"):
            stamps.setdefault("first chunk", t)
        if event == "asked" and "done" in stamps:
            event = "asked after done"
        stamps.setdefault(event, t)
    return sorted((s for s in jobs.values() if "submitted" in s), key=lambda s: s["submitted"])


def _breakdown(
    spans: list[tuple], kernel: list[dict[str, float]], jobs: list[dict[str, float]]
) -> list[tuple[str, float]]:
    """The median time of each step, over the cells whose stamps are all there."""
    cells = []
    for (sent, idle), in_kernel in zip(spans, kernel, strict=True):
        job = next((j for j in jobs if sent <= j["submitted"] <= idle), None)
        if job is not None:
            cells.append({"sent": sent, "idle": idle, **in_kernel, **job})
    steps = []
    for name, first, second in STEPS:
        took = [c[second] - c[first] for c in cells if first in c and second in c]
        if took:
            steps.append((name, statistics.median(took)))
    return steps


def _row(name: str, value: float, baseline_name: str, baseline: float) -> dict[str, Any]:
    return {"name": name, "value_s": value, "baseline_name": baseline_name, "baseline_s": baseline}


def run() -> list[dict[str, Any]]:
    load = _row(
        "%load_ext tetra_magic",
        _load_time("tetra_magic"),
        "%load_ext autoreload",
        _load_time("autoreload"),
    )
    with environment() as trace:
        kernel = Kernel()
        try:
            kernel.run("%load_ext tetra_magic")
            kernel.run(KERNEL_STAMPS)
            tetra_spans = kernel.cells(TETRA_CELL)
            tetra = _median(tetra_spans)
            paced = _median(kernel.cells(TETRA_CELL, runs=PACED_RUNS, gap=PACED_GAP_S))
            stamps = kernel.value("_bench_stamps")
            local = _median(kernel.cells(LOCAL_CELL))
            px = px_paced = None
            if importlib.util.find_spec("ipyparallel") is not None:
                kernel.run(PX_START)
                px = _median(kernel.cells(PX_CELL))
                px_paced = _median(kernel.cells(PX_CELL, runs=PACED_RUNS, gap=PACED_GAP_S))
                kernel.run("cluster.stop_cluster_sync()")
        finally:
            kernel.close()
        # The recorded back-to-back cells are the ones after the warm-up ones.
        recorded = stamps[WARMUP : WARMUP + ROUND_TRIPS]
        steps = _breakdown(tetra_spans, recorded, _jobs(trace))
    gap = f"cells {PACED_GAP_S:g} s apart"
    rows = [
        load,
        _row("%%tetra --local cell round trip", tetra, "local cell", local),
        _row(f"%%tetra --local, {gap}", paced, "local cell", local),
    ]
    if px is not None and px_paced is not None:
        rows += [
            _row("%%tetra --local cell round trip", tetra, "%%px cell, 1 local engine", px),
            _row(f"%%tetra --local, {gap}", paced, f"%%px, 1 local engine, {gap}", px_paced),
        ]
    whole = "the whole %%tetra --local cell"
    rows += [_row(f"  {name}", took, whole, tetra) for name, took in steps]
    return rows
