"""Background cells (`%%tetra --bg`), in real kernels on a real local endpoint: the kernel is
free while the job runs, its output still shows in its own cell, and its values land between
later cells, never during one, and never over a name changed at home meanwhile.

A background cell here waits for a file the test creates, so the test decides when its job
ends, rather than sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers.kernels import LiveKernel, loaded_kernels, run_cells
from helpers.polling import until

from tetra_magic.local import launcher

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow


@pytest.fixture
def kernel() -> Iterator[LiveKernel]:
    with loaded_kernels(1) as (kernel,):
        yield kernel


def gated(go: Path, body: str, options: str = "") -> str:
    """A background cell that prints, waits until `go` exists, then runs `body`."""
    return (
        f"%%tetra --local --bg {options}\nimport os, time\nprint('started')\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n{body}"
    )


BODY = "squares = [n * n for n in range(5)]\ntotal = sum(squares)\nprint('done', total)"


def test_the_kernel_is_free_and_values_land_between_cells(
    kernel: LiveKernel, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    expected = run_cells(BODY, "print(squares, total)")[1].stdout  # the cell run at home
    submitted = kernel.execute(gated(go, BODY, "--out job"))
    cell = kernel.outputs(submitted)
    assert cell.error is None and "background job [1] submitted" in cell.stderr, cell

    # The kernel runs other cells meanwhile; one that reads `total` is told it is not in yet.
    assert kernel.run("other = 2 + 2\nprint(other)").stdout == "4\n"
    reading = kernel.run("try:\n    print(total)\nexcept NameError:\n    print(None)")
    assert reading.stdout == "None\n"
    assert "total still being computed by background job [1]" in reading.stderr, reading

    # The job ends while a cell runs: nothing lands during that cell...
    during = kernel.run(
        f"import time\nopen({str(go)!r}, 'w').close()\njob.wait(60)\ntime.sleep(0.5)\n"
        "print(job.status.value, 'total' in globals())"
    )
    assert during.stdout == "COMPLETED False\n", during
    # ...and everything has landed by the next one, equal to the cell run at home.
    assert kernel.run("print(squares, total)").stdout == expected
    # What the job printed shows in its own cell, under the submission line.
    shown = kernel.later(submitted, lambda run: "done" in run.stdout)
    assert shown.stdout.splitlines()[-2:] == ["started", "done 30"], shown
    assert (
        kernel.run("print(sorted(job.result()))").stdout == "['os', 'squares', 'time', 'total']\n"
    )


def test_a_name_changed_at_home_meanwhile_is_kept(kernel: LiveKernel, tmp_path: Path) -> None:
    go = tmp_path / "go"
    assert kernel.run("total = 'before'").error is None
    assert kernel.run(gated(go, BODY, "--out job")).error is None
    # `import os, time` here too binds the same modules the job imports: no news.
    changed = kernel.run(f"import os, time\ntotal = 'mine'\nopen({str(go)!r}, 'w').close()")
    assert changed.error is None and changed.stderr == "", changed
    waited = kernel.run("%tetra wait\nprint(total, squares)")
    assert waited.stdout == "mine [0, 1, 4, 9, 16]\n", waited
    assert waited.stderr.splitlines() == [  # nothing about waiting: the cell waits first
        "tetra: background job [1] did not write total: changed in the notebook since the job"
        " started (the job's values: job.result())"
    ]
    assert kernel.run("print(job.result()['total'])").stdout == "30\n"


def test_a_failed_background_cell_writes_nothing_and_says_so_twice(
    kernel: LiveKernel, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    failing = "partial = 1\nraise ValueError('bad input')"
    home = run_cells(failing)[0]  # the same cell at home
    submitted = kernel.execute(gated(go, failing))
    kernel.outputs(submitted)
    go.touch()
    # Its own cell shows the failure as a failed cell does, the same error as at home.
    shown = kernel.later(submitted, lambda run: run.error is not None)
    assert "background job [1] failed" in shown.stderr, shown
    assert shown.error is not None
    assert (shown.error["ename"], shown.error["evalue"]) == (home.error["ename"], "bad input")
    assert home.error["evalue"] == "bad input"
    after = kernel.run("%tetra wait\nprint('partial' in globals())")
    assert after.stdout == "False\n"
    assert "background job [1] failed (ValueError: bad input); nothing was written back" in (
        after.stderr
    )
    assert "failed" not in kernel.run("print('next')").stderr  # told once


def test_cancel_a_running_background_cell(kernel: LiveKernel, tmp_path: Path) -> None:
    submitted = kernel.execute(gated(tmp_path / "never", BODY, "--out job"))
    kernel.outputs(submitted)
    kernel.later(submitted, lambda run: "started" in run.stdout)
    cancelled = kernel.run("%tetra cancel 1")
    assert cancelled.stdout == "tetra: job [1] cancelled\n", cancelled
    after = kernel.run("%tetra wait\nprint(job.status.value, 'total' in globals())")
    assert after.stdout == "CANCELLED False\n", after
    # cancelled as asked: said so, not reported as a failure
    assert after.stderr == "tetra: background job [1] was cancelled; nothing was written back\n"
    listed = kernel.run("%tetra jobs").stdout.splitlines()
    assert listed[1].split()[:3] == ["[1]", "<tetra-cell-2>", "CANCELLED"], listed


def test_a_kernel_that_exits_cancels_its_running_background_cells(tmp_path: Path) -> None:
    kernel = LiveKernel()
    try:
        assert kernel.run("%load_ext tetra_magic").error is None
        submitted = kernel.execute(gated(tmp_path / "never", BODY, "--out job"))
        kernel.outputs(submitted)
        kernel.later(submitted, lambda run: "started" in run.stdout)
        job_id = kernel.run("print(job.id)").stdout.strip()
        kernel.client.stop_channels()
        kernel.manager.shutdown_kernel(now=False)  # as a restart does: the kernel exits itself
    finally:
        kernel.close()
    endpoint = launcher.ensure_running()  # the kernels' local endpoint
    url = f"{endpoint.url}/status/{job_id}"
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}

    def status() -> str:
        return requests.get(url, headers=headers, timeout=5).json()["status"]

    until(lambda: status() == "CANCELLED", 30, f"job {job_id} cancelled on the endpoint")


def test_background_cells_in_a_session_run_in_order(kernel: LiveKernel, tmp_path: Path) -> None:
    go = tmp_path / "go"
    later = "print(total, sum(squares))"
    expected = run_cells(BODY, later)[1].stdout  # the two cells, one after the other, at home
    submitted = kernel.execute(gated(go, BODY, "--session s --out job"))
    assert kernel.outputs(submitted).error is None
    # The kernel is free for cells outside the session meanwhile.
    assert kernel.run("%%tetra --local\nprint(3 * 3)").stdout == "9\n"
    # The session's next cell waits for the one running before it, says so, then runs on the
    # session as that one left it.
    waiting = kernel.execute(f"%%tetra --local --session s\n{later}")
    told = kernel.outputs(waiting, until=lambda run: "waiting" in run.stderr)
    assert "waiting for background job [1] of session s first" in told.stderr, told
    go.touch()
    ran = kernel.outputs(waiting)
    assert ran.error is None and ran.stdout == expected, ran
    assert "still being computed" not in ran.stderr  # it waits: it sees the job's values
    assert kernel.run("print(total)").stdout == expected.split()[0] + "\n"
    # The session's line for the background cell names it, in whatever cell it lands.
    assert "tetra: background job [1]: session s (new)" in ran.stderr, ran
    listed = kernel.run("%tetra sessions").stdout  # both cells are the session's record
    assert listed.startswith("s: 2 cells"), listed


def test_a_background_cells_files_come_home_with_its_values(tmp_path: Path) -> None:
    write = "with open('out.txt', 'w') as f:\n    f.write('made there')"
    runs = run_cells(
        "%load_ext tetra_magic",
        f"%%tetra --local --bg --get out.txt\n{write}",
        "%tetra wait\nprint(open('out.txt').read())",
        cwd=tmp_path,
    )
    assert runs[1].error is None, runs[1]
    assert runs[2].stdout == "made there\n", runs[2]
    assert "tetra: got out.txt" in runs[2].stderr, runs[2]


def test_a_background_map_lands_its_lists_between_cells(kernel: LiveKernel, tmp_path: Path) -> None:
    go = tmp_path / "go"
    body = "square = n * n\nprint('item', n)"
    loop = f"square_list = []\nfor n in range(4):\n    {body.replace(chr(10), chr(10) + '    ')}"
    home = run_cells(f"{loop}\n    square_list.append(square)", "print(square_list)")[1].stdout
    submitted = kernel.execute(gated(go, body, "--map n in range(4) --out sweep"))
    cell = kernel.outputs(submitted)
    assert cell.error is None and "background job [1] submitted (4 items" in cell.stderr, cell
    reading = kernel.run("try:\n    print(square)\nexcept NameError:\n    print(None)")
    assert reading.stdout == "None\n" and "square still being computed" in reading.stderr
    go.touch()
    waited = kernel.run("%tetra wait\nprint(square)")
    assert waited.stdout == home, waited
    shown = kernel.later(submitted, lambda run: run.stdout.count("item") == 4)
    assert sorted(line for line in shown.stdout.splitlines() if "item" in line) == [
        f"[{n}] item {n}" for n in range(4)
    ]
    listed = kernel.run("%tetra jobs").stdout.splitlines()
    assert listed[1].split()[2] == "COMPLETED", listed


def test_a_failed_background_map_writes_nothing_and_keeps_the_others(
    kernel: LiveKernel, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    body = "if n == 2:\n    raise ValueError('two is bad')\nsquare = n * n"
    assert kernel.run(gated(go, body, "--map n in range(4) --out sweep")).error is None
    go.touch()
    after = kernel.run("%tetra wait\nprint('square' in globals(), sweep.result()['square'])")
    assert after.stdout == "False [0, 1, None, 9]\n", after
    assert "background job [1] failed (MapFailed: 1 of 4 items failed" in after.stderr, after


def test_ctrl_c_stops_the_waiting_not_the_job(kernel: LiveKernel, tmp_path: Path) -> None:
    go = tmp_path / "go"
    expected = run_cells(BODY, "print(total)")[1].stdout
    assert kernel.run(gated(go, BODY)).error is None
    waiting = kernel.execute("%tetra wait")
    time.sleep(1)  # in the wait: nothing the wait shows tells when it has started
    kernel.interrupt()
    stopped = kernel.outputs(waiting)
    assert stopped.stderr == "tetra: stopped waiting; still running: [1]\n", stopped
    go.touch()
    assert kernel.run("%tetra wait\nprint(total)").stdout == expected


def test_a_background_cells_last_value_shows_in_its_own_cell(
    kernel: LiveKernel, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    home = run_cells(f"{BODY}\n{{'total': total, 'twice': 2 * total}}")[0].results
    submitted = kernel.execute(gated(go, f"{BODY}\n{{'total': total, 'twice': 2 * total}}"))
    assert kernel.outputs(submitted).results == []  # nothing yet: the cell returned at once
    go.touch()
    shown = kernel.later(submitted, lambda run: bool(run.results))
    assert shown.results == home, shown
