"""The widget view of a --map cell (tetra_magic/view/shards.py), at the widget-model level.

The board is driven as the map drives it: one shard view per job, fed statuses and chunks as
the follow loop feeds them (from several threads at once where that matters), the items'
ends told by the map. What the page would show is read back from the widgets' values, in
this plain Python process (ipywidgets works without a frontend); the Cancel button is
clicked through its own message handler, as a frontend's click arrives, and the item box is
typed into by setting its value, as a frontend's update sets it. The last test runs a real
kernel, whose main thread is busy while the user types and clicks, as during a --map cell.
"""

from __future__ import annotations

import dataclasses
import html
import json
import queue
import re
import threading
import time
from typing import Any

import pytest
from helpers.following import OPTIONS, followed

from tetra_magic.job.follow import CancelRequested
from tetra_magic.view import shards
from tetra_magic.view.shards import MapBoard, map_board
from worker.protocol import FunctionResponse


class Handle:
    """Stands in for IPython's DisplayHandle: records what the display id was updated to."""

    def __init__(self) -> None:
        self.updates: list[dict[str, str]] = []

    def update(self, data: dict[str, str], raw: bool = False) -> None:
        assert raw
        self.updates.append(data)


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the board displayed; its display handle records its updates."""
    displayed: list[Any] = []

    def fake_display(obj: Any, display_id: bool = False) -> Handle:
        assert display_id
        displayed.append(obj)
        return Handle()

    monkeypatch.setattr(shards, "display", fake_display)
    return displayed


def new_board(count: int, **kwargs: Any) -> MapBoard:
    """A board whose Cancel button and item box count as routed (a kernel with subshells)."""
    return MapBoard(count, "map over lr", route=lambda _widget: True, **kwargs)


@pytest.fixture(autouse=True)
def render_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """No flush interval, so each step's values can be read at once."""
    monkeypatch.setattr(shards, "FLUSH_S", 0.0)


def text(markup: str) -> str:
    """What a browser shows for `markup`: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<style>.*?</style>|<[^>]+>", "", markup, flags=re.S))


def status(board: MapBoard) -> str:
    return text(board.status_html.value)


def chip_states(markup: str) -> dict[int, str]:
    """Each chip's item and state, from its tooltip."""
    return {int(i): s for i, s in re.findall(r"title='item (\d+): ([a-z ]*[a-z])", markup)}


def output(board: MapBoard) -> str:
    """The text the output box shows under the item box."""
    return "".join(text(w.value) for w in board.output_box.children if hasattr(w, "value"))


def click(button: Any) -> None:
    """A click as the frontend sends it: a custom comm message handled by the widget."""
    data = {"method": "custom", "content": {"event": "click"}}
    button._handle_msg({"content": {"data": data}, "buffers": []})


def out(text: str) -> dict[str, Any]:
    return {"kind": "stdout", "text": text}


def test_the_status_line_and_chips_follow_each_item(shown: list[Any]) -> None:
    board = new_board(4)
    assert shown == [board.panel]
    views = [board.shard([i]) for i in range(4)]
    assert re.match(r"● map over lr queued \d+ s 0 of 4 done, 4 queued$", status(board))
    assert chip_states(board.chips_html.value) == dict.fromkeys(range(4), "queued")
    for view in views[:3]:
        view.submitted("job", None)
        view.status("IN_QUEUE")
        view.status("IN_PROGRESS")
    views[0].status("COMPLETED")
    board.item_ended(0, failed=False)
    views[1].chunk({"kind": "response", "response": {"success": False, "error_type": "KeyError"}})
    views[1].status("COMPLETED")
    board.item_ended(1, failed=True)
    views[3].status("IN_PROGRESS")
    assert re.match(r"● map over lr running \d+ s 1 of 4 done, 1 failed, 2 running$", status(board))
    chips = board.chips_html.value
    assert chip_states(chips) == {0: "done", 1: "failed", 2: "running", 3: "running"}
    assert "title='item 1: failed (KeyError)'" in chips
    assert [text(chip) for chip in re.findall(r"<span.*?</span>", chips)] == ["0", "1", "2", "3"]


