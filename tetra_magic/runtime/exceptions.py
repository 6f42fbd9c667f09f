"""A cell's exception, as it travels home to be raised there as the user's own.

Every worker sends an exception's traceback text home, notes included (the published one too),
so the exception itself rides in that text as a last note: the exception the cell raised and
those chained to it, pickled, which the notebook raises as an instance of its own class
(tetra_magic/cell/outcome.py). On the published worker the cell's failure comes home in the result
instead (`raised`): see cell.run_cell.
"""

from __future__ import annotations

import base64
import os
import pickle
import sys
import traceback
from typing import Any

from .contract import EXCEPTION_NOTE, Raised
from .pickling import MainNames

NOTE_LIMIT = 256 * 1024  # a larger exception comes home as a stand-in of the same name


def add_note(names: MainNames, exc: BaseException) -> None:
    """Pack the exception the cell raised into a last note on it, if it fits."""
    packed = _pack(names, exc)
    if len(packed) <= NOTE_LIMIT and hasattr(exc, "add_note"):
        exc.add_note(EXCEPTION_NOTE + packed)


def exception_note(text: str) -> tuple[str, str | None]:
    """`text` (a remote traceback) without the note `add_note` added, and that note's pack
    (None if it has none)."""
    kept, packed = [], None
    for line in text.splitlines(True):
        note = line.lstrip(" |")  # an exception group's notes are inside its box
        if note.startswith(EXCEPTION_NOTE):
            packed = note[len(EXCEPTION_NOTE) :].strip()
        else:
            kept.append(line)
    return "".join(kept), packed


def _pack(names: MainNames, exc: BaseException) -> str:
    """The exception the cell raised and those chained to it, each pickled on its own (None
    where one cannot be), with the links between them: [[blob, cause, context, suppress], ...],
    as one base64 line."""
    chain: list[Any] = []
    index: dict[int, int] = {}

    def visit(error: BaseException | None) -> int | None:
        if error is None or len(chain) >= 32:
            return None
        if id(error) in index:
            return index[id(error)]
        index[id(error)] = position = len(chain)
        chain.append(None)
        try:
            blob: bytes | None = names.dumps(error)
        except Exception:
            blob = None
        cause, context = visit(error.__cause__), visit(error.__context__)
        chain[position] = [blob, cause, context, error.__suppress_context__]
        return position

    visit(exc)
    return base64.b64encode(pickle.dumps(chain)).decode("ascii")


def raised(exc: BaseException) -> Raised:
    """The cell's exception as the notebook shows it: its type's name, and its traceback from
    the cell's first frame on (the runtime's frames, and asyncio's that ran a top-level
    `await`, cut)."""
    runtime = _runtime_files()
    machinery = os.path.dirname(traceback.__file__) + os.sep + "asyncio" + os.sep
    frames = traceback.extract_tb(exc.__traceback__)
    while frames and (frames[0].filename in runtime or frames[0].filename.startswith(machinery)):
        frames.pop(0)
    report = traceback.TracebackException.from_exception(exc)
    report.stack = traceback.StackSummary.from_list(frames)
    return {"type": type(exc).__name__, "traceback": "".join(report.format())}


def _runtime_files() -> set[str]:
    """The file names of this package's modules, as their frames name them."""
    package = __name__.rpartition(".")[0]
    return {
        str(getattr(module, "__file__", None))
        for name, module in list(sys.modules.items())
        if name.startswith(f"{package}.")
    }
