"""Ctrl-C held back while the notebook is being changed, so a change is made whole or not at all.

A cell's values land in the notebook one name at a time (tetra_magic/cell/outcome.py): a
KeyboardInterrupt between two of them would leave some of the cell's names bound and others not,
a notebook no run of the cell could have made. `deferred` notes a Ctrl-C that comes meanwhile
and raises it once the change is done.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from tetra_magic.errors import CellInterrupted


@contextlib.contextmanager
def deferred(why: str) -> Iterator[None]:
    """Run the block with SIGINT noted rather than raised; then, if one came, raise
    CellInterrupted(why), a KeyboardInterrupt saying what it waited for. Only Python's own
    handler is stood in for, and only in the main thread, the one signal handlers run in:
    elsewhere, or under another handler, the block runs as it is."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    came: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        came.append(signum)

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if came:
        raise CellInterrupted(why)