def test_choosing_an_item_shows_its_output_only_and_keeps_streaming_it(shown: list[Any]) -> None:
    board = new_board(3)
    views = [board.shard([i]) for i in range(3)]
    for index, view in enumerate(views):
        view.status("IN_PROGRESS")
        view.chunk(out(f"item {index} line 1\n"))
    board.picker.value = "1"
    assert output(board) == "item 1 line 1\n"
    assert text(board.item_html.value) == "item 1 · running"
    views[2].chunk(out("item 2 line 2\n"))
    views[1].chunk({"kind": "stderr", "text": "item 1 <warning>\n"})
    views[1].status("IN_PROGRESS")
    assert output(board) == "item 1 line 1\nitem 1 <warning>\n"
    assert "var(--jp-error-color1)'>item 1 &lt;warning" in board.output_box.children[0].value
    board.picker.value = "2"
    assert output(board) == "item 2 line 1\nitem 2 line 2\n"


def test_by_default_the_first_failed_item_shows_else_the_latest_running(
    shown: list[Any],
) -> None:
    board = new_board(4)
    views = [board.shard([i]) for i in range(4)]
    assert output(board) == ""
    assert text(board.item_html.value) == "no item has started yet"
    for index in (0, 2, 1):
        views[index].status("IN_PROGRESS")
        views[index].chunk(out(f"from {index}\n"))
    assert output(board) == "from 1\n"  # the one that started last
    assert text(board.item_html.value).startswith("item 1 · running · following the map")
    views[1].status("COMPLETED")
    board.item_ended(1, failed=False)
    views[0].status("COMPLETED")
    board.item_ended(0, failed=False)
    assert output(board) == "from 2\n"  # the only one still running
    views[3].status("IN_PROGRESS")
    views[3].chunk(out("from 3\n"))
    views[2].chunk({"kind": "response", "response": {"success": False, "error_type": "OSError"}})
    views[2].status("COMPLETED")
    board.item_ended(2, failed=True)
    assert output(board) == "from 2\n"  # a failed item stays in view while others run
    assert text(board.item_html.value).startswith("item 2 · failed · OSError")


def test_a_batched_jobs_markers_route_its_output_to_each_item(shown: list[Any]) -> None:
    board = new_board(5)
    single = board.shard([0])
    batch = board.shard([1, 2, 3])
    rest = board.shard([4])
    batch.status("IN_PROGRESS")
    batch.chunk({"kind": "phase", "text": "running"})
    batch.chunk({"kind": "item", "index": 1})
    batch.chunk(out("one\n"))
    batch.chunk({"kind": "item", "index": 2})
    batch.chunk(out("two "))
    batch.chunk(out("and more\n"))
    assert chip_states(board.chips_html.value) == {
        0: "queued",
        1: "ended",  # its output is over; the map has not said how it ended yet
        2: "running",
        3: "queued",
        4: "queued",
    }
    board.item_ended(1, failed=False)
    batch.chunk({"kind": "item", "index": 3})
    batch.chunk(out("three\n"))
    batch.status("COMPLETED")
    batch.close(FunctionResponse(success=True))
    for index in (2, 3):
        board.item_ended(index, failed=False)
    single.status("IN_PROGRESS")
    single.chunk(out("zero\n"))
    single.close(FunctionResponse(success=True))
    board.item_ended(0, failed=False)
    seen = {}
    for index in range(4):
        board.picker.value = str(index)
        seen[index] = output(board)
    assert seen == {0: "zero\n", 1: "one\n", 2: "two and more\n", 3: "three\n"}
    assert re.search(r"4 of 5 done, 1 queued$", status(board))
    assert rest.current == 4


