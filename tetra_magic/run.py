"""One cell's remote run: analyse -> pack -> submit -> follow -> check -> write back -> show.

Heavy imports (httpx, widgets) happen here, on a cell's first run, never at %load_ext.
The --out job is stored however the job ended (done, failed, cancelled, lost), since that is
when a user most wants to look at it; the cell's own names only on success.

A session cell runs the same way, in its session (tetra_magic/sessions.py); this module also
sends a session's other requests: pulling a value, ending it, replaying the cells that built it.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any

from tetra_magic import outcome, pythons, sessions, targets
from tetra_magic.analysis import analyse
from tetra_magic.cell_runtime import MainNames
from tetra_magic.display import make_view
from tetra_magic.display.text import TextView
from tetra_magic.errors import Labeler, cell_labeler, syntax_error
from tetra_magic.job import Job
from tetra_magic.options import CellOptions
from tetra_magic.packing import KERNEL_ID, Packed, pack, request_for
from tetra_magic.status import JobStatus
from worker.protocol import EXECUTOR_RESTARTED


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
        replay(shell, session, label)
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
        if session is not None and (lost := _lost(result)) is not None:
            if cause := _process_ended(job):
                session.lose(cause)
            error = session.lost_error(lost, _worker_id(job))
            if not opts.session_replay:
                raise error
            replay(shell, session, label)  # then the cell runs, once: a second loss is reported
            once = dataclasses.replace(opts, session_replay=False)
            return run_cell(shell, once, source, filename, display, started, prices)
    except BaseException as exc:
        job.error = job.error or str(exc)
        if session is not None and not session.lost and (cause := _process_ended(job)):
            session.lose(cause)
            print(f"tetra: session {session.name} is lost: {cause}", file=sys.stderr)
        raise
    finally:
        if opts.out and job.id is not None:
            shell.user_ns[opts.out] = job
    outcome.apply(result, shell.user_ns)
    job.returned = sorted(result.values)
    if session is not None:
        _took(session, job, packed, result, label(filename) or filename, shell.user_ns)
        result.values.update({n: shell.user_ns[n] for n in result.payload.get("refs", {})})
    _report(result.problems)
    return result.last if analysis.has_last_expr else None


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


def _lost(result: outcome.CellResult) -> dict[str, Any] | None:
    """The worker's word that the session is not there (None when the cell ran in it)."""
    answer = result.payload.get("session") or {}
    return answer if answer.get("lost") else None


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
    session.fetch = functools.partial(_fetch, session)
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


def session_request(
    session: sessions.Session,
    spec: dict[str, Any],
    blobs: dict[str, bytes],
    quiet: bool = True,
    label: Labeler = lambda name: None,
) -> outcome.CellResult:
    """Send one request in `session` (its spec's `session` part already set) to the endpoint
    of its last cell, and bring back its payload; the job's failure as an exception."""
    if session.opts is None:
        raise sessions.SessionLost(f"session {session.name!r} has not run a cell yet")
    opts = dataclasses.replace(session.opts, quiet=quiet, out=None, name=None)
    request = request_for(spec, blobs, opts)
    size = len(request.model_dump_json())
    packed = Packed(request, tuple(sorted(blobs)), (), size, spec, blobs)
    view = TextView(verbose=False, live=not quiet)
    job = Job(targets.resolve(opts), opts, packed, view)
    job.run()
    return outcome.unpack(job.check(label, {}))


def _plain_spec(session: sessions.Session, **part: Any) -> dict[str, Any]:
    """The spec of a request that runs no cell: pull or end."""
    return {
        "filename": f"<tetra-session {session.name}>",
        "source": "",
        "binds": [],
        "deletes": [],
        "has_last_expr": False,
        "modules": {},
        "python": [str(n) for n in sys.version_info[:2]],
        "definitions": {},
        "display": _display_source(),
        "session": session.spec(set(), 0, **part),
    }


def _display_source() -> str:
    import inspect

    from tetra_magic import remote_display

    return inspect.getsource(remote_display)


def pull(
    session: sessions.Session, keys: list[str], user_ns: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """({key: value}, {key: why not}) for the session's values by name, or by the ids of the
    values it keeps for references: fetched whatever their size, loaded against the notebook's
    namespace `user_ns` (its classes). SessionLost for a lost session."""
    if session.lost:
        raise session.lost_error()
    result = session_request(session, _plain_spec(session, pull=keys), {})
    if (lost := _lost(result)) is not None:
        raise session.lost_error(lost)
    payload = result.payload
    loaded = MainNames(user_ns, payload.get("definitions"), payload.get("values"))
    for name in payload.get("definitions", {}):
        loaded.ensure(name)
    problems = dict(payload.get("errors", {}))
    values = {}
    for key, blob in payload.get("values", {}).items():
        try:
            values[key] = loaded.load(key, blob)
        except Exception as exc:
            problems[key] = f"cannot be loaded here: {type(exc).__name__}: {exc}"
    return values, problems


def _fetch(session: sessions.Session, keys: list[str], user_ns: dict[str, Any]) -> dict[str, Any]:
    """`pull`, all or nothing: SessionError naming what could not come."""
    values, problems = pull(session, keys, user_ns)
    if problems:
        reasons = "; ".join(f"{key}: {reason}" for key, reason in problems.items())
        raise sessions.SessionError(f"session {session.name!r}: {reasons}")
    return values


def end(session: sessions.Session) -> list[str]:
    """Free the session on its worker and forget it here; the names it held there."""
    try:
        if session.opts is None:  # no cell reached a worker
            return []
        payload = session_request(session, _plain_spec(session, end=True), {}).payload
        return list((payload.get("session") or {}).get("freed", []))
    finally:
        sessions.SESSIONS.pop(session.name, None)


def replay(shell: Any, session: sessions.Session, label: Labeler) -> None:
    """Run the cells that built the session again, in order, with the inputs they had, into a
    fresh session of the same name (references in the notebook stay valid). Nothing is written
    into the notebook; a cell that fails stops the replay, and the session stays lost."""
    records, session.cells = session.cells, []
    count = len(records)
    print(f"tetra: replaying session {session.name}: {count} cell{'s' * (count != 1)}")
    made: set[str] = set()
    for index, record in enumerate(records):
        reads = set(record.spec["session"]["reads"])
        part = {**session.spec(reads, record.opts.session_value_limit), "homes": []}
        part.update(new=index == 0, released=[])
        try:
            result = session_request(
                session, {**record.spec, "session": part}, record.blobs, False, label
            )
            if (lost := _lost(result)) is not None:
                raise session.lost_error(lost)
        except BaseException:
            session.cells = records
            session.lose(f"its replay stopped at {record.label}, which failed")
            print(
                f"tetra: replaying {record.label} failed; session {session.name} stays lost",
                file=sys.stderr,
            )
            raise
        made |= {ref["ref"] for ref in result.payload.get("refs", {}).values() if "ref" in ref}
        session.cells.append(record)
        print(f"tetra: replayed {record.label}")
    session.lost = None
    session.released |= made - session.alive  # kept again, for references the notebook dropped
