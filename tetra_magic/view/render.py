"""What the widget view shows, as HTML strings: pure functions, so tests can read them.

Everything is styled with JupyterLab's theme variables (--jp-*), so the view follows the light
and dark themes. Text from the worker is always escaped; it is never trusted as markup.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

# The colour of the status dot, per state label.
_COLOURS = {
    "submitting": "var(--jp-ui-font-color3)",
    "queued": "var(--jp-warn-color1)",
    "installing deps": "var(--jp-brand-color1)",
    "running": "var(--jp-brand-color1)",
    "done": "var(--jp-success-color1)",
    "failed": "var(--jp-error-color1)",
    "timed out": "var(--jp-error-color1)",
    "cancelled": "var(--jp-warn-color1)",
    "no result": "var(--jp-warn-color1)",
}
FINAL_LABELS = ("done", "failed", "timed out", "cancelled", "no result")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")

# Inline styles, so the static summary left in a saved notebook looks the same without the
# widget's stylesheet (and degrades to plain text where a sanitizer strips them).
LINE = (
    "font-family: var(--jp-ui-font-family); font-size: var(--jp-ui-font-size1);"
    " color: var(--jp-ui-font-color1); font-variant-numeric: tabular-nums; white-space: nowrap;"
    " overflow: hidden; text-overflow: ellipsis; line-height: 20px"
)
MUTED = "color: var(--jp-ui-font-color2)"
BOX = (
    "display: flex; flex-direction: column-reverse; overflow: auto; max-height: {height};"
    " margin: 2px 0 0 0"
)
PRE = (
    "margin: 0; padding: 2px 0; flex: none; overflow: visible; white-space: pre-wrap;"
    " overflow-wrap: anywhere;"
    " font-family: var(--jp-code-font-family); font-size: var(--jp-code-font-size);"
    " line-height: var(--jp-code-line-height); color: var(--jp-content-font-color1);"
    " background: transparent; user-select: text"
)
FRAME = (
    "border: var(--jp-border-width) solid var(--jp-border-color2); border-radius: 3px;"
    " padding: 2px 8px 4px 8px; margin: 2px 0; box-sizing: border-box"
)
OUTPUT_HEIGHT, LOGS_HEIGHT = "20em", "14em"

# What inline styles cannot reach: the widgets' own elements (HTML widget line height, the
# Cancel button, the logs accordion), scoped under the panel's class.
STYLE = f"""<style>
.tetra-view {{ {FRAME}; max-width: 100%; }}
.tetra-view .tetra-head {{ align-items: center; min-height: 26px; }}
.tetra-view .widget-html, .tetra-view .widget-html-content {{ line-height: normal; height: auto;
  margin: 0; }}
.tetra-view .tetra-cancel {{ height: 22px; line-height: 20px; padding: 0 10px; width: auto;
  font-size: var(--jp-ui-font-size1); margin: 0 0 0 8px; flex: none; }}
.tetra-view .jupyter-widget-Accordion {{ margin-top: 2px; }}
.tetra-view .jupyter-widget-Collapse-header {{ padding: 2px 6px;
  font-size: var(--jp-ui-font-size1); color: var(--jp-ui-font-color1);
  background: var(--jp-layout-color2);
  border: var(--jp-border-width) solid var(--jp-border-color2); }}
.tetra-view .jupyter-widget-Collapse-contents {{ padding: 2px 6px;
  border: var(--jp-border-width) solid var(--jp-border-color2); border-top: none; }}
