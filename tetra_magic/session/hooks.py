"""A session's part in a cell's run, as hooks: tetra_magic/run.py's pipeline stays one
straight line, and calls the same hooks with or without a session (`for_cell`).

Before the cell, a lost session is replayed where the user asked for that; when the answer
says the session was lost meanwhile, it is replayed once and the cell runs again; a failed cell
leaves the session's record as it was and names a process that ended with it; a cell whose
values were written back is added to the session's record (tetra_magic/session/model.py).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Set
from typing import Any

from tetra_magic.cell import outcome
from tetra_magic.cell.packing import KERNEL_ID, Packed
from tetra_magic.cloud.status import JobStatus
from tetra_magic.errors import Labeler
from tetra_magic.job.job import Job
from tetra_magic.options import CellOptions
from tetra_magic.session import model as sessions
from tetra_magic.session.requests import fetch, lost_answer, replay
from worker.protocol import EXECUTOR_RESTARTED


class NoSession:
    """The hooks of a cell outside any session: nothing to do."""

    session: sessions.Session | None = None
    may_replay = False  # whether a session lost while the cell ran is rebuilt and the cell rerun

    def before(self) -> None:
        """Before the cell is packed."""

    def lost(self, job: Job, result: outcome.CellResult) -> bool:
        """Whether the session was lost and rebuilt, so that the cell must run again."""
        return False

    def failed(self, job: Job, reads: Set[str]) -> None:
        """The cell failed (the job, or bringing it home), having read `reads`."""

    def wrote_back(
        self, job: Job, packed: Packed, result: outcome.CellResult, user_ns: dict[str, Any]
    ) -> None:
        """The cell's values are in the notebook namespace `user_ns`."""


class SessionHooks(NoSession):
    """The hooks of a cell in `session`: `label` names cells in messages; `opts.session_replay`
    allows one replay of a session lost while the cell ran (and one before it, if it was lost
    already)."""

    session: sessions.Session

    def __init__(self, session: sessions.Session, opts: CellOptions, label: Labeler) -> None:
        self.session, self.opts, self.label = session, opts, label
        self.may_replay = opts.session_replay

    def before(self) -> None:
        """SessionLost for a lost session, unless the user allows replaying it."""
        if self.session.lost:
            if not self.may_replay:
                raise self.session.lost_error()
            self._replay()

    def lost(self, job: Job, result: outcome.CellResult) -> bool:
        """SessionLost when the worker no longer held the session, unless it may be replayed
        (once: a second loss is reported)."""
        answer = lost_answer(result)
        if answer is None:
            return False
        if cause := process_ended(job):
            self.session.lose(cause)
        error = self.session.lost_error(answer, worker_id(job))
        if not self.may_replay:
            raise error
        self._replay()
        self.may_replay = False
        return True

    def failed(self, job: Job, reads: Set[str]) -> None:
        self.session.forget(reads)
        if not self.session.lost and (cause := process_ended(job)):
            self.session.lose(cause)
            print(f"tetra: session {self.session.name} is lost: {cause}", file=sys.stderr)

    def wrote_back(
        self, job: Job, packed: Packed, result: outcome.CellResult, user_ns: dict[str, Any]
    ) -> None:
        """Record the cell in the session, and say in one line whether the session was warm."""
        session, opts = self.session, job.opts
        label = self.label(packed.spec["filename"]) or packed.spec["filename"]
        record = sessions.CellRecord(label, packed.spec, packed.blobs, opts)
        session.took(result.payload, user_ns, record, result.problems)
        session.endpoint, session.opts = job.endpoint_id, opts
        session.fetch, session.namespace = functools.partial(fetch, session), user_ns
        session.worker_id = worker_id(job) or session.worker_id
        result.values.update({name: user_ns[name] for name in result.payload.get("refs", {})})
        summary = result.payload.get("session") or {}
        state = "warm" if summary.get("warm") else "new"
        line = f"tetra: session {session.name} ({state})"
        if state == "new" and job.billed:
            line += (
                f"; its RunPod worker stays up {opts.session_idle_timeout} s after each cell"
                " (billed while idle) and the session ends with it"
            )
        print(line, file=sys.stderr)

    def _replay(self) -> None:
        print(f"tetra: session {self.session.name} was lost: {self.session.cause}", file=sys.stderr)
        replay(self.session, self.label)


def for_cell(opts: CellOptions, label: Labeler) -> NoSession:
    """The hooks for a cell run with `opts`: its session's, or none."""
    if not opts.session:
        return NoSession()
    return SessionHooks(sessions.for_cell(opts.session, KERNEL_ID), opts, label)


def process_ended(job: Job) -> str | None:
    """Why the job took the process that holds the session with it, where it did: our worker
    kills that process when a cell runs past its --timeout, crashes or is cancelled, and starts
    it afresh when --deps replaced installed packages. (The published worker runs cells in its
    own process, which lives on.)"""
    if not any(chunk.get("kind") == "info" for chunk in job.chunks):
        return None  # not our worker
    logs = "".join(chunk.get("text", "") for chunk in job.chunks if chunk.get("kind") == "log")
    if EXECUTOR_RESTARTED in logs:
        return "this cell's --deps replaced installed packages, and the process restarted"
    failure = job.response.failure if job.response else None
    if failure == "timeout":
        return "a cell ran past its --timeout, and the process that held it was killed"
    if failure == "crash":
        return "a cell crashed the process that held it"
    if job.status is JobStatus.CANCELLED:
        return "a cell was cancelled, which ended the process that held it"
    return None


def worker_id(job: Job) -> str | None:
    """The worker that ran the job: as it says itself (our worker), or as the endpoint's
    status says (every worker; the published one names none itself)."""
    named = (job.worker or {}).get("worker_id")
    return named or (job.document or {}).get("workerId")
