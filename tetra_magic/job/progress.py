"""A cell's output on the published worker, which does not stream: from RunPod progress updates.

The cell runtime (runtime/live_output.py) publishes the output it has seen as the job's
progress: `/status` of an IN_PROGRESS job then has `output: {"tetra_progress": {"first": i,
"chunks": [...]}}`, the chunks from index i on. Its final result carries every chunk under
"output", and, for a cell that raised, the exception under "raised". `ProgressOutput` hands
each chunk on once, in order: chunks past a gap (updates missed between polls that the window
no longer covers) wait for the final result.

The worker's own text is never the cell's output: a failure the worker reports itself (its
--deps did not install, say) comes before the cell ran, and its `stdout` is the worker's log,
kept for --verbose.
"""

from __future__ import annotations

from typing import Any

from tetra_magic.runtime.contract import PROGRESS_KEY as KEY
from worker.frames import Splitter
from worker.protocol import FunctionResponse, decode


class ProgressOutput:
    """What progress updates have delivered so far, by chunk index."""

    def __init__(self) -> None:
        self.delivered = 0
        self.stdout = ""
        self.frames = Splitter()

    def new(self, document: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks of a `/status` document's progress update not delivered before."""
        output = document.get("output")
        update = output.get(KEY) if isinstance(output, dict) else None
        if not isinstance(update, dict):
            return []
        first, chunks = int(update.get("first", 0)), update.get("chunks") or []
        if first > self.delivered:
            return []
        return self._take(chunks[self.delivered - first :])

    def rest(self, response: FunctionResponse | None) -> list[dict[str, Any]]:
        """The chunks no update delivered, from the final response; its `stdout` is then
        cleared, so no view shows the output twice. A cell that raised makes the response the
        failure our worker sends for it. A failure of the worker's own hands on its log as a
        "log" chunk. Otherwise, without the runtime's record (an older runtime's failed cell),
        the part of `stdout` past what was shown, when it continues it."""
        if response is None:
            return []
        payload = _payload(response)
        if isinstance(payload.get("output"), list):
            response.stdout = None
            if isinstance(payload.get("raised"), dict):
                _as_failure(response, payload["raised"])
            return self._take(payload["output"][self.delivered :])
        if before_the_cell(response):
            log = "\n".join(t.strip("\n") for t in (response.stdout, response.error) if t)
            response.stdout = None
            return [{"kind": "log", "text": log + "\n"}] if log else []
        if not self.delivered:
            return []
        text, response.stdout = response.stdout or "", None
        if text.startswith(self.stdout) and len(text) > len(self.stdout):
            return self._take([{"kind": "stdout", "text": text[len(self.stdout) :]}])
        return []

    def _take(self, chunks: list[Any]) -> list[dict[str, Any]]:
        """Chunks counted as the runtime counts them, then handed on with the display outputs
        framed in their stdout taken out (worker/frames.py), as our worker sends them."""
        taken = [c for c in chunks if isinstance(c, dict)]
        self.delivered += len(taken)
        self.stdout += "".join(c.get("text", "") for c in taken if c.get("kind") == "stdout")
        return [
            piece
            for c in taken
            for piece in (self.frames.feed(c.get("text", "")) if c.get("kind") == "stdout" else [c])
        ]


def before_the_cell(response: FunctionResponse) -> bool:
    """Whether a failed response is the published worker's own, sent before the cell ran (its
    dependencies did not install, or the request did not reach the cell runtime): once the
    runtime runs there, a cell's exception comes in its result, or, from an older runtime,
    as a traceback through it. Our worker names every failure itself (`failure`)."""
    text = response.error or ""
    return not response.success and response.failure is None and _TRACEBACK not in text


_TRACEBACK = "Traceback (most recent call last):"


def _as_failure(response: FunctionResponse, raised: dict[str, Any]) -> None:
    """The response our worker sends for a cell that raised: the cell's traceback and the
    exception's type, and no result."""
    response.success, response.result, response.failure = False, None, "exception"
    response.error = str(raised.get("traceback") or "")
    response.error_type = str(raised.get("type") or "") or None


def _payload(response: FunctionResponse) -> dict[str, Any]:
    if not response.success or not response.result:
        return {}
    try:
        payload = decode(response.result)
    except Exception:
        return {}  # outcome.unpack reports a result that does not load
    return payload if isinstance(payload, dict) else {}
