"""Sessions on RunPod's published standard worker, in real kernels: the same flow as on our own
worker (tests/session/test_sessions.py). There the cell runtime runs in the worker's own
long-lived process, so that process holds the sessions; the worker (worker-flash's own code, or
the stand-in where it is absent: tests/helpers/published.py) is one such process, under the
real runpod SDK job loop, and killing it, then starting a fresh one as RunPod would, is how a
session is lost.

The worker has only its own requirements here, so the 50 MB value is bytes; expected values
come from the same expressions evaluated in the test's kernel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.kernels import LiveKernel, environ
from helpers.published import PublishedWorker, kernel_env, published_worker
from test_sessions import ok, pull_and_reassign, value

# Starts the published worker's stand-in and kernels: not in the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

BIG = "bytes(range(250)) * 200_000"  # 50 MB
USED = "big.count(7) + small['n']"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PublishedWorker]:
    """One published worker behind the endpoint, restartable."""
    with published_worker(tmp_path_factory.mktemp("published-home")) as running:
        yield running


def start_kernel(worker: PublishedWorker) -> LiveKernel:
    """A kernel with the endpoint's key and the extension loaded."""
    with environ(kernel_env(worker.endpoint)):
        live = LiveKernel()
    ok(live, "%load_ext tetra_magic")
    return live


@pytest.fixture
def kernel(worker: PublishedWorker) -> Iterator[LiveKernel]:
    live = start_kernel(worker)
    try:
        yield live
    finally:
        live.close()


@pytest.fixture(scope="module")
def session(worker: PublishedWorker) -> str:
    """The magic line of a cell in session s on the published worker."""
    return f"%%tetra --endpoint {worker.endpoint.url} --session s"


def make(session: str) -> str:
    return f"{session} --out made\nbig = {BIG}\nsmall = {{'n': 3}}\nimport os\nholder = os.getpid()"


def use(session: str) -> str:
    return f"{session} --out used\nprint('ran')\ntotal = {USED}"


def expected_total(kernel: LiveKernel) -> str:
    return value(kernel, USED.replace("big", f"({BIG})").replace("small['n']", "3"))


def resident_bytes(pid: int) -> int:
    """The process's resident memory, as Linux counts it."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def test_a_large_value_stays_on_the_worker_and_later_cells_use_it(
    worker: PublishedWorker, session: str, kernel: LiveKernel
) -> None:
    ok(kernel, make(session))
    assert value(kernel, "big") == "<remote s.big: bytes, 50.0 MB>"
    assert value(kernel, "small") == repr({"n": 3})
    assert int(value(kernel, "holder")) == worker.process.pid  # the worker's own process
    assert int(value(kernel, "made.result_bytes")) < 100_000  # a description, not 50 MB
    run = ok(kernel, use(session))
    assert "ran" in run.stdout and "session s (warm)" in run.stderr
    assert value(kernel, "total") == expected_total(kernel)
    assert int(value(kernel, "used.request_bytes")) < 200_000  # big did not travel back
    assert "pulled big" in ok(kernel, "%tetra pull big").stdout  # all 50 MB, on demand
    assert value(kernel, f"big == ({BIG})") == "True"


def test_pull_brings_a_remote_value_home_and_a_local_reassignment_wins(
    session: str, kernel: LiveKernel
) -> None:
    pull_and_reassign(kernel, session)


def test_a_restarted_worker_is_reported_before_anything_runs_and_replay_rebuilds(
    worker: PublishedWorker, session: str, kernel: LiveKernel
) -> None:
    ok(kernel, make(session))
    ok(kernel, f"{session}\ndoubled = big * 2")
    assert int(value(kernel, "holder")) == worker.process.pid
    worker.restart()  # the process that held the session is gone; a fresh one takes jobs
    run = kernel.run(use(session))
    assert run.error is not None and "ran" not in run.stdout
    message = "\n".join(run.error["traceback"])
    assert "session 's' is gone" in message and "Nothing ran" in message
    assert "In[2]" in message and "In[3]" in message  # the cells that had built it
    assert "The process that answered started at" in message  # the fresh worker's start
    assert kernel.run(use(session)).error is not None  # it does not silently start afresh
    run = ok(kernel, "%tetra replay s")
    assert "replayed" in run.stdout
    run = ok(kernel, use(session))
    assert "ran" in run.stdout
    assert value(kernel, "total") == expected_total(kernel)
    assert value(kernel, "doubled") == "<remote s.doubled: bytes, 100 MB>"
    ok(kernel, f"{session}\nnow = os.getpid()")  # os, imported by the replayed cell
    assert int(value(kernel, "now")) == worker.process.pid


def test_automatic_replay_after_a_restart(
    worker: PublishedWorker, session: str, kernel: LiveKernel
) -> None:
    ok(kernel, "%config TetraMagic.session_replay = True")
    ok(kernel, make(session))
    worker.restart()
    run = ok(kernel, use(session))
    assert "replaying session s" in run.stdout and "ran" in run.stdout
    assert value(kernel, "total") == expected_total(kernel)


def test_a_timed_out_cell_is_stopped_and_the_session_stays(
    worker: PublishedWorker, session: str, kernel: LiveKernel
) -> None:
    """Here --timeout stops the cell inside the worker's process, which lives on: the session
    is kept, as after any failed cell, rather than lost with a killed process; and as after
    any failed cell, what the stopped cell bound is not there (the notebook has none of it)."""
    ok(kernel, make(session))
    loop = "import time\nfor step in range(100):\n    time.sleep(0.1)"
    run = kernel.run(f"{session} --timeout 2\n{loop}")
    assert run.error["ename"] == "TimeoutError"
    run = ok(kernel, f"{session}\nsize = len(big)\nprint('step' in globals())")
    assert "session s (warm)" in run.stderr and run.stdout.strip() == "False"
    assert value(kernel, "size") == value(kernel, f"len({BIG})")


def test_end_frees_the_session_on_the_worker(
    worker: PublishedWorker, session: str, kernel: LiveKernel
) -> None:
    ok(kernel, make(session))
    target = session.replace(" --session s", "")
    run = ok(kernel, f"{target}\nprint('big' in globals(), 'small' in globals())")
    assert run.stdout.strip() == "False False"  # a cell without --session sees none of it
    held = resident_bytes(worker.process.pid)
    run = ok(kernel, "%tetra end s")
    assert "session s ended" in run.stdout and "big" in run.stdout
    assert held - resident_bytes(worker.process.pid) > 40_000_000  # its 50 MB given back
    run = ok(kernel, f"{session}\nprint('big' in globals())")
    assert run.stdout.strip() == "False"
    run = kernel.run(f"{session}\nbig.count(7)")
    assert "UsageError: variable 'big'" in run.stderr and "which has ended" in run.stderr


def test_two_kernels_with_the_same_session_name_stay_apart(
    worker: PublishedWorker, session: str, kernel: LiveKernel
) -> None:
    """Both sessions live in the one process that runs every cell there."""
    other = start_kernel(worker)
    try:
        for live, mine in ((kernel, "first"), (other, "second")):
            ok(live, f"{session}\nmine = {mine!r}")
        for live in (kernel, other):
            ok(live, f"{session}\nimport os\nseen = (mine, os.getpid())")
        assert value(kernel, "seen") == repr(("first", worker.process.pid))
        assert value(other, "seen") == repr(("second", worker.process.pid))
    finally:
        other.close()
