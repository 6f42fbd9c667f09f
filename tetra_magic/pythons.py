"""Telling the user when a worker runs another Python than the notebook.

cloudpickle ships functions, lambdas and classes defined in the notebook by value, as bytecode,
and bytecode loads only on the Python minor version that made it. On a worker image for another
version (the published tetra-rp images run 3.12), cells that use only data and modules work,
but a cell that reads a notebook function fails to load it, with an error that does not say
why. The worker reports its Python in its first "info" chunk and in the response's `worker`;
this module turns a mismatch into one explanation, once per kernel and worker version.
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
        f"tetra: the worker runs Python {worker} and this notebook Python {kernel}. Functions,"
        " lambdas and classes defined in the notebook travel to the worker as bytecode, which"
        " loads only on the same Python minor version, so a cell that uses them may fail to"
        f" load them there. Use a worker image for Python {want}:"
        f" %config TetraMagic.worker_image = '...-py{want}', or TETRA_MAGIC_WORKER_IMAGE."
    )


def warn(chunks: list[dict[str, Any]], response: FunctionResponse | None) -> None:
    """Explain a Python mismatch on stderr, the first time this kernel meets that version."""
    worker = worker_python(chunks, response)
    note = mismatch_note(worker) if worker else None
    if note and worker not in _told:
        _told.add(worker)
        print(note, file=sys.stderr)
