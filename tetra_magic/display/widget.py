"""The widget view: one compact live panel per cell while it runs.

While the job runs the panel shows status, elapsed time, where it runs and the streamed
output. When it ends, the panel is replaced (same display id) by a static one-line summary and
the output is printed as the cell's ordinary streams, so a saved and reopened notebook shows
what ran, with no widget left to load.
"""

from __future__ import annotations

import html
import sys
import time
from typing import Any

import ipywidgets as widgets
from IPython.display import HTML, display

from worker.protocol import FunctionResponse

_LABELS = {
    "IN_QUEUE": "queued",
    "IN_PROGRESS": "running",
    "COMPLETED": "done",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "TIMED_OUT": "timed out",
}


class WidgetView:
    """A live panel: header line, streamed output, logs; a static summary when done."""

    def __init__(self, live: bool = True, name: str | None = None) -> None:
        self.live = live
        self.name = name or "tetra"
        self.started = time.monotonic()
        self.state = "submitting"
        self.where = ""
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.header = widgets.HTML()
        self.output = widgets.Textarea(
            layout=widgets.Layout(width="100%", height="12em"), disabled=True
        )
        self.logs = widgets.Textarea(
            layout=widgets.Layout(width="100%", height="8em"), disabled=True
        )
        logs_box = widgets.Accordion(
            children=[self.logs], titles=("worker logs",), selected_index=None
        )
        self.panel = widgets.VBox([self.header, self.output, logs_box])
        self.handle = display(self.panel, display_id=True)
        self._render()

    def submitted(self, job_id: str, name: str | None) -> None:
        self.job_id = job_id
        self._render()

    def status(self, status: str) -> None:
        self.state = _LABELS.get(status, status.lower())
        self._render()

    def chunk(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("kind")
        if kind in ("stdout", "stderr"):
            (self.stdout if kind == "stdout" else self.stderr).append(chunk["text"])
            if self.live:
                self.output.value += chunk["text"]
        elif kind == "log":
            self.logs.value += chunk["text"]
        elif kind == "phase":
            self.state = chunk["text"]
            self._render()
        elif kind == "info":
            gpus = ", ".join(chunk.get("gpus") or []) or "CPU"
            self.where = f"{chunk.get('worker_id', '?')} · {gpus} · Python {chunk.get('python')}"
            self._render()

    def close(self, response: FunctionResponse | None) -> None:
        """Swap the panel for a static summary; print the output as ordinary streams."""
        self.handle.update(HTML(self._header_html()))
        self.panel.close()
        if not self.stdout and response is not None and response.stdout:
            self.stdout.append(response.stdout)
        if self.stdout:
            sys.stdout.write("".join(self.stdout))
        if self.stderr:
            sys.stderr.write("".join(self.stderr))

    def problems(self, problems: dict[str, str]) -> None:
        for name, reason in problems.items():
            sys.stderr.write(f"tetra: {name} was not brought back: {reason}\n")

    def _header_html(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"<b>{html.escape(self.name)}</b>", html.escape(self.state), f"{elapsed:.1f} s"]
        if self.where:
            parts.append(html.escape(self.where))
        return f"<span style='font-family: var(--jp-code-font-family)'>{' · '.join(parts)}</span>"

    def _render(self) -> None:
        self.header.value = self._header_html()
