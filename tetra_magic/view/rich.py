"""A remote cell's display outputs, made whole and shown in the notebook as IPython shows them.

Each "display" chunk carries one display message of the cell as JSON (worker/frames.py); one too
big for a stream chunk comes in pieces marked `more`, which `Joiner` puts back together. A
message is display_data (maybe with a display id), an update of a display id, clear_output,
or a message of a widget's comm (widget_relay.py); `publish` hands it to the kernel's own
display machinery, so the frontend, nbclient and nbval receive the same messages a local cell
would send. `Record` keeps a cell's outputs as a saved
notebook holds them (clears and updates applied), for a view that shows them again at the end.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from tetra_magic.view import widget_relay
from worker import frames


class Joiner:
    """Puts display messages split across chunks back together."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def join(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The message this chunk completes, or None while pieces are still to come."""
        self.parts.append(chunk.get("text", ""))
        if chunk.get("more"):
            return None
        text, self.parts = "".join(self.parts), []
        return json.loads(text)


def stdout_chunks(stdout: str) -> list[dict[str, Any]]:
    """The stdout of a worker that does not stream (the published one) as the chunks a
    streaming worker sends: its text, with the display messages framed in it taken out."""
    return frames.split(stdout)


def plain_text(stdout: str) -> str:
    """A stdout's text without the display messages framed in it."""
    return "".join(c["text"] for c in stdout_chunks(stdout) if c["kind"] == "stdout")


def publish(message: dict[str, Any]) -> None:
    """Show one display message in the running cell, as IPython would at home."""
    from IPython.display import clear_output, publish_display_data

    if message["type"] == "comm":
        widget_relay.relay(message)
        return
    if message["type"] == "clear":
        clear_output(wait=message.get("wait", False))
        return
    if message.get("after_result") and _after_the_result(message):
        return
    display_id = message.get("display_id")
    if message["type"] == "update" and not display_id:
        return
    publish_display_data(
        message.get("data") or {},
        message.get("metadata") or {},
        transient={"display_id": display_id} if display_id else None,
        update=message["type"] == "update",
    )


def _after_the_result(message: dict[str, Any]) -> bool:
    """Hold a figure the cell left open until the cell's result (its Out) is shown: the
    kernel's post_execute, where the inline backend shows a local cell's. Only in a cell
    running in the foreground (a background cell's outputs land when they come)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or threading.current_thread() is not threading.main_thread():
        return False

    def show() -> None:
        shell.events.unregister("post_execute", show)
        publish({**message, "after_result": False})

    shell.events.register("post_execute", show)
    return True


def flush_streams() -> None:
    """Send the text printed so far, so what is published next lands after it."""
    sys.stdout.flush()
    sys.stderr.flush()


class Record:
    """A cell's outputs as a notebook keeps them: stdout, stderr and displays in the order they
    came, with clear_output and update_display applied as they arrive, so what is kept is what
    would be on screen, however many plots a training loop redrew."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []  # (stdout|stderr, text) or (display, message)
        self.clear_next = False

    @classmethod
    def of_stdout(cls, stdout: str) -> Record:
        """The record of a worker that does not stream, from the stdout it returned."""
        record = cls()
        for chunk in stdout_chunks(stdout):
            if chunk["kind"] == "display":
                record.display(json.loads(chunk["text"]))
            else:
                record.text(chunk["kind"], chunk["text"])
        return record

    def text(self, kind: str, text: str) -> None:
        self._arrive()
        if self.items and self.items[-1][0] == kind:
            self.items[-1] = (kind, self.items[-1][1] + text)
        else:
            self.items.append((kind, text))

    def display(self, message: dict[str, Any]) -> None:
        """A display message arrives; a widget's comm message is done in the kernel at once
        (the kernel, not the record, keeps the widget's state)."""
        if message["type"] == "comm":
            widget_relay.relay(message)
            return
        if message["type"] == "clear":
            if message.get("wait"):
                self.clear_next = True
            else:
                self.items = []
            return
        self._arrive()
        display_id = message.get("display_id")
        shown = [i for i, (kind, m) in enumerate(self.items) if kind == "display" and display_id
                 and m.get("display_id") == display_id]  # fmt: skip
        if message["type"] == "update" and shown:
            for index in shown:
                self.items[index] = ("display", {**message, "type": "display"})
        else:
            self.items.append(("display", message))  # an update of another cell's display too

    def _arrive(self) -> None:
        """An output arrives: a clear_output(wait=True) before it happens now."""
        if self.clear_next:
            self.items, self.clear_next = [], False

    def replay(self) -> None:
        """Show the outputs again as the cell's own, in order."""
        for kind, payload in self.items:
            if kind == "display":
                flush_streams()
                publish(payload)
            else:
                (sys.stdout if kind == "stdout" else sys.stderr).write(payload)
                flush_streams()  # the two streams buffer apart: flush to keep their order
