"""The worker under the runpod SDK's real production loop, served by the local endpoint.

The local endpoint runs `python -m worker` with the `RUNPOD_WEBHOOK_*` variables set, so the SDK
takes jobs over HTTP, posts every streamed chunk, and learns of cancels on its stop channel:
exactly the path a RunPod deployment takes. One worker serves the module, so the tests can see
that the worker process itself survives what they do to the code it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.kernels import environ, shared_worker_env
from helpers.polling import until

from tetra_magic.local import launcher
from worker.protocol import FunctionRequest, FunctionResponse, decode

# Starts local endpoints and their worker processes: not in the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


class Endpoint:
    """The REST calls a client makes, and the chunks /stream has delivered per job."""

    def __init__(self, url: str, api_key: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        )
        self.streamed: dict[str, list[dict[str, Any]]] = {}

    def run(self, source: str, **fields: Any) -> str:
        request = FunctionRequest(function_name="f", function_code=source, **fields)
        job_id = self.http.post("/run", json={"input": request.model_dump()}).json()["id"]
        self.streamed[job_id] = []
        return job_id

    def stream(self, job_id: str) -> dict[str, Any]:
        page = self.http.get(f"/stream/{job_id}").json()
        self.streamed[job_id] += [item["output"] for item in page.get("stream", [])]
        return page

    def status(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/status/{job_id}").json()

    def final(self, job_id: str) -> dict[str, Any]:
        return until(
            lambda: (doc := self.status(job_id))["status"] in FINAL and doc, 60, "never finished"
        )

    def printed(self, job_id: str, word: str) -> str:
        """The first streamed text containing `word`, waiting for it."""

        def seen() -> str | None:
            self.stream(job_id)
            return next((c["text"] for c in self.streamed[job_id] if word in c["text"]), None)

        return until(seen, 60, f"{word!r} never streamed")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    home = {
        "TETRA_MAGIC_HOME": str(tmp_path_factory.mktemp("tetra-home")),
        "TETRA_MAGIC_WORKER_ENV": shared_worker_env(),
    }
    with environ(home):
        found = launcher.ensure_running(workers=1, idle_timeout=None)
    client = Endpoint(found.url, found.api_key)
    try:
        until(
            lambda: client.http.get("/health").json()["workers"]["idle"] == 1,
            300,
            "the worker never came up",
        )
        yield client
    finally:
        client.http.close()
        with environ(home):
            launcher.stop()


def response_of(doc: dict[str, Any]) -> FunctionResponse:
    """Our worker's aggregated /status output: every chunk, the response last."""
    output = doc["output"]
    assert isinstance(output, list) and output[-1]["kind"] == "response", doc
    return FunctionResponse.model_validate(output[-1]["response"])


def gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


WORKER_PID = "def f():\n    import os\n    return os.getppid()\n"


def test_output_streams_live_and_status_aggregates(endpoint: Endpoint) -> None:
    """Output arrives while the code runs; a flood of lines arrives in few chunks, not one
    chunk per line; /status aggregates exactly what was streamed."""
    source = "def f():\n    import time\n    for i in range(8):\n"
    source += "        for j in range(50):\n            print('line', i, j)\n"
    source += "        time.sleep(0.1)\n    return 'done'\n"
    job_id = endpoint.run(source)
    endpoint.printed(job_id, "line 0 0")
    assert endpoint.status(job_id)["status"] == "IN_PROGRESS"  # the output came while it ran
    response = response_of(endpoint.final(job_id))
    assert response.success and decode(response.result) == "done"
    assert response.stdout == "".join(f"line {i} {j}\n" for i in range(8) for j in range(50))
    endpoint.stream(job_id)
    streamed = [c["text"] for c in endpoint.streamed[job_id] if c["kind"] == "stdout"]
    assert "".join(streamed) == response.stdout and len(streamed) <= 24  # batched, not 400


SLEEPER = """
def f():
    import os, subprocess, time
    p = subprocess.Popen(["sleep", "60"])
    print("pids", os.getpid(), p.pid, os.getppid(), flush=True)
    time.sleep(60)
"""


def test_cancel_kills_the_code_not_the_worker(endpoint: Endpoint) -> None:
    job_id = endpoint.run(SLEEPER)
    child, sleeper, worker = map(int, endpoint.printed(job_id, "pids").split()[1:4])
    endpoint.http.post(f"/cancel/{job_id}")
    assert endpoint.final(job_id)["status"] == "CANCELLED"
    until(lambda: gone(child) and gone(sleeper), 10, "the cancelled code kept running")
    after = response_of(endpoint.final(endpoint.run(WORKER_PID)))
    assert decode(after.result) == worker  # the same worker process took the next job


def test_a_crash_is_a_response_and_the_worker_goes_on(endpoint: Endpoint) -> None:
    before = decode(response_of(endpoint.final(endpoint.run(WORKER_PID))).result)
    source = "def f():\n    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
    crashed = response_of(endpoint.final(endpoint.run(source, source_name="<cell In[2]>")))
    assert crashed.failure == "crash" and "SIGSEGV" in crashed.error
    assert 'File "<cell In[2]>", line 3 in f' in crashed.error
    assert decode(response_of(endpoint.final(endpoint.run(WORKER_PID))).result) == before
