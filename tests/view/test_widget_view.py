"""The widget view at the widget-model level: the values a frontend would render.

The view is driven with chunk sequences like the follow loop's, in this plain Python process
(ipywidgets works without a frontend); what the page would show is read back from the widgets'
values. The Cancel button is clicked through the widget's own message handler, as a frontend's
click arrives. The last tests run a real kernel: a click sent the way a frontend sends it (no
subshell in its header) must cancel a cell whose main thread is busy following the job.
"""

from __future__ import annotations

import html
import json
import queue
import re
import threading
import time
from typing import Any

import pytest
from helpers.following import followed

from tetra_magic.job.follow import CancelRequested
from tetra_magic.view import widget
from tetra_magic.view.widget import WidgetView
from worker.protocol import FunctionResponse

INFO = {
    "kind": "info",
    "worker_id": "w-1",
    "python": "3.11.9",
    "gpus": ["NVIDIA H200"],
    "gpu_memory_mb": [143771],
}


class Handle:
    """Stands in for IPython's DisplayHandle: records what the display id was updated to."""

    def __init__(self) -> None:
        self.updates: list[dict[str, str]] = []

    def update(self, data: dict[str, str], raw: bool = False) -> None:
        assert raw
        self.updates.append(data)


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the view displayed; its display handles record their updates."""
    displayed: list[Any] = []

    def fake_display(obj: Any, display_id: bool = False) -> Handle:
        assert display_id
        displayed.append(obj)
        return Handle()

    monkeypatch.setattr(widget, "display", fake_display)
    return displayed


def new_view(**kwargs: Any) -> WidgetView:
    """A view whose Cancel button counts as routed (a kernel with subshells)."""
    return WidgetView(route=lambda _button: True, **kwargs)


def text(markup: str) -> str:
    """What a browser shows for `markup`: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<style>.*?</style>|<[^>]+>", "", markup, flags=re.S))


def status(view: WidgetView) -> str:
    return text(view.status_html.value)


def click(button: Any) -> None:
    """A click as the frontend sends it: a custom comm message handled by the widget."""
    data = {"method": "custom", "content": {"event": "click"}}
    button._handle_msg({"content": {"data": data}, "buffers": []})


def test_status_moves_through_its_states_with_time_and_worker(shown: list[Any]) -> None:
    view = new_view(name="train")
    assert shown == [view.panel]
    assert status(view).startswith("● train submitting 0 s")
    view.submitted("job-123", None)
    assert "title='job job-123'" in view.status_html.value
    view.status("IN_QUEUE")
    assert "queued" in status(view)
    assert text(view.where_html.value) == "waiting for a worker…"
    view.started -= 75  # the job has waited a while
    view.status("IN_QUEUE")
    assert "queued 1 min 15 s" in status(view)
    view.chunk(INFO)
    view.status("IN_PROGRESS")
    assert text(view.where_html.value) == "worker w-1 · NVIDIA H200 (140 GB) · Python 3.11.9"
    view.chunk({"kind": "phase", "text": "installing"})
    view.chunk({"kind": "log", "text": "$ uv pip install six\nResolved 1 package in 12ms\n\n"})
    view.status("IN_PROGRESS")
    assert "installing deps" in status(view)
    assert status(view).endswith("Resolved 1 package in 12ms")  # install progress
    view.chunk({"kind": "phase", "text": "starting"})
    view.status("IN_PROGRESS")
    assert re.search(r"train running 1 min 1\d s starting the cell's process$", status(view))
    view.chunk({"kind": "phase", "text": "running"})
    view.status("IN_PROGRESS")
    assert re.search(r"train running 1 min 1\d s$", status(view))
    view.chunk({"kind": "response", "response": {"success": True}})
    view.status("COMPLETED")
    assert "train done" in status(view)