def test_cancel_sets_the_one_event_every_shards_follow_loop_checks(shown: list[Any]) -> None:
    board = new_board(3)
    views = [board.shard([i]) for i in range(3)]
    events = {id(view.cancel_requested) for view in views}
    assert len(events) == 1 and not board.cancel_requested.is_set()

    class Running:
        """An endpoint client whose job runs until it is cancelled."""

        def __init__(self) -> None:
            self.cancelled = threading.Event()

        def stream(self, job_id: str) -> dict[str, Any]:
            self.cancelled.wait(0.2)
            return {"status": "IN_PROGRESS", "stream": []}

        def status(self, job_id: str) -> dict[str, Any]:
            return {"status": "CANCELLED" if self.cancelled.is_set() else "IN_PROGRESS"}

        def cancel(self, job_id: str) -> None:
            self.cancelled.set()

    clients = [Running() for _ in views]
    raised: list[BaseException] = []

    def follow(view: Any, client: Running) -> None:
        try:
            followed(client, "job", view)
        except CancelRequested as exc:
            raised.append(exc)

    threads = [
        threading.Thread(target=follow, args=pair) for pair in zip(views, clients, strict=True)
    ]
    for thread in threads:
        thread.start()
    while not all(item.state == "running" for item in board.items):
        time.sleep(0.05)
    click(board.cancel_button)
    assert board.cancel_button.disabled and board.cancel_button.description == "Cancelling…"
    for thread in threads:
        thread.join(30)
    assert len(raised) == 3 and all(client.cancelled.is_set() for client in clients)
    board.close()
    assert text(board.handle.updates[0]["text/html"]).startswith("● map over lr cancelled")


