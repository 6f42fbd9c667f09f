"""Telling the user when a worker runs another Python than the notebook.

Functions and classes defined with `def`/`class` in a cell travel as source and work on any
version, but what the notebook made otherwise (lambdas, closures) travels as bytecode, which runs
only on the Python minor version that made it, and is refused elsewhere before it is loaded
(runtime.pickling.MainNames). The worker reports its Python in its first "info" chunk and in the
response's `worker`; this module turns a mismatch into one explanation, once per kernel and
worker version, so a refusal is never a surprise.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

from worker.protocol import FunctionResponse

_told: set[str] = set()


def worker_python(chunks: list[dict[str, Any]], response: FunctionResponse | None) -> str | None:
    """The worker's Python version, as it reported it (None if it did not)."""
    for chunk in chunks:
        if chunk.get("kind") == "info" and chunk.get("python"):
            return str(chunk["python"])
    if response is not None and response.worker is not None:
        return response.worker.python
    return None


def minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def mismatch_note(worker: str) -> str | None:
    """What a different worker Python means for this notebook; None when they match."""
    kernel = platform.python_version()
    if minor(worker) == minor(kernel):
        return None
    want = minor(kernel)
    return (
        f"tetra: the worker runs Python {worker} and this notebook Python {kernel}. Functions"
        " and classes defined with def/class travel as source and work there; lambdas and"
        " functions made inside other functions travel as bytecode, which runs only on the"
        " Python that made it, so they are refused. To send those too, use a worker image for"
        f" Python {want}:"
        f" %config TetraMagic.worker_image = '...-py{want}', or TETRA_MAGIC_WORKER_IMAGE."
    )


def warn(chunks: list[dict[str, Any]], response: FunctionResponse | None) -> None:
    """Explain a Python mismatch on stderr, the first time this kernel meets that version."""
    worker = worker_python(chunks, response)
    if not worker or worker in _told:
        return
    note = mismatch_note(worker)
    if note:
        _told.add(worker)
        print(note, file=sys.stderr)
