"""IPython's own magics and asyncio in a remote cell, as the same cells behave at home.

`%timeit` and `%time` print IPython's lines: the timings differ between two runs, so those are
compared by shape (every duration, and the loop count IPython chose by timing, made a
placeholder); everything else, values included, must be equal. Magics that act on the kernel
itself are refused by name, with the reason. A cell runs in one event loop, as it does in the
kernel's: a task its statements start is the one its last line awaits.

The same cells run in two kernels once for the module (tests/helpers/twins.py); each test reads
its own cells' outputs.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import published as harness
from helpers.kernels import CellRun, private_local_endpoint, run_cells
from helpers.published import LoopbackEndpoint, kernel_env
from helpers.twins import Remote, Twins, assert_same, run_twins, seen

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

# The published worker behind a loopback endpoint, for the test that runs there.
worker = harness.worker
published = harness.published

DEFINE = "def f(n):\n    return sum(range(n))"
TIMEIT_O = """\
r = %timeit -o -n 20 -r 3 f(1000)
facts = (r.loops, r.repeat, len(r.all_runs), len(r.timings), r.best <= r.average <= r.worst)
facts + (r.stdev >= 0, r.compile_time >= 0)"""
TASK = """\
import asyncio

async def work(n):
    await asyncio.sleep(0.01)
    return n * 2

task = asyncio.create_task(work(21))
await task"""
GATHER = "await asyncio.gather(*(asyncio.create_task(work(n)) for n in range(3)))"
NO_AWAIT = (
    "asyncio.get_running_loop() is asyncio.get_event_loop(), asyncio.get_event_loop().is_running()"
)
UNAWAITED = "async def ping():\n    return 1\n\nping()\nNone"

CELLS: dict[str, str | Remote] = {
    "define": DEFINE,
    "timeit -o": Remote(TIMEIT_O),
    "result at home": (
        "r, type(r).__module__, type(r).__name__, r.loops, r.best == min(r.all_runs) / r.loops"
    ),
    "timeit": Remote("%timeit f(100)"),
    "time print": Remote("%time print('hi')"),
    "time value": Remote("x = %time f(10)\nx"),
    "value at home": "x",
    "who": Remote("%who"),
    "cell magic": Remote("%%timeit\nf(10)"),
    "task": Remote(TASK),
    "gather": Remote(GATHER),
    "no await": Remote(NO_AWAIT),
    "asyncio.run": Remote("asyncio.run(work(1))"),
    "unawaited": Remote(UNAWAITED),
    "a name": "greeting = 'world'",
    "env from a name": Remote("%env GREETING=$greeting\nimport os\nos.environ['GREETING']"),
}
AT = {name: index for index, name in enumerate(CELLS)}


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home")):
        yield run_twins(*CELLS.values())


def cells(twins: Twins, *names: str) -> Twins:
    return Twins([twins.local[AT[n]] for n in names], [twins.remote[AT[n]] for n in names])


def shape(text: str) -> str:
    """IPython's timing lines with their durations and chosen loop count as placeholders, and
    without the lines that only some runs print (a slow run's warning, a long compile)."""
    kept = [
        line
        for line in text.splitlines()
        if not line.startswith(("The slowest run took", "Compiler time:", "Compiler :"))
    ]
    text = "\n".join(kept)
    text = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)? (ns|μs|ms|s)\b", "<t>", text)
    text = re.sub(r"\d+min( <t>)?|\d+h( \d+min)?", "<t>", text)
    return re.sub(r"[\d,]+ (loops?) each", r"<n> \1 each", text)


def same_shape(local: CellRun, remote: CellRun) -> None:
    assert local.error is None, local.error
    assert remote.error is None, (remote.error, remote.stderr)
    assert shape(remote.stdout) == shape(local.stdout), (remote.stdout, local.stdout)
    assert [shape(r) for r in remote.results] == [shape(r) for r in local.results]
    assert "was not brought back" not in remote.stderr, remote.stderr


def test_timeit_o_gives_ipythons_result_usable_in_the_cell_and_at_home(twins: Twins) -> None:
    pair = cells(twins, "timeit -o", "result at home")
    for local, remote in zip(pair.local, pair.remote, strict=True):
        same_shape(local, remote)
    # the explicit -n and -r are kept as they are
    assert pair.remote[0].stdout.endswith("(mean ± std. dev. of 3 runs, 20 loops each)\n")
    assert pair.remote[0].results == pair.local[0].results  # every fact about r, equal
    assert pair.remote[1].results[0].startswith("(<TimeitResult : ")


def test_timeit_prints_ipythons_line_with_the_loop_count_chosen_as_there(twins: Twins) -> None:
    local, remote = twins.local[AT["timeit"]], twins.remote[AT["timeit"]]
    same_shape(local, remote)
    loops = re.search(r"of 7 runs, ([\d,]+) loops each\)$", remote.stdout.strip())
    assert loops is not None, remote.stdout
    assert re.fullmatch(r"1(,000)*|10(,000)*|100(,000)*", loops[1])  # a power of ten


