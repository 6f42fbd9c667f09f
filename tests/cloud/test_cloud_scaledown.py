"""RunPod scales idle endpoints down (max workers 2 after 3 days without requests, 0 after 7,
until raised: docs, endpoint configurations, "Idle endpoint scale-down"). Against the loopback
stand-in, which does the same on request: a cell on an endpoint of ours that RunPod lowered
raises it back, says so in one line, and runs; one on someone else's endpoint at 0 is told so
at once, not after the queue timeout; `%tetra end` hands a session's worker back (max workers
0) and its next cell raises it again."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
from helpers.cloud_kernels import ok, run_cloud
from helpers.runpod_fakes import FakeRunPod

# Starts kernels against the RunPod stand-in: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

NAME = r"tetra-magic-{gpu}-[0-9a-f]{{10}}"


def in_step_with(tmp_path: Path, then: callable) -> str:
    """A cell that lets `then()` run between the cells before and after it (in step through
    two files, so a slow machine cannot run it early or late)."""
    done, did = tmp_path / "cell-done", tmp_path / "then-done"

    def wait_then() -> None:
        while not done.exists():
            time.sleep(0.05)
        then()
        did.touch()

    threading.Thread(target=wait_then, daemon=True).start()
    return (
        f"import pathlib, time\npathlib.Path({str(done)!r}).touch()\n"
        f"for _ in range(1200):\n    if pathlib.Path({str(did)!r}).exists():\n"
        "        break\n    time.sleep(0.05)\nelse:\n    raise TimeoutError('never done')"
    )


def updates(fake: FakeRunPod) -> list[dict]:
    return [r.json() for r in fake.calls("updateEndpoint") if r.status == 200]


def test_scaled_down_between_two_cells_the_second_raises_it_and_runs(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    """This kernel checked the endpoint at its first cell; RunPod lowers it to 0 after that.
    The second cell's job finds no worker at all, which looks wrong: the endpoint is asked
    about, raised back to its 3 max workers, and the cell runs, with one line saying so."""
    foreign = fake.add_endpoint("someone-elses", workers_max=0)

    def scale_ours_down() -> None:
        (ours,) = (i for i, e in fake.endpoints.items() if e["name"].startswith("tetra-magic-"))
        fake.scale_down(ours, 0)

    between = in_step_with(tmp_path, scale_ours_down)
    started = time.monotonic()
    first, middle, second, theirs = run_cloud(
        fake,
        tmp_path,
        "%%tetra --gpu A100\n1 + 1",
        between,
        "%%tetra --gpu A100\nprint('ran')\n2 + 2",
        f"%%tetra --endpoint {foreign}\n3 + 3",
    )
    ok(middle)
    assert ok(first).results == ["2"]
    assert ok(second).stdout == "ran\n" and second.results == ["4"]
    (raised,) = [line for line in second.stderr.splitlines() if "RunPod had" in line]
    assert re.fullmatch(
        rf"tetra: RunPod had lowered the max workers of {NAME.format(gpu='a100')} to 0 \(it does"
        r" so to endpoints idle for 3 or 7 days, and to ones whose workers keep failing\);"
        r" raised back to 3",
        raised,
    )
    (ours,) = (e for e in fake.endpoints.values() if e["name"].startswith("tetra-magic-"))
    assert ours["workers"]["max"] == 3 and len(fake.created()) == 1
    assert updates(fake) == [{"workers": {"min": 0, "max": 3, "idleTimeout": 5}}]

    # Someone else's endpoint at 0 is not ours to raise: said at once, the job cancelled.
    assert theirs.error["ename"] == "QueueGaveUp"
    assert theirs.error["evalue"].startswith(
        "endpoint someone-elses has 0 max workers on RunPod, so no worker will take the job"
        " (RunPod sets an endpoint to 0 after 7 days without requests, or when its workers keep"
        " failing to start); raise its max workers in RunPod's console"
    )
    assert theirs.error["evalue"].endswith("was cancelled on the endpoint")
    assert fake.endpoints[foreign]["workers"]["max"] == 0
    assert time.monotonic() - started < 120  # not the queue timeout (20 min)


def test_a_new_kernel_raises_what_idle_days_lowered_before_sending(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    """A week later (this machine's record of last use moved back, as time would): the first
    cell of a new kernel finds its endpoint at 0 (or 2, after 3 days) in RunPod's list, raises
    it before the job is sent, and names the idle days; `%tetra endpoints` shows it back."""
    ok(run_cloud(fake, tmp_path, "%%tetra --gpu A100\n1", "%%tetra --gpu H100\n2")[1])
    ids = {e["name"].split("-")[2]: i for i, e in fake.endpoints.items()}
    fake.scale_down(ids["a100"], 0)
    fake.scale_down(ids["h100"], 2)
    record = tmp_path / "tetra-state" / "endpoints-used.json"
    used = json.loads(record.read_text())
    for gpu, days in (("a100", 8), ("h100", 4)):
        used[ids[gpu]]["used"] -= days * 86400
    record.write_text(json.dumps(used))
    fake.requests.clear()

    a100, h100, listing = run_cloud(
        fake, tmp_path, "%%tetra --gpu A100\n'a'", "%%tetra --gpu H100\n'h'", "%tetra endpoints"
    )
    assert ok(a100).results == ["'a'"] and ok(h100).results == ["'h'"]
    assert re.match(
        rf"tetra: RunPod had scaled {NAME.format(gpu='a100')} down to 0 workers after 7 idle"
        r" days; raised back to 3\n",
        a100.stderr,
    )
    assert re.match(
        rf"tetra: RunPod had scaled {NAME.format(gpu='h100')} down to 2 workers after 3 idle"
        r" days; raised back to 3\n",
        h100.stderr,
    )
    order = [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake.requests if r.method != "GET"]
    assert order == [
        ("PATCH", ids["a100"]),
        ("POST", "run"),
        ("PATCH", ids["h100"]),
        ("POST", "run"),
    ]
    rows = ok(listing).stdout.splitlines()
    assert [re.split(r"\s{2,}", row)[3] for row in rows[1:3]] == ["3", "3"]
    assert rows[3] == "worker quota: 6 of 60 max workers in use (ours 6, other endpoints 0)"


def test_ending_a_session_hands_its_worker_back_and_its_next_cell_raises_it(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    """`%tetra end` sets the session endpoint's max workers to 0 (its idle worker would stay,
    billed, for the session's idle timeout, holding a share of the worker quota); the next cell
    of a session of that name raises it to 1 again, saying why it was 0."""
    first, end, listing, again = run_cloud(
        fake,
        tmp_path,
        "%%tetra --gpu A100 --session s\nx = 1\nx",
        "%tetra end s",
        "%tetra endpoints",
        "%%tetra --gpu A100 --session s\nx = 2\nx",
    )
    assert ok(first).results == ["1"] and ok(again).results == ["2"]
    name = NAME.format(gpu="a100-session-s")
    assert re.fullmatch(
        rf"tetra: session s ended\ntetra: {name} set to 0 max workers: its worker stops and its"
        r" share of the worker quota is free; the session's next cell raises it again\n",
        ok(end).stdout,
    )
    assert re.split(r"\s{2,}", ok(listing).stdout.splitlines()[1])[3] == "0"
    assert "worker quota: 0 of 60 max workers in use" in listing.stdout
    assert re.match(
        rf"tetra: {name} had 0 max workers since `%tetra end s`; raised back to 1\n", again.stderr
    )
    idle = {"min": 0, "idleTimeout": 600}
    assert updates(fake) == [{"workers": {**idle, "max": 0}}, {"workers": {**idle, "max": 1}}]


def test_raising_back_keeps_what_the_user_changed_in_the_console(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    """The idle timeout set by hand on RunPod's console survives the raise: only max workers
    is put back."""

    def console_then_scale_down() -> None:
        (ours,) = (i for i, e in fake.endpoints.items() if e["name"].startswith("tetra-magic-"))
        fake.endpoints[ours]["workers"]["idleTimeout"] = 77
        fake.scale_down(ours, 0)

    first, middle, second = run_cloud(
        fake,
        tmp_path,
        "%%tetra --gpu A100\n1 + 1",
        in_step_with(tmp_path, console_then_scale_down),
        "%%tetra --gpu A100\n2 + 2",
    )
    ok(first), ok(middle)
    assert ok(second).results == ["4"]
    assert updates(fake) == [{"workers": {"min": 0, "max": 3, "idleTimeout": 77}}]
    (ours,) = (e for e in fake.endpoints.values() if e["name"].startswith("tetra-magic-"))
    assert ours["workers"] == {"min": 0, "max": 3, "idleTimeout": 77}
