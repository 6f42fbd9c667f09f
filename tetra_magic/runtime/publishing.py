"""Display messages, written into the cell's stdout as frames, in their place among its prints.

Every display message (display_data, its update, clear_output) is written into the cell's
stdout as FRAME_START + JSON + FRAME_END (contract.py; worker/frames.py reads the same framing),
so it sits among the prints exactly where the cell made it, whatever carries stdout home: our
worker splits the frames out into "display" chunks as it streams; the published worker returns
them inside the response's stdout, where the notebook splits them out.

What one cell may show is limited: outputs on screen at once (clear_output makes room again)
and bytes sent in all, so a cell that makes thousands of figures cannot exhaust the notebook,
the kernel or the endpoint. Overridable with --env.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from .contract import FRAME_END, FRAME_START

MAX_SHOWN = 100
MAX_MB = 50
_cell = {"shown": 0, "bytes": 0, "dropped": 0, "max_shown": MAX_SHOWN, "max_bytes": 0}
_held: list[list[dict[str, Any]]] = []


def begin() -> None:
    """Fresh limits for a cell."""
    _cell.update(shown=0, bytes=0, dropped=0)
    _cell["max_shown"] = int(os.environ.get("TETRA_MAX_DISPLAYS", MAX_SHOWN))
    _cell["max_bytes"] = int(float(os.environ.get("TETRA_MAX_DISPLAY_MB", MAX_MB)) * 2**20)


def note_dropped() -> None:
    """After the cell: a note of the outputs the limits dropped, if any."""
    if _cell["dropped"]:
        print(
            f"tetra: {_cell['dropped']} display outputs were dropped: a cell shows at most"
            f" {_cell['max_shown']} at a time (clear_output() makes room) and sends at most"
            f" {_cell['max_bytes'] / 2**20:g} MB of them",
            file=sys.stderr,
        )


@contextlib.contextmanager
def held_back() -> Iterator[list[dict[str, Any]]]:
    """The outputs displayed meanwhile, kept in the list given rather than shown: what a
    value's own display hook would show, for the notebook to show it instead (updates, clears
    and other messages still go out)."""
    kept: list[dict[str, Any]] = []
    _held.append(kept)
    try:
        yield kept
    finally:
        _held.remove(kept)


def publish(message: dict[str, Any]) -> None:
    """Write one display message into stdout, in its place among the prints, within the cell's
    limits (an output past them is counted, for the note at the end)."""
    if _held and message["type"] == "display":
        _held[-1].append(message)
        return
    text = json.dumps(message, separators=(",", ":"), default=str)
    if message["type"] == "clear":
        _cell["shown"] = 0
    elif message["type"] == "display" and _cell["shown"] >= _cell["max_shown"]:
        _cell["dropped"] += 1
        return
    if _cell["bytes"] + len(text) > _cell["max_bytes"]:
        _cell["dropped"] += 1
        return
    _cell["bytes"] += len(text)
    _cell["shown"] += message["type"] == "display"
    sys.stdout.flush()
    sys.stdout.write(FRAME_START + text + FRAME_END)
    sys.stdout.flush()


def publish_display_data(
    data: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    source: Any = None,
    *,
    transient: dict[str, Any] | None = None,
    update: bool = False,
    after_result: bool = False,
    **_: Any,
) -> None:
    """IPython's publish_display_data: a mime bundle, shown (or updating a display id).
    `after_result`: shown after the cell's result (its Out), as the inline backend shows the
    figures a cell left open, once the cell has run (the notebook holds it back till then)."""
    display_id = (transient or {}).get("display_id")
    message = {
        "type": "update" if update else "display",
        "data": {mime: as_text(value) for mime, value in data.items()},
        "metadata": metadata or {},
        "display_id": display_id,
    }
    if after_result:
        message["after_result"] = True
    publish(message)


def clear_output(wait: bool = False) -> None:
    """IPython.display.clear_output: with `wait`, the cell's output is cleared when the next
    output arrives, so a plot redrawn in a loop updates in place without flicker."""
    publish({"type": "clear", "wait": bool(wait)})


def as_text(value: Any) -> Any:
    """Binary data as Jupyter carries it: base64 text."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return value