def test_stdout_streams_as_it_comes_and_logs_fold_away(shown: list[Any]) -> None:
    view = new_view()
    view.submitted("job-1", None)
    view.chunk({"kind": "stdout", "text": "first line\n"})
    view.status("IN_PROGRESS")
    assert text(view.output_html.value) == "first line\n"
    view.chunk({"kind": "stderr", "text": "a <warning>\n"})
    view.chunk({"kind": "stdout", "text": "second line\n"})
    view.status("IN_PROGRESS")
    assert text(view.output_html.value) == "first line\na <warning>\nsecond line\n"
    assert "&lt;warning&gt;" in view.output_html.value  # escaped, never markup
    assert "var(--jp-error-color1)'>a &lt;warning" in view.output_html.value
    assert (
        "column-reverse" in view.output_html.value and "max-height: 20em" in view.output_html.value
    )
    view.chunk({"kind": "log", "text": "$ uv pip install six\n + six==1.16.0\n"})
    view.status("IN_PROGRESS")
    assert view.logs_box.selected_index is None  # folded until opened
    assert text(view.logs_html.value) == "job job-1\n$ uv pip install six\n + six==1.16.0\n"


def test_output_is_rendered_at_most_every_flush_interval(shown: list[Any]) -> None:
    view = new_view()
    view.chunk({"kind": "stdout", "text": "a\n"})  # first chunk: rendered at once
    rendered = view.output_html.value
    view.chunk({"kind": "stdout", "text": "b\n"})  # right after: held for the next poll
    assert view.output_html.value == rendered
    view.status("IN_PROGRESS")
    assert text(view.output_html.value) == "a\nb\n"


def test_progress_bars_overwrite_their_line_and_colour_codes_are_dropped(
    shown: list[Any],
) -> None:
    view = new_view()
    view.chunk({"kind": "stdout", "text": "epoch 1\n 10%\r 50%"})
    view.chunk({"kind": "stdout", "text": "\r\x1b[32m100%\x1b[0m\n"})
    view.status("IN_PROGRESS")
    assert text(view.output_html.value) == "epoch 1\n100%\n"


