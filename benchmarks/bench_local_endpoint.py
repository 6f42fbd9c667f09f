"""The local endpoint's latency and concurrency, each against a baseline measured in the same run.

    python benchmarks/run.py local_endpoint

Rows (`run()` returns them; benchmarks/run.py prints the table):
- trivial job round trip: POST /runsync of `return 1`, until its COMPLETED answer, with a
  worker waiting in job-take, against a bare loopback HTTP round trip (a stdlib server in
  another process, same keep-alive client): the job handed over, the worker's chunks and
  job-done posted (each one HTTP round trip of the runpod SDK's), the executor child's run.
- remote print to client: from `print()` in the executor child to the client holding the line,
  read by a /stream loop as the magic reads it; the worker's own 0.1 s batching of output is
  part of this figure (a lone line goes out at once; bursts are batched per 0.1 s).
- 4 concurrent sleep jobs on 4 workers, against one such job alone: ~1.0 means they overlap.

It starts its own server (4 workers) in a temporary TETRA_MAGIC_HOME, sharing the worker venv
with the tests (TETRA_MAGIC_WORKER_ENV, or a per-user temp dir).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tetra_magic.local import launcher  # noqa: E402
from tetra_magic.local.launcher import LocalEndpoint  # noqa: E402
from worker.protocol import FunctionRequest  # noqa: E402

WORKERS = 4
ROUND_TRIPS = 30
PRINT_JOBS = 4
PRINTS_PER_JOB = 5
SLEEP_S = 2.0
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}

BARE_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    def do_GET(self):
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _request(code: str) -> dict[str, Any]:
    return FunctionRequest(function_name="main", function_code=textwrap.dedent(code)).model_dump()


@contextlib.contextmanager
def _local_endpoint() -> Iterator[LocalEndpoint]:
    """A fresh server with WORKERS workers, all idle, stopped afterwards."""
    shared = os.environ.get("TETRA_MAGIC_WORKER_ENV") or str(
        Path(tempfile.gettempdir()) / f"tetra-magic-tests-{os.getuid()}" / "worker-env"
    )
    with tempfile.TemporaryDirectory(prefix="tetra-bench-") as home:
        saved = {k: os.environ.get(k) for k in ("TETRA_MAGIC_HOME", "TETRA_MAGIC_WORKER_ENV")}
        os.environ.update(TETRA_MAGIC_HOME=home, TETRA_MAGIC_WORKER_ENV=shared)
        try:
            endpoint = launcher.ensure_running(workers=WORKERS, idle_timeout=None)
            try:
                _wait_idle(endpoint)
                yield endpoint
            finally:
                launcher.stop()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _wait_idle(endpoint: LocalEndpoint, need: int = WORKERS, timeout: float = 300) -> None:
    """Wait until `need` workers wait in job-take (a worker asks again once its job ended)."""
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = requests.get(f"{endpoint.url}/health", headers=headers, timeout=5).json()
        if health["workers"]["idle"] >= need:
            return
        time.sleep(0.02)
    raise RuntimeError("the local endpoint's workers did not come up")


@contextlib.contextmanager
def _bare_server() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{proc.stdout.readline().strip()}/"
    finally:
        proc.kill()
        proc.wait()


def bare_round_trip(session: requests.Session, url: str, count: int = 200) -> float:
    """Median seconds of one keep-alive GET to a do-nothing loopback server."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        session.get(url, timeout=5).json()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def trivial_round_trip(session: requests.Session, endpoint: LocalEndpoint) -> float:
    """Median seconds of /runsync for a function that returns at once, a worker waiting."""
    body = {"input": _request("def main():\n    return 1\n")}
    for _ in range(WORKERS * 2):  # warm every worker's executor child
        session.post(f"{endpoint.url}/runsync", json=body, timeout=60).json()
    samples = []
    for _ in range(ROUND_TRIPS):
        _wait_idle(endpoint, need=1)
        started = time.perf_counter()
        doc = session.post(f"{endpoint.url}/runsync", json=body, timeout=60).json()
        samples.append(time.perf_counter() - started)
        assert doc["status"] == "COMPLETED", doc
    return statistics.median(samples)


def print_latency(session: requests.Session, endpoint: LocalEndpoint) -> float:
    """Median seconds from a remote print (its wall-clock stamp) to the client reading it."""
    code = f"""
    def main():
        import time
        for _ in range({PRINTS_PER_JOB}):
            print("stamp", repr(time.time()), flush=True)
            time.sleep(0.3)
    """
    samples = []
    for _ in range(PRINT_JOBS):
        job = session.post(f"{endpoint.url}/run", json={"input": _request(code)}).json()
        status = "IN_QUEUE"
        while status not in FINAL:
            answer = session.get(f"{endpoint.url}/stream/{job['id']}", timeout=10).json()
            seen = time.time()
            status = answer["status"]
            for item in answer["stream"]:
                if item["output"].get("kind") == "stdout":
                    lines = item["output"]["text"].splitlines()
                    samples += [seen - float(line.split()[1]) for line in lines if "stamp" in line]
    return statistics.median(samples)


def sleep_jobs(session: requests.Session, endpoint: LocalEndpoint, count: int) -> float:
    """Seconds from submitting `count` sleep jobs at once until all of them are COMPLETED."""
    body = {"input": _request(f"def main():\n    import time\n    time.sleep({SLEEP_S})\n")}
    started = time.perf_counter()
    ids = [session.post(f"{endpoint.url}/run", json=body).json()["id"] for _ in range(count)]

    def wait(job_id: str) -> str:
        with requests.Session() as own:
            own.headers.update(session.headers)
            while (doc := own.get(f"{endpoint.url}/status/{job_id}").json())["status"] not in FINAL:
                time.sleep(0.02)
            return doc["status"]

    with ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(wait, ids))
    assert statuses == ["COMPLETED"] * count, statuses
    return time.perf_counter() - started


def run() -> list[dict[str, Any]]:
    """Measure everything; rows of {name, value_s, baseline_name, baseline_s}."""
    with _local_endpoint() as endpoint, _bare_server() as bare_url, requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {endpoint.api_key}"
        bare = bare_round_trip(session, bare_url)
        trivial = trivial_round_trip(session, endpoint)
        printed = print_latency(session, endpoint)
        bare_after = bare_round_trip(session, bare_url)
        _wait_idle(endpoint)
        one = sleep_jobs(session, endpoint, 1)
        _wait_idle(endpoint)
        four = sleep_jobs(session, endpoint, WORKERS)
    baseline = statistics.mean([bare, bare_after])
    loopback = "bare loopback HTTP round trip"
    return [
        _row("local endpoint: trivial job round trip (/runsync)", trivial, loopback, baseline),
        _row("local endpoint: remote print to client (/stream)", printed, loopback, baseline),
        _row(f"local endpoint: {WORKERS} sleep({SLEEP_S:g}) jobs on {WORKERS} workers", four,
             f"one sleep({SLEEP_S:g}) job", one),
    ]  # fmt: skip


def _row(name: str, value: float, baseline_name: str, baseline: float) -> dict[str, Any]:
    return {"name": name, "value_s": value, "baseline_name": baseline_name, "baseline_s": baseline}
