"""The cell's output as RunPod progress updates, on the published worker.

That worker runs the cell in its own process, under the runpod SDK, with stdout captured into a
buffer that it returns only when the job ends. From inside, the output can go out sooner: RunPod
shows a job's latest progress update as its `/status` output while it is IN_PROGRESS
(tetra_magic/job/progress.py reads them at home). Our own worker streams output itself; there (and
wherever no runpod job is running in this process) this stays off.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from .contract import PROGRESS_KEY, Chunk


class LiveOutput:
    """The cell's stdout and stderr, recorded and published as progress updates.

    Each update carries the output since the first chunk that fits in PROGRESS_BYTES (a client
    that missed an update misses nothing), and the final result carries all of it, so the
    client shows every chunk exactly once, in order.

    That worker also knows nothing of the cell's --timeout (it is not a field of its request),
    so here the cell's thread is interrupted with a TimeoutError once it has run that long: the
    Python code stops there (a call stuck in C code only when it returns to Python).

    Only the cell's own output is recorded. The runpod SDK in that process prints its log lines
    (at its default level, DEBUG: one for every progress update sent) to whatever sys.stdout is
    at the time, and so into the cell's output, which the next update would carry and the SDK
    print again: those lines go to the process's own stdout, the worker's log, instead. (The
    cell logs as at home, without the worker's handlers on the root logger, which copy every
    record into the response: at_home.py, for every worker.)
    """

    PERIOD_S = 0.5
    PROGRESS_BYTES = 256 * 1024
    KEEP_BYTES = 16 * 1024 * 1024

    def __init__(self, send: Callable[[Any], Any], timeout: float | None = None) -> None:
        self.send = send
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.cell_thread = threading.get_ident()
        self.chunks: list[Chunk] = []
        self.size = 0
        self.dropped = 0
        self.sent = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()

    @classmethod
    def on_published_worker(cls, timeout: float | None = None) -> LiveOutput | None:
        """A LiveOutput for the one job the runpod SDK in this process is running, if any;
        the cell is stopped after `timeout` seconds."""
        state = sys.modules.get("runpod.serverless.modules.worker_state")
        progress = sys.modules.get("runpod.serverless.modules.rp_progress")
        if state is None or progress is None:
            return None
        jobs = list(state.JobsProgress())
        if len(jobs) != 1:
            return None  # none, or several at once: no way to tell which one is this cell's
        job = {"id": str(jobs[0].id)}
        return cls(lambda value: progress.progress_update(job, value), timeout)

    def write(self, kind: str, text: str) -> None:
        if not text:
            return
        with self.lock:
            size = len(text.encode("utf-8", "replace"))
            if self.size + size > self.KEEP_BYTES:
                self.dropped += size
                return
            self.size += size
            # A chunk already published is final: the client counts chunks, not characters.
            if len(self.chunks) > self.sent and self.chunks[-1]["kind"] == kind:
                self.chunks[-1] = {"kind": kind, "text": self.chunks[-1]["text"] + text}
            else:
                self.chunks.append({"kind": kind, "text": text})

    def __enter__(self) -> LiveOutput:
        self.saved = sys.stdout, sys.stderr
        sys.stdout = _Tee(sys.stdout, "stdout", self, sys.__stdout__)
        sys.stderr = _Tee(sys.stderr, "stderr", self, sys.__stderr__)
        self.thread = threading.Thread(target=self._publish, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self.saved
        self.stop.set()
        self.thread.join()
        if self.dropped:
            note = f"tetra: {self.dropped} bytes of output past {self.KEEP_BYTES} were dropped\n"
            self.chunks.append({"kind": "stderr", "text": note})

    def _publish(self) -> None:
        while not self.stop.wait(self.PERIOD_S):
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.deadline = None
                self._interrupt()
            with self.lock:
                count = len(self.chunks)
                if count == self.sent:
                    continue
                first, size = count, 0
                while (
                    first > 0 and size + len(self.chunks[first - 1]["text"]) <= self.PROGRESS_BYTES
                ):
                    first -= 1
                    size += len(self.chunks[first]["text"])
                window = [dict(chunk) for chunk in self.chunks[first:]]
                self.sent = count
            try:
                self.send({PROGRESS_KEY: {"first": first, "chunks": window}})
            except Exception:
                return  # best effort: the output still arrives with the result

    def _interrupt(self) -> None:
        """Raise a TimeoutError in the cell's thread, at its next Python instruction."""
        message = f"the cell ran past its {self.timeout:g} s timeout and was stopped"
        body = {"__init__": _fixed_message(message), "__module__": "builtins"}
        error = type("TimeoutError", (TimeoutError,), body)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(self.cell_thread), ctypes.py_object(error)
        )


def recording() -> bool:
    """Whether a LiveOutput records the cell's output in this process now (the published
    worker), through streams of its own."""
    return isinstance(sys.stdout, _Tee)


def _fixed_message(message: str) -> Callable[..., None]:
    """An __init__ giving an exception `message` whatever it is raised with (an exception
    raised in another thread is raised as a class, with no arguments)."""

    def __init__(self: TimeoutError, *args: Any) -> None:
        TimeoutError.__init__(self, message)

    return __init__


class _Tee:
    """A text stream that writes through to `stream` and records what passes into `live`;
    what the runpod SDK writes goes to `log` (the process's own stream) instead."""

    def __init__(self, stream: TextIO, kind: str, live: LiveOutput, log: TextIO | None) -> None:
        self.stream, self.kind, self.live, self.log = stream, kind, live, log

    def write(self, text: str) -> int:
        if _written_by_the_sdk():
            return (self.log or self.stream).write(text)
        self.live.write(self.kind, text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _written_by_the_sdk() -> bool:
    """Whether the code calling a stream's write (print's caller) is the runpod SDK's."""
    try:
        writer = sys._getframe(2).f_globals.get("__name__") or ""
    except ValueError:  # written from C, with no Python caller
        return False
    return bool(writer.partition(".")[0] == "runpod")
