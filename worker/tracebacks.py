"""Tracebacks that show the user's code, not the worker's.

Request code is compiled under the request's `source_name` and its text registered with
linecache, so frames in it print the user's own lines. The frames the worker itself puts on the
stack before reaching user code (this package, and asyncio when it drives an async function) are
cut, in every exception of a chain, so the first frame a user sees is their own.
"""

from __future__ import annotations

import importlib.util
import linecache
import os
import traceback


def _package_dir(name: str) -> str:
    """The directory of the standard library package `name`, located without importing it."""
    spec = importlib.util.find_spec(name)
    # A standard library package is always found, and its spec names the file it loads from.
    assert spec is not None and spec.origin is not None, name
    return os.path.dirname(os.path.abspath(spec.origin)) + os.sep


_WORKER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Located, not imported: the child imports asyncio only for requests that need it.
_ASYNCIO_DIR = _package_dir("asyncio")


def register_source(code: str, name: str) -> str:
    """Make `code` readable by linecache under `name`; return `name` for `compile`."""
    linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
    return name


def _internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_WORKER_DIR) or path.startswith(_ASYNCIO_DIR)


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    """Drop the leading internal frames of `te` and of the exceptions chained to it."""
    if id(te) in seen:
        return
    seen.add(id(te))
    frames = list(te.stack)
    while frames and _internal(frames[0].filename):
        frames.pop(0)
    te.stack = traceback.StackSummary.from_list(frames)
    for linked in (te.__cause__, te.__context__, *(getattr(te, "exceptions", None) or ())):
        if linked is not None:
            _trim(linked, seen)


def user_traceback(exc: BaseException) -> str:
    """The formatted exception, its traceback starting at the user's first frame."""
    te = traceback.TracebackException.from_exception(exc)
    _trim(te, set())
    return "".join(te.format())
