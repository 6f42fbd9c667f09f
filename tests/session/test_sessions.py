"""Sessions in real kernels on the local endpoint: a namespace kept on the worker between cells,
references to what stays there, pulling, local reassignment, loss and replay, ending, and two
kernels kept apart.

Expected values come from running the same code in the test's kernel itself, not from
numbers written here. The endpoint has two workers, so a session's cells reach the worker that
holds it only because the endpoint pins them there."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from helpers.kernels import LiveKernel, loaded_kernels, private_local_endpoint

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

LOAD = "%load_ext tetra_magic"
SESSION = "%%tetra --local --session s"
# 50 MB of float64 on the worker, and a small dict that comes home as a value.
MAKE = (
    f"{SESSION} --deps numpy --out made\nimport numpy as np"
    "\nbig = np.arange(6_250_000, dtype=np.float64)\nsmall = {'n': 3}"
    "\nimport os\nholder = os.getppid()"
)
USE = f"{SESSION} --out used\nprint('ran')\ntotal = float(big.sum()) + small['n']"


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home"), workers=2):
        yield


@pytest.fixture
def kernel() -> Iterator[LiveKernel]:
    with loaded_kernels(1) as (live,):
        yield live


def value(kernel: LiveKernel, expression: str) -> str:
    """`expression` evaluated in the kernel, as its repr."""
    run = kernel.run(f"print(repr({expression}))")
    assert run.error is None, run.error
    return run.stdout.strip()


def ok(kernel: LiveKernel, source: str):
    run = kernel.run(source)
    assert run.error is None, (run.error, run.stderr)
    return run


def test_a_large_value_stays_on_the_worker_and_later_cells_use_it(kernel: LiveKernel) -> None:
    ok(kernel, MAKE)
    assert value(kernel, "big") == "<remote s.big: ndarray, 50.0 MB>"
    assert value(kernel, "small") == repr({"n": 3})
    assert int(value(kernel, "made.result_bytes")) < 100_000  # a description, not 50 MB
    run = ok(kernel, USE)
    assert "ran" in run.stdout and "session s (warm)" in run.stderr
    expected = "float(sum(range(6_250_000))) + 3"  # numpy's sum, in plain Python here
    assert value(kernel, "total") == value(kernel, expected)
    assert int(value(kernel, "used.request_bytes")) < 200_000  # big did not travel back


def test_pull_brings_a_remote_value_home_and_a_local_reassignment_wins(kernel: LiveKernel) -> None:
    pull_and_reassign(kernel, SESSION)


def pull_and_reassign(kernel: LiveKernel, session: str) -> None:
    """The pull and local-reassignment flow in session s, whose cells start with `session`
    (tests/session/test_published_sessions.py runs it on the published worker)."""
    ok(kernel, "%config TetraMagic.session_value_limit = 1000")
    ok(kernel, f"{session}\nmid = list(range(1000))\nsmall = {{'n': 3}}")
    assert value(kernel, "mid").startswith("<remote s.mid: list, ")
    ok(kernel, "%tetra pull mid")
    assert value(kernel, "mid == list(range(1000))") == "True"
    ok(kernel, "small = {'n': 100}")
    ok(kernel, f"{session}\nseen = small['n']")
    assert value(kernel, "seen") == "100"
    ok(kernel, "del small")  # the session keeps the newest value it was sent
    ok(kernel, f"{session}\nstill = small['n']")
    assert value(kernel, "still") == "100"


def test_a_changed_home_copy_follows_the_session(kernel: LiveKernel) -> None:
    """A small value that came home is the session's own object there: changed in place by a
    session cell, the notebook's copy changes with it, as an input's does."""
    ok(kernel, f"{SESSION}\nitems = [1]\nalias = items")
    ok(kernel, "mine = items")
    ok(kernel, f"{SESSION}\nitems.append(2)\nsame = alias is items")
    assert value(kernel, "(items, mine is items, same)") == repr(([1, 2], True, True))
    ok(kernel, f"{SESSION}\nalias.append(3)")
    assert value(kernel, "(alias is items, mine)") == repr((True, [1, 2, 3]))


def test_losing_the_worker_is_reported_before_anything_runs_and_replay_rebuilds(
    kernel: LiveKernel,
) -> None:
    ok(kernel, MAKE)
    ok(kernel, f"{SESSION}\ndoubled = big * 2")
    holder = int(value(kernel, "holder"))
    os.kill(holder, signal.SIGKILL)  # the worker process that holds the session
    time.sleep(1)
    run = kernel.run(USE)
    assert run.error is not None and "ran" not in run.stdout
    message = "\n".join(run.error["traceback"])
    assert "session 's' is gone" in message and "Nothing ran" in message
    assert "In[2]" in message and "In[3]" in message  # the cells that had built it
    assert kernel.run(USE).error is not None  # it does not silently start afresh
    run = ok(kernel, "%tetra replay s")
    assert "replayed" in run.stdout
    run = ok(kernel, USE)
    assert "ran" in run.stdout
    expected = "float(sum(range(6_250_000))) + 3"  # numpy's sum, in plain Python here
    assert value(kernel, "total") == value(kernel, expected)
    assert value(kernel, "doubled") == "<remote s.doubled: ndarray, 50.0 MB>"


def test_automatic_replay(kernel: LiveKernel) -> None:
    ok(kernel, "%config TetraMagic.session_replay = True")
    ok(kernel, MAKE)
    os.kill(int(value(kernel, "holder")), signal.SIGKILL)
    time.sleep(1)
    run = ok(kernel, USE)
    assert "replaying session s" in run.stdout and "ran" in run.stdout


def test_end_frees_the_session_and_its_names_do_not_leak(kernel: LiveKernel) -> None:
    ok(kernel, MAKE)
    run = ok(kernel, "%%tetra --local\nprint('big' in globals(), 'small' in globals())")
    assert run.stdout.strip() == "False False"  # a cell without --session sees none of it
    run = ok(kernel, "%tetra sessions")
    assert "big (ndarray, 50.0 MB)" in run.stdout
    run = ok(kernel, "%tetra end s")
    assert "session s ended" in run.stdout and "big" in run.stdout
    run = ok(kernel, f"{SESSION}\nprint('big' in globals())")
    assert run.stdout.strip() == "False"
    run = kernel.run(f"{SESSION}\nbig.sum()")
    assert "UsageError: variable 'big'" in run.stderr and "which has ended" in run.stderr


def test_two_kernels_with_the_same_session_name_stay_apart(kernel: LiveKernel) -> None:
    other = LiveKernel()
    try:
        ok(other, LOAD)
        ok(kernel, f"{SESSION}\nmine = 'first'")
        ok(other, f"{SESSION}\nmine = 'second'")
        ok(kernel, f"{SESSION}\nseen = mine")
        ok(other, f"{SESSION}\nseen = mine")
        assert value(kernel, "seen") == repr("first")
        assert value(other, "seen") == repr("second")
    finally:
        other.close()


def test_the_default_session_and_bad_names(kernel: LiveKernel) -> None:
    ok(kernel, "%tetra session t")
    ok(kernel, "%%tetra --local\nkept = 41")
    ok(kernel, "%%tetra --local\nkept += 1")
    assert value(kernel, "kept") == "42"
    run = ok(kernel, "%%tetra --local --no-session\nprint('kept' in globals())")
    assert run.stdout.strip() == "False"
    run = kernel.run("%%tetra --local --session 'no spaces'\n1")
    assert "--session: 'no spaces' is not a session name" in run.stderr


def test_a_reference_keeps_meaning_its_object_when_the_name_is_bound_again(
    kernel: LiveKernel,
) -> None:
    """`baseline = model`, then a session cell makes a new `model`: as in a kernel, baseline
    is still the old one, in the session and when pulled."""
    ok(
        kernel,
        f"{SESSION}\nclass Model:\n    def __init__(self, v):\n        self.v = v\n"
        "        self.weights = bytes(2_000_000)\nmodel = Model(1)",
    )
    ok(kernel, "baseline = model")
    ok(kernel, f"{SESSION}\nmodel = Model(2)\nseen = (baseline.v, model.v)")
    assert value(kernel, "seen") == "(1, 2)"
    assert value(kernel, "model.pull().v") == "2"
    ok(kernel, "del baseline")  # its value is freed on the worker at the next cell
    ok(
        kernel,
        f"{SESSION}\nkept = sorted(next(iter(__import__('sys').modules["
        "'tetra_runtime.sessions'].SESSIONS.values())).kept)",
    )
    assert value(kernel, "kept") == repr(["1.model"])


def test_what_the_session_already_holds_is_not_sent_again(kernel: LiveKernel) -> None:
    """A large notebook value a session cell read, and a value pulled home, go back as
    references to the session's own objects while they are unchanged; changed here, they are
    sent; changed there, the notebook's copy follows."""
    ok(kernel, "home_big = 'h' * 5_000_000")
    ok(kernel, f"{SESSION} --out first\nsize = len(home_big)")
    ok(kernel, f"{SESSION} --out second\nsize = len(home_big)")
    assert int(value(kernel, "first.request_bytes")) > 5_000_000
    assert int(value(kernel, "second.request_bytes")) < 200_000
    ok(kernel, f"{SESSION}\ndata = list(range(300_000))")
    ok(kernel, "%tetra pull data")
    ok(kernel, f"{SESSION} --out third\ndata.append(-1)")
    assert int(value(kernel, "third.request_bytes")) < 200_000
    assert value(kernel, "(type(data).__name__, data[-2:])") == repr(("list", [299_999, -1]))
    ok(kernel, "data.append(-2)")
    ok(kernel, f"{SESSION}\ntail = data[-3:]")
    assert value(kernel, "tail") == repr([299_999, -1, -2])


