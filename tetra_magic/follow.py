"""Following a job from submission to its final state, feeding each chunk to a view.

/stream gives output as it is produced; /status gives the final result. The loop polls /stream
(a RunPod-compatible endpoint holds it open briefly while nothing is new), slows down while the
job waits in the queue, and reads /status once the job is final. A worker that does not stream
(the published tetra worker) is handled the same way: its output simply arrives all at the end.

While the job is IN_QUEUE (a RunPod cold start can take minutes) nothing can arrive, so the loop
polls at most every QUEUE_POLL seconds, far inside RunPod's per-endpoint limit of 2000 /status
and /stream requests per 10 s even with many kernels on one endpoint (the client backs off on
429), and time in the queue does not count against the cell's deadline: like RunPod's
executionTimeout, --timeout limits the run, not the wait for a worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tetra_magic.client import FINAL_STATUSES, EndpointClient, EndpointError
from worker.protocol import FunctionResponse

MIN_POLL = 0.05
MAX_POLL = 1.0
QUEUE_POLL = 2.0


class View(Protocol):
    """What a display must accept while a job runs."""

    def status(self, status: str) -> None: ...
    def chunk(self, chunk: dict[str, Any]) -> None: ...


class JobTimeout(Exception):
    """The job ran past the cell's --timeout and was cancelled."""


@dataclass
class Followed:
    """A finished job: its final status document and the worker's response, if any."""

    job_id: str
    status: str
    document: dict[str, Any]
    response: FunctionResponse | None
    chunks: list[dict[str, Any]] = field(default_factory=list)


def follow(
    client: EndpointClient, job_id: str, view: View, deadline: float | None = None
) -> Followed:
    """Show a job's output as it comes; return when it is final. Ctrl-C and the deadline cancel
    the remote job before the exception leaves."""
    chunks: list[dict[str, Any]] = []
    try:
        _poll(client, job_id, view, deadline, chunks)
    except (KeyboardInterrupt, JobTimeout):
        client.cancel(job_id)
        view.status("CANCELLED")
        raise
    document = client.status(job_id)
    for item in _unseen(document.get("output"), len(chunks)):
        chunks.append(item)
        view.chunk(item)
    view.status(document["status"])
    return Followed(job_id, document["status"], document, _response(document, chunks), chunks)


def _poll(
    client: EndpointClient,
    job_id: str,
    view: View,
    deadline: float | None,
    chunks: list[dict[str, Any]],
) -> None:
    pause = MIN_POLL
    streaming = True
    queued, last = True, time.monotonic()
    while True:
        now = time.monotonic()
        if deadline is not None and queued:
            deadline += now - last  # waiting for a worker is not running
        last = now
        if deadline is not None and now > deadline:
            raise JobTimeout(job_id)
        page = client.stream(job_id) if streaming else client.status(job_id)
        new = [item.get("output") for item in page.get("stream", [])] if streaming else []
        for item in new:
            if isinstance(item, dict):
                chunks.append(item)
                view.chunk(item)
        status = page.get("status", "IN_QUEUE")
        queued = status == "IN_QUEUE"
        view.status(status)
        if status in FINAL_STATUSES:
            return
        if page.get("stream") is None and streaming:
            streaming = False  # an endpoint whose /stream says nothing: follow /status only
        pause = MIN_POLL if new else min(pause * 2, QUEUE_POLL if queued else MAX_POLL)
        time.sleep(pause)


def _unseen(output: Any, seen: int) -> list[dict[str, Any]]:
    """Chunks in an aggregated output that /stream did not deliver (none for plain outputs)."""
    if not isinstance(output, list):
        return []
    return [item for item in output[seen:] if isinstance(item, dict)]


def _response(document: dict[str, Any], chunks: list[dict[str, Any]]) -> FunctionResponse | None:
    """The FunctionResponse, from our streamed shape or the published worker's plain dict."""
    for item in reversed(chunks):
        if item.get("kind") == "response":
            return FunctionResponse.model_validate(item["response"])
    output = document.get("output")
    if isinstance(output, dict) and "success" in output:
        response = FunctionResponse.model_validate(output)
        if not response.success and not response.error and document.get("error"):
            response.error = str(document["error"])
        return response
    return None


__all__ = ["EndpointError", "Followed", "JobTimeout", "View", "follow"]
