"""The widget view of a `--map` cell: one panel for all of its jobs, however many items.

Printing every shard's output into one cell, as the text view does (lines tagged `[3]`),
is unreadable past a few shards in a notebook. So the panel has a status line for the whole
map (its state, elapsed time, "12 of 40 done, 1 failed, 3 running", a Cancel button), a line
of small chips, one per item, coloured by state (queued, running, done, failed; past
MAX_CHIPS items a bar of the counts and chips for the running and failed ones only), and the
output of one item at a time below: the one whose index the user types into the item box,
else the first failed item, else the running item that started last (once none runs, the
last one that ran). That output shows as the one-job view shows a cell's (text in scrolling
boxes, displays between it) and keeps streaming while the item runs.

Each job of the map gets a `ShardView` from `MapBoard.shard`, called from the thread that
follows it: the views share the board's state behind its lock, and its Cancel event, which
every follow loop checks. A job that runs several items (batching) says which item its
output belongs to with an `{"kind": "item", "index": i}` chunk before each one; the map says
how each item ended (`item_ended`). The panel is rendered at most every FLUSH_S, whatever
the number of shards reporting, and all the chips are one HTML widget's value (short, their
styles in the panel's stylesheet), so a map of 1,000 items stays cheap to keep up to date.

When the map ends the panel is replaced (same display id) by a static summary, its chips in
their final states, and the output of the item shown at the end is printed again as the
cell's own streams and displays, as the one-job view does: a saved notebook shows the map's
outcome and that item's output with no widget left to load.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as widgets
from IPython.display import display

from tetra_magic.cloud.status import JobStatus
from tetra_magic.options import CellOptions
from tetra_magic.view import render, rich, widget_relay, widgets_wanted
from tetra_magic.view.cancel import route_to_side_thread
from tetra_magic.view.widget import FLUSH_S, NO_CANCEL_HINT, status_head
from worker.protocol import FunctionResponse

# An item's states. "ended": its output is over (a batched job went on to its next item) but
# the map has not yet said whether it succeeded. "no result": the map ended without its end.
QUEUED, RUNNING, ENDED, DONE, FAILED, NO_RESULT = (
    "queued",
    "running",
    "ended",
    "done",
    "failed",
    "no result",
)
UNFINISHED = (QUEUED, RUNNING, ENDED)
# Up to this many items, a chip each; past it, a bar of the counts and chips for the running
# and failed items only (up to MAX_LISTED of each), so the line stays a few rows high.
MAX_CHIPS = 200
MAX_LISTED = 60
_CHIP = (
    "display: inline-block; min-width: 14px; padding: 0 3px; margin: 1px; border-radius: 3px;"
    " font-size: 10px; line-height: 14px; text-align: center;"
    " font-variant-numeric: tabular-nums; box-sizing: border-box"
)
# Fill, text colour and border per state: a queued chip is hollow, a running one outlined in
# bold, finished ones filled, so states read apart without their colours too.
_CHIP_STATES = {
    QUEUED: ("transparent", "var(--jp-ui-font-color2)", "1px dashed var(--jp-border-color1)"),
    RUNNING: ("transparent", "var(--jp-brand-color1)", "2px solid var(--jp-brand-color1)"),
    ENDED: ("var(--jp-layout-color3)", "var(--jp-ui-font-color1)", "1px solid transparent"),
    DONE: ("var(--jp-success-color1)", "white", "1px solid transparent"),
    FAILED: ("var(--jp-error-color1)", "white", "1px solid transparent"),
    NO_RESULT: ("var(--jp-warn-color1)", "white", "1px solid transparent"),
}
_BAR_COLOURS = {
    DONE: "var(--jp-success-color1)",
    FAILED: "var(--jp-error-color1)",
    RUNNING: "var(--jp-brand-color1)",
    ENDED: "var(--jp-brand-color1)",
    NO_RESULT: "var(--jp-warn-color1)",
    QUEUED: "var(--jp-layout-color3)",
}
TRIM_NOTE = "… earlier lines are trimmed here\n"


def map_board(shell: Any, opts: CellOptions, display_setting: str, count: int) -> MapBoard | None:
    """The widget view of a --map cell of `count` items, or None where the text view (each
    shard's lines tagged with its index) is wanted: as `make_view` chooses."""
    if opts.quiet or not widgets_wanted(shell, display_setting):
        return None
    return MapBoard(count, opts.name or f"map over {opts.map_name}", live=opts.stream)


@dataclass
class Shown:
    """A display output in an item's output, with its display id (for update_display)."""

    display_id: str | None
    output: dict[str, Any]


@dataclass
class ItemOutput:
    """One item's output as the panel shows it (runs of text, each the tail a terminal would
    show, and display outputs between them, clear_output and update_display applied) and as
    the notebook keeps it at the end (`record`)."""

    record: rich.Record = field(default_factory=rich.Record)
    pieces: list[render.Terminal | Shown] = field(default_factory=list)
    clear_next: bool = False

    def text(self, kind: str, text: str) -> None:
        self.record.text(kind, text)
        self._arrive()
        self._terminal().write(kind, text)

    def note(self, text: str) -> None:
        """A line of ours (not the cell's): shown live, not kept for the notebook."""
        self._terminal().write("note", text)

    def _terminal(self) -> render.Terminal:
        """The run of text the next text joins: the last piece, or a new one after a display."""
        last = self.pieces[-1] if self.pieces else None
        if not isinstance(last, render.Terminal):
            last = render.Terminal(note=TRIM_NOTE)
            self.pieces.append(last)
        return last

    def display(self, message: dict[str, Any]) -> None:
        """A display message of the item; a widget's comm message is done in the kernel by the
        record, and shows where the widget's display does."""
        self.record.display(message)
        if message["type"] == "comm":
            return
        if message["type"] == "clear":
            self.clear_next = bool(message.get("wait"))
            if not self.clear_next:
                self.pieces = []
            return
        self._arrive()
        output = {
            "output_type": "display_data",
            "data": message.get("data") or {},
            "metadata": message.get("metadata") or {},
        }
        display_id = message.get("display_id")
        if message["type"] != "update":
            self.pieces.append(Shown(display_id, output))
            return
        for piece in self.pieces:
            if isinstance(piece, Shown) and display_id and piece.display_id == display_id:
                piece.output = output

    def _arrive(self) -> None:
        if self.clear_next:
            self.pieces, self.clear_next = [], False


@dataclass
class Item:
    """One item of the map: its state, its output, and what the panel says about it."""

    index: int
    state: str = QUEUED
    output: ItemOutput = field(default_factory=ItemOutput)
    started: float = 0.0  # when it last began running (time.monotonic())
    where: str = ""  # the worker it runs on
    error_type: str | None = None
    tries: int = 0


class ShardView:
    """The JobView of one job of the map, running the items at `indices` (in order; a
    retry's may not be consecutive): what the job shows goes to the item it belongs to."""

    def __init__(self, board: MapBoard, indices: list[int]) -> None:
        self.board, self.indices = board, indices
        self.cancel_requested: threading.Event | None = board.cancel_requested
        self.current = indices[0]  # the item the output that comes belongs to
        self.joiner = rich.Joiner()
        self.phase: str | None = None

    def submitted(self, job_id: str, name: str | None) -> None:
        """Nothing to show: the jobs' ids are in the map's records (--out)."""

    def status(self, status: JobStatus) -> None:
        """Called on every poll: the item runs once the job does, and is over when it is."""
        self.board.update(lambda: self._status(status))

    def chunk(self, chunk: dict[str, Any]) -> None:
        self.board.update(lambda: self._chunk(chunk))

    def close(self, response: FunctionResponse | None) -> None:
        """The job ended (or was given up): the map says how its items ended."""
        if response is None or response.failure:  # stopped before its end: its bars turn red
            widget_relay.stopped()
        self.board.update(lambda: self._closed(response))

    # -- under the board's lock ------------------------------------------------------------------

    def _status(self, status: JobStatus) -> None:
        item, status = self.board.items[self.current], JobStatus(status)
        if status is JobStatus.IN_PROGRESS and item.state == QUEUED:
            self.board.start(item)
        elif status.final and item.state == RUNNING:
            item.state = ENDED

    def _chunk(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("kind")
        item = self.board.items[self.current]
        if kind == "item":
            self._next_item(int(chunk["index"]))
        elif kind in ("stdout", "stderr"):
            item.output.text(kind, chunk.get("text", ""))
        elif kind == "display":
            if message := self.joiner.join(chunk):
                item.output.display(message)
        elif kind == "info":
            where = render.where_text(chunk)
            for index in self.indices:
                self.board.items[index].where = where
        elif kind == "phase":
            self.phase = chunk.get("text")
        elif kind == "note":
            self.board.note = chunk.get("text", "").strip()
        elif kind == "response":
            response = chunk.get("response") or {}
            if not response.get("success"):
                item.error_type = response.get("error_type") or item.error_type

    def _next_item(self, index: int) -> None:
        """A batched job's output moves on to item `index`: the one before it is over."""
        previous = self.board.items[self.current]
        if previous.state == RUNNING and index != self.current:
            previous.state = ENDED
        self.current = index
        self.board.start(self.board.items[index])

    def _closed(self, response: FunctionResponse | None) -> None:
        item = self.board.items[self.current]
        if item.state == RUNNING:
            item.state = ENDED
        if response is None:
            return
        if not response.success:
            item.error_type = response.error_type or item.error_type
        if len(self.indices) == 1 and not item.output.record.items and response.stdout:
            # A worker that does not stream (the published one) sent it all in its stdout.
            for chunk in rich.stdout_chunks(response.stdout):
                self._chunk(chunk)

    @property
    def installing(self) -> bool:
        return self.phase == "installing"


class MapBoard:
    """The live panel of a --map cell of `count` items; a static summary at its end."""

    def __init__(
        self,
        count: int,
        name: str,
        live: bool = True,
        route: Callable[[widgets.Widget], bool] = route_to_side_thread,
    ) -> None:
        self.count, self.name, self.live = count, name, live
        self.started = time.monotonic()
        self.items = [Item(index) for index in range(count)]
        self.shards: list[ShardView] = []
        self.cancel_requested = threading.Event()
        self.lock = threading.RLock()
        self.picked: int | None = None  # the item the user asked for, None to follow the map
        self.pick_error = ""
        self.closed = False
        self.can_cancel = False
        self._flushed = 0.0
        # What the output box shows: the item and its pieces, one widget each.
        self._shown: tuple[int | None, list[render.Terminal | Shown]] = (None, [])
        self.note = ""  # what the jobs wait for, while none has started
        self._build()
        self.handle = display(self.panel, display_id=True)
        self.can_cancel = route(self.cancel_button)
        if not self.can_cancel:
            self.cancel_button.layout.display = "none"
        # A box whose typing waits for the cell's end is no use; without streaming, the
        # output shows at the end only.
        self.can_pick = live and route(self.picker)
        if not self.can_pick:
            self.picker.layout.display = "none"
        if not live:
            self.pick_row.layout.display = "none"
        with self.lock:
            self._render()

    # -- the calls the map makes ---------------------------------------------------------------

    def shard(self, indices: list[int]) -> ShardView:
        """The view of one job running the items at `indices`. An item that ran before (a
        retry) is queued again, its earlier output kept above a note."""
        if not indices or not all(0 <= index < self.count for index in indices):
            raise ValueError(f"items {indices} are not all in this map of {self.count}")
        view = ShardView(self, indices)
        with self.lock:
            self.shards.append(view)
            for item in (self.items[index] for index in indices):
                if item.tries:
                    item.output.note(f"— item {item.index} runs again (try {item.tries + 1}) —\n")
                    item.state, item.error_type = QUEUED, None
        return view

    def item_ended(self, index: int, failed: bool, error: BaseException | None = None) -> None:
        """How item `index` ended, from the map (which judges each item's result); `error`,
        where the map has it, is named on the item's chip and below its output."""

        def end() -> None:
            item = self.items[index]
            item.state = FAILED if failed else DONE
            if error is not None:
                item.error_type = type(error).__name__
                lines = str(error).strip().splitlines()
                item.output.note(f"— {item.error_type}: {lines[-1] if lines else ''} —\n")

        self.update(end)

    def close(self) -> None:
        """The map has ended: the panel becomes a static summary, and the output of the item
        shown is printed as the cell's own. Safe to call twice."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for item in self.items:
                if item.state in UNFINISHED:
                    item.state = NO_RESULT
            chosen = self._chosen()
            self.handle.update(self._summary(chosen), raw=True)
            for widget in [*self.output_box.children, *self._widgets]:
                widget.close()
        if chosen is not None:
            self.items[chosen].output.record.replay()

    # -- what the shard views share ----------------------------------------------------------

    def update(self, change: Callable[[], None]) -> None:
        """Apply a shard view's change under the lock; render if FLUSH_S has passed."""
        with self.lock:
            if self.closed:
                return
            change()
            if time.monotonic() - self._flushed >= FLUSH_S:
                self._render()

    def start(self, item: Item) -> None:
        """`item` begins running (again, if it is retried)."""
        if item.state == RUNNING:
            return
        item.state, item.started = RUNNING, time.monotonic()
        item.tries += 1

    # -- building and rendering ----------------------------------------------------------------

    def _build(self) -> None:
        style = widgets.HTML(render.STYLE + CHIP_STYLE, layout=widgets.Layout(display="none"))
        head, self.status_html, self.cancel_button = status_head(
            "Cancel every job of the map", self._on_cancel
        )
        self.chips_html = widgets.HTML()
        self.picker = widgets.Text(
            placeholder="auto",
            description="output of item",
            continuous_update=False,
            style={"description_width": "initial"},
            layout=widgets.Layout(width="14em"),
        )
        self.picker.observe(self._on_pick, names="value")
        self.item_html = widgets.HTML(layout=widgets.Layout(flex="1 1 auto", width="auto"))
        self.pick_row = widgets.HBox([self.picker, self.item_html])
        self.pick_row.add_class("tetra-head")
        self.output_box = widgets.VBox([])
        self.panel = widgets.VBox([style, head, self.chips_html, self.pick_row, self.output_box])
        self.panel.add_class("tetra-view")
        self._widgets = [
            *(self.panel, style, head, self.status_html, self.cancel_button, self.chips_html),
            *(self.pick_row, self.picker, self.item_html, self.output_box),
        ]

    def _render(self) -> None:
        """Set each widget's value, sending only those that changed (under the lock)."""
        if self.closed:
            return
        self._set(self.status_html, self._status_html())
        self._set(self.chips_html, self._chips())
        chosen = self._chosen()
        self._set(self.item_html, self._item_line(chosen))
        if self.live:
            self._render_output(chosen)
        self._flushed = time.monotonic()

    def _render_output(self, chosen: int | None) -> None:
        """The chosen item's output in the output box: its widgets made again when its pieces
        are others, else only their values set."""
        pieces = self.items[chosen].output.pieces if chosen is not None else []
        if (chosen, *map(id, pieces)) != (self._shown[0], *map(id, self._shown[1])):
            for widget in self.output_box.children:
                widget.close()
            made = [widgets.Output() if isinstance(p, Shown) else widgets.HTML() for p in pieces]
            self.output_box.children = tuple(made)
            self._shown = (chosen, list(pieces))  # held, so no other piece can take their ids
        for widget, piece in zip(self.output_box.children, pieces, strict=True):
            if isinstance(piece, Shown):
                if widget.outputs != (piece.output,):
                    widget.outputs = (piece.output,)
            else:
                self._set(widget, render.text_box(piece, "tetra-output"))

    @staticmethod
    def _set(widget: widgets.HTML, value: str) -> None:
        if widget.value != value:
            widget.value = value

    def _chosen(self) -> int | None:
        """The item whose output shows: the one asked for, else the first that failed, else
        the running one that started last, else the one that started last."""
        if self.picked is not None:
            return self.picked
        for item in self.items:
            if item.state == FAILED:
                return item.index
        ran = [item for item in self.items if item.tries]
        running = [item for item in ran if item.state == RUNNING]
        latest = max(running or ran, key=lambda item: item.started, default=None)
        return latest.index if latest is not None else None

    # -- what the panel says -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """How many items are in each state."""
        counts = dict.fromkeys(_CHIP_STATES, 0)
        for item in self.items:
            counts[item.state] += 1
        return counts

    def summary_text(self) -> str:
        """'12 of 40 done, 1 failed, 3 running': the states that have items, finished first."""
        counts = self.counts()
        parts = [f"{counts[DONE]} of {self.count} done"]
        parts += [f"{counts[FAILED]} failed"] if counts[FAILED] else []
        running = counts[RUNNING] + counts[ENDED]
        parts += [f"{running} running"] if running else []
        parts += [f"{counts[QUEUED]} queued"] if counts[QUEUED] else []
        parts += [f"{counts[NO_RESULT]} not finished"] if counts[NO_RESULT] else []
        return ", ".join(parts)

    def _label(self) -> str:
        """The map's state: running while any item is, and how it ended at the end."""
        counts = self.counts()
        if self.closed:
            if self.cancel_requested.is_set():
                return "cancelled"
            if counts[FAILED]:
                return "failed"
            return "done" if counts[DONE] == self.count else "no result"
        if counts[RUNNING] + counts[ENDED] or counts[DONE] + counts[FAILED]:
            return "running"
        return "queued"

    def _status_html(self) -> str:
        detail = self.summary_text()
        if not self.closed:
            if self.cancel_requested.is_set():
                detail += " · cancelling…"
            elif not self.can_cancel:
                detail += f" · {NO_CANCEL_HINT}"
        elapsed = render.elapsed_text(time.monotonic() - self.started, final=self.closed)
        return render.status_line(self.name, self._label(), elapsed, detail)

    def _chips(self, inline: bool = False) -> str:
        """The line of chips: every item's up to MAX_CHIPS items, else a bar of the counts
        and the running and failed items' chips."""
        if self.count <= MAX_CHIPS:
            chips = "".join(_chip(item, inline) for item in self.items)
            return f"<div class='tetra-chips' style='line-height: 16px'>{chips}</div>"
        counts = self.counts()
        segments = "".join(
            f"<span title='{n} {state}' style='flex: {n}; background: {_BAR_COLOURS[state]}'>"
            "</span>"
            for state, n in counts.items()
            if n
        )
        bar = (
            "<div style='display: flex; height: 6px; margin: 3px 0; border-radius: 3px;"
            f" overflow: hidden'>{segments}</div>"
        )
        listed = [_listed(self.items, state, inline) for state in (FAILED, RUNNING)]
        return f"<div class='tetra-chips'>{bar}{''.join(listed)}</div>"

    def _item_line(self, chosen: int | None) -> str:
        """What the output below is: the item, its state and where it runs; or why none."""
        if self.pick_error:
            return render.muted_line(self.pick_error, "tetra-item")
        if chosen is None:
            waiting = " · ".join(filter(None, ["no item has started yet", self.note]))
            return render.muted_line(waiting, "tetra-item")
        item = self.items[chosen]
        state = item.state
        if state == RUNNING and any(s.installing and s.current == chosen for s in self.shards):
            state = "installing deps"
        parts = [f"item {chosen}", state, item.error_type or "", item.where]
        if self.picked is None and self.can_pick:
            parts.append("following the map: type an index to see another item")
        return render.muted_line(" · ".join(p for p in parts if p), "tetra-item")

    def _summary(self, chosen: int | None) -> dict[str, str]:
        """The static record left in the notebook: the final status line and chips, and which
        item's output follows."""
        follows = ""
        if chosen is not None:
            item = self.items[chosen]
            follows = render.muted_line(f"below: the output of item {chosen} ({item.state})")
        html_text = (
            f"<div class='tetra-summary' style='{render.FRAME}'>"
            f"{self._status_html()}{self._chips(inline=True)}{follows}</div>"
        )
        elapsed = render.elapsed_text(time.monotonic() - self.started, final=True)
        plain = f"{self.name}: {self._label()} · {self.summary_text()} · {elapsed}"
        return {"text/html": html_text, "text/plain": plain}

    # -- the user's clicks and typing, in the kernel's side thread (cancel.py) ------------------

    def _on_cancel(self, _button: widgets.Button) -> None:
        """Sets the event every shard's follow loop checks; those loops cancel their jobs."""
        self.cancel_requested.set()
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"

    def _on_pick(self, change: dict[str, Any]) -> None:
        """The user typed an item's index (or cleared the box, to follow the map again)."""
        typed = str(change["new"]).strip()
        with self.lock:
            self.pick_error = ""
            self.picked = None
            if typed:
                try:
                    index = int(typed)
                except ValueError:
                    index = -1
                if 0 <= index < self.count:
                    self.picked = index
                else:
                    self.pick_error = (
                        f"no item {typed!r} in this map: type an index from 0 to"
                        f" {self.count - 1}, or clear the box to follow the map"
                    )
            self._render()


def _chip(item: Item, inline: bool) -> str:
    """One item's chip: styled by its class live (short, as it is sent on every change), or
    inline in the summary a saved notebook keeps (which has no stylesheet of ours)."""
    error = f" ({item.error_type})" if item.error_type else ""
    title = html.escape(f"item {item.index}: {item.state}{error}", quote=True)
    if not inline:
        return f"<span class='{_chip_class(item.state)}' title='{title}'>{item.index}</span>"
    return f"<span title='{title}' style='{_chip_style(item.state)}'>{item.index}</span>"


def _chip_class(state: str) -> str:
    return f"tetra-chip tetra-chip-{state.replace(' ', '-')}"


def _chip_style(state: str) -> str:
    fill, colour, border = _CHIP_STATES[state]
    return f"{_CHIP}; background: {fill}; color: {colour}; border: {border}"


# The chips' classes, for the live panel.
CHIP_STYLE = "<style>{}</style>".format(
    "\n".join(
        f".tetra-view .{_chip_class(state).replace(' ', '.')} {{ {_chip_style(state)}; }}"
        for state in _CHIP_STATES
    )
)


def _listed(items: list[Item], state: str, inline: bool) -> str:
    """The chips of the items in `state`, up to MAX_LISTED, and how many more there are."""
    chosen = [item for item in items if item.state == state]
    if not chosen:
        return ""
    chips = "".join(_chip(item, inline) for item in chosen[:MAX_LISTED])
    more = len(chosen) - MAX_LISTED
    rest = f"<span style='{render.MUTED}; font-size: 10px'> +{more} more</span>" if more > 0 else ""
    label = f"<span style='{render.MUTED}; font-size: 10px'>{state}: </span>"
    return f"<div style='line-height: 16px'>{label}{chips}{rest}</div>"