def test_a_failed_cell_leaves_the_session_as_it_was(kernel: LiveKernel) -> None:
    """As in the notebook, whose variables a failed remote cell leaves alone."""
    ok(kernel, f"{SESSION}\nn = 1")
    run = kernel.run(f"{SESSION}\nn = 2\nm = 10\nraise ValueError('boom')")
    assert run.error["ename"] == "ValueError"
    ok(kernel, f"{SESSION}\nafter = (n, 'm' in globals())")
    assert value(kernel, "(n, after)") == repr((1, (1, False)))


def test_a_value_the_kernel_cannot_load_stays_as_a_reference(kernel: LiveKernel) -> None:
    """The kernel has no numpy: a small array cannot load here, so it stays in the session,
    usable there, rather than being dropped with a note."""
    ok(kernel, f"{SESSION} --deps numpy\nimport numpy as np\nsmall_array = np.arange(10)")
    assert value(kernel, "small_array") == "<remote s.small_array: ndarray, 80 bytes>"
    ok(kernel, f"{SESSION}\ntotal = int(small_array.sum())")
    assert value(kernel, "total") == value(kernel, "sum(range(10))")


def test_replay_asks_before_rebuilding_a_live_session(kernel: LiveKernel) -> None:
    ok(kernel, f"{SESSION}\nlog = [1]")
    run = kernel.run("%tetra replay s")
    assert "session s is not lost; `%tetra replay --force s`" in run.stderr
    run = ok(kernel, "%tetra replay --force s")
    assert "replayed" in run.stdout