def test_close_leaves_the_final_chips_and_the_shown_items_output(
    shown: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    board = new_board(3)
    views = [board.shard([i]) for i in range(3)]
    for index, view in enumerate(views):
        view.status("IN_PROGRESS")
        view.chunk(out(f"out {index}\n"))
    views[1].chunk({"kind": "stderr", "text": "Traceback: boom\n"})
    for index, view in enumerate(views):
        view.status("COMPLETED")
        view.close(FunctionResponse(success=index != 1))
        board.item_ended(index, failed=index == 1)
    widgets = [board.panel, board.picker, board.cancel_button, *board.output_box.children]
    board.close()
    [summary] = board.handle.updates
    page = text(summary["text/html"])
    assert re.match(r"● map over lr failed [\d.]+ s 2 of 3 done, 1 failed", page)
    assert page.endswith("below: the output of item 1 (failed)")
    assert chip_states(summary["text/html"]) == {0: "done", 1: "failed", 2: "done"}
    assert summary["text/plain"].startswith("map over lr: failed · 2 of 3 done, 1 failed · ")
    assert all(w.comm is None for w in widgets)  # no widget left to load
    streams = capsys.readouterr()
    assert streams.out == "out 1\n" and streams.err == "Traceback: boom\n"
    board.close()
    assert len(board.handle.updates) == 1


def test_items_the_map_never_finished_say_so_at_the_end(shown: list[Any]) -> None:
    board = new_board(3)
    view = board.shard([0])
    view.status("IN_PROGRESS")
    view.close(None)  # interrupted
    board.close()
    page = text(board.handle.updates[0]["text/html"])
    assert re.match(r"● map over lr no result [\d.]+ s 0 of 3 done, 3 not finished", page)


def test_a_retried_item_runs_again_below_its_first_tries_output(shown: list[Any]) -> None:
    board = new_board(1)
    first = board.shard([0])
    first.status("IN_PROGRESS")
    first.chunk(out("try 1\n"))
    first.status("FAILED")
    board.item_ended(0, failed=True)
    assert chip_states(board.chips_html.value) == {0: "failed"}
    again = board.shard([0])
    again.status("IN_QUEUE")
    assert chip_states(board.chips_html.value) == {0: "queued"}
    again.status("IN_PROGRESS")
    again.chunk(out("try 2\n"))
    assert chip_states(board.chips_html.value) == {0: "running"}
    assert output(board) == "try 1\n— item 0 runs again (try 2) —\ntry 2\n"


def test_a_thousand_items_keep_the_line_compact(shown: list[Any]) -> None:
    board = new_board(1000)
    views = [board.shard([i]) for i in range(1000)]
    for index in range(700):
        views[index].status("IN_PROGRESS")
        if index < 690:
            board.item_ended(index, failed=index < 65)
    chips = board.chips_html.value
    listed = {**dict.fromkeys(range(60), "failed"), **dict.fromkeys(range(690, 700), "running")}
    assert chip_states(chips) == listed  # the failed and running items only, 60 at most each
    assert "+5 more" in text(chips)
    assert "title='625 done'" in chips and "title='300 queued'" in chips  # the bar's parts
    assert len(chips) < 10_000
    assert re.search(r"625 of 1000 done, 65 failed, 10 running, 300 queued$", status(board))


def test_a_display_shows_between_the_text_and_updates_in_place(shown: list[Any]) -> None:
    board = new_board(1)
    view = board.shard([0])
    view.status("IN_PROGRESS")
    view.chunk(out("before\n"))

    def display(kind: str, markup: str) -> dict[str, Any]:
        message = {"type": kind, "data": {"text/html": markup}, "display_id": "loss"}
        return {"kind": "display", "text": json.dumps(message)}

    view.chunk(display("display", "<b>plot 0</b>"))
    view.chunk(out("after\n"))
    pieces = board.output_box.children
    assert [type(p).__name__ for p in pieces] == ["HTML", "Output", "HTML"]
    assert pieces[1].outputs[0]["data"]["text/html"] == "<b>plot 0</b>"
    view.chunk(display("update", "<b>plot 1</b>"))
    assert board.output_box.children == pieces
    assert pieces[1].outputs[0]["data"]["text/html"] == "<b>plot 1</b>"


def test_a_typed_index_that_is_no_item_is_named(shown: list[Any]) -> None:
    board = new_board(3)
    board.picker.value = "7"
    assert text(board.item_html.value) == (
        "no item '7' in this map: type an index from 0 to 2, or clear the box to follow the map"
    )
    board.picker.value = ""
    assert text(board.item_html.value) == "no item has started yet"


def test_the_error_the_map_gives_is_named_on_the_chip_and_below_the_output(
    shown: list[Any],
) -> None:
    board = new_board(2)
    view = board.shard([0])
    view.status("IN_PROGRESS")
    view.chunk(out("working\n"))
    view.status("COMPLETED")
    board.item_ended(0, failed=True, error=ValueError("learning rate too high"))
    assert "title='item 0: failed (ValueError)'" in board.chips_html.value
    assert output(board) == "working\n— ValueError: learning rate too high —\n"
    assert text(board.item_html.value).startswith("item 0 · failed · ValueError")


def test_while_all_wait_the_line_says_what_for(shown: list[Any]) -> None:
    board = new_board(2)
    view = board.shard([0])
    view.chunk({"kind": "note", "text": "waiting for a worker: 0 of 2 running\n"})
    view.status("IN_QUEUE")
    assert text(board.item_html.value) == (
        "no item has started yet · waiting for a worker: 0 of 2 running"
    )


def test_without_streaming_the_output_shows_at_the_end_only(
    shown: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    board = new_board(1, live=False)
    assert board.pick_row.layout.display == "none"
    view = board.shard([0])
    view.status("IN_PROGRESS")
    view.chunk(out("quiet\n"))
    assert board.output_box.children == ()
    board.item_ended(0, failed=False)
    board.close()
    assert capsys.readouterr().out == "quiet\n"


def test_shards_from_many_threads_at_once_lose_nothing(shown: list[Any]) -> None:
    board = new_board(8)
    views = [board.shard([i]) for i in range(8)]

    def run(index: int) -> None:
        views[index].status("IN_PROGRESS")
        for line in range(200):
            views[index].chunk(out(f"{index}:{line}\n"))
        views[index].status("COMPLETED")
        board.item_ended(index, failed=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert re.search(r"8 of 8 done$", status(board))
    board.picker.value = "5"
    assert output(board) == "".join(f"5:{line}\n" for line in range(200))


def test_without_a_side_thread_there_is_no_button_or_box_but_a_hint(shown: list[Any]) -> None:
    board = MapBoard(2, "map over lr")  # this process has no kernel: clicks cannot be routed
    assert board.cancel_button.layout.display == "none"
    assert board.picker.layout.display == "none"
    assert status(board).endswith("to cancel, interrupt the kernel (■)")


def test_the_text_view_is_chosen_where_make_view_would_choose_it(
    shown: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETRA_MAGIC_DISPLAY", "text")
    opts = dataclasses.replace(OPTIONS, map_name="lr")
    assert map_board(None, opts, "auto", 3) is None
    monkeypatch.setenv("TETRA_MAGIC_DISPLAY", "widget")
    assert map_board(None, dataclasses.replace(opts, quiet=True), "auto", 3) is None
    board = map_board(None, opts, "auto", 3)
    assert board is not None and board.name == "map over lr" and board.count == 3


# -- in a real kernel: typing and clicking while the main thread waits on the map -------------


@pytest.fixture
def kernel() -> Any:
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


# A map's shape in the kernel: shard threads print while the main thread waits, as fan_out's
# does, until the board's Cancel event is set.
BUSY_CELL = """
import threading, time
from tetra_magic.view.shards import MapBoard
board = MapBoard(3, "map over n")
views = [board.shard([i]) for i in range(3)]
def shard(i):
    views[i].status("IN_PROGRESS")
    views[i].chunk({"kind": "stdout", "text": f"hello from {i}\\n"})
    while not views[i].cancel_requested.wait(0.1):
        views[i].status("IN_PROGRESS")
threads = [threading.Thread(target=shard, args=(i,)) for i in range(3)]
for t in threads: t.start()
for t in threads: t.join(60)
board.close()
print("cancelled:", board.cancel_requested.is_set())
"""


def _send(client: Any, comm_id: str, data: dict[str, Any]) -> str:
    """A comm message as a frontend sends it (no subshell in its header); its id."""
    message = client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
    client.shell_channel.send(message)
    return str(message["header"]["msg_id"])


def msg_of(message: dict[str, Any]) -> str | None:
    """The id of the request a kernel's message answers."""
    return message["parent_header"].get("msg_id")


@pytest.mark.slow
def test_typing_and_cancel_reach_a_busy_kernel(kernel: Any) -> None:
    cell = kernel.execute(BUSY_CELL)
    parents = {cell}  # the cell's, and the typing's (what its handler changed)
    models: dict[str, str] = {}
    typed = clicked = False
    stdout: list[str] = []
    until = time.monotonic() + 90
    while time.monotonic() < until:
        try:
            msg = kernel.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg_of(msg) not in parents:
            continue
        kind, content = msg["msg_type"], msg["content"]
        state = content.get("data", {}).get("state", {})
        if kind == "comm_open":
            models[state.get("_model_name", "")] = content["comm_id"]
        if not typed and "hello from" in str(state):
            typing = {"method": "update", "state": {"value": "1"}}
            parents.add(_send(kernel, models["TextModel"], typing))
            typed = True
        elif not clicked and text(str(state.get("value", ""))) == "item 1 · running":
            event = {"method": "custom", "content": {"event": "click"}}
            _send(kernel, models["ButtonModel"], event)
            clicked = True
        elif kind == "stream":
            stdout.append(content["text"])
        elif kind == "status" and content["execution_state"] == "idle" and msg_of(msg) == cell:
            break
    assert typed and clicked, "the typed index did not reach the kernel while it was busy"
    assert "".join(stdout) == "hello from 1\ncancelled: True\n"


# -- in a real JupyterLab page (tests/helpers/lab_page.py) ---------------------------------------

# The board as a --map cell drives it, with no endpoint: twelve shards print until Cancel is
# clicked, item 4 fails at once. (The --map cell itself is the next test's.)
DRIVEN_CELL = """
import threading
from tetra_magic.view.shards import MapBoard
board = MapBoard(12, "map over n")
views = [board.shard([i]) for i in range(12)]
def shard(i):
    view = views[i]
    view.status("IN_PROGRESS")
    if i == 4:
        view.chunk({"kind": "stderr", "text": "boom from 4\\n"})
        view.chunk({"kind": "response", "response": {"success": False, "error_type": "ValueError"}})
        view.status("COMPLETED")
        board.item_ended(4, failed=True)
        return
    n = 0
    while not view.cancel_requested.wait(0.2):
        view.chunk({"kind": "stdout", "text": f"hello from {i}: {n}\\n"})
        view.status("IN_PROGRESS")
        n += 1
    view.status("CANCELLED")
threads = [threading.Thread(target=shard, args=(i,)) for i in range(12)]
for t in threads: t.start()
for t in threads: t.join(120)
board.close()
"""
MAP_CELL = (
    "%%tetra --local --map n in range(6)\nimport time\nprint('item', n, 'starts')\n"
    "time.sleep(3)\nif n == 2:\n    raise ValueError('two is bad')\nsquare = n * n\n"
)


@pytest.fixture(scope="module")
def lab_nb() -> Any:
    """A notebook in JupyterLab whose kernel shows the widget view and runs --local cells on
    an endpoint of its own; comms over subshells off, so our routing is what carries clicks."""
    import shutil
    import tempfile
    from pathlib import Path

    from helpers import lab_page
    from helpers.kernels import environ, shared_worker_env

    if why := lab_page.missing():
        pytest.skip(f"browser tests need {why}")
    root = Path(tempfile.mkdtemp(prefix="tetra-shards-browser-"))
    home = tempfile.mkdtemp(prefix="tetra-shards-home-")
    env = {"TETRA_MAGIC_HOME": home, "TETRA_MAGIC_WORKER_ENV": shared_worker_env()}
    lab_page.write_notebook(root / "map.ipynb", ["%load_ext tetra_magic", DRIVEN_CELL, MAP_CELL])
    lab_ctx = lab_page.jupyterlab(root, env=env, comms_over_subshells="disabled")
    try:
        with lab_ctx as lab, lab_page.browser() as context:
            notebook = lab_page.NotebookPage(context.new_page(), lab, "map.ipynb").open()
            notebook.run(0)
            notebook.wait_done(0, timeout=60)
            yield notebook
    finally:
        with environ(env):
            from tetra_magic.local import launcher

            launcher.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def wait_for_text(nb: Any, index: int, selector: str, wanted: str, timeout: float = 60) -> None:
    """Until the element `selector` in cell `index` shows `wanted`."""
    nb.page.wait_for_function(
        """([index, selector, wanted]) => {
          const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[index];
          const el = cell?.querySelector(selector);
          return !!el && el.innerText.includes(wanted);
        }""",
        arg=[index, selector, wanted],
        timeout=timeout * 1000,
    )


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_in_the_page_an_item_is_picked_cancel_ends_all_and_the_summary_stays(
    lab_nb: Any,
) -> None:
    nb = lab_nb
    nb.run(1)
    view = nb.cell(1).locator(".tetra-view")
    wait_for_text(nb, 1, ".tetra-item", "item 4 · failed · ValueError")  # the failed one first
    wait_for_text(nb, 1, ".tetra-output", "boom from 4")
    assert view.locator(".tetra-chips span").count() == 12
    assert view.locator(".tetra-chips span[title='item 4: failed (ValueError)']").count() == 1
    box = view.locator(".widget-text input")
    box.fill("7")
    box.press("Enter")
    wait_for_text(nb, 1, ".tetra-output", "hello from 7: 3")  # and it keeps streaming
    assert "boom" not in view.locator(".tetra-output").inner_text()
    assert view.locator(".tetra-item").inner_text().startswith("item 7 · running")
    view.locator(".tetra-cancel").click()
    nb.wait_done(1, timeout=30)
    summary = nb.cell(1).locator(".tetra-summary")
    ended = r"● map over n cancelled \S+ s 0 of 12 done, 1 failed, 11 not finished"
    assert re.match(ended, summary.inner_text())
    assert summary.inner_text().endswith("below: the output of item 7 (no result)")
    output = nb.output_text(1)
    assert "hello from 7: 0\nhello from 7: 1\n" in output and "hello from 3" not in output
    nb.save()
    nb.page.reload()
    nb.open()
    summary = nb.cell(1).locator(".tetra-summary")
    assert summary.locator("span[title='item 4: failed (ValueError)']").count() == 1
    assert nb.page.locator(".tetra-view").count() == 0
    assert "hello from 7: 1" in nb.output_text(1)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_map_cell_shows_its_items_and_the_failed_ones_output(lab_nb: Any) -> None:
    """A real --map cell on the local endpoint: one chip per item; item 2's failure in view."""
    nb = lab_nb
    nb.run(2)
    wait_for_text(nb, 2, ".tetra-chips", "5", timeout=300)  # a cold start first
    view = nb.cell(2).locator(".tetra-view")
    assert view.locator(".tetra-chips span").count() == 6
    wait_for_text(nb, 2, ".tetra-item", "item 2 · failed", timeout=120)
    assert "item 2 starts" in view.locator(".tetra-output").inner_text()
    nb.wait_done(2, timeout=120)
    summary = nb.cell(2).locator(".tetra-summary").inner_text()
    assert re.match(r"● map over n failed \S+ s 5 of 6 done, 1 failed", summary)
    output = nb.output_text(2)
    assert "item 2 starts" in output and "ValueError: two is bad" in output
