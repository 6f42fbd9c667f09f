"""Bringing a finished job home: its values into the notebook, or its failure as an exception.

Nothing touches the notebook namespace unless the cell succeeded, and a value that cannot be
loaded here is named while the others still land. A cell that raised raises the user's own
exception here, an instance of the notebook's class, so `except ValueError` catches it. A last
value that cannot be loaded is still shown, through the repr and rich representations the
worker made of it.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import importlib
import pickle
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tetra_magic.cell import local_modules, unloaded
from tetra_magic.cell.files import missing_file_hint
from tetra_magic.cell.unloaded import Unloaded
from tetra_magic.errors import (
    JobFailed,
    Labeler,
    clean_detail,
    import_hint,
    remote_error,
    worker_failure,
)
from tetra_magic.job.progress import before_the_cell
from tetra_magic.runtime.exceptions import exception_note
from tetra_magic.runtime.pickling import MainNames, VersionMismatch
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
    """What a successful cell hands back to the notebook: its payload as the worker sent it,
    then, once `apply` has loaded it, the values that landed, the last value, and a reason for
    each value that did not come back."""

    payload: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    last: Any = None


def check(
    response: FunctionResponse,
    label: Labeler,
    user_ns: dict[str, Any] | None = None,
    dependencies: Sequence[str] = (),
) -> FunctionResponse:
    """`response` itself if the cell succeeded; its failure as an exception otherwise: for a
    cell that raised, the user's own exception as the notebook knows its class; for the
    published worker's own failure, before the cell ran, one sentence (naming the cell's
    `dependencies` that did not install, in the installer's words). How a job ended without a
    response is the job's to judge (job.Job.check)."""
    if not response.success:
        if before_the_cell(response):
            raise JobFailed(worker_failure(response.error or response.result, dependencies))
        if response.failure in (None, "exception"):
            text, packed = exception_note(response.error or "")
            # under the error, as a note shows
            if hint := import_hint(text, dependencies, local_modules.sent()):
                text = f"{text.rstrip()}\n{hint}\n"
            text = _missing_file_hint(text)
            raise remote_error(response.error_type, text, label, _raised(packed, user_ns))
        reason = _FAILURES.get(response.failure, "the job failed")
        detail = clean_detail((response.error or "").rstrip(), label)
        raise JobFailed(f"{reason}:\n{detail}" if detail else reason)
    return response


def _missing_file_hint(text: str) -> str:
    """`text` with a line under it where the cell missed a file it could have sent
    (--files; tetra_magic/cell/files.py)."""
    hint = missing_file_hint(text)
    return f"{text.rstrip()}\n{hint}\n" if hint else text


_GROUPS = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11 and later
# Packages whose objects a cell shows as images (runtime/figures.py): without the package here,
# nobody misses the objects themselves.
_DRAWN_HOME = frozenset({"matplotlib"})


def _raised(packed: str | None, user_ns: dict[str, Any] | None) -> BaseException | None:
    """The exception the cell raised, an instance of the notebook's own class, with its cause
    and context linked as they were; None where it cannot be loaded here (its class defined by
    the failed cell itself, a module the kernel lacks)."""
    if not packed or user_ns is None:
        return None
    chain = pickle.loads(base64.b64decode(packed))  # plain data: blobs, indexes and flags
    names = MainNames(user_ns)
    errors: list[Any] = []
    for blob, *_ in chain:
        try:
            errors.append(names.load("the exception", blob) if blob else None)
        except Exception:
            errors.append(None)
    errors = [e if isinstance(e, BaseException) else None for e in errors]
    for error, (_, cause, context, suppress) in zip(errors, chain, strict=True):
        if error is not None:
            error.__cause__ = None if cause is None else errors[cause]
            error.__context__ = None if context is None else errors[context]
            error.__suppress_context__ = suppress
    raised = errors[0] if errors else None
    # IPython shows an exception group with its own renderer, not the remote traceback: it
    # comes home as a stand-in of the same name, showing what the worker printed.
    return None if isinstance(raised, _GROUPS) else raised


