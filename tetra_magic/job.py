"""One remote job, held as one object from submission to its record (what --out stores).

Like ipyparallel's AsyncResult, the job owns its life: submitting (with the one re-provision
after a 404), following it to its end, cancelling it, judging how it ended, and the record a
user reads afterwards. The job watches what its view is shown, so its record holds the output
and the last status seen however the job ended (done, failed, cancelled, lost).
"""

from __future__ import annotations

import html
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tetra_magic import outcome, pricing, targets
from tetra_magic.client import Endpoint, EndpointClient, EndpointNotFound
from tetra_magic.display import JobView, rich
from tetra_magic.errors import JobFailed, Labeler
from tetra_magic.follow import Followed, follow
from tetra_magic.options import CellOptions
from tetra_magic.packing import Packed
from tetra_magic.status import JobStatus
from tetra_magic.waiting import QueueWatch
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
    # On RunPod: seconds billed for the run, and the estimated price (pricing.py).
    billed_s: int | None = None
    cost_estimate_usd: float | None = None
    # Bytes of the request as sent, and of the result the worker sent back (its pickles).
    request_bytes: int | None = None
    result_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


class Job(JobRecord):
    """A job on an endpoint: run() submits and follows it; its fields are its record."""

    def __init__(
        self,
        target: Endpoint,
        opts: CellOptions,
        packed: Packed,
        view: JobView,
        started: float | None = None,
    ) -> None:
        super().__init__(
            id=None,
            status=JobStatus.IN_QUEUE,
            endpoint=repr(target),
            name=opts.name,
            shipped=list(packed.shipped),
            request_bytes=packed.size,
        )
        self._target, self._opts, self._packed, self._view = target, opts, packed, view
        self._started = started
        self._chunks: list[dict[str, Any]] = []
        self.followed: Followed | None = None

    def run(self) -> Followed:
        """Submit and follow to the end, the view closed whatever happens (a live widget must
        not outlive the cell: Ctrl-C, Cancel, errors)."""
        client = EndpointClient(self._target)
        try:
            client = self._submit(client)
            target = client.endpoint
            watch = QueueWatch(
                self._opts.queue_timeout,
                target.image,
                target.gpus,
                target.billed,
                recheck=targets.rechecker(target),
            )
            deadline = time.monotonic() + self._opts.timeout + CLIENT_GRACE
            self.followed = follow(client, self.id or "", _Watched(self), deadline, watch)
        except BaseException as exc:
            self._view.close(None)
            self.error = str(exc)
            raise
        finally:
            client.close()
            self._record()
        self._view.close(self.followed.response)
        return self.followed

    def _submit(self, client: EndpointClient) -> EndpointClient:
        """Send the request; if a provisioned endpoint has vanished, provision again once.
        Returns the client the job lives on."""
        body = self._packed.request.model_dump(exclude_none=True)
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
    def chunks(self) -> list[dict[str, Any]]:
        """Every chunk the job has shown so far (output, logs, the worker's info)."""
        return self._chunks

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

    def wait(self) -> bool:
        """Whether the job has ended. A cell's job has ended by the time the cell returns, so
        there is nothing to wait for."""
        return self.status.final

    def check(self, label: Labeler, user_ns: dict[str, Any]) -> FunctionResponse:
        """The worker's response for a COMPLETED job; how it ended, as an exception, otherwise
        (a cell's own exception as the notebook knows its class, hence `user_ns`)."""
        if self.followed is None:
            raise JobFailed(f"job {self.id} did not end: {self.error}")
        try:
            deps = [*(self._opts.dependencies or ()), *(self._opts.system_dependencies or ())]
            return outcome.check(self.followed, label, user_ns, deps)
        except BaseException as exc:
            self.error = str(exc)
            raise

    def cost(self, prices: dict[str, float] | None) -> pricing.Cost | None:
        """What the job cost on RunPod (an estimate, kept in the record); None elsewhere."""
        if not self._target.billed or self.followed is None:
            return None
        gpu = ((self.worker or {}).get("gpus") or [None])[0]
        estimate = pricing.estimate(self.followed.document, gpu, self._target.gpu_ids, prices)
        if estimate is not None:
            self.billed_s, self.cost_estimate_usd = estimate.billed_s, estimate.usd
        return estimate

    def _record(self) -> None:
        """Fill the record from what the job showed and, if it ended, its final document."""
        doc = self.followed.document if self.followed else {}
        response = self.followed.response if self.followed else None
        self.delay_ms, self.execution_ms = doc.get("delayTime"), doc.get("executionTime")
        if self._started is not None:
            self.wall_s = round(time.time() - self._started, 3)
        self.stdout = _text(self._chunks, "stdout") or _plain_stdout(response)
        self.stderr = _text(self._chunks, "stderr")
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


class _Watched:
    """The job's view as follow sees it: every status and chunk is noted in the job's record
    on the way to the view the user watches."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cancel_requested = getattr(job._view, "cancel_requested", None)

    def submitted(self, job_id: str, name: str | None) -> None:
        self.job._view.submitted(job_id, name)

    def status(self, status: JobStatus) -> None:
        self.job.status = status
        self.job._view.status(status)

    def chunk(self, chunk: dict[str, Any]) -> None:
        self.job._chunks.append(chunk)
        self.job._view.chunk(chunk)

    def close(self, response: FunctionResponse | None) -> None:
        self.job._view.close(response)


def _plain_stdout(response: FunctionResponse | None) -> str:
    """The stdout of a worker that does not stream, less the display outputs framed in it."""
    return rich.plain_text(response.stdout or "") if response else ""


def _text(chunks: list[dict[str, Any]], kind: str) -> str:
    return "".join(c.get("text", "") for c in chunks if c.get("kind") == kind)
