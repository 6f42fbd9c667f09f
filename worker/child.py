"""The executor child: a long-lived process that runs request code, one request at a time.

It lives apart from the worker so that user code can crash, hang or be killed without taking the
worker (and its runpod job loop) with it, and it persists across requests so imports stay warm.
Its fds 1 and 2 are pipes the worker reads, so output from C extensions and subprocesses is
captured as well as Python's own prints.

Requests arrive on stdin (then replaced by /dev/null, so user code cannot read them) and
responses go out on the pipe whose fd is argv[1] (after a first message saying the child is
ready, and each after one saying the request was taken up), both framed by `worker.channel`;
a fatal signal writes the Python stack to the file whose fd is argv[2], for the worker to
quote. After each request the child flushes every
output buffer, puts fds 1 and 2 back as they were, and writes that request's end marker to
both, before its response: once the worker has the response and both markers, it has every
byte of that request's output.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import io
import os
import sys
from typing import Any, cast

from worker import channel
from worker.calls import run
from worker.parent_death import die_with_parent

MARKER_PREFIX = b"\x00tetra-end:"
MARKER_SUFFIX = b"\x00"
TOKEN_LENGTH = 32  # uuid4().hex
# Names the kernel's package layer (worker/deps.py), set by the executor; the cell runtime's
# %pip installs there too.
PACKAGES_VARIABLE = "TETRA_PACKAGES"
LIBC = ctypes.CDLL(None)


def end_marker(token: str) -> bytes:
    """The bytes that end one request's output on fds 1 and 2."""
    return MARKER_PREFIX + token.encode("ascii") + MARKER_SUFFIX


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when the worker dies, so hung code never outlives it."""
    die_with_parent()
    if os.getppid() != parent:
        os._exit(1)


def _flush_all() -> None:
    """Python's and C stdio's buffers, so buffered output lands before the end marker."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is None:  # the process has no such stream (sys.__stdout__ without an fd 1)
            continue
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    LIBC.fflush(None)


class Streams:
    """The output pipes as the child was given them, restorable after user code moves them."""

    def __init__(self) -> None:
        self.saved = {fd: os.dup(fd) for fd in (1, 2)}

    def restore(self) -> None:
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__

    def end(self, token: str) -> None:
        for saved in self.saved.values():
            os.write(saved, end_marker(token))


def serve(requests: Any, responses: int, streams: Streams) -> None:
    """Answer requests until the worker closes the channel."""
    pid = os.getpid()
    while (message := channel.read(requests)) is not None:
        channel.write(responses, {"taken": message["token"]})
        response = run(message["request"])
        if os.getpid() != pid:
            os._exit(0)  # a process the code forked returned here: only the child answers
        _flush_all()
        streams.restore()
        streams.end(message["token"])
        channel.write(responses, response)


def _packages_first() -> None:
    """The notebook's package layer (worker/deps.py) ahead of everything on sys.path, the
    image's packages included, so a version the notebook pinned is the one it imports; put
    there once this process's own modules are imported, which the layer cannot replace."""
    layer = os.environ.get(PACKAGES_VARIABLE)
    if layer:
        sys.path.insert(0, layer)


def main() -> None:
    """Started as `python -c "...main()" RESPONSE_FD CRASH_FD PARENT_PID` (see
    `worker.executor`); says it is ready on the response pipe, then serves."""
    responses, crash_log, parent = (int(arg) for arg in sys.argv[1:4])
    _die_with_parent(parent)
    for fd in (responses, crash_log):
        os.set_inheritable(fd, False)
    requests = os.fdopen(os.dup(0), "rb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # Python made both at startup as TextIOWrappers on the pipes (typed as plain TextIO).
    cast(io.TextIOWrapper, sys.stdout).reconfigure(line_buffering=True)
    cast(io.TextIOWrapper, sys.stderr).reconfigure(line_buffering=True)
    faulthandler.enable(crash_log)  # a segfault leaves the Python stack where the worker reads it
    _packages_first()
    channel.write(responses, {"ready": True})
    serve(requests, responses, Streams())
