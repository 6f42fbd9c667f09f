"""The output of a cell on the published worker, from the runtime's progress updates to the
views: every chunk once, in order, whichever updates the client happened to see."""

from __future__ import annotations

import sys
import time

from tetra_magic.job.progress import ProgressOutput
from tetra_magic.runtime.live_output import LiveOutput
from worker.protocol import FunctionResponse, encode


def status(update: dict) -> dict:
    return {"status": "IN_PROGRESS", "output": update}


def run_live(lines: int, pause: float) -> tuple[list[dict], list[dict]]:
    """Print `lines` lines through a LiveOutput; (the updates it sent, its final record)."""
    sent: list[dict] = []
    live = LiveOutput(sent.append)
    live.PERIOD_S = 0.02
    with live:
        for n in range(lines):
            print(f"line {n}")
            if n % 7 == 0:
                print(f"warning {n}", file=sys.stderr)
            time.sleep(pause)
    return sent, live.chunks


def text_of(chunks: list[dict], kind: str) -> str:
    return "".join(c["text"] for c in chunks if c["kind"] == kind)


def expected(lines: int, kind: str) -> str:
    if kind == "stdout":
        return "".join(f"line {n}\n" for n in range(lines))
    return "".join(f"warning {n}\n" for n in range(0, lines, 7))


def test_every_chunk_arrives_once_in_order_from_any_subset_of_updates() -> None:
    sent, record = run_live(40, 0.005)
    assert len(sent) >= 3  # it did publish while the cell ran
    for seen in (sent, sent[::2], sent[-1:], []):
        progress = ProgressOutput()
        shown = [chunk for update in seen for chunk in progress.new(status(update))]
        response = FunctionResponse(success=True, result=encode({"output": record}), stdout="x")
        shown += progress.rest(response)
        assert shown == record and response.stdout is None
        for kind in ("stdout", "stderr"):
            assert text_of(shown, kind) == expected(40, kind)


def test_a_gap_waits_for_the_final_record() -> None:
    """An update whose window starts past what was shown is held back, not shown out of order."""
    progress = ProgressOutput()
    first = {"tetra_progress": {"first": 0, "chunks": [{"kind": "stdout", "text": "a\n"}]}}
    later = {"tetra_progress": {"first": 3, "chunks": [{"kind": "stdout", "text": "d\n"}]}}
    assert progress.new(status(first)) == [{"kind": "stdout", "text": "a\n"}]
    assert progress.new(status(later)) == []
    record = [{"kind": "stdout", "text": t} for t in ("a\n", "b\n", "c\n", "d\n")]
    response = FunctionResponse(success=True, result=encode({"output": record}))
    assert progress.rest(response) == record[1:]


def test_a_failed_cell_shows_the_rest_of_its_stdout_once() -> None:
    progress = ProgressOutput()
    update = {"tetra_progress": {"first": 0, "chunks": [{"kind": "stdout", "text": "one\n"}]}}
    progress.new(status(update))
    error = "Traceback (most recent call last):\n...\nValueError: bad"  # an older runtime's
    response = FunctionResponse(success=False, error=error, stdout="one\ntwo\n")
    assert progress.rest(response) == [{"kind": "stdout", "text": "two\n"}]
    assert response.stdout is None


def test_without_updates_the_response_is_left_as_the_worker_sent_it() -> None:
    """Our own worker streams; there the runtime publishes nothing and the views use stdout."""
    response = FunctionResponse(
        success=False, error="boom", stdout="printed\n", failure="exception"
    )
    assert ProgressOutput().rest(response) == [] and response.stdout == "printed\n"
    assert LiveOutput.on_published_worker() is None  # no runpod job runs in this process


def test_a_raised_cell_becomes_the_failure_our_worker_sends() -> None:
    """The runtime reports the cell's exception in its result; the views show its own output,
    and the response then says what our worker says of a cell that raised."""
    record = [{"kind": "stdout", "text": "a\n"}, {"kind": "stderr", "text": "b\n"}]
    raised = {"type": "ValueError", "traceback": "Traceback (most recent call last):\n..."}
    payload = encode({"output": record, "raised": raised})
    response = FunctionResponse(success=True, result=payload, stdout="worker log\n\na\nb\n")
    assert ProgressOutput().rest(response) == record
    assert (response.success, response.failure, response.error_type) == (
        False,
        "exception",
        "ValueError",
    )
    assert response.error == raised["traceback"] and response.stdout is None


def test_the_workers_own_failure_is_its_log_never_the_cells_output() -> None:
    """The published worker's own failure (its --deps did not install) came before the cell
    ran: what it says is kept as a log, which the views show with --verbose only."""
    response = FunctionResponse(success=False, error="error: no such package", stdout="log\n")
    assert ProgressOutput().rest(response) == [
        {"kind": "log", "text": "log\nerror: no such package\n"}
    ]
    assert response.stdout is None
