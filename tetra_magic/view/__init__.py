"""The live view of a running cell: widgets where a frontend can show them, text elsewhere.

Every view takes the same calls from a job (JobView): submitted, status, chunk, close, and
offers a cancel request.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

from tetra_magic.cloud.status import JobStatus
from tetra_magic.options import CellOptions
from tetra_magic.view.text import TextView
from worker.protocol import FunctionResponse


class JobView(Protocol):
    """What a display must accept while a job runs. `cancel_requested` is set by a Cancel
    button (None on a view without one); the follow loop checks it between polls."""

    @property
    def cancel_requested(self) -> threading.Event | None: ...

    def submitted(self, job_id: str, name: str | None) -> None: ...
    def status(self, status: JobStatus) -> None: ...
    def chunk(self, chunk: dict[str, Any]) -> None: ...
    def close(self, response: FunctionResponse | None) -> None: ...


def widgets_wanted(shell: Any, display: str) -> bool:
    """Widgets only in a kernel (which has a frontend), unless text is asked for by the
    TetraMagic.display setting or TETRA_MAGIC_DISPLAY=text."""
    forced = os.environ.get("TETRA_MAGIC_DISPLAY", "").lower() or display
    if forced in ("text", "widget"):
        return forced == "widget"
    return getattr(shell, "kernel", None) is not None


def make_view(shell: Any, opts: CellOptions, display: str) -> JobView:
    """The view for one cell."""
    if opts.quiet or not widgets_wanted(shell, display):
        return TextView(verbose=opts.verbose, live=opts.stream)
    from tetra_magic.view.widget import WidgetView

    session = f"session {opts.session}" if opts.session else None
    return WidgetView(live=opts.stream, name=opts.name or session)
