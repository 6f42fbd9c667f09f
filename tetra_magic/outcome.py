"""Bringing a finished job home: its values into the notebook, or its failure as an exception.

Nothing touches the notebook namespace unless the cell succeeded, and a value that cannot be
loaded here is named while the others still land.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from tetra_magic.errors import JobFailed, remote_error
from tetra_magic.follow import Followed
from worker.protocol import FunctionResponse, decode

_FAILURES = {
    "install": "installing the cell's dependencies failed, so the cell did not run",
    "timeout": "the cell ran past its time limit",
    "crash": "the worker's executor crashed while running the cell",
    "cancelled": "the job was cancelled",
    "invalid": "the worker rejected the request",
}


@dataclass
class CellResult:
    """What a successful cell hands back to the notebook."""

    values: dict[str, Any] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    last: Any = None


def check(followed: Followed) -> FunctionResponse:
    """The worker's response for a COMPLETED job; the job's failure as an exception otherwise."""
    response = followed.response
    if followed.status == "TIMED_OUT":
        raise JobFailed(f"job {followed.job_id} timed out on the endpoint and was stopped")
    if followed.status == "CANCELLED":
        raise JobFailed(f"job {followed.job_id} was cancelled")
    if response is None:
        error = followed.document.get("error") or "no response from the worker"
        raise JobFailed(f"job {followed.job_id} {followed.status.lower()}: {error}")
    if not response.success:
        if response.failure in (None, "exception"):
            raise remote_error(response.error_type, response.error or "")
        reason = _FAILURES.get(response.failure, "the job failed")
        raise JobFailed(f"{reason}:\n{(response.error or '').rstrip()}")
    return response


def unpack(response: FunctionResponse) -> CellResult:
    """Load the cell's outputs, naming each one that cannot be loaded here."""
    payload = decode(response.result) if response.result else {}
    result = CellResult(deleted=list(payload.get("deleted", [])))
    result.problems.update(payload.get("errors", {}))
    result.problems.update(response.unpicklable)
    for name, blob in payload.get("values", {}).items():
        try:
            result.values[name] = cloudpickle.loads(blob)
        except Exception as exc:
            result.problems[name] = f"cannot be loaded here: {type(exc).__name__}: {exc}"
    if payload.get("last") is not None:
        try:
            result.last = cloudpickle.loads(payload["last"])
        except Exception as exc:
            result.problems["Out"] = f"cannot be loaded here: {type(exc).__name__}: {exc}"
            result.last = _Repr(payload.get("last_repr", "<unloadable value>"))
    return result


def apply(result: CellResult, user_ns: dict[str, Any]) -> None:
    """Write the cell's bindings into the notebook namespace."""
    user_ns.update(result.values)
    for name in result.deleted:
        user_ns.pop(name, None)


class _Repr:
    """Stands in for a last value that could not be loaded: shows the remote repr."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text