</style>"""


def elapsed_text(seconds: float, final: bool = False) -> str:
    """Whole seconds while running (so the line changes at most once a second), tenths at the
    end for short cells; minutes and hours once they matter."""
    if seconds < 60:
        return f"{seconds:.1f} s" if final and seconds < 10 else f"{int(seconds)} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def where_text(info: dict[str, Any]) -> str:
    """'worker abc · NVIDIA H200 (141 GB) · Python 3.11.9' from an "info" chunk."""
    gpus = list(info.get("gpus") or [])
    memory = list(info.get("gpu_memory_mb") or [])
    if not gpus:
        device = "no GPU"
    else:
        device = gpus[0]
        if memory:
            device += f" ({round(memory[0] / 1024)} GB)"
        if len(gpus) > 1:
            device = f"{len(gpus)} x {device}"
    parts = [f"worker {info.get('worker_id', '?')}", device]
    if info.get("python"):
        parts.append(f"Python {info['python']}")
    return " · ".join(parts)


def status_line(
    name: str, label: str, elapsed: str, detail: str = "", job_id: str | None = None
) -> str:
    """The first line: coloured dot, name, state, elapsed time, and a muted detail."""
    colour = _COLOURS.get(label, "var(--jp-ui-font-color2)")
    title = f" title='job {html.escape(job_id, quote=True)}'" if job_id else ""
    parts = [
        f"<span style='color: {colour}'>●</span>",
        f"<b style='font-weight: 600'>{html.escape(name)}</b>",
        f"<span class='tetra-state'>{html.escape(label)}</span>",
        f"<span class='tetra-elapsed' style='{MUTED}'>{html.escape(elapsed)}</span>",
    ]
    if detail:
        parts.append(f"<span class='tetra-detail' style='{MUTED}'>{html.escape(detail)}</span>")
    return f"<div class='tetra-status' style='{LINE}'{title}>{' '.join(parts)}</div>"


def muted_line(text: str, css_class: str = "tetra-where") -> str:
    """A secondary line (where the job runs), or nothing when there is nothing to say."""
    if not text:
        return ""
    return f"<div class='{css_class}' style='{LINE}; {MUTED}'>{html.escape(text)}</div>"


@dataclass
class Segment:
    """A run of text from one stream."""

    kind: str
    text: str


@dataclass
class Terminal:
    """The tail of a stream as a terminal would show it: carriage returns overwrite the line
    (progress bars), ANSI colour codes are dropped, and only the last `limit` characters are
    kept, so updating the view stays cheap however much a cell prints."""

    limit: int = 50_000
    note: str = "… earlier lines are trimmed here; all of them are printed when the cell ends\n"
    segments: list[Segment] = field(default_factory=list)
    trimmed: bool = False

    def write(self, kind: str, text: str) -> None:
        for piece in re.split(r"(\r\n|\r|\n)", _ANSI.sub("", text)):
            if piece == "\r":
                self._carriage_return()
            elif piece:
                self._append(kind, "\n" if piece == "\r\n" else piece)
        self._trim()

    def text(self) -> str:
        return "".join(segment.text for segment in self.segments)

    def _append(self, kind: str, text: str) -> None:
        if self.segments and self.segments[-1].kind == kind:
            self.segments[-1].text += text
        else:
            self.segments.append(Segment(kind, text))

    def _carriage_return(self) -> None:
        """Drop what follows the last newline, so the next text overwrites that line."""
        while self.segments:
            last = self.segments[-1]
            cut = last.text.rfind("\n")
            if cut >= 0:
                last.text = last.text[: cut + 1]
                return
            self.segments.pop()

    def _trim(self) -> None:
        excess = sum(len(segment.text) for segment in self.segments) - self.limit
        while excess > 0 and self.segments:
            first = self.segments[0]
            if len(first.text) <= excess:
                excess -= len(first.text)
                self.segments.pop(0)
            else:
                first.text = first.text[excess:]
                excess = 0
            self.trimmed = True


def text_box(terminal: Terminal, css_class: str, height: str = OUTPUT_HEIGHT) -> str:
    """A scrolling box that keeps its bottom in view (column-reverse) and stderr in the error
    colour; empty when there is no text, so a silent cell takes no room."""
    if not terminal.segments:
        return ""
    body = []
    if terminal.trimmed:
        note = html.escape(terminal.note)
        body.append(f"<span style='{MUTED}; font-style: italic'>{note}</span>")
    for segment in terminal.segments:
        text = html.escape(segment.text)
        if segment.kind == "stderr":
            text = f"<span style='color: var(--jp-error-color1)'>{text}</span>"
        elif segment.kind == "note":
            text = f"<span style='{MUTED}'>{text}</span>"
        body.append(text)
    box = BOX.format(height=height)
    return f"<div class='{css_class}' style='{box}'><pre style='{PRE}'>{''.join(body)}</pre></div>"


def summary_html(status: str, where: str, logs: Terminal) -> str:
    """The static record left in the notebook when the cell ends: the final status line, where
    it ran, and the worker's logs folded away (plain <details>: no widget needed to open it)."""
    folded = ""
    if logs.segments:
        lines = logs.text().count("\n")
        folded = (
            f"<details><summary style='{LINE}; {MUTED}; cursor: pointer'>"
            f"worker logs ({lines} lines)</summary>"
            f"{text_box(logs, 'tetra-logs', LOGS_HEIGHT)}</details>"
        )
    return f"<div class='tetra-summary' style='{FRAME}'>{status}{muted_line(where)}{folded}</div>"