def test_long_output_keeps_its_tail_live_and_all_of_it_at_the_end(
    shown: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    view = new_view()
    lines = [f"line {i:06d}\n" for i in range(20_000)]
    for line in lines:
        view.chunk({"kind": "stdout", "text": line})
    view.status("IN_PROGRESS")
    live = text(view.output_html.value)
    assert len(live) < 60_000
    assert live.startswith("… earlier lines are trimmed here")
    assert live.endswith("line 019999\n")
    view.close(None)
    assert capsys.readouterr().out == "".join(lines)


def test_close_leaves_a_static_summary_and_the_output_as_streams(
    shown: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    view = new_view(name="demo")
    view.submitted("job-9", None)
    view.chunk(INFO)
    view.chunk({"kind": "log", "text": "Python dependencies already satisfied: six\n"})
    view.chunk({"kind": "stdout", "text": "out 1\n"})
    view.chunk({"kind": "stderr", "text": "err 1\n"})
    view.chunk({"kind": "stdout", "text": "out 2\n"})
    view.chunk({"kind": "response", "response": {"success": True}})
    view.status("COMPLETED")
    widgets = list(view._widgets)
    view.close(FunctionResponse(success=True, stdout="out 1\nout 2\n"))
    [summary] = view.handle.updates
    assert summary["text/plain"].startswith("demo: done · ")
    page = text(summary["text/html"])
    assert page.startswith("● demo done ")
    assert "worker w-1 · NVIDIA H200 (140 GB) · Python 3.11.9" in page
    assert "worker logs (2 lines)" in page and "already satisfied: six" in page
    assert "<details>" in summary["text/html"]  # logs folded, no widget needed
    assert all(w.comm is None for w in widgets)  # no widget left to load
    streams = capsys.readouterr()
    assert streams.out == "out 1\nout 2\n" and streams.err == "err 1\n"
    view.close(None)  # a second close (the run's error path) changes nothing
    assert len(view.handle.updates) == 1


def display_chunk(kind: str = "display", **message: Any) -> dict[str, Any]:
    """A "display" chunk as the worker sends it: one display message as JSON."""
    return {"kind": "display", "text": json.dumps({"type": kind, **message})}


def html_chunk(markup: str, display_id: str | None = None) -> dict[str, Any]:
    data = {"text/html": markup, "text/plain": "<HTML>"}
    return display_chunk(data=data, metadata={}, display_id=display_id)


def test_displays_show_inside_the_panel_between_the_text_around_them(shown: list[Any]) -> None:
    view = new_view()
    view.chunk({"kind": "stdout", "text": "epoch 0\n"})
    view.chunk(html_chunk("<b>plot 0</b>", display_id="loss"))
    view.chunk({"kind": "stdout", "text": "epoch 1\n"})
    view.status("IN_PROGRESS")
    pieces = view.output_box.children
    assert [type(p).__name__ for p in pieces] == ["HTML", "Output", "HTML"]
    assert text(pieces[0].value) == "epoch 0\n" and text(pieces[2].value) == "epoch 1\n"
    assert pieces[1].outputs[0]["data"]["text/html"] == "<b>plot 0</b>"
    view.chunk(display_chunk("update", data={"text/html": "<b>plot 1</b>"}, display_id="loss"))
    assert pieces[1].outputs[0]["data"]["text/html"] == "<b>plot 1</b>"  # updated in place
    view.chunk(display_chunk("clear", wait=True))
    assert view.output_box.children == pieces  # wait=True: cleared when the next output comes
    view.chunk(html_chunk("<b>only</b>"))
    [only, after] = view.output_box.children
    assert only.outputs[0]["data"]["text/html"] == "<b>only</b>" and after.value == ""
    assert all(p.comm is None for p in pieces)  # the cleared pieces are closed
    view.close(None)
    assert only.comm is None and after.comm is None


def test_a_display_split_across_chunks_is_joined(shown: list[Any]) -> None:
    view = new_view()
    whole = html_chunk("<i>" + "x" * 1000 + "</i>")["text"]
    for start in range(0, len(whole), 300):
        piece = {"kind": "display", "text": whole[start : start + 300]}
        view.chunk({**piece, "more": True} if start + 300 < len(whole) else piece)
    [plot, _] = view.output_box.children
    assert plot.outputs[0]["data"]["text/html"] == "<i>" + "x" * 1000 + "</i>"


def test_a_remote_error_shows_failed_with_its_type(shown: list[Any]) -> None:
    view = new_view()
    view.chunk({"kind": "stdout", "text": "before\n"})
    view.chunk({"kind": "response", "response": {"success": False, "error_type": "KeyError"}})
    view.status("COMPLETED")
    assert re.match(r"● tetra failed \d+ s KeyError$", status(view))
    view.close(FunctionResponse(success=False, error="...", error_type="KeyError"))
    assert "failed" in text(view.handle.updates[0]["text/html"])


def test_without_streaming_output_waits_for_the_end(
    shown: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    view = new_view(live=False)
    view.chunk({"kind": "stdout", "text": "quiet\n"})
    view.status("IN_PROGRESS")
    assert view.output_html.value == ""
    view.close(None)
    assert capsys.readouterr().out == "quiet\n"


def test_a_worker_that_does_not_stream_still_shows_its_stdout(
    shown: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    view = new_view()
    view.status("COMPLETED")
    view.close(FunctionResponse(success=True, stdout="from the published worker\n"))
    assert capsys.readouterr().out == "from the published worker\n"
    assert "done" in text(view.handle.updates[0]["text/html"])


def test_cancel_button_click_sets_the_event_and_says_cancelling(shown: list[Any]) -> None:
    view = new_view()
    view.status("IN_PROGRESS")
    assert view.cancel_button.layout.display != "none"
    assert not view.cancel_requested.is_set()
    click(view.cancel_button)
    assert view.cancel_requested.is_set()
    assert view.cancel_button.disabled and view.cancel_button.description == "Cancelling…"
    view.status("IN_PROGRESS")
    assert status(view).endswith("cancelling…")
    view.status("CANCELLED")
    view.close(None)
    assert text(view.handle.updates[0]["text/html"]).startswith("● tetra cancelled")


def test_without_a_side_thread_there_is_no_button_but_a_hint(shown: list[Any]) -> None:
    view = WidgetView()  # this process has no kernel, so clicks could not be routed
    assert not view.can_cancel
    assert view.cancel_button.layout.display == "none"
    view.status("IN_PROGRESS")
    assert status(view).endswith("to cancel, interrupt the kernel (■)")


class SlowJob:
    """An endpoint client whose job runs until it is cancelled; /stream holds a second."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.streams: list[float] = []  # when each /stream request was made

    def stream(self, job_id: str) -> dict[str, Any]:
        self.streams.append(time.monotonic())
        self.cancelled.wait(1.0)
        return {"status": "IN_PROGRESS", "stream": []}

    def status(self, job_id: str) -> dict[str, Any]:
        return {"status": "CANCELLED" if self.cancelled.is_set() else "IN_PROGRESS"}

    def cancel(self, job_id: str) -> None:
        self.cancelled.set()


def test_a_click_during_the_follow_loop_cancels_the_job_promptly(shown: list[Any]) -> None:
    view = new_view()
    client = SlowJob()
    clicked: list[float] = []

    def click_now() -> None:
        clicked.append(time.monotonic())
        click(view.cancel_button)

    timer = threading.Timer(1.5, click_now)
    timer.start()
    with pytest.raises(CancelRequested):
        followed(client, "job-5", view)
    assert client.cancelled.is_set()
    assert [t for t in client.streams if t < clicked[0]], "clicked before the loop polled"
    # Counted, not timed, so a loaded machine cannot fail it: the loop checks for a click
    # between polls, so at most the /stream request already on its way follows the click.
    assert len([t for t in client.streams if t >= clicked[0]]) <= 1, client.streams
    assert time.monotonic() - clicked[0] < 5.0  # the user-visible promise, generously
    assert "cancelled" in status(view)


def test_route_needs_a_kernel_with_subshells() -> None:
    from tetra_magic.view.cancel import route_to_side_thread

    class Plain:
        comm = None

    assert route_to_side_thread(Plain()) is False


# -- in a real kernel: the click arrives while the main thread follows the job -----------------


@pytest.fixture
def widget_kernel(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A kernel that shows the widget view, with tetra_magic loaded."""
    from jupyter_client.manager import start_new_kernel

    monkeypatch.setenv("TETRA_MAGIC_DISPLAY", "widget")
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        reply = client.execute_interactive("%load_ext tetra_magic", timeout=60)
        assert reply["content"]["status"] == "ok"
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def _run_and_click(client: Any, code: str, click_after_text: str) -> dict[str, Any]:
    """Execute `code`; once its output shows `click_after_text`, click the Cancel button the
    way a frontend does (a comm_msg with no subshell in its header). What the cell showed."""
    msg_id = client.execute(code)
    seen: dict[str, Any] = {"button": None, "clicked_at": None, "html": "", "errors": []}
    until = time.monotonic() + 120
    while time.monotonic() < until:
        try:
            msg = client.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        state = content.get("data", {}).get("state", {})
        if kind == "comm_open" and state.get("_model_name") == "ButtonModel":
            seen["button"] = content["comm_id"]
        elif kind == "comm_msg" and click_after_text in str(state):
            if seen["clicked_at"] is None and seen["button"]:
                data = {"method": "custom", "content": {"event": "click"}}
                click_msg = client.session.msg(
                    "comm_msg", {"comm_id": seen["button"], "data": data}
                )
                client.shell_channel.send(click_msg)
                seen["clicked_at"] = time.monotonic()
        elif kind == "update_display_data":
            seen["html"] = content["data"]["text/html"]
        elif kind == "error":
            seen["errors"].append(content)
        elif kind == "status" and content["execution_state"] == "idle":
            seen["ended_at"] = time.monotonic()
            return seen
    raise AssertionError(f"the cell did not end: {seen}")


@pytest.mark.slow
def test_a_frontend_click_cancels_a_running_cell_in_a_real_kernel(widget_kernel: Any) -> None:
    code = (
        "%%tetra --local\nimport time\nprint('working', flush=True)\n"
        "for _ in range(600):\n    time.sleep(0.1)\n"
    )
    seen = _run_and_click(widget_kernel, code, "working")
    assert seen["clicked_at"] is not None, "no Cancel button was shown"
    assert seen["ended_at"] - seen["clicked_at"] < 5.0
    assert text(seen["html"]).startswith("● tetra cancelled")
    [error] = seen["errors"]
    assert error["ename"] == "CancelRequested"
    reply = widget_kernel.execute_interactive("print('next cell')", timeout=30)
    assert reply["content"]["status"] == "ok"
