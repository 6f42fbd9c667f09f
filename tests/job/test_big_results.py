"""A cell's 10 MB value coming home through RunPod's 1 MB stream chunks, on a local endpoint of
this module's own: the value lands intact in the notebook, and no chunk the endpoint delivers,
live on /stream or aggregated in /status, is over 1 MB. The response travels in pieces the
client joins, whether it read them live or, having missed the stream, from /status."""

from __future__ import annotations

import hashlib
import json
import random
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from helpers.following import followed
from helpers.kernels import private_local_endpoint, run_cells

from tetra_magic.cloud.client import Endpoint, EndpointClient
from tetra_magic.local import launcher
from tetra_magic.local.launcher import LocalEndpoint
from tetra_magic.view.text import TextView
from worker.protocol import FunctionRequest, decode

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

SIZE = 10_000_000
CHUNK_LIMIT = 1_000_000  # RunPod's, for one /stream chunk
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home"), workers=1):
        yield


def _endpoint() -> LocalEndpoint:
    """The module's endpoint as it is now: a kernel replaces it when the code changed."""
    return launcher.ensure_running(workers=1, idle_timeout=None)


def _expected() -> bytes:
    """The cells' value, made here as they make it there."""
    return random.Random(7).randbytes(SIZE)


def _posted_size(chunk: dict[str, Any]) -> int:
    """Bytes of a chunk as the runpod SDK posts it to the stream: `{"output": chunk}`, UTF-8."""
    return len(json.dumps({"output": chunk}, ensure_ascii=False).encode())


def _get(endpoint: LocalEndpoint, route: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    return requests.get(f"{endpoint.url}/{route}", headers=headers, timeout=30).json()


def test_a_10_mb_value_lands_intact_through_chunks_under_1_mb() -> None:
    remote = (
        "%%tetra --local --out rec\nimport random\ndata = random.Random(7).randbytes(10_000_000)"
    )
    check = "import hashlib\nprint(len(data), hashlib.sha256(data).hexdigest(), rec.id)"
    _, cell, after = run_cells("%load_ext tetra_magic", remote, check)
    assert cell.error is None and cell.stdout == ""
    size, digest, job_id = after.stdout.split()
    assert (int(size), digest) == (SIZE, hashlib.sha256(_expected()).hexdigest())
    output = _get(_endpoint(), f"status/{job_id}")["output"]
    assert max(_posted_size(chunk) for chunk in output) <= CHUNK_LIMIT
    assert [chunk["kind"] for chunk in output].count("response") > 10  # it came in pieces


BIG = """
def main():
    import random
    return random.Random(7).randbytes(10_000_000)
"""


def test_the_stream_delivers_pieces_under_1_mb_that_the_client_joins_from_status() -> None:
    """Every chunk live on /stream fits; a client that missed them all reads the response's
    pieces from /status and makes it whole."""
    endpoint = _endpoint()
    request = FunctionRequest(function_name="main", function_code=textwrap.dedent(BIG))
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    body = {"input": request.model_dump()}
    job_id = requests.post(f"{endpoint.url}/run", json=body, headers=headers, timeout=30).json()[
        "id"
    ]
    streamed: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page = _get(endpoint, f"stream/{job_id}")
        streamed += [item["output"] for item in page["stream"]]
        if page["status"] in FINAL:
            break
    assert page["status"] == "COMPLETED"
    assert max(_posted_size(chunk) for chunk in streamed) <= CHUNK_LIMIT
    assert [chunk["kind"] for chunk in streamed].count("response") > 10
    target = Endpoint(endpoint.base_url, endpoint.endpoint_id, endpoint.api_key)
    client = EndpointClient(target)
    try:
        job = followed(client, job_id, TextView(live=False))  # /stream has nothing left
    finally:
        client.close()
    assert [chunk["kind"] for chunk in job.chunks].count("response") == 1
    assert job.response is not None and job.response.success
    assert decode(job.response.result) == _expected()
