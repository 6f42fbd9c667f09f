"""The widget view: one compact live panel per cell while it runs.

The panel has a status line (state, elapsed time, and a Cancel button), a line saying where the
job runs once the worker reports it, the cell's stdout and stderr in boxes that scroll rather
than grow without bound, with its plots and other display outputs between them where the cell
made them (clear_output and update_display act inside the panel), and the worker's logs
(installer output, phases) folded away.

When the job ends the panel is replaced (same display id) by a static summary, and the output is
shown again as the cell's ordinary streams and display_data outputs, in the order it came: a
saved and reopened notebook shows what ran, plots included, with no widget left to load. The
remote error, if any, is raised by the magic after that, so it lands below the output, as it
would for a local cell.

The follow loop calls `status` on every poll, so the elapsed time moves while the job waits;
output is re-rendered at most every FLUSH_S, since each render sends the whole box.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from IPython.display import display

from tetra_magic.cloud.status import JobStatus
from tetra_magic.view import render, rich, widget_relay
from tetra_magic.view.cancel import route_to_side_thread
from worker.protocol import FunctionResponse

FLUSH_S = 0.2
_ENDPOINT_LABELS = {
    "IN_QUEUE": "queued",
    "COMPLETED": "done",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "TIMED_OUT": "timed out",
}
# "starting" (the worker starting the process that runs the cell) shows as running, with a
# detail: the job is running by then, and the label must not step back from running.
_PHASE_LABELS = {"installing": "installing deps", "starting": "running", "running": "running"}
NO_CANCEL_HINT = "to cancel, interrupt the kernel (■)"


def status_head(
    tooltip: str, on_cancel: Callable[[widgets.Button], None]
) -> tuple[widgets.HBox, widgets.HTML, widgets.Button]:
    """A panel's head: its status line, with the Cancel button (`tooltip` says what it
    cancels) beside it. Shared by the one-job view and a map's board (view/shards.py)."""
    status = widgets.HTML(layout=widgets.Layout(flex="1 1 auto", width="auto"))
    cancel = widgets.Button(description="Cancel", tooltip=tooltip, layout=widgets.Layout())
    cancel.add_class("tetra-cancel")
    cancel.on_click(on_cancel)
    head = widgets.HBox([status, cancel])
    head.add_class("tetra-head")
    return head, status, cancel


