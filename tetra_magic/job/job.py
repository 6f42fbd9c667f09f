"""One remote job, held as one object from submission to its record (what --out stores).

Like ipyparallel's AsyncResult, the job owns its life: submitting (with the one re-provision
after a 404), following it to its end (the follow loop writes into it), waiting for it,
cancelling it, judging how it ended, and the record a user reads afterwards, which holds the
output and the last status seen however the job ended (done, failed, cancelled, lost).
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tetra_magic import targets
from tetra_magic.cell import outcome
from tetra_magic.cell.packing import Packed
from tetra_magic.cloud import pricing
from tetra_magic.cloud.client import Endpoint, EndpointClient, EndpointNotFound
from tetra_magic.cloud.status import JobStatus
from tetra_magic.errors import JobFailed, Labeler, endpoint_error_text
from tetra_magic.job.follow import follow
from tetra_magic.job.waiting import QueueWatch
from tetra_magic.options import CellOptions
from tetra_magic.view import JobView, rich
from worker.protocol import FunctionResponse

# Seconds past --timeout before the client gives up on an endpoint that has not stopped the job.
CLIENT_GRACE = 30.0
# The endpoint's own limit covers installs too, which --timeout does not: room for them.
INSTALL_ALLOWANCE = 1800.0


@dataclass
class JobRecord:
    """The fields --out users read: enough to find the job again and see what it did."""

    id: str | None
    status: JobStatus
    endpoint: str
    name: str | None = None
    delay_ms: int | None = None
    execution_ms: int | None = None
    wall_s: float | None = None
    stdout: str = ""
    stderr: str = ""
    worker: dict[str, Any] | None = None
    shipped: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    error: str | None = None
    # On RunPod: seconds billed for the run, and the estimated price (tetra_magic/cloud/pricing.py).
    billed_s: int | None = None
    cost_estimate_usd: float | None = None
    # Bytes of the request as sent, and of the result the worker sent back (its pickles).
    request_bytes: int | None = None
    result_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


class Job(JobRecord):
    """A job on an endpoint: run() submits and follows it; its fields are its record.

    The follow loop writes into it (`update`, `show`), so the job holds the one list of what
    it showed, its last status, and at its end RunPod's final document and the worker's
    response; `check` judges how it ended."""

    def __init__(
        self,
        target: Endpoint,
        opts: CellOptions,
        view: JobView,
        started: float | None = None,
    ) -> None:
        super().__init__(id=None, status=JobStatus.IN_QUEUE, endpoint=repr(target), name=opts.name)
        self._target, self._opts, self._view = target, opts, view
        self._started = started
        self.chunks: list[dict[str, Any]] = []
        # RunPod's final status document and the worker's response: set once the job is final.
        self.document: dict[str, Any] | None = None
        self.response: FunctionResponse | None = None
        self._ended = threading.Event()
        # What the cell brought back, {name: value}, or how it failed: for `result()`. A
        # background cell's values are written back later; `settle` does that on demand.
        self.values: dict[str, Any] = {}
        self.failure: BaseException | None = None
        self.settle: Callable[[], None] | None = None

    def run(self, packed: Packed) -> None:
        """Submit `packed` and follow the job to its end, the view closed whatever happens (a
        live widget must not outlive the cell: Ctrl-C, Cancel, errors)."""
        self.finish(self.start(packed))

    def start(self, packed: Packed) -> EndpointClient:
        """Submit `packed`; the client the job lives on, for `finish` (a background cell
        submits in the cell and follows in a thread)."""
        self.shipped, self.request_bytes = list(packed.shipped), packed.size
        client = EndpointClient(self._target)
        try:
            return self._submit(client, packed)
        except BaseException as exc:
            client.close()
            self._given_up(exc)  # it never reached the follow loop
            raise

    def finish(self, client: EndpointClient) -> None:
        """Follow the submitted job on `client` to its end, then close the view and client."""
        try:
            self.follow(client, time.monotonic() + self._opts.timeout + CLIENT_GRACE)
        except BaseException as exc:
            self._given_up(exc)
            raise
        finally:
            client.close()
        self._view.close(self.response)

    def _given_up(self, exc: BaseException) -> None:
        self._view.close(None)
        self.error = str(exc)
        self._end()

    def follow(self, client: EndpointClient, deadline: float | None = None) -> None:
        """Follow the submitted job on `client` to its end (`deadline`: time.monotonic()
        seconds, pushed back while it queues or installs); ended, for `wait`, however the
        following ends."""
        target = client.endpoint
        watch = QueueWatch(
            self._opts.queue_timeout,
            target.image,
            target.gpus,
            target.billed,
            recheck=targets.rechecker(target),
        )
        try:
            follow(self, client, deadline, watch)
        finally:
            self._end()

    def update(self, status: JobStatus) -> None:
        """A status RunPod reported for the job: its own, and shown."""
        self.status = status
        self._view.status(status)

    def show(self, chunk: dict[str, Any]) -> None:
        """A chunk of what the job showed (output, logs, the worker's info): kept, and shown."""
        self.chunks.append(chunk)
        self._view.chunk(chunk)

    @property
    def cancel_requested(self) -> threading.Event | None:
        """Set by the view's Cancel button, where it has one; the follow loop watches it."""
        return getattr(self._view, "cancel_requested", None)

    def _submit(self, client: EndpointClient, packed: Packed) -> EndpointClient:
        """Send the request; if a provisioned endpoint has vanished, provision again once.
        Returns the client the job lives on."""
        body = packed.request.model_dump(exclude_none=True)
        try:
            self.id = client.run(body, self._limit())
        except EndpointNotFound:
            replacement = targets.after_not_found(self._opts, client.endpoint)
            if replacement is None:
                raise
            client.close()
            client = EndpointClient(replacement)
            self._target, self.endpoint = replacement, repr(replacement)
            try:
                self.id = client.run(body, self._limit())
            except BaseException:
                client.close()  # run() closes only the client it was handed
                raise
        self._view.submitted(self.id, self.name)
        return client

    def _limit(self) -> float:
        """The job's executionTimeout: a backstop past the worker's own --timeout, which
        counts the cell's run only."""
        installs = self._opts.dependencies or self._opts.system_dependencies
        return self._opts.timeout + CLIENT_GRACE + (INSTALL_ALLOWANCE if installs else 0.0)

    @property
    def opts(self) -> CellOptions:
        return self._opts

    @property
    def endpoint_id(self) -> str:
        return self._target.endpoint_id

    @property
    def billed(self) -> bool:
        """Whether the job runs on RunPod, which bills its workers' time."""
        return self._target.billed

    def cancel(self) -> None:
        """Cancel the job on its endpoint. A cell's job is cancelled by Ctrl-C or the Cancel
        button while it runs; one that has ended has nothing left to cancel."""
        if self.id is None or self.status.final:
            return
        client = EndpointClient(self._target)
        try:
            client.cancel(self.id)
        finally:
            client.close()
        self.status = JobStatus.CANCELLED

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended, at most `timeout` seconds (None: no limit); whether
        it has, as ipyparallel's AsyncResult.wait answers. A job ends when its following does:
        final on the endpoint, or given up on (cancelled, timed out, lost)."""
        return self._ended.wait(timeout)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The names the cell brought back, {name: value}, once it has ended (waiting up to
        `timeout` seconds; TimeoutError if it still runs then); a background cell's values are
        written into the notebook first, where they have not been yet. A cell that failed
        raises its error again."""
        if not self.wait(timeout):
            raise TimeoutError(f"job {self.id} is still {self.status.value} after {timeout:g} s")
        if self.settle is not None:
            self.settle()
        if self.failure is not None:
            raise self.failure
        return dict(self.values)

    def check(self, label: Labeler, user_ns: dict[str, Any]) -> FunctionResponse:
        """The worker's response for a COMPLETED job; how it ended, as an exception, otherwise
        (a cell's own exception as the notebook knows its class, hence `user_ns`)."""
        try:
            deps = [*(self._opts.dependencies or ()), *(self._opts.system_dependencies or ())]
            return outcome.check(self._response(), label, user_ns, deps)
        except BaseException as exc:
            self.error = str(exc)
            raise

    def _response(self) -> FunctionResponse:
        """The worker's response; JobFailed saying how the job ended without one."""
        job = f"job {self.id}"
        if self.document is None:
            raise JobFailed(f"{job} did not end: {self.error}")
        if self.status is JobStatus.TIMED_OUT:
            raise JobFailed(f"{job} ran past the endpoint's execution timeout and was stopped")
        if self.status is JobStatus.CANCELLED:
            raise JobFailed(f"{job} was cancelled on the endpoint")
        if self.response is None:
            error = self.document.get("error") or "the worker sent no response"
            raise JobFailed(f"{job} {self.status.value.lower()}: {endpoint_error_text(error)}")
        return self.response

    def cost(self, prices: dict[str, float] | None) -> pricing.Cost | None:
        """What the job cost on RunPod (an estimate, kept in the record); None elsewhere."""
        if not self._target.billed or self.document is None:
            return None
        gpu = ((self.worker or {}).get("gpus") or [None])[0]
        estimate = pricing.estimate(self.document, gpu, self._target.gpu_ids, prices)
        if estimate is not None:
            self.billed_s, self.cost_estimate_usd = estimate.billed_s, estimate.usd
        return estimate

    def _end(self) -> None:
        """The job is over here: its record filled, and `wait` answered."""
        self._record()
        self._ended.set()

    def _record(self) -> None:
        """Fill the record from what the job showed and, if it ended, its final document."""
        doc, response = self.document or {}, self.response
        self.delay_ms, self.execution_ms = doc.get("delayTime"), doc.get("executionTime")
        if self._started is not None:
            self.wall_s = round(time.time() - self._started, 3)
        self.stdout = _text(self.chunks, "stdout") or _plain_stdout(response)
        self.stderr = _text(self.chunks, "stderr")
        self.worker = response.worker.model_dump() if response and response.worker else None
        self.result_bytes = len(response.result or "") if response else None

    def _summary(self) -> tuple[str, ...]:
        """Name, status, time, worker, GPU: the one line a held job shows."""
        worker = self.worker or {}
        gpus = ", ".join(worker.get("gpus") or []) or "no GPU"
        wall = f"{self.wall_s:.1f} s" if self.wall_s is not None else "-"
        # The status is RunPod's word on the job; a cell that raised is still a COMPLETED job.
        status = self.status.value + (" (the cell failed)" if self.error else "")
        return (
            self.name or f"job {self.id}",
            status,
            wall,
            worker.get("worker_id", "-"),
            gpus,
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("tetra " + " | ".join(self._summary()))

    def _repr_html_(self) -> str:
        cells = "".join(f"<td>{html.escape(part)}</td>" for part in self._summary())
        return f"<table class='tetra-job'><tr><td>tetra</td>{cells}</tr></table>"


def _plain_stdout(response: FunctionResponse | None) -> str:
    """The stdout of a worker that does not stream, less the display outputs framed in it."""
    return rich.plain_text(response.stdout or "") if response else ""


def _text(chunks: list[dict[str, Any]], kind: str) -> str:
    return "".join(c.get("text", "") for c in chunks if c.get("kind") == kind)
