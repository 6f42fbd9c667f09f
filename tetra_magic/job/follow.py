"""Following a job from submission to its final state: the polling loop writes what it reads
into the job (its status, its chunks, its final document and response), which shows it.

/stream gives output as it is produced; /status gives the final result. The loop polls /stream
(a RunPod-compatible endpoint holds it open briefly while nothing is new), slows down while the
job waits in the queue, and reads /status once the job is final. A worker that does not stream
(the published standard worker) sends nothing to /stream; until something comes there, the
loop also reads /status, where the cell runtime's progress updates carry its output live
(progress.py).

While the job is IN_QUEUE (a RunPod cold start can take minutes) nothing can arrive, so the loop
polls at most every QUEUE_POLL seconds, far inside RunPod's per-endpoint limit of 2000 /status
and /stream requests per 10 s even with many kernels on one endpoint (the client backs off on
429), and time in the queue, or installing the cell's dependencies, does not count against
the cell's deadline: --timeout limits the run, not the wait for a worker or for pip. The wait
for a worker has its own bound and explanations instead (waiting.py, from /health).

A response too big for one stream chunk comes in pieces (worker/protocol.py), from /stream or,
where the stream was missed, from the aggregated output /status ends with; the loop joins them,
so everything past it (the view, the job's record) sees one "response" chunk.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

from tetra_magic.cloud.client import EndpointClient, EndpointError
from tetra_magic.cloud.status import JobStatus
from tetra_magic.errors import CellInterrupted, JobFailed
from tetra_magic.job.progress import ProgressOutput
from tetra_magic.job.waiting import QueueGaveUp, QueueWatch
from worker.protocol import FunctionResponse

MIN_POLL = 0.05
MAX_POLL = 1.0
QUEUE_POLL = 2.0
# When a queued job's endpoint is first asked what its workers are doing, and how often after.
HEALTH_FIRST, HEALTH_POLL = 2.0, 3.0


class Job(Protocol):
    """What the loop writes into: a job (tetra_magic/job/job.py), as the loop sees it."""

    id: str | None
    chunks: list[dict[str, Any]]
    document: dict[str, Any] | None
    response: FunctionResponse | None

    @property
    def cancel_requested(self) -> threading.Event | None: ...

    def update(self, status: JobStatus) -> None: ...

    def show(self, chunk: dict[str, Any]) -> None: ...


class JobTimeout(JobFailed):
    """The job ran past the cell's deadline without the endpoint stopping it; it was
    cancelled."""


class CancelRequested(JobFailed):
    """The view's Cancel button was clicked: the job is cancelled, nothing comes back."""


def follow(
    job: Job,
    client: EndpointClient,
    deadline: float | None = None,
    watch: QueueWatch | None = None,
) -> None:
    """Follow the submitted `job` until it is final, writing into it as things come. Ctrl-C,
    the Cancel button (the job's `cancel_requested`), the deadline and `watch` giving up on the
    queue cancel the remote job, then raise."""
    job_id = job.id or ""
    progress = ProgressOutput()
    poll = _Poll(client, job, progress, watch)
    try:
        poll.run(_Deadline(deadline), job.cancel_requested)
    except KeyboardInterrupt:
        note = _cancel(client, job) + poll.cancel_caveat()
        raise CellInterrupted(f"job {job_id} {note}") from None
    except (JobTimeout, CancelRequested, QueueGaveUp) as exc:
        note = _cancel(client, job) + poll.cancel_caveat()
        raise type(exc)(f"{exc}; job {job_id} {note}") from None
    document = client.status(job_id)
    poll.deliver(_unseen(document.get("output"), poll.seen))
    response = _response(document, job.chunks)
    # A worker that streamed (ours) sent its output that way: no need to decode its result here.
    for item in [] if poll.streamed else progress.rest(response):
        job.show(item)
    job.document, job.response = document, response
    job.update(JobStatus(document["status"]))


