"""One cell's remote run: analyse -> pack -> submit -> follow -> check -> write back -> show.

Heavy imports (httpx, widgets) happen here, on a cell's first run, never at %load_ext.
The --out job is stored however the job ended (done, failed, cancelled, lost), since that is
when a user most wants to look at it; the cell's own names only on success.
"""

from __future__ import annotations

import sys
from typing import Any

from tetra_magic import outcome, pythons, targets
from tetra_magic.analysis import analyse
from tetra_magic.display import make_view
from tetra_magic.errors import cell_labeler, syntax_error
from tetra_magic.job import Job
from tetra_magic.options import CellOptions
from tetra_magic.packing import pack


def run_cell(
    shell: Any,
    opts: CellOptions,
    source: str,
    filename: str,
    display: str = "auto",
    started: float | None = None,
    prices: dict[str, float] | None = None,
) -> Any:
    """Run the cell's source remotely; return its last value (None if it has none).
    `prices` overrides RunPod's per-second GPU prices (pool id -> USD) for cost estimates."""
    label = cell_labeler(shell)
    try:
        analysis = analyse(source, filename)
    except SyntaxError as exc:
        raise syntax_error(exc, label) from None
    endpoint = targets.resolve(opts)
    packed = pack(
        analysis,
        shell.user_ns,
        opts,
        filename=filename,
        limit=endpoint.payload_limit,
        label=label,
    )
    job = Job(endpoint, opts, packed, make_view(shell, opts, display), started)
    try:
        followed = job.run()
        pythons.warn(followed.chunks, followed.response)
        cost = job.cost(prices)
        if cost is not None:
            print(cost.line(), file=sys.stderr)
        result = outcome.unpack(job.check(label, shell.user_ns))
    except BaseException as exc:
        job.error = job.error or str(exc)
        raise
    finally:
        if opts.out and job.id is not None:
            shell.user_ns[opts.out] = job
    outcome.apply(result, shell.user_ns)
    job.returned = sorted(result.values)
    _report(result.problems)
    return result.last if analysis.has_last_expr else None


def _report(problems: dict[str, str]) -> None:
    """Values that did not come back, one line each, after the cell's own output."""
    for name, reason in problems.items():
        print(f"tetra: {name} was not brought back: {reason}", file=sys.stderr)
