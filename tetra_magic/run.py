"""One cell's remote run: pack -> send -> follow -> show -> write back.

Heavy imports (httpx, widgets) happen here, on a cell's first run, never at %load_ext.
The --out record is written however the job ended (done, failed, cancelled, lost), since
that is when a user most wants to look at it; the cell's own names only on success.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tetra_magic import outcome, pricing, pythons, targets
from tetra_magic.analysis import CellAnalysis
from tetra_magic.client import Endpoint, EndpointClient, EndpointNotFound
from tetra_magic.display import make_view, rich
from tetra_magic.errors import CellInterrupted, JobFailed, cell_labeler
from tetra_magic.follow import Followed, follow
from tetra_magic.options import CellOptions
from tetra_magic.packing import Packed, pack
from tetra_magic.waiting import QueueWatch
from worker.protocol import FunctionResponse

# Seconds past --timeout before the client gives up on an endpoint that has not stopped the job.
CLIENT_GRACE = 30.0
# The endpoint's own limit covers installs too, which --timeout does not: room for them.
INSTALL_ALLOWANCE = 1800.0


@dataclass
class JobRecord:
    """What --out stores: enough to find the job again and see what it did."""

    id: str
    status: str
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_cell(
    shell: Any,
    opts: CellOptions,
    analysis: CellAnalysis,
    filename: str,
    display: str = "auto",
    started: float | None = None,
    prices: dict[str, float] | None = None,
) -> Any:
    """Run the analysed cell remotely; return its last value (None if it has none).
    `prices` overrides RunPod's per-second GPU prices (pool id -> USD) for cost estimates."""
    endpoint = targets.resolve(opts)
    label = cell_labeler(shell)
    packed = pack(
        analysis,
        shell.user_ns,
        opts,
        filename=filename,
        limit=endpoint.payload_limit,
        label=label,
    )
    record = _Recorder(shell, opts, endpoint, packed, started)
    view = make_view(shell, opts, display)
    followed = _submit(endpoint, opts, packed, view, record)
    record.cost = _cost(endpoint, followed, prices)
    if record.cost is not None:
        print(record.cost.line(), file=sys.stderr)
    try:
        result = outcome.unpack(outcome.check(followed, label, shell.user_ns))
    except BaseException as exc:
        record(followed, error=str(exc))
        raise
    outcome.apply(result, shell.user_ns)
    record(followed, returned=sorted(result.values))
    _report(result.problems)
    return result.last if analysis.has_last_expr else None


def _submit(
    endpoint: Endpoint, opts: CellOptions, packed: Packed, view: Any, record: _Recorder
) -> Followed:
    """Send the request and follow the job to its end, the view closed whatever happens."""
    client = EndpointClient(endpoint)
    chunks: list[dict[str, Any]] = []
    job_id = None
    try:
        job_id, client = _start(client, opts, packed)
        view.submitted(job_id, opts.name)
        deadline = time.monotonic() + opts.timeout + CLIENT_GRACE
        target = client.endpoint
        watch = QueueWatch(opts.queue_timeout, target.image, target.gpus, target.billed)
        followed = follow(client, job_id, view, deadline, chunks, watch)
    except BaseException as exc:
        view.close(None)  # a live widget must not outlive the cell (Ctrl-C, Cancel, errors)
        if job_id is not None:
            ended = "CANCELLED" if isinstance(exc, (CellInterrupted, JobFailed)) else "UNKNOWN"
            record(Followed(job_id, ended, {}, None, chunks), error=str(exc))
        raise
    finally:
        client.close()
    view.close(followed.response)
    pythons.warn(followed.chunks, followed.response)
    return followed


def _start(client: EndpointClient, opts: CellOptions, packed: Packed) -> tuple[str, EndpointClient]:
    """Submit the job; if a provisioned endpoint has vanished, provision again once."""
    body = packed.request.model_dump(exclude_none=True)
    try:
        return client.run(body, _endpoint_limit(opts)), client
    except EndpointNotFound:
        replacement = targets.after_not_found(opts, client.endpoint)
        if replacement is None:
            raise
    client.close()
    client = EndpointClient(replacement)
    try:
        return client.run(body, _endpoint_limit(opts)), client
    except BaseException:
        client.close()
        raise


def _endpoint_limit(opts: CellOptions) -> float:
    """The job's executionTimeout: a backstop past the worker's own --timeout, which counts
    the cell's run only."""
    installs = opts.dependencies or opts.system_dependencies
    return opts.timeout + CLIENT_GRACE + (INSTALL_ALLOWANCE if installs else 0.0)


def _cost(
    endpoint: Endpoint, followed: Followed, prices: dict[str, float] | None
) -> pricing.Cost | None:
    """What a job on RunPod cost (an estimate); None elsewhere, or if it never ran."""
    if not endpoint.billed:
        return None
    worker = followed.response.worker if followed.response else None
    gpu = worker.gpus[0] if worker and worker.gpus else None
    return pricing.estimate(followed.document, gpu, endpoint.gpu_ids, prices)


def _report(problems: dict[str, str]) -> None:
    """Values that did not come back, one line each, after the cell's own output."""
    for name, reason in problems.items():
        print(f"tetra: {name} was not brought back: {reason}", file=sys.stderr)


class _Recorder:
    """Writes the --out record (when asked for) from a followed job."""

    def __init__(
        self,
        shell: Any,
        opts: CellOptions,
        endpoint: Endpoint,
        packed: Packed,
        started: float | None,
    ) -> None:
        self.shell, self.opts, self.endpoint = shell, opts, endpoint
        self.packed, self.started = packed, started
        self.cost: pricing.Cost | None = None

    def __call__(
        self, followed: Followed, error: str | None = None, returned: list[str] | None = None
    ) -> None:
        if not self.opts.out:
            return
        doc, response = followed.document, followed.response
        self.shell.user_ns[self.opts.out] = JobRecord(
            id=followed.job_id,
            status=followed.status,
            endpoint=repr(self.endpoint),
            name=self.opts.name,
            delay_ms=doc.get("delayTime"),
            execution_ms=doc.get("executionTime"),
            wall_s=None if self.started is None else round(time.time() - self.started, 3),
            stdout=_text(followed.chunks, "stdout") or _plain_stdout(response),
            stderr=_text(followed.chunks, "stderr"),
            worker=response.worker.model_dump() if response and response.worker else None,
            shipped=list(self.packed.shipped),
            returned=returned or [],
            error=error,
            billed_s=self.cost.billed_s if self.cost else None,
            cost_estimate_usd=self.cost.usd if self.cost else None,
        )


def _plain_stdout(response: FunctionResponse | None) -> str:
    """The stdout of a worker that does not stream, less the display outputs framed in it."""
    return rich.plain_text(response.stdout or "") if response else ""


def _text(chunks: list[dict[str, Any]], kind: str) -> str:
    return "".join(c.get("text", "") for c in chunks if c.get("kind") == kind)
