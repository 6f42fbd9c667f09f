"""A session's requests that run no new cell: pulling values, ending it, replaying the cells
that built it. Each goes to the endpoint of the session's last cell, as one job, and reads the
worker's answer (tetra_magic/runtime/sessions.py) from the payload.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from tetra_magic import targets
from tetra_magic.cell import outcome
from tetra_magic.cell.analysis import analyse
from tetra_magic.cell.packing import Packed, make_spec, request_for
from tetra_magic.errors import Labeler
from tetra_magic.job.job import Job
from tetra_magic.runtime.contract import SessionPart, Spec
from tetra_magic.runtime.pickling import MainNames
from tetra_magic.session import model as sessions
from tetra_magic.view.text import TextView


def lost_answer(result: outcome.CellResult) -> dict[str, Any] | None:
    """The worker's word that the session is not there (None when the cell ran in it)."""
    answer = result.payload.get("session") or {}
    return answer if answer.get("lost") else None


def session_request(
    session: sessions.Session,
    spec: Spec,
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
    job = Job(targets.resolve(opts), opts, view)
    job.run(packed)
    return outcome.unpack(job.check(label, {}))


def _plain_spec(session: sessions.Session, part: SessionPart) -> Spec:
    """The spec of a request that runs no cell: pull or end (in `part`)."""
    name = f"<tetra-session {session.name}>"
    return make_spec(analyse("", name), name, session={**session.spec(set(), 0), **part})


def pull(
    session: sessions.Session, keys: list[str], user_ns: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """({key: value}, {key: why not}) for the session's values by name, or by the ids of the
    values it keeps for references: fetched whatever their size, loaded against the notebook's
    namespace `user_ns` (its classes). SessionLost for a lost session."""
    if session.lost:
        raise session.lost_error()
    result = session_request(session, _plain_spec(session, {"pull": keys}), {})
    if (lost := lost_answer(result)) is not None:
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


def fetch(session: sessions.Session, keys: list[str], user_ns: dict[str, Any]) -> dict[str, Any]:
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
        payload = session_request(session, _plain_spec(session, {"end": True}), {}).payload
        return list((payload.get("session") or {}).get("freed", []))
    finally:
        sessions.SESSIONS.pop(session.name, None)


def replay(session: sessions.Session, label: Labeler) -> None:
    """Run the cells that built the session again, in order, with the inputs they had, into a
    fresh session of the same name (references in the notebook stay valid). Nothing is written
    into the notebook; a cell that fails stops the replay, and the session stays lost."""
    records, session.cells = session.cells, []
    count = len(records)
    print(f"tetra: replaying session {session.name}: {count} cell{'s' * (count != 1)}")
    made: set[str] = set()
    for index, record in enumerate(records):
        reads = set(record.spec["session"]["reads"])
        part = session.spec(reads, record.opts.session_value_limit)
        part.update({"homes": [], "new": index == 0, "released": []})
        try:
            result = session_request(
                session, {**record.spec, "session": part}, record.blobs, False, label
            )
            if (lost := lost_answer(result)) is not None:
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