def unpack(response: FunctionResponse, payload: dict[str, Any] | None = None) -> CellResult:
    """The cell's payload, with the names the worker already could not send. `payload`: one
    item's of a --map shard, which came home decoded inside the shard's (`item_response`)."""
    if payload is None:
        payload = decode(response.result) if response.result else {}
    result = CellResult(payload=payload)
    result.problems.update(payload.get("errors", {}))
    result.problems.update(response.unpicklable)
    return result


def item_response(entry: dict[str, Any]) -> FunctionResponse:
    """One item of a --map shard (runtime/batch.py) as the response a job of its own would
    have had: successful, its payload `entry` itself (for `unpack`); or, for an item that
    raised, the failure our worker sends for a cell that raised (for `check`)."""
    raised = entry.get("raised")
    if not isinstance(raised, dict):
        return FunctionResponse(success=True)
    return FunctionResponse(
        success=False,
        failure="exception",
        error=str(raised.get("traceback") or ""),
        error_type=str(raised.get("type") or "") or None,
    )


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
    """Write the cell's bindings into the notebook namespace, naming each one that cannot be
    loaded here. Definitions the cell made are executed here from their source; values of
    notebook classes are instances of the notebook's own classes; an input the cell changed
    in place is changed in place here too, so every other reference to it sees the change.
    Warnings are not shown meanwhile: loading and re-defining are the magic's doing (a value
    made at home is never unpickled), and the cell showed its own warnings on the worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _apply(result, user_ns)


def _apply(result: CellResult, user_ns: dict[str, Any]) -> None:
    payload = result.payload
    values = payload.get("values", {})
    changed = set(payload.get("changed", []))
    names = MainNames(user_ns, payload.get("definitions"), values)

    def bind(name: str, value: Any) -> None:
        result.values[name] = value
        if not (name in changed and name in user_ns and update_in_place(user_ns[name], value)):
            user_ns[name] = value

    names.bind = bind
    # The modules first: a class body the cell defined runs here again, and may use them.
    modules = _import_modules(payload.get("modules", {}), result.problems)
    result.values.update(modules)
    user_ns.update(modules)
    imported = set(payload.get("imported", ()))
    drawn = set(payload.get("drawn", ()))
    for name in [*payload.get("definitions", {}), *values]:
        try:
            names.ensure(name)
        except Exception as exc:
            # Figures and axes (an array of axes too) when matplotlib or numpy is not here
            # are left out silently: they came home as images. Any other value the worker
            # can load stays as a stand-in; one the cell imported (`from tabulate import
            # tabulate`, no tabulate here) without a note, as the worker's own package is no
            # news.
            missing = (getattr(exc, "name", None) or "").partition(".")[0]
            if isinstance(exc, ModuleNotFoundError) and missing in _DRAWN_HOME:
                continue
            if isinstance(exc, ImportError) and name in drawn:
                continue
            if isinstance(exc, ImportError) and name in values:  # the worker can load it
                bind(name, Unloaded(name, values[name], exc))
            if not (name in imported and isinstance(exc, ImportError)):
                result.problems[name] = _load_problem(exc)
    _bind_aliases(payload.get("aliases", {}), result, user_ns)
    for name in payload.get("deleted", []):
        user_ns.pop(name, None)
    _set_display_options(payload.get("display_options") or {})
    if payload.get("last") is not None:
        result.last = _load_portable(names, payload["last"])


def _set_display_options(options: dict[str, Any]) -> None:
    """Set here the pandas display options the cell set (runtime/display_options.py), as the
    cell would have in this kernel; before its Out is shown. Without pandas here, the Out is
    the worker's rendering, made with them."""
    pandas = sys.modules.get("pandas")
    if pandas is None:
        return
    for key, value in options.items():
        with contextlib.suppress(Exception):  # an option this pandas does not have
            pandas.set_option(key, value)