def test_time_prints_ipythons_lines_and_gives_the_value(twins: Twins) -> None:
    pair = cells(twins, "time print", "time value", "value at home")
    for local, remote in zip(pair.local, pair.remote, strict=True):
        same_shape(local, remote)
    assert pair.remote[0].stdout.startswith("hi\nCPU times: user ")
    assert pair.remote[1].results == pair.local[1].results  # x = %time f(10): the value
    assert pair.remote[2].results == pair.local[2].results


def test_a_magic_that_acts_on_the_kernel_is_refused_by_name_with_the_reason(
    twins: Twins,
) -> None:
    local, remote = twins.local[AT["who"]], twins.remote[AT["who"]]
    assert local.error is None and "f" in local.stdout.split()
    assert remote.error["ename"] == "NotImplementedError"
    message = remote.error["evalue"]
    assert message.startswith("%who is not available in a %%tetra cell")
    assert "the notebook's variables, which live in the kernel" in message
    assert "Run it in a cell without %%tetra" in message


def test_a_cell_magic_under_tetra_is_refused_naming_the_line_magic(twins: Twins) -> None:
    local, remote = twins.local[AT["cell magic"]], twins.remote[AT["cell magic"]]
    assert local.error is None and "loops each)" in local.stdout
    assert remote.error["ename"] == "NotImplementedError"
    assert "%%timeit in a %%tetra cell" in remote.error["evalue"]
    assert "`%timeit statement`" in remote.error["evalue"]


def test_a_task_created_then_awaited_on_the_last_line_runs_in_one_loop(twins: Twins) -> None:
    assert_same(cells(twins, "task", "gather"))
    assert twins.local[AT["task"]].results == ["42"]
    assert twins.remote[AT["gather"]].results == ["[0, 2, 4]"]


def test_a_cell_without_await_runs_in_a_loop_as_at_home(twins: Twins) -> None:
    """The kernel runs every cell in its event loop, so a cell may reach it without awaiting
    anything, and asyncio.run() is refused there: the same remotely."""
    assert_same(cells(twins, "no await", "asyncio.run"))
    assert twins.remote[AT["no await"]].results == ["(True, True)"]
    assert twins.remote[AT["asyncio.run"]].error["ename"] == "RuntimeError"


def test_a_coroutine_never_awaited_is_reported_at_the_cells_line(twins: Twins) -> None:
    local, remote = twins.local[AT["unawaited"]], twins.remote[AT["unawaited"]]
    assert seen(remote) == seen(local)
    warning = "RuntimeWarning: coroutine 'ping' was never awaited\n  ping()\n"
    assert warning in local.stderr, local.stderr
    assert warning in remote.stderr, remote.stderr
    line = re.search(r":(\d+): RuntimeWarning", remote.stderr)
    assert line is not None and int(line[1]) == 5  # the cell's line 4, after the %%tetra line
    assert "tetra_runtime" not in remote.stderr and "asyncio" not in remote.stderr


def test_timeit_o_and_a_task_on_the_published_worker(published: LoopbackEndpoint) -> None:
    """The result object comes home from RunPod's worker too, which has no IPython; a cell's
    task runs in the cell's own loop there, not in the loop the worker's handler runs in, and
    that one goes on serving the next cell."""
    target = f"%%tetra --endpoint {published.url}\n"
    runs = run_cells(
        "%load_ext tetra_magic",
        DEFINE,
        target + TIMEIT_O,
        "r.loops, r.repeat, type(r).__name__",
        target + TASK,
        target + NO_AWAIT,
        env=kernel_env(published),
    )
    remote, home = runs[2], runs[3]
    assert remote.error is None, (remote.error, remote.stderr)
    assert re.fullmatch(
        r"\S+ \S+ ± \S+ \S+ per loop \(mean ± std\. dev\. of 3 runs, 20 loops each\)\n",
        remote.stdout,
    ), remote.stdout
    assert remote.results == ["(20, 3, 3, 3, True, True, True)"]
    assert home.results == ["(20, 3, 'TimeitResult')"]
    assert runs[4].results == ["42"], (runs[4].error, runs[4].stderr)
    assert runs[5].results == ["(True, True)"], (runs[5].error, runs[5].stderr)


def test_env_expands_the_notebooks_names_as_at_home(twins: Twins) -> None:
    """`%env NAME=$name`: IPython substitutes the notebook's value before the magic runs."""
    found = cells(twins, "env from a name")
    assert found.local[0].results == ["'world'"]
    assert found.remote[0].results == found.local[0].results
    assert found.remote[0].stdout == found.local[0].stdout


def test_a_refused_asyncio_run_leaves_no_warning_in_a_later_cell() -> None:
    """The refused run's coroutine is collected in a later cell: at home no word of it."""
    failing = Remote("import asyncio\nasync def main():\n    return 5\nasyncio.run(main())")
    later = Remote("import gc\ngc.collect()\nprint('next cell')")
    with private_local_endpoint(Path(tempfile.mkdtemp(prefix="tetra-home-"))):
        twins = run_twins(failing, Remote("print('b')"), later)
    assert twins.remote[0].error is not None and twins.local[0].error is not None
    assert twins.remote[2].stdout == twins.local[2].stdout == "next cell\n"
    assert twins.remote[2].stderr == twins.local[2].stderr == "", twins.remote[2].stderr