def test_a_cell_killed_by_its_timeout_takes_the_session_and_says_so(kernel: LiveKernel) -> None:
    """On our worker --timeout kills the process that holds the session: the failing cell
    says the session went with it, and the next one says why before anything runs."""
    ok(kernel, f"{SESSION}\nx = 1")
    run = kernel.run(f"{SESSION} --timeout 1\nimport time\ntime.sleep(30)")
    assert run.error is not None and "tetra: session s is lost" in run.stderr
    run = kernel.run(f"{SESSION}\nprint('ran')")
    message = "\n".join(run.error["traceback"])
    assert "ran past its --timeout" in message and "ran" not in run.stdout


def test_pulled_and_aliased_references_keep_their_objects(kernel: LiveKernel) -> None:
    """The old value behind a reference stays usable after it is pulled home (`%tetra pull`,
    `.pull()`), travels as a reference while unchanged, and two names for one remote object
    are one reference."""
    ok(kernel, f"{SESSION}\nmodel = [bytes(2_000_000), 'OLD']\nsame = model")
    assert value(kernel, "same is model") == "True"
    ok(kernel, "baseline = model\nthird = model")
    ok(kernel, f"{SESSION}\nmodel = [bytes(2_000_000), 'NEW']")
    assert value(kernel, "baseline").startswith("<remote s.model (earlier): list")
    ok(kernel, "%tetra pull baseline")
    ok(kernel, "copy = third.pull()\ndel third")
    ok(kernel, f"{SESSION} --out job\nseen = (baseline[-1], copy[-1], model[-1])")
    assert value(kernel, "seen") == repr(("OLD", "OLD", "NEW"))
    assert int(value(kernel, "job.request_bytes")) < 200_000
    ok(kernel, "%tetra end s")
    run = kernel.run("model.pull()")
    assert "which has ended" in "\n".join(run.error["traceback"])


def test_a_failed_cells_in_place_change_is_undone_in_the_session(kernel: LiveKernel) -> None:
    ok(kernel, f"{SESSION}\nrows = ['made']")
    run = kernel.run(f"{SESSION}\nrows.append('failing')\n1 / 0")
    assert run.error["ename"] == "ZeroDivisionError"
    ok(kernel, f"{SESSION}\nthere = list(rows)")
    assert value(kernel, "(rows, there)") == repr((["made"], ["made"]))
