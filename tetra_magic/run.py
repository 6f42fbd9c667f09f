"""One cell's remote run: analyse -> pack -> submit -> follow -> check -> write back -> show.

Heavy imports (httpx, widgets) happen here, on a cell's first run, never at %load_ext.
The --out job is stored however the job ended (done, failed, cancelled, lost), since that is
when a user most wants to look at it; the cell's own names only on success, all of them or none:
a Ctrl-C while they are written back waits until they all are (tetra_magic/cell/interrupts.py).

A session cell runs the same way: its session's part comes in as hooks
(tetra_magic/session/hooks.py), which replay a lost session where the user asked for that.
A --bg cell is submitted here and followed in a thread, its values written back between later
cells (tetra_magic/job/background.py), a --detach one put on record for `%tetra attach`
(tetra_magic/job/attach.py); a --map cell runs as one job per item
(tetra_magic/job/fan_out.py).
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
from collections.abc import Callable
from typing import Any

from IPython import display as ipython_display

from tetra_magic import targets
from tetra_magic.cell import interrupts, outcome
from tetra_magic.cell.analysis import CellAnalysis, analyse
from tetra_magic.cell.files import bring_home
from tetra_magic.cell.packing import Packed, pack
from tetra_magic.cloud.client import Endpoint, EndpointError
from tetra_magic.errors import CellInterrupted, Labeler, cell_labeler, syntax_error
from tetra_magic.job import attach, background, fan_out, pythons
from tetra_magic.job.job import Job
from tetra_magic.options import CellOptions
from tetra_magic.session import hooks as session_hooks
from tetra_magic.view import make_view

# What a Ctrl-C during write-back says when it is raised, once the write-back is done.
WRITTEN_BACK = "the cell had ended: its values were all written into the notebook first"


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
    `prices` overrides RunPod's per-second GPU prices (pool id -> USD) for cost estimates.
    In a session that was lost, SessionLost before anything runs (unless opts.session_replay
    rebuilds it first)."""
    label = cell_labeler(shell)
    analysis = _analysed(source, filename, label)
    if opts.session:  # its background cells first: a session runs one cell at a time
        background.jobs(shell).wait_for_session(opts.session)
    if opts.map_name:  # --bg too: the map holds its jobs in the background itself
        return fan_out.run_map(shell, opts, analysis, filename, label, prices, started, display)
    if opts.background:
        _in_background(shell, opts, analysis, filename, label, display, started, prices)
        return None
    hooks = session_hooks.for_cell(opts, label)
    hooks.before()
    result = None
    while result is None:  # once, but for a session lost meanwhile and rebuilt
        endpoint, packed = _packed(shell, opts, analysis, filename, label, hooks)
        job = Job(endpoint, opts, make_view(shell, opts, display), started)
        run_job = functools.partial(job.run, packed)
        result = _result(job, run_job, hooks, analysis, label, shell.user_ns, prices)
    _write_back(shell.user_ns, job, packed, result, hooks)
    return result.last if analysis.has_last_expr else None


def _in_background(
    shell: Any,
    opts: CellOptions,
    analysis: CellAnalysis,
    filename: str,
    label: Labeler,
    display: str,
    started: float | None,
    prices: dict[str, float] | None,
) -> None:
    """--bg: pack and submit as any cell, then return at once (--out holds the job; a value
    shown now would be stale at once); a thread follows the job, and its values land between
    later cells (job/background.py). In a session, the session is noted then too; a session
    lost meanwhile fails the job (replaying it is for the cell the user runs next)."""
    hooks = session_hooks.for_cell(opts, label)
    hooks.before()
    hooks.may_replay = False
    endpoint, packed = _packed(shell, opts, analysis, filename, label, hooks)
    job = Job(endpoint, opts, make_view(shell, opts, display), started)
    client = job.start(packed)  # in the cell: a refused request fails the cell itself

    def follow() -> outcome.CellResult:
        finish = functools.partial(job.finish, client)
        result = _result(job, finish, hooks, analysis, label, shell.user_ns, prices)
        assert result is not None  # None only for a session replayed, which it may not be
        if (
            analysis.has_last_expr
            and (last := outcome.last_value(result, shell.user_ns)) is not None
        ):
            ipython_display.display(last)  # in the cell's own output, as its Out would be
        return result

    def wrote_back(result: outcome.CellResult) -> None:
        """The session's record, and --get's files, once the values are in (in whatever cell
        the user runs next: the session's line names the job)."""
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            hooks.wrote_back(job, packed, result, shell.user_ns)
        for line in said.getvalue().splitlines():
            print(
                line.replace("tetra: ", f"tetra: background job {held.label}: ", 1), file=sys.stderr
            )
        bring_home(result.payload)

    # What it imports is no news: `import time` there and here bind the same module.
    binds = (analysis.binds | analysis.deletes) - set(analysis.imported)
    held = background.jobs(shell).submit(job, follow, filename, binds, opts.session, wrote_back)
    if opts.out:
        shell.user_ns[opts.out] = job
    print(
        f"tetra: background job {held.label} submitted; the kernel is free (`%tetra jobs` shows"
        " it, `%tetra wait` waits for its values)",
        file=sys.stderr,
    )
    if opts.detach:  # on record, for `%tetra attach` from a kernel started later
        attach.record(held, job, endpoint)
        print(
            f"tetra: detached: job {job.id} runs on if this kernel exits; `%tetra attach"
            f" {job.id}` brings its values into a later kernel",
            file=sys.stderr,
        )