def report(problems: dict[str, str], user_ns: dict[str, Any]) -> None:
    """Values that did not come back, or came as stand-ins, one line each on stderr, after
    the cell's own output."""
    for name, reason in problems.items():
        line = unloaded.note(name, user_ns.get(name))
        print(line or f"tetra: {name} was not brought back: {reason}", file=sys.stderr)


def _bind_aliases(aliases: dict[str, str], result: CellResult, user_ns: dict[str, Any]) -> None:
    """Bind each name the cell bound to the object of an earlier name (`b = a`) to the very
    object that name holds here now: the one just loaded, or the notebook's own input (changed
    in place or not), so a change through either name shows through the other, as at home."""
    for name, first in aliases.items():
        if first in result.problems:
            result.problems[name] = result.problems[first]
            if isinstance(user_ns.get(first), Unloaded):
                result.values[name] = user_ns[name] = user_ns[first]
        elif first in user_ns:
            result.values[name] = user_ns[name] = user_ns[first]


def _load_problem(exc: Exception) -> str:
    if isinstance(exc, VersionMismatch):
        return str(exc)
    return f"cannot be loaded here: {type(exc).__name__}: {exc}"


def update_in_place(old: Any, new: Any) -> bool:
    """Give `old` the contents of `new`, as the cell's in-place change did on the worker;
    False where that cannot be done faithfully (the name is rebound instead)."""
    if type(old) is not type(new) or old is new:
        return False
    if isinstance(old, (list, bytearray)):
        old[:] = new
    elif isinstance(old, (dict, set)):
        old.clear()
        old.update(new)
    elif type(old).__module__ == "numpy" and type(old).__name__ == "ndarray":
        if old.shape != new.shape or old.dtype != new.dtype or not old.flags.writeable:
            return False
        old[...] = new
    elif type(old).__module__ == "__main__" and hasattr(old, "__dict__"):
        vars(old).clear()
        vars(old).update(vars(new))
    else:
        return False
    return True


def last_value(result: CellResult, user_ns: dict[str, Any]) -> Any:
    """The cell's last value, loaded apart from the notebook `user_ns` (a background cell
    shows it in its own cell when its job ends, before its values land); None without one."""
    portable = result.payload.get("last")
    if portable is None:
        return None
    payload = result.payload
    names = MainNames(dict(user_ns), payload.get("definitions"), payload.get("values", {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _load_portable(names, portable)


def _load_portable(names: MainNames, portable: dict[str, Any]) -> Any:
    """The value itself, or a stand-in showing the worker's representations of it. No note
    either way: the value is shown as it would be at home (the Line2D list a plotting cell
    ends with, on a kernel without matplotlib), so nothing the user looks at is missing."""
    if portable.get("blob") is not None:
        with contextlib.suppress(Exception):
            return names.load("Out", portable["blob"])
    shows = RemoteDisplay if portable.get("displayed") else RemoteRepr
    text = portable.get("repr") or "<unloadable value>"
    return shows(text, portable.get("mime") or {}, portable.get("metadata") or {})


class RemoteRepr:
    """Stands in for a value that could not be brought here: shows what the worker rendered."""

    def __init__(self, text: str, mime: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.text = text
        self.mime = mime
        self.metadata = metadata

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        """The worker's rendering, with its metadata where it has any (a retina figure's
        size), as IPython takes either."""
        bundle = {**self.mime, "text/plain": self.text}
        return (bundle, self.metadata) if self.metadata else bundle


class RemoteDisplay(RemoteRepr):
    """Stands in for a value that shows itself (a plotly figure's `_ipython_display_`): what
    the worker showed, shown as a display output, as the value would, not as the cell's Out."""

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.mime, raw=True, metadata=self.metadata)
