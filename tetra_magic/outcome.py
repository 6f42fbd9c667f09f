"""Bringing a finished job home: its values into the notebook, or its failure as an exception.

Nothing touches the notebook namespace unless the cell succeeded, and a value that cannot be
loaded here is named while the others still land. A last value that cannot be loaded is still
shown, through the repr and rich representations the worker made of it.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from tetra_magic.cell_runtime import adopt, adopt_all, is_notebook_class
from tetra_magic.errors import JobFailed, Labeler, clean_detail, endpoint_error_text, remote_error
from tetra_magic.follow import Followed
from worker.protocol import FunctionResponse, decode

_FAILURES = {
    "install": "installing the cell's dependencies failed, so the cell did not run",
    "start": "the worker could not start the process that runs cells, so the cell did not run",
    "timeout": "the cell ran past its time limit and was stopped",
    "crash": "the worker's executor crashed while running the cell",
    "cancelled": "the job was cancelled",
    "invalid": "the worker rejected the request",
    "internal": "the worker failed",
}


@dataclass
class CellResult:
    """What a successful cell hands back to the notebook."""

    values: dict[str, Any] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    # Notebook classes whose methods loading replaced (cloudpickle updates a class it has
    # seen before in place); they get the notebook's globals back.
    reloaded: list[type] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    last: Any = None


def check(followed: Followed, label: Labeler) -> FunctionResponse:
    """The worker's response for a COMPLETED job; the job's failure as an exception otherwise."""
    response = followed.response
    job = f"job {followed.job_id}"
    if followed.status == "TIMED_OUT":
        raise JobFailed(f"{job} ran past the endpoint's execution timeout and was stopped")
    if followed.status == "CANCELLED":
        raise JobFailed(f"{job} was cancelled on the endpoint")
    if response is None:
        error = followed.document.get("error") or "the worker sent no response"
        raise JobFailed(f"{job} {followed.status.lower()}: {endpoint_error_text(error)}")
    if not response.success:
        if response.failure in (None, "exception"):
            raise remote_error(response.error_type, response.error or "", label)
        reason = _FAILURES.get(response.failure, "the job failed")
        detail = clean_detail((response.error or "").rstrip(), label)
        raise JobFailed(f"{reason}:\n{detail}" if detail else reason)
    return response


def unpack(response: FunctionResponse, user_ns: dict[str, Any]) -> CellResult:
    """Load the cell's outputs, naming each one that cannot be loaded here."""
    before = _class_methods(user_ns)
    result = _load(response)
    result.reloaded = [
        cls
        for cls, methods in before.items()
        if any(vars(cls).get(k) is not v for k, v in methods.items())
    ]
    return result


def _load(response: FunctionResponse) -> CellResult:
    payload = decode(response.result) if response.result else {}
    result = CellResult(deleted=list(payload.get("deleted", [])))
    result.problems.update(payload.get("errors", {}))
    result.problems.update(response.unpicklable)
    imported = set(payload.get("imported", ()))
    for name, blob in payload.get("values", {}).items():
        try:
            result.values[name] = cloudpickle.loads(blob)
        except Exception as exc:
            # `from torch import nn` with no torch here is left out silently, as modules are.
            if not (name in imported and isinstance(exc, ImportError)):
                result.problems[name] = f"cannot be loaded here: {type(exc).__name__}: {exc}"
    result.values.update(_import_modules(payload.get("modules", {}), result.problems))
    if payload.get("last") is not None:
        result.last = _load_portable(payload["last"])
    return result


def _import_modules(modules: dict[str, list[str]], problems: dict[str, str]) -> dict[str, Any]:
    """The modules the cell bound ({name: [module, submodules it imported under it]}),
    imported here as the cell imported them there. One the kernel does not have is left out
    without a note: the cell imported it to use it on the worker (torch on a laptop), not to
    hand it back. One that fails as it loads is named."""
    imported = {}
    for name, (module, *submodules) in modules.items():
        try:
            for submodule in submodules:
                importlib.import_module(submodule)
            imported[name] = importlib.import_module(module)
        except ImportError:
            continue
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            problems[name] = f"the module {module} failed to import here: {reason}"
    return imported


def apply(result: CellResult, user_ns: dict[str, Any]) -> None:
    """Write the cell's bindings into the notebook namespace, its functions (and classes that
    made the round trip) living in the notebook's globals again."""
    user_ns.update(result.values)
    for name in result.deleted:
        user_ns.pop(name, None)
    adopt_all(user_ns, list(result.values), merge=False)
    for cls in result.reloaded:
        adopt(cls, user_ns)


def _class_methods(user_ns: dict[str, Any]) -> dict[type, dict[str, Any]]:
    """The notebook classes named in the namespace or of its values, with their attributes."""
    classes = {value if isinstance(value, type) else type(value) for value in user_ns.values()}
    return {cls: dict(vars(cls)) for cls in classes if is_notebook_class(cls)}


def _load_portable(portable: dict[str, Any]) -> Any:
    """The value itself, or a stand-in showing the worker's representations of it. No note
    either way: the value is shown as it would be at home (the Line2D list a plotting cell
    ends with, on a kernel without matplotlib), so nothing the user looks at is missing."""
    if portable.get("blob") is not None:
        with contextlib.suppress(Exception):
            return cloudpickle.loads(portable["blob"])
    return RemoteRepr(portable.get("repr") or "<unloadable value>", portable.get("mime") or {})


class RemoteRepr:
    """Stands in for a value that could not be brought here: shows what the worker rendered."""

    def __init__(self, text: str, mime: dict[str, Any]) -> None:
        self.text = text
        self.mime = mime

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {**self.mime, "text/plain": self.text}
