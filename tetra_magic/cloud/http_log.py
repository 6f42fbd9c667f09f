"""The magic's own HTTP traffic stays out of the notebook's logging.

httpx logs every request at INFO ("HTTP Request: GET .../stream/...") and httpcore each step at
DEBUG, under loggers of their own. A notebook that ran `logging.basicConfig(level=logging.INFO)`
(a very common first line) would see a dozen such lines of the magic's polling in every remote
cell's output. While the magic itself sends a request (inside `ours()`), those records go to the
logger `tetra_magic.http` instead, which has no handler and does not propagate: quiet unless a
user gives it a handler (`logging.getLogger("tetra_magic.http").addHandler(...)`). The
notebook's own use of httpx, in the same kernel and thread, logs as it always did.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

# The loggers httpx and httpcore write to (httpcore: one per module, named in its sources).
LIBRARY_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
OWN = logging.getLogger("tetra_magic.http")
OWN.addHandler(logging.NullHandler())
OWN.propagate = False
_sending = contextvars.ContextVar("tetra_magic_http_sending", default=False)


class _Ours(logging.Filter):
    """Takes a record made while the magic sends a request away from the library's logger
    (and so from the notebook's handlers) to the magic's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _sending.get():
            return True
        if OWN.isEnabledFor(record.levelno):
            OWN.handle(record)
        return False


_FILTER = _Ours()
for _name in LIBRARY_LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)


@contextlib.contextmanager
def ours() -> Iterator[None]:
    """Mark the requests sent in this block (this thread or task) as the magic's own."""
    token = _sending.set(True)
    try:
        yield
    finally:
        _sending.reset(token)
