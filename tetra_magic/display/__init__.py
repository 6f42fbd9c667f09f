"""The live view of a running cell: widgets where a frontend can show them, text elsewhere.

Every view takes the same calls from the run: submitted, status, chunk, close.
"""

from __future__ import annotations

import os
from typing import Any

from tetra_magic.display.text import TextView
from tetra_magic.options import CellOptions


def widgets_wanted(shell: Any, display: str) -> bool:
    """Widgets only in a kernel (which has a frontend), unless text is asked for by the
    TetraMagic.display setting or TETRA_MAGIC_DISPLAY=text."""
    forced = os.environ.get("TETRA_MAGIC_DISPLAY", "").lower() or display
    if forced in ("text", "widget"):
        return forced == "widget"
    return getattr(shell, "kernel", None) is not None


def make_view(shell: Any, opts: CellOptions, display: str) -> Any:
    """The view for one cell."""
    if opts.quiet or not widgets_wanted(shell, display):
        return TextView(verbose=opts.verbose, live=opts.stream)
    from tetra_magic.display.widget import WidgetView

    return WidgetView(live=opts.stream, name=opts.name)