def _packed(
    shell: Any,
    opts: CellOptions,
    analysis: CellAnalysis,
    filename: str,
    label: Labeler,
    hooks: session_hooks.NoSession,
) -> tuple[Endpoint, Packed]:
    """The cell's endpoint, and its request packed for it (in its session, if any)."""
    endpoint = targets.resolve(opts)
    limit = endpoint.payload_limit
    packed = pack(
        analysis, shell.user_ns, opts, filename=filename, limit=limit, label=label,
        session=hooks.session,
    )  # fmt: skip
    return endpoint, packed


def _analysed(source: str, filename: str, label: Labeler) -> CellAnalysis:
    try:
        return analyse(source, filename)
    except SyntaxError as exc:
        raise syntax_error(exc, label) from None


def _result(
    job: Job,
    run_job: Callable[[], None],
    hooks: session_hooks.NoSession,
    analysis: CellAnalysis,
    label: Labeler,
    user_ns: dict[str, Any],
    prices: dict[str, float] | None,
) -> outcome.CellResult | None:
    """Run the job (`run_job`) and bring its result home (not yet into the notebook); None where the
    cell must run again (its session was lost and rebuilt). The job goes into --out's name
    however it ended."""
    try:
        run_job()  # submit (unless submitted) and follow to the end
        pythons.warn(job.chunks, job.response)
        cost = job.cost(prices)
        if cost is not None:
            print(cost.line(), file=sys.stderr)
        result = outcome.unpack(job.check(label, user_ns))
        return None if hooks.lost(job, result) else result
    except BaseException as exc:
        job.error, job.failure = job.error or str(exc), exc
        hooks.failed(job, analysis.reads)
        if type(exc) is KeyboardInterrupt:  # outside the follow loop, which says its own
            raise CellInterrupted(_interrupted(job)) from None
        raise
    finally:  # a background cell's job is held from its submission (_in_background)
        if job.opts.out and job.id is not None and not job.opts.background:
            user_ns[job.opts.out] = job


def _interrupted(job: Job) -> str:
    """What a Ctrl-C that came while the job was not being followed left: a job not yet
    accepted, or one that had ended whose values were not written back."""
    if job.id is None:
        return "the cell was interrupted before the endpoint had accepted it"
    if job.status.final:
        return (
            f"job {job.id} had ended ({job.status.value}); interrupted before its values were"
            " written back: the notebook is as it was before the cell"
        )
    try:
        job.cancel()
    except EndpointError as exc:
        return f"job {job.id} could not be cancelled and may still be running ({exc})"
    return f"job {job.id} was cancelled on the endpoint"


def _write_back(
    user_ns: dict[str, Any],
    job: Job,
    packed: Packed,
    result: outcome.CellResult,
    hooks: session_hooks.NoSession,
) -> None:
    """The cell's values into the notebook, and the cell into its session's record, whole: a
    Ctrl-C meanwhile is raised only once they are all in, with word of what did not land."""
    with interrupts.deferred(WRITTEN_BACK):
        outcome.apply(result, user_ns)
        job.values, job.returned = dict(result.values), sorted(result.values)
        hooks.wrote_back(job, packed, result, user_ns)
        bring_home(result.payload)  # --get's files, with a line saying what came back
        outcome.report(result.problems, user_ns)
