"""How failures reach the user: one readable message each, never a raw JSON dump.

IPython renders an exception through its `_render_traceback_` method when it has one, which
lets a remote traceback read like a local one (the cell's own line numbers and source) and a
worker failure read as one sentence.
"""

from __future__ import annotations

import re

_CELL_FRAME = re.compile(r'File "<tetra-cell-(\d+)>", line (\d+), in <module>')


class TetraError(Exception):
    """A cell that could not run remotely; the message says why, in one paragraph."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class JobFailed(TetraError):
    """The worker, not the code, ended the job: install failure, crash, timeout, cancel."""


class RemoteCellError(TetraError):
    """The cell raised on the worker. Subclassed per remote exception type, so the notebook's
    error line names the real type (ZeroDivisionError), with the remote traceback rendered."""

    remote_traceback: str = ""

    def _render_traceback_(self) -> list[str]:
        return clean_traceback(self.remote_traceback).rstrip("\n").splitlines()


def clean_traceback(text: str) -> str:
    """The remote traceback without our runtime's frames, cell frames named as IPython does."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if line.startswith("  File "):
            skipping = line.startswith('  File "<tetra-runtime ')
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line)
    return _CELL_FRAME.sub(r"Cell In[\1], line \2", "".join(kept))


def remote_error(error_type: str | None, traceback_text: str) -> RemoteCellError:
    """An exception to raise in the notebook for a cell that raised `error_type` remotely."""
    name = error_type or "RemoteError"
    cls = type(name, (RemoteCellError,), {"__module__": "tetra_magic.remote"})
    last_line = traceback_text.rstrip().splitlines()[-1] if traceback_text.strip() else name
    error = cls(last_line.partition(": ")[2] or last_line)
    error.remote_traceback = traceback_text
    return error
