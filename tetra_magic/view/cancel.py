"""Getting a button's clicks to the kernel while the cell that showed it is still running.

A %%tetra cell blocks the kernel's main thread in its follow loop, and ipykernel handles a
widget's comm messages on the thread that runs cells, so a plain button's click would wait for
the cell to end: useless for a Cancel button.

ipykernel 7 can run "subshells": extra shell threads, each with its own event loop. Its shell
channel thread (which keeps reading messages while the main thread is busy) routes a comm
message to the subshell named by the comm's `_reply_subshell_id`. So each kernel gets one
subshell of ours, made once, and the Cancel button's comm points there: the click runs the
button's handler in that thread at once, which sets a threading.Event that the follow loop
checks between polls.

These are ipykernel internals (7.4), so every step is checked and any failure makes
`route_to_side_thread` answer False: the view then shows no button and points the user to the
kernel's interrupt, which cancels the job as well.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any

CREATE_TIMEOUT_S = 5.0
_lock = threading.Lock()
_subshells: dict[int, str] = {}  # id(kernel) -> our subshell's id


def route_to_side_thread(widget: Any) -> bool:
    """Make the frontend's messages for `widget` run in our subshell; whether that worked.
    Call after the widget is displayed, and do not change the widget from the main thread
    afterwards (each message the kernel publishes for it re-targets its replies)."""
    kernel = _kernel()
    comm = getattr(widget, "comm", None)
    if kernel is None or comm is None or not hasattr(comm, "_reply_subshell_for"):
        return False
    try:
        subshell_id = _subshell(kernel)
        with comm._reply_subshell_lock:
            comm._reply_subshell_id = subshell_id
    except Exception:
        return False
    return True


def _kernel() -> Any | None:
    """The running ipykernel, if it supports subshells."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    kernel = getattr(get_ipython(), "kernel", None)
    if not getattr(kernel, "_supports_kernel_subshells", False):
        return None
    manager = getattr(getattr(kernel, "shell_channel_thread", None), "manager", None)
    needed = ("_create_subshell", "_shell_channel_io_loop", "list_subshell")
    if manager is None or not all(hasattr(manager, name) for name in needed):
        return None
    return kernel


def _subshell(kernel: Any) -> str:
    """Our subshell in this kernel, made on first use (and again if someone deleted it)."""
    manager = kernel.shell_channel_thread.manager
    with _lock:
        known = _subshells.get(id(kernel))
        if known is not None and known in manager.list_subshell():
            return known
        _subshells[id(kernel)] = _create(manager)
        return _subshells[id(kernel)]


def _create(manager: Any) -> str:
    """Make a subshell. The manager only makes them on the shell channel thread, so the call
    goes through that thread's event loop (add_callback is safe from any thread)."""
    made: concurrent.futures.Future[str] = concurrent.futures.Future()

    def create() -> None:
        # The subshell's new event loop logs "Using selector" at DEBUG: the magic's own
        # doing, which must not show in a notebook that logs at DEBUG.
        asyncio_logger = logging.getLogger("asyncio")
        disabled, asyncio_logger.disabled = asyncio_logger.disabled, True
        try:
            made.set_result(manager._create_subshell())
        except BaseException as exc:
            made.set_exception(exc)
        finally:
            asyncio_logger.disabled = disabled

    manager._shell_channel_io_loop.add_callback(create)
    return made.result(timeout=CREATE_TIMEOUT_S)