class WidgetView:
    """A live panel fed by the follow loop; a static summary plus ordinary output at the end.

    `cancel_requested` is set when the user clicks Cancel; the follow loop watches it.
    """

    def __init__(
        self,
        live: bool = True,
        name: str | None = None,
        route: Callable[[widgets.Widget], bool] = route_to_side_thread,
    ) -> None:
        self.live = live
        self.name = name or "tetra"
        self.started = time.monotonic()
        self.cancel_requested = threading.Event()
        self.job_id: str | None = None
        self.endpoint_status = "submitting"
        self.phase: str | None = None
        self.succeeded: bool | None = None
        self.error_type: str | None = None
        self.where = ""
        self.note = ""  # what the job waits for, while it is queued
        self.closed = False
        self.record = rich.Record()  # the outputs as the notebook will keep them
        self.joiner = rich.Joiner()
        self.output = render.Terminal()  # the text since the last display, shown in output_html
        self.displays: dict[str, list[widgets.Output]] = {}  # live displays by display id
        self.clear_next = False
        self.logs = render.Terminal(limit=30_000, note="… earlier log lines are trimmed\n")
        self._last_log = ""
        self._dirty = False
        self._flushed = 0.0
        self.can_cancel = False
        self._build()
        self.handle = display(self.panel, display_id=True)
        self.can_cancel = route(self.cancel_button)
        if not self.can_cancel:
            self.cancel_button.layout.display = "none"
        self._render()

    # -- the calls the run makes -------------------------------------------------------------

    def submitted(self, job_id: str, name: str | None) -> None:
        self.job_id = job_id
        self.name = name or self.name
        self.logs.write("note", f"job {job_id}\n")
        self._render()

    def status(self, status: JobStatus) -> None:
        """Called on every poll: also the moment to show output gathered since the last one."""
        self.endpoint_status = status
        self._render()

    def chunk(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("kind")
        if kind in ("stdout", "stderr"):
            self.record.text(kind, chunk["text"])
            if self.live:
                self._arrive()
                self.output.write(kind, chunk["text"])
        elif kind == "display":
            if message := self.joiner.join(chunk):
                self.record.display(message)
                if self.live:
                    self._show(message)
        elif kind == "log":
            self.logs.write("log", chunk["text"])
            lines = [line.strip() for line in chunk["text"].splitlines() if line.strip()]
            self._last_log = lines[-1] if lines else self._last_log
        elif kind == "note":
            self.note = chunk["text"].strip()
            self.logs.write("note", chunk["text"])
        elif kind == "phase":
            self.phase = chunk["text"]
            self.logs.write("note", f"[{self.phase}]\n")
        elif kind == "info":
            self.where = render.where_text(chunk)
        elif kind == "response":
            response = chunk.get("response") or {}
            self.succeeded = bool(response.get("success"))
            self.error_type = response.get("error_type")
        self._dirty = True
        if time.monotonic() - self._flushed >= FLUSH_S:
            self._render()

    def close(self, response: FunctionResponse | None) -> None:
        """Swap the panel for a static summary; print the output as ordinary streams. Safe to
        call twice (the run also calls it when the cell is interrupted)."""
        if self.closed:
            return
        self.closed = True
        if response is not None:
            self.succeeded = response.success
            self.error_type = response.error_type or self.error_type
        status = self._status_html(final=True)
        summary = render.summary_html(status, self.where, self.logs)
        plain = f"{self.name}: {self._label()} · {self._elapsed(final=True)}"
        self.handle.update({"text/html": summary, "text/plain": plain}, raw=True)
        for widget in [*self.output_box.children, *self._widgets]:
            widget.close()
        if response is None or response.failure:  # the cell stopped before its end
            widget_relay.stopped()
        self._replay(response)

    # -- building and rendering ----------------------------------------------------------------

    def _build(self) -> None:
        style = widgets.HTML(render.STYLE, layout=widgets.Layout(display="none"))
        head, self.status_html, self.cancel_button = status_head(
            "Cancel the remote job", self._on_cancel
        )
        self.where_html = widgets.HTML()
        self.output_html = widgets.HTML()
        self.output_box = widgets.VBox([self.output_html])
        self.logs_html = widgets.HTML()
        # Opened and closed by the frontend alone; never changed from here once shown, since a
        # frontend that sends comms over subshells may update it from another thread.
        self.logs_box = widgets.Accordion(
            children=[self.logs_html], titles=("worker logs",), selected_index=None
        )
        self.panel = widgets.VBox([style, head, self.where_html, self.output_box, self.logs_box])
        self.panel.add_class("tetra-view")
        self._widgets = [
            self.panel,
            self.logs_box,
            self.logs_html,
            self.output_box,
            self.where_html,
            head,
            self.cancel_button,
            self.status_html,
            style,
        ]

    # -- display outputs, live inside the panel ------------------------------------------------

    def _show(self, message: dict[str, Any]) -> None:
        """A display message as the frontend would apply it, but inside the panel: a plot
        between the text before and after it, an update in place, a clear of the panel. (A
        widget's comm message was done by the record.)"""
        if message["type"] == "comm":
            return
        if message["type"] == "clear":
            self.clear_next = bool(message.get("wait"))
            if not self.clear_next:
                self._clear()
            return
        self._arrive()
        output = {
            "output_type": "display_data",
            "data": message.get("data") or {},
            "metadata": message.get("metadata") or {},
        }
        display_id = message.get("display_id")
        if message["type"] == "update":
            for shown in self.displays.get(display_id or "", []):
                shown.outputs = (output,)
            return
        before = self.output_box.children
        if self.output.segments:  # the text before the display, rendered for good
            self._set(self.output_html, render.text_box(self.output, "tetra-output"))
        else:
            self.output_html.close()
            before = before[:-1]
        shown = widgets.Output()
        shown.outputs = (output,)
        if display_id:
            self.displays.setdefault(display_id, []).append(shown)
        self.output, self.output_html = render.Terminal(), widgets.HTML()
        self.output_box.children = (*before, shown, self.output_html)

    def _arrive(self) -> None:
        """An output arrives: a clear_output(wait=True) before it happens now."""
        if self.clear_next:
            self._clear()

    def _clear(self) -> None:
        for piece in self.output_box.children:
            piece.close()
        self.output, self.output_html = render.Terminal(), widgets.HTML()
        self.output_box.children = (self.output_html,)
        self.displays, self.clear_next = {}, False

    def _on_cancel(self, _button: widgets.Button) -> None:
        """Runs in the kernel's side thread (see cancel.py), while the cell still runs. It only
        sets the event and changes the button itself: the rest of the panel belongs to the main
        thread, which shows "cancelling" on its next poll."""
        self.cancel_requested.set()
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"

    def _render(self) -> None:
        """Set each widget's value, sending only those that changed."""
        if self.closed:
            return
        self._set(self.status_html, self._status_html())
        waiting = self._label() in ("submitting", "queued")
        where = self.where or ((self.note or "waiting for a worker…") if waiting else "")
        self._set(self.where_html, render.muted_line(where))
        if self._dirty:
            self._set(self.output_html, render.text_box(self.output, "tetra-output"))
            self._set(self.logs_html, render.text_box(self.logs, "tetra-logs", render.LOGS_HEIGHT))
            self._dirty = False
        self._flushed = time.monotonic()

    @staticmethod
    def _set(widget: widgets.HTML, value: str) -> None:
        if widget.value != value:
            widget.value = value

    def _status_html(self, final: bool = False) -> str:
        return render.status_line(
            self.name, self._label(), self._elapsed(final), self._detail(), self.job_id
        )

    def _label(self) -> str:
        """The state to show: the endpoint's final word, else what the worker says it is doing."""
        label = _ENDPOINT_LABELS.get(self.endpoint_status)
        if self.endpoint_status == "COMPLETED" and self.succeeded is False:
            label = "failed"
        if label in render.FINAL_LABELS:
            return label
        if self.closed:
            if self.succeeded is not None:
                return "done" if self.succeeded else "failed"
            return "no result"
        if self.phase is not None:
            return _PHASE_LABELS.get(self.phase, self.phase)
        if self.endpoint_status == "IN_PROGRESS":
            return "running"
        return label or self.endpoint_status

    def _detail(self) -> str:
        """One muted phrase after the time: what is going on, or how it ended."""
        label = self._label()
        if label == "failed" and self.error_type:
            return self.error_type
        if label in render.FINAL_LABELS:
            return ""
        if self.cancel_requested.is_set():
            return "cancelling…"
        if label == "installing deps" and self._last_log:
            return self._last_log[:120]
        if self.phase == "starting":
            return "starting the cell's process"
        return "" if self.can_cancel else NO_CANCEL_HINT

    def _elapsed(self, final: bool = False) -> str:
        return render.elapsed_text(time.monotonic() - self.started, final)

    def _replay(self, response: FunctionResponse | None) -> None:
        """The output again, as the cell's own streams and displays: what the saved notebook
        keeps. A worker that does not stream (the published one) sent it all in its stdout."""
        record = self.record
        if not record.items and response is not None and response.stdout:
            record = rich.Record.of_stdout(response.stdout)
        record.replay()
