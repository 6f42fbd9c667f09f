"""The plain-text view: remote stdout and stderr printed as the cell's own streams, and its
display outputs (plots, tables, display()) published as ordinary display outputs among them.

This is what terminal IPython, nbval and CI see, so it prints nothing time-dependent: no job
ids, no timings, no progress. Worker logs (installer output, phases) go to stderr only when
asked for with --verbose. One exception, for a person at a terminal only (stderr is a TTY, so
never under nbval or in a kernel): a job still waiting for a worker after QUEUE_NOTICE_S (a
RunPod cold start) says so once, so the terminal does not look hung.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tetra_magic.cloud.status import JobStatus
from tetra_magic.view import rich, widget_relay
from worker.protocol import FunctionResponse


class TextView:
    """Prints a job's output streams as they arrive (or all at the end, with --no-stream)."""

    QUEUE_NOTICE_S = 20.0
    cancel_requested = None  # no Cancel button: Ctrl-C cancels

    def __init__(self, verbose: bool = False, live: bool = True) -> None:
        self.verbose = verbose
        self.live = live
        self.streamed = False  # stdout or displays arrived while the job ran
        self.joiner = rich.Joiner()
        self._held: list[dict[str, Any]] = []
        self._queued_since: float | None = None
        self._told_queued = False

    def submitted(self, job_id: str, name: str | None) -> None:
        """Job ids vary run to run, so the text view does not print them."""

    def status(self, status: JobStatus) -> None:
        """Statuses change with timing, so the text view keeps them to itself, but for a long
        wait in the queue."""
        if status != "IN_QUEUE" or self._told_queued or not sys.stderr.isatty():
            return
        self._queued_since = self._queued_since or time.monotonic()
        if time.monotonic() - self._queued_since >= self.QUEUE_NOTICE_S:
            self._told_queued = True
            sys.stderr.write("tetra: queued, waiting for a worker to start (cold start)\n")

    def chunk(self, chunk: dict[str, Any]) -> None:
        if self.live:
            self._show(chunk)
        else:
            self._held.append(chunk)

    def _show(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("kind")
        if kind == "stdout":
            self.streamed = True
            sys.stdout.write(chunk["text"])
            sys.stdout.flush()
        elif kind == "display":
            self.streamed = True
            if message := self.joiner.join(chunk):
                rich.flush_streams()
                rich.publish(message)
        elif kind in ("stderr", "note"):  # note: the client's own word (what the queue waits for)
            sys.stderr.write(chunk["text"])
            sys.stderr.flush()
        elif kind == "log" and self.verbose:
            sys.stderr.write(chunk["text"])
        elif kind == "phase" and self.verbose:
            sys.stderr.write(f"[tetra] {chunk['text']}\n")

    def close(self, response: FunctionResponse | None) -> None:
        """Show held output; show the stdout the worker did not stream (the published worker),
        displays included."""
        for chunk in self._held:
            self._show(chunk)
        if response is None or response.failure:  # the cell stopped before its end
            widget_relay.stopped()
        if response is not None and response.stdout and not self.streamed:
            for chunk in rich.stdout_chunks(response.stdout):
                self._show(chunk)
