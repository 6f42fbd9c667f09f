"""One cell's remote run: analyse -> pack -> submit -> follow -> check -> write back -> show.

Heavy imports (httpx, widgets) happen here, on a cell's first run, never at %load_ext.
The --out job is stored however the job ended (done, failed, cancelled, lost), since that is
when a user most wants to look at it; the cell's own names only on success, all of them or none:
a Ctrl-C while they are written back waits until they all are (tetra_magic/interrupts.py).

A session cell runs the same way, in its session (tetra_magic/sessions.py); a lost one is
replayed first where the user asked for that (tetra_magic/session_requests.py).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

from tetra_magic import interrupts, outcome, pythons, sessions, targets
from tetra_magic.analysis import analyse
from tetra_magic.client import EndpointError
from tetra_magic.display import make_view
from tetra_magic.errors import CellInterrupted, cell_labeler, syntax_error
from tetra_magic.job import Job
from tetra_magic.options import CellOptions
from tetra_magic.packing import KERNEL_ID, Packed, pack
from tetra_magic.session_requests import fetch, lost_answer, replay
from tetra_magic.status import JobStatus
from worker.protocol import EXECUTOR_RESTARTED

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
    try:
        analysis = analyse(source, filename)
    except SyntaxError as exc:
        raise syntax_error(exc, label) from None
    session = sessions.for_cell(opts.session, KERNEL_ID) if opts.session else None
    if session is not None and session.lost:
        if not opts.session_replay:
            raise session.lost_error()
        print(f"tetra: session {session.name} was lost: {session.cause}", file=sys.stderr)
        replay(session, label)
    endpoint = targets.resolve(opts)
    packed = pack(
        analysis,
        shell.user_ns,
        opts,
        filename=filename,
        limit=endpoint.payload_limit,
        label=label,
        session=session,
    )
    job = Job(endpoint, opts, packed, make_view(shell, opts, display), started)
    try:
        followed = job.run()
        pythons.warn(followed.chunks, followed.response)
        cost = job.cost(prices)
        if cost is not None:
            print(cost.line(), file=sys.stderr)
        result = outcome.unpack(job.check(label, shell.user_ns))
        if session is not None and (lost := lost_answer(result)) is not None:
            if cause := _process_ended(job):
                session.lose(cause)
            error = session.lost_error(lost, _worker_id(job))
            if not opts.session_replay:
                raise error
            print(f"tetra: session {session.name} was lost: {session.cause}", file=sys.stderr)
            replay(session, label)  # then the cell runs, once: a second loss is reported
            once = dataclasses.replace(opts, session_replay=False)
            return run_cell(shell, once, source, filename, display, started, prices)
    except BaseException as exc:
        job.error = job.error or str(exc)
        if session is not None:
            session.forget(analysis.reads)
            if not session.lost and (cause := _process_ended(job)):
                session.lose(cause)
                print(f"tetra: session {session.name} is lost: {cause}", file=sys.stderr)
        if type(exc) is KeyboardInterrupt:  # outside the follow loop, which says its own
            raise CellInterrupted(_interrupted(job)) from None
        raise
    finally:
        if opts.out and job.id is not None:
            shell.user_ns[opts.out] = job
    _write_back(shell.user_ns, job, packed, result, session, label(filename) or filename)
    return result.last if analysis.has_last_expr else None


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
    session: sessions.Session | None,
    label: str,
) -> None:
    """The cell's values into the notebook, and the cell into its session's record, whole: a
    Ctrl-C meanwhile is raised only once they are all in, with word of what did not land."""
    with interrupts.deferred(WRITTEN_BACK):
        outcome.apply(result, user_ns)
        job.returned = sorted(result.values)
        if session is not None:
            _took(session, job, packed, result, label, user_ns)
            result.values.update({n: user_ns[n] for n in result.payload.get("refs", {})})
        _report(result.problems)


def _process_ended(job: Job) -> str | None:
    """Why the job took the process that holds the session with it, where it did: our worker
    kills that process when a cell runs past its --timeout, crashes or is cancelled, and starts
    it afresh when --deps replaced installed packages. (The published worker runs cells in its
    own process, which lives on.)"""
    if not any(chunk.get("kind") == "info" for chunk in job.chunks):
        return None  # not our worker
    logs = "".join(chunk.get("text", "") for chunk in job.chunks if chunk.get("kind") == "log")
    if EXECUTOR_RESTARTED in logs:
        return "this cell's --deps replaced installed packages, and the process restarted"
    response = job.followed.response if job.followed else None
    failure = response.failure if response else None
    if failure == "timeout":
        return "a cell ran past its --timeout, and the process that held it was killed"
    if failure == "crash":
        return "a cell crashed the process that held it"
    if job.status is JobStatus.CANCELLED:
        return "a cell was cancelled, which ended the process that held it"
    return None


def _took(
    session: sessions.Session,
    job: Job,
    packed: Packed,
    result: outcome.CellResult,
    label: str,
    user_ns: dict[str, Any],
) -> None:
    """Record the session cell, and say in one line whether the session was warm."""
    opts = job.opts
    record = sessions.CellRecord(label, packed.spec, packed.blobs, opts)
    session.took(result.payload, user_ns, record, result.problems)
    session.endpoint, session.opts = job.endpoint_id, opts
    session.fetch = functools.partial(fetch, session)
    session.worker_id = _worker_id(job) or session.worker_id
    summary = result.payload.get("session") or {}
    state = "warm" if summary.get("warm") else "new"
    line = f"tetra: session {session.name} ({state})"
    if state == "new" and job.billed:
        line += (
            f"; its RunPod worker stays up {opts.session_idle_timeout} s after each cell"
            " (billed while idle) and the session ends with it"
        )
    print(line, file=sys.stderr)


def _worker_id(job: Job) -> str | None:
    """The worker that ran the job: as it says itself (our worker), or as the endpoint's
    status says (every worker; the published one names none itself)."""
    named = (job.worker or {}).get("worker_id")
    return named or (job.followed.document.get("workerId") if job.followed else None)


def _report(problems: dict[str, str]) -> None:
    """Values that did not come back, one line each, after the cell's own output."""
    for name, reason in problems.items():
        print(f"tetra: {name} was not brought back: {reason}", file=sys.stderr)