class _Poll:
    """The polling loop of one job: /stream for workers that stream (ours), /status for the
    progress updates of one that does not (the published worker), /health while it queues."""

    def __init__(
        self, client: EndpointClient, job: Job, progress: ProgressOutput, watch: QueueWatch | None
    ) -> None:
        self.client, self.job, self.job_id = client, job, job.id or ""
        self.progress, self.watch = progress, watch
        self.streaming = True  # until /stream turns out to say nothing at all
        self.streamed = False  # whether /stream has delivered anything yet
        self.seen = 0  # the worker's chunks /stream has delivered, pieces counted one by one
        self.pieces: list[str] = []  # the texts of a response's pieces, until its last
        self.started = False  # whether a worker has taken the job
        self.installing = False
        self.health_read, self.health_at = 0.0, HEALTH_FIRST  # in seconds queued

    def run(self, clock: _Deadline, cancel: threading.Event | None) -> None:
        pause, last = MIN_POLL, JobStatus.IN_QUEUE
        while True:
            clock.check()
            if cancel is not None and cancel.is_set():
                raise CancelRequested("Cancel button pressed: nothing came back")
            asked = time.monotonic()
            status, new = self.poll()
            queued = status is JobStatus.IN_QUEUE
            self.started = self.started or not queued
            clock.paused = queued or self.installing
            if queued:
                self.queued(clock.since_last)
            self.job.update(status)
            if status.final:
                return
            if new or status != last:
                # Something happened, so more may follow at once (the job's end after its
                # response chunk): ask again now. An endpoint that holds /stream open while
                # nothing is new does the waiting; on one that does not, the next quiet poll
                # pauses again.
                pause, last = MIN_POLL / 2, status
                continue
            pause = min(pause * 2, QUEUE_POLL if queued else MAX_POLL)
            # An endpoint that held the request open while nothing came has waited for us.
            _sleep(pause - (time.monotonic() - asked), cancel)

    def poll(self) -> tuple[JobStatus, bool]:
        """One round of requests: the job's status, and whether any output came."""
        page = self.client.stream(self.job_id) if self.streaming else {}
        if self.streaming and page.get("stream") is None:
            self.streaming = False  # an endpoint whose /stream says nothing: /status only
        items = [item.get("output") for item in page.get("stream") or []]
        self.streamed = self.streamed or bool(items)
        self.seen += len(items)
        self.deliver(items)
        status = JobStatus(page.get("status", JobStatus.IN_QUEUE))
        if not self.streamed and (not self.streaming or status is JobStatus.IN_PROGRESS):
            document = self.client.status(self.job_id)
            status = JobStatus(document.get("status", status))
            updates = self.progress.new(document)
            self.deliver(updates)
            items += updates
        return status, bool(items)

    def cancel_caveat(self) -> str:
        """What a cancel may not do: a worker that does not stream (RunPod's published one)
        runs the cell inside its job loop, which cannot stop it."""
        if not self.started or self.streamed:
            return ""
        return (
            " (a worker that does not stream, such as RunPod's published one, may run the code"
            " on until it ends, and start the next job only then)"
        )

    def queued(self, seconds: float) -> None:
        """Time in the queue: counted against the queue timeout; /health read now and then."""
        if self.watch is None:
            return
        self.watch.tick(seconds)
        if self.watch.waited < self.health_at:
            return
        since = self.watch.waited - self.health_read
        self.health_read, self.health_at = self.watch.waited, self.watch.waited + HEALTH_POLL
        try:
            health = self.client.health()
        except EndpointError:
            return  # an endpoint without /health: the queue timeout still holds
        note = self.watch.read(health, since)
        if note:
            self.job.show({"kind": "note", "text": note})

    def deliver(self, items: list[Any]) -> None:
        """Hand new chunks to the job, a response's pieces joined, noting whether the worker
        is installing deps."""
        for item in items:
            if isinstance(item, dict) and (item := self._joined(item)) is not None:
                self.job.show(item)
                if item.get("kind") == "phase":
                    self.installing = item.get("text") == "installing"

    def _joined(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """`item` itself, but for a piece of a response: None until its last piece, which
        gives the whole "response" chunk."""
        if item.get("kind") != "response" or "response" in item:
            return item
        self.pieces.append(item.get("text", ""))
        if item.get("more"):
            return None
        text, self.pieces = "".join(self.pieces), []
        return {"kind": "response", "text": "", "response": json.loads(text)}


class _Deadline:
    """The cell's deadline, pushed back by the time spent waiting for a worker or installs."""

    def __init__(self, at: float | None) -> None:
        self.at, self.last, self.paused = at, time.monotonic(), True
        self.since_last = 0.0

    def check(self) -> None:
        now = time.monotonic()
        self.since_last = now - self.last
        if self.at is not None and self.paused:
            self.at += self.since_last
        self.last = now
        if self.at is not None and now > self.at:
            raise JobTimeout("the cell ran past its time limit without the endpoint stopping it")


def _sleep(seconds: float, cancel: threading.Event | None) -> None:
    if cancel is None:
        time.sleep(max(seconds, 0.0))
    else:
        cancel.wait(max(seconds, 0.0))  # a click ends the pause at once


def _cancel(client: EndpointClient, job: Job) -> str:
    """Cancel the job, even through a second Ctrl-C; what became of it, in words."""
    for _ in range(2):
        try:
            client.cancel(job.id or "")
        except KeyboardInterrupt:
            continue  # impatience: try once more, it is quick
        except EndpointError as exc:
            return f"could not be cancelled and may still be running ({exc})"
        job.update(JobStatus.CANCELLED)
        return "was cancelled on the endpoint"
    return "may still be running: cancelling it was interrupted"


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
