"""Packing a cell and the notebook values it reads into a tetra FunctionRequest.

Each value is pickled on its own, so an unpicklable one is named before anything is sent.
Modules are shipped by name and imported again on the worker: pickling a module is impossible,
and re-importing is what the user means by `np`. The request calls `run_cell` from
`cell_runtime`, whose source travels as the function code, so the request is one the published
tetra worker would run as well.
"""

from __future__ import annotations

import inspect
import platform
import re
import types
from dataclasses import dataclass
from typing import Any

import cloudpickle
from IPython.core.error import UsageError

from tetra_magic import cell_runtime
from tetra_magic.analysis import CellAnalysis
from worker.protocol import FunctionRequest, encode

# Names IPython keeps in the user namespace for itself; never the cell's inputs.
_IPYTHON_NAMES = re.compile(r"^(In|Out|get_ipython|exit|quit|_+|_i+|_i\d+|_\d+|_ih|_oh|_dh)$")


@dataclass(frozen=True)
class Packed:
    """A request ready to send, with what went into it (for --out and for errors)."""

    request: FunctionRequest
    shipped: tuple[str, ...]
    modules: tuple[str, ...]
    size: int


def inputs(analysis: CellAnalysis, user_ns: dict[str, Any]) -> dict[str, Any]:
    """The notebook values the cell reads."""
    return {
        name: user_ns[name]
        for name in sorted(analysis.reads)
        if name in user_ns and not _IPYTHON_NAMES.match(name)
    }


def _pickle_each(values: dict[str, Any]) -> dict[str, bytes]:
    blobs = {}
    for name, value in values.items():
        try:
            blobs[name] = cloudpickle.dumps(value)
        except Exception as exc:
            raise UsageError(
                f"variable {name!r} ({type(value).__module__}.{type(value).__qualname__}) cannot"
                f" be sent to the worker: {type(exc).__name__}: {exc}. Create it inside the"
                " %%tetra cell instead, or delete it if the cell does not need it."
            ) from None
    return blobs


def _check_size(blobs: dict[str, bytes], size: int, limit: int) -> None:
    if size <= limit:
        return
    largest = sorted(blobs.items(), key=lambda item: -len(item[1]))[:5]
    detail = ", ".join(f"{name} {_mb(len(blob))}" for name, blob in largest)
    raise UsageError(
        f"the request is {_mb(size)}, over the endpoint's {_mb(limit)} limit"
        f" (largest variables: {detail}). Load large data inside the cell instead of sending it."
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def pack(
    analysis: CellAnalysis,
    user_ns: dict[str, Any],
    *,
    filename: str,
    dependencies: list[str],
    system_dependencies: list[str],
    timeout: float | None,
    limit: int,
) -> Packed:
    """Build the FunctionRequest for one cell; UsageError for unpicklable or oversized inputs."""
    values = inputs(analysis, user_ns)
    modules = {n: v.__name__ for n, v in values.items() if isinstance(v, types.ModuleType)}
    blobs = _pickle_each({n: v for n, v in values.items() if n not in modules})
    spec = {
        "filename": filename,
        "source": analysis.source,
        "binds": sorted(analysis.binds),
        "has_last_expr": analysis.has_last_expr,
        "modules": modules,
        "python": platform.python_version_tuple()[:2],
    }
    request = FunctionRequest(
        function_name="run_cell",
        function_code=inspect.getsource(cell_runtime),
        kwargs={"spec": encode(spec), "blobs": encode(blobs)},
        dependencies=dependencies or None,
        system_dependencies=system_dependencies or None,
        timeout=timeout,
        source_name=f"<tetra-runtime {filename}>",
    )
    size = len(request.model_dump_json()) + len('{"input": }')
    _check_size(blobs, size, limit)
    return Packed(request, tuple(sorted(blobs)), tuple(sorted(modules)), size)
