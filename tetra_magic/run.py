"""One cell's remote run: pack -> send -> follow -> show -> write back.

Heavy imports (httpx, widgets) happen here, on a cell's first run, never at %load_ext.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tetra_magic import outcome, pythons, targets
from tetra_magic.analysis import CellAnalysis
from tetra_magic.client import EndpointClient
from tetra_magic.display import make_view
from tetra_magic.follow import Followed, follow
from tetra_magic.options import CellOptions
from tetra_magic.packing import pack

# Seconds past --timeout before the client gives up on an endpoint that has not stopped the job.
CLIENT_GRACE = 30.0


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
    worker: dict[str, Any] | None = None
    shipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_cell(
    shell: Any,
    opts: CellOptions,
    analysis: CellAnalysis,
    filename: str,
    display: str = "auto",
    started: float | None = None,
) -> Any:
    """Run the analysed cell remotely; return its last value (None if it has none)."""
    endpoint = targets.resolve(opts)
    packed = pack(
        analysis,
        shell.user_ns,
        filename=filename,
        dependencies=list(opts.dependencies),
        system_dependencies=list(opts.system_dependencies),
        timeout=opts.timeout,
        limit=endpoint.payload_limit,
    )
    client = EndpointClient(endpoint)
    view = make_view(shell, opts, display)
    try:
        job_id = client.run(packed.request.model_dump(exclude_none=True), opts.timeout)
        view.submitted(job_id, opts.name)
        deadline = time.monotonic() + opts.timeout + CLIENT_GRACE
        followed = follow(client, job_id, view, deadline)
    finally:
        client.close()
    response = followed.response
    view.close(response)
    pythons.warn(followed.chunks, response)
    _record(shell, opts, followed, endpoint, packed.shipped, started)
    result = outcome.unpack(outcome.check(followed))
    outcome.apply(result, shell.user_ns)
    view.problems(result.problems)
    return result.last if analysis.has_last_expr else None


def _record(
    shell: Any,
    opts: CellOptions,
    followed: Followed,
    endpoint: Any,
    shipped: tuple[str, ...],
    started: float | None,
) -> None:
    if not opts.out:
        return
    doc = followed.document
    response = followed.response
    shell.user_ns[opts.out] = JobRecord(
        id=followed.job_id,
        status=followed.status,
        endpoint=repr(endpoint),
        name=opts.name,
        delay_ms=doc.get("delayTime"),
        execution_ms=doc.get("executionTime"),
        wall_s=None if started is None else round(time.time() - started, 3),
        stdout=(response.stdout or "") if response else "",
        worker=response.worker.model_dump() if response and response.worker else None,
        shipped=list(shipped),
    )
