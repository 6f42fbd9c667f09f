"""Cells on RunPod's published standard worker, which does not stream.

The worker is worker-flash's own code (`../shared/peers/worker-flash-1.0.0`,
tests/helpers/worker_flash.py), started as its image starts it (`python handler.py`) under the
runpod SDK's production job loop, with its pinned requirements in an environment of the tests'
own; where that folder is absent, tests/helpers/published_worker.py, a stand-in that runs
requests the way the published worker's live path does (the module says which, and tests that
need the real code skip). It takes its jobs from our local endpoint's HTTP API (real aiohttp, on
loopback), served in this process with no workers of its own (tests/helpers/published.py): the
same RunPod job API the SDK speaks on RunPod, progress updates included. Kernels reach it with
`--endpoint URL`, as a user reaches any RunPod-compatible endpoint. The SDK logs at DEBUG, its
default (nobody sets RUNPOD_LOG_LEVEL on RunPod).

What a cell shows there is compared with the same cell run at home, in a kernel of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import published as harness
from helpers import worker_flash
from helpers.kernels import (
    CellRun,
    LiveKernel,
    as_local,
    environ,
    private_local_endpoint,
    run_cells,
)
from helpers.polling import until
from helpers.published import REAL, LoopbackEndpoint, PublishedWorker, kernel_env

from tetra_magic.errors import installer_reason

# Starts the published worker's stand-in and kernels: not in the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

NEEDS_REAL = pytest.mark.skipif(
    REAL is None, reason=f"needs worker-flash's code ({worker_flash.folder()} is absent)"
)
# The published worker behind a loopback endpoint, one for this module (helpers/published.py).
worker = harness.worker
published = harness.published

SLOW = "print('first', flush=True)\nimport time\ntime.sleep(3)\nprint('second')\nx = 5\nx * 2"


def test_output_appears_before_the_job_ends_and_exactly_once(
    published: LoopbackEndpoint,
) -> None:
    with environ(kernel_env(published)):
        kernel = LiveKernel()
    try:
        assert kernel.run("%load_ext tetra_magic").error is None
        cell = kernel.execute(f"%%tetra --endpoint {published.url}\n{SLOW}")
        early = kernel.outputs(cell, until=lambda run: "first" in run.stdout, timeout=60)
        assert "second" not in early.stdout and early.results == []  # the job still runs
        done = kernel.outputs(cell, timeout=60)
        assert done.error is None, done.error
        assert done.stdout == "first\nsecond\n" and done.results == ["10"]
        assert kernel.run("x").results == ["5"]
    finally:
        kernel.close()


def test_the_cells_timeout_stops_it_on_a_worker_that_does_not_know_it(
    published: LoopbackEndpoint,
) -> None:
    """The published worker's request has no timeout field; the runtime stops the cell."""
    runs = run_cells(
        "%load_ext tetra_magic",
        f"%%tetra --endpoint {published.url} --timeout 2\nimport time\n"
        "for i in range(100):\n    print(i, flush=True)\n    time.sleep(0.1)\ndone = True",
        f"%%tetra --endpoint {published.url}\nprint('next')",
        "'done' in dir()",
        env=kernel_env(published),
    )
    assert runs[1].error["ename"] == "TimeoutError"
    assert "the cell ran past its 2 s timeout and was stopped" in runs[1].error["evalue"]
    printed = runs[1].stdout.split()
    assert printed == [str(i) for i in range(len(printed))] and 5 < len(printed) < 40
    assert runs[2].stdout == "next\n" and runs[3].results == ["False"]


CELLS = [
    "y = 21\ndef double(v):\n    return 2 * v",
    "%%tetra {target}\nimport sys\nprint('out')\nprint('err', file=sys.stderr)\nz = double(y)"
    "\nz + 1",
    "z",
    "%%tetra {target}\nw = 1\nraise ValueError(f'bad value {{y}}')",
    "'w' in dir()",
    "%%tetra {target}\nfor i in range(3):\n    print(i)",
    "%%tetra {target}\na = [1, 2]\nb = a",
    "a.append(3)\n(a is b, b)",
]


def test_values_and_errors_come_back_as_on_our_worker(
    published: LoopbackEndpoint, tmp_path: Path
) -> None:
    on_published = run_cells(
        "%load_ext tetra_magic",
        *(c.format(target=f"--endpoint {published.url}") for c in CELLS),
        env=kernel_env(published),
    )[1:]
    with private_local_endpoint(tmp_path / "home", workers=1):
        ours = run_cells(
            "%load_ext tetra_magic",
            *(c.format(target="--local") for c in CELLS),
            env={"TETRA_MAGIC_HOME": str(tmp_path / "home"), "TETRA_MAGIC_DISPLAY": "text"},
        )[1:]
    for theirs, mine in zip(on_published, ours, strict=True):
        assert (theirs.results, theirs.stdout) == (mine.results, mine.stdout)
        assert (theirs.error or {}).get("ename") == (mine.error or {}).get("ename")
    assert on_published[1].results == ["43"] and on_published[2].results == ["42"]
    assert "err" in on_published[1].stderr
    assert "bad value 21" in on_published[3].error["evalue"]
    assert on_published[4].results == ["False"]  # a failed cell leaves nothing behind
    assert on_published[7].results == ["(True, [1, 2, 3])"]  # `b = a` is one object at home


def test_a_progress_update_is_the_status_output_while_the_job_runs(
    published: LoopbackEndpoint,
) -> None:
    """What RunPod documents for progress_update, on our endpoint: /status of the running job
    shows the latest update as its output, and the final output replaces it."""
    http = httpx.Client(
        base_url=published.url, headers={"Authorization": f"Bearer {published.token}"}
    )
    source = (
        "def f():\n    import runpod, time\n"
        "    from runpod.serverless.modules.worker_state import JobsProgress\n"
        "    job = {'id': next(iter(JobsProgress())).id}\n"
        "    runpod.serverless.progress_update(job, {'step': 1})\n    time.sleep(2)\n"
        "    return 'done'\n"
    )
    job = http.post("/run", json={"input": {"function_name": "f", "function_code": source}}).json()[
        "id"
    ]
    update = until(
        lambda: (doc := http.get(f"/status/{job}").json()).get("output") and doc, 30, "no update"
    )
    assert update["status"] == "IN_PROGRESS" and update["output"] == {"step": 1}
    final = until(
        lambda: (doc := http.get(f"/status/{job}").json())["status"] == "COMPLETED" and doc,
        30,
        "never completed",
    )
    assert final["output"]["success"] is True and "step" not in final["output"]
    http.close()


DISPLAYS = (
    "%%tetra {target}\nfrom IPython.display import HTML, Image, display\nimport base64\n"
    "print('before')\ndisplay(HTML('<b>table</b>'))\nprint('between')\n"
    "display(Image(base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')))\nprint('after')\n"
)


def test_display_outputs_arrive_in_order_as_on_our_worker(
    published: LoopbackEndpoint, tmp_path: Path
) -> None:
    """The published worker returns displays inside its stdout (live, through progress
    updates): they come out as display outputs among the prints, as from our worker."""
    theirs = run_cells(
        "%load_ext tetra_magic",
        DISPLAYS.format(target=f"--endpoint {published.url}"),
        env=kernel_env(published),
    )[1]
    with private_local_endpoint(tmp_path / "home", workers=1):
        mine = run_cells(
            "%load_ext tetra_magic",
            DISPLAYS.format(target="--local"),
            env={"TETRA_MAGIC_HOME": str(tmp_path / "home"), "TETRA_MAGIC_DISPLAY": "text"},
        )[1]

    def shape(outputs: list) -> list:
        return [(o.output_type, o.get("text"), o.get("data")) for o in outputs]

    assert shape(theirs.outputs) == shape(mine.outputs)
    assert [o.output_type for o in mine.outputs] == ["stream", "display_data"] * 2 + ["stream"]


RAISES = "class ValidationError(ValueError):\n    pass"
RAISING = (
    "err = ValidationError('row 3 is invalid\\ncolumn age is empty')\n"
    "err.add_note('in data.csv')\nraise err"
)
CAUGHT = (
    "import sys\nerror = sys.last_value\n"
    "print(type(error) is ValidationError, isinstance(error, ValueError), repr(str(error)),"
    " error.__notes__)"
)


def test_the_users_own_exception_comes_home_from_the_published_worker(
    published: LoopbackEndpoint,
) -> None:
    """It carries no protocol field of ours: the exception travels as a note in the traceback
    text the worker returns, which the notebook takes off again."""
    remote = run_cells(
        "%load_ext tetra_magic",
        RAISES,
        f"%%tetra --endpoint {published.url}\n{RAISING}",
        CAUGHT,
        env=kernel_env(published),
    )[1:]
    local = run_cells(RAISES, RAISING, CAUGHT)
    assert remote[2].stdout == local[2].stdout and local[2].stdout.startswith("True True")
    error, expected = remote[1].error, local[1].error
    assert (error["ename"], error["evalue"]) == (expected["ename"], expected["evalue"])
    traceback = "\n".join(error["traceback"])
    assert "in data.csv" in traceback and "tetra-exception" not in traceback


# -- the cell's output is the cell's own, as at home --------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A frame as the notebook names it: "Cell In[3], line 8, in f" (ours), "Cell In[3], line 8, in
# f()" (IPython's), then the line's source, ours on the next line, IPython's after "---->".
FRAME = re.compile(r"In\[(\d+)\], line (\d+)(?:, in (\w+))?")


@dataclass
class Ran(CellRun):
    """A cell's run, with its execution count (In[N])."""

    cell: int = 0


def remote_and_home(published: LoopbackEndpoint, *cells: str) -> list[tuple[Ran, CellRun]]:
    """Each cell's run on the published worker, with the same cell's run at home (the magic
    line removed), both in a kernel of their own that ran the same cells before it."""
    target = f"--endpoint {published.url}"
    remote = run_cells(
        "%load_ext tetra_magic",
        *(c.format(target=target) for c in cells),
        env=kernel_env(published),
    )
    home = run_cells("%load_ext tetra_magic", *(as_local(c) for c in cells))
    numbered = [Ran(**vars(run), cell=index) for index, run in enumerate(remote[1:], start=2)]
    return list(zip(numbered, home[1:], strict=True))


def frames(traceback: list[str]) -> list[tuple[str, ...]]:
    """(cell, line, function, source) of each frame the traceback shows."""
    lines = ANSI.sub("", "\n".join(traceback)).splitlines()
    found = []
    for index, line in enumerate(lines):
        if (match := FRAME.search(line)) is None:
            continue
        body = lines[index + 1 : index + 8]
        marked = [b.split("---->", 1)[1] for b in body if "---->" in b]
        source = re.sub(r"^\s*\d+\s", "", marked[0]) if marked else (body[:1] or [""])[0]
        found.append((*match.groups(""), source.strip()))
    return found


def moved(frame: tuple[str, ...], cell: int) -> tuple[str, ...]:
    """A frame of the cell at home as the %%tetra cell numbers it: one line down (the magic
    line is line 1 of the cell the user sees); frames in other cells stay."""
    number, line, *rest = frame
    return (number, str(int(line) + 1), *rest) if number == str(cell) else frame


def assert_as_at_home(remote: Ran, home: CellRun) -> None:
    """The same stdout, stderr and results; the same error, its traceback showing the same
    frames of the user's code and nothing of the worker's."""
    assert (remote.stdout, remote.stderr, remote.results) == (
        home.stdout,
        home.stderr,
        home.results,
    )
    if home.error is None:
        assert remote.error is None, remote.error
        return
    assert remote.error is not None, "the cell failed at home, not remotely"
    assert (remote.error["ename"], remote.error["evalue"]) == (
        home.error["ename"],
        home.error["evalue"],
    )
    shown = frames(remote.error["traceback"])
    assert shown == [moved(frame, remote.cell) for frame in frames(home.error["traceback"])]
    lines = "\n".join(remote.error["traceback"]).splitlines()
    last = ANSI.sub("", home.error["traceback"][-1])
    # a header, each frame with its line of source, the error: no line of the worker's
    assert lines == [lines[0], *lines[1 : 1 + 2 * len(shown)], last], lines
    assert lines[0] == "Traceback (most recent call last):"


FAILS_AFTER_DEPS = (
    "%%tetra {target} --deps six\nimport sys\nprint('loading')\nprint('careful', file=sys.stderr)"
    "\nraise ValueError('no rows')"
)
LOGGED_THEN_FAILED = (
    "%%tetra {target}\nimport logging, time\nprint('one', flush=True)\ntime.sleep(1.5)\n"
    "logging.warning('slow source')\nprint('two')\ndef parse(row):\n"
    "    raise KeyError(row)\nparse('age')"
)
WARNS = (
    "%%tetra {target}\nimport logging\nlogging.warning('x')\nlogging.info('not shown at home')\n"
    "logging.getLogger('mine').error('mine too')\nprint('done')\nlevel = logging.getLogger().level"
)
AFTER = "level"


@NEEDS_REAL
def test_a_failing_cell_after_deps_shows_its_own_output_and_frames(
    published: LoopbackEndpoint,
) -> None:
    """worker-flash logs "Installing Python dependencies" and puts that line in front of the
    cell's stdout; the cell shows only its own prints, its stderr as stderr."""
    [(remote, home)] = remote_and_home(published, FAILS_AFTER_DEPS)
    assert_as_at_home(remote, home)
    assert home.stderr == "careful\n" and home.error["ename"] == "ValueError"


def test_a_cell_that_logged_then_failed_keeps_every_print_once_in_order(
    published: LoopbackEndpoint,
) -> None:
    """A live update shows 'one' while it sleeps; what it printed and logged after that comes
    at the end, once, with the records as the kernel at home shows them."""
    [(remote, home)] = remote_and_home(published, LOGGED_THEN_FAILED)
    assert_as_at_home(remote, home)
    assert home.stdout == "one\ntwo\n" and "slow source" in home.stderr


def test_logging_shows_as_at_home_and_the_worker_keeps_its_own(
    worker: PublishedWorker, published: LoopbackEndpoint
) -> None:
    (remote, home), (level_there, level_home) = remote_and_home(published, WARNS, AFTER)
    assert_as_at_home(remote, home)
    assert home.stderr.startswith("WARNING:root:x\n")
    assert level_there.results == level_home.results  # the cell saw the root logger as at home
    if REAL is not None:  # and worker-flash's own logging is its own again after the cell
        assert not own_lines(worker, "WARNING", "x")  # none of its handlers had the record
        logged = len(own_lines(worker, "INFO", "Installing Python dependencies: ['six']"))
        check = f"%%tetra --endpoint {published.url} --deps six\nprint('ok')"
        run_cells("%load_ext tetra_magic", check, env=kernel_env(published))
        assert (
            len(own_lines(worker, "INFO", "Installing Python dependencies: ['six']")) == logged + 1
        )


def own_lines(worker: PublishedWorker, level: str, message: str) -> list[str]:
    """The lines worker-flash's own log handler wrote with `message` ("<time> | INFO  | ...";
    the SDK's lines are JSON, and quote the responses they send)."""
    line = re.compile(rf"^[\d-]+ [\d:,]+ \| {level}\s* \| {re.escape(message)}$", re.MULTILINE)
    return line.findall(worker.log())


SDK_DEBUG = (
    "%%tetra {target}\nimport sys, time\nfor i in range(8):\n    print('step', i, flush=True)\n"
    "    if i % 3 == 0:\n        print('note', i, file=sys.stderr, flush=True)\n"
    "    time.sleep(0.3)\nprint('end')"
)


def test_the_sdk_logging_at_debug_is_never_the_cells_output(
    worker: PublishedWorker, published: LoopbackEndpoint
) -> None:
    """At DEBUG the SDK prints a line for every progress update it sends, to whatever
    sys.stdout is then: none of them is captured into the cell's output (and fed back in the
    next update, growing); they go to the worker's own log."""
    [(remote, home)] = remote_and_home(published, SDK_DEBUG)
    assert_as_at_home(remote, home)
    log = worker.log()
    assert "Sending Progress Update" in log and "Progress Update Sent" in log


HOME_LOGGING = (
    "import logging, sys, warnings\nlogging.basicConfig(level=logging.DEBUG, stream=sys.stdout,"
    " format='%(levelname)s %(name)s: %(message)s')\nlogging.getLogger('chatty').setLevel("
    "logging.ERROR)\nwarnings.simplefilter('ignore', FutureWarning)"
)
LOGS_AND_WARNS = (
    "%%tetra {target}\nimport logging, warnings\nprint('start')\n"
    "logging.getLogger('model').debug('loading')\nlogging.getLogger('chatty').warning('chatter')\n"
    "warnings.warn('old api', FutureWarning)\nprint('end')"
)


def test_the_notebooks_logging_and_warning_setup_applies_there_too(
    worker: PublishedWorker, published: LoopbackEndpoint
) -> None:
    """The kernel logs at DEBUG to stdout with a format of its own, quiets a logger and a
    warning category: the cell's records show there as at home, among its prints, with none of
    the worker's or the SDK's lines (at DEBUG too), and worker-flash logs as before after it."""
    _, (remote, home) = remote_and_home(published, HOME_LOGGING, LOGS_AND_WARNS)
    assert_as_at_home(remote, home)
    assert home.stdout == "start\nDEBUG model: loading\nend\n" and home.stderr == ""
    if REAL is not None:
        assert not own_lines(worker, "DEBUG", "loading")


MISSING = "tetra-magic-no-such-package-xyz"
NEEDS_MISSING = f"%%tetra {{target}} --deps six,{MISSING}\nran = True\nprint('ran')"


def uv_says_at_home(spec: str, tmp_path: Path) -> str:
    """The installer's reason for `spec`, as uv gives it on this machine."""
    uv = worker_flash._uv()
    subprocess.run([uv, "venv", "--quiet", str(tmp_path / "env")], check=True)
    python = str(tmp_path / "env" / "bin" / "python")
    argv = [uv, "pip", "install", "--dry-run", "--python", python, spec]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode != 0
    reason = installer_reason(done.stdout + done.stderr)
    assert reason is not None and MISSING in reason
    return reason


@NEEDS_REAL
def test_deps_that_cannot_install_end_the_cell_before_it_runs_in_one_sentence(
    published: LoopbackEndpoint, tmp_path: Path
) -> None:
    target = f"--endpoint {published.url}"
    runs = run_cells(
        "%load_ext tetra_magic",
        NEEDS_MISSING.format(target=target),
        "'ran' in dir()",
        NEEDS_MISSING.format(target=f"{target} --verbose"),
        env=kernel_env(published),
    )[1:]
    reason = uv_says_at_home(MISSING, tmp_path)
    failed, after, verbose = runs
    assert (failed.stdout, failed.stderr) == ("", "")  # nothing of the cell, nor of the worker
    error = failed.error["evalue"]
    assert "\n" not in error and failed.error["traceback"] == [f"JobFailed: {error}"]
    assert error.startswith(f"{MISSING} could not be installed") and error.endswith(reason)
    assert "did not run" in error and after.results == ["False"]
    assert verbose.error["evalue"] == error
    assert reason.split(": ")[-1] in verbose.stderr  # the worker's whole log, on request
    assert "Installing Python dependencies" in verbose.stderr and verbose.stdout == ""


@NEEDS_REAL
def test_deps_go_into_the_workers_own_tree_never_this_machines_python(
    worker: PublishedWorker, published: LoopbackEndpoint
) -> None:
    """worker-flash installs with `uv pip install --system`: here that lands in the worker's
    own interpreter tree, not in the machine's Python or the project's venv."""
    cell = f"%%tetra --endpoint {published.url} --deps tomli-w\nimport tomli_w\n"
    cell += "where = tomli_w.__file__"
    runs = run_cells("%load_ext tetra_magic", cell, "where", env=kernel_env(published))
    assert runs[1].error is None, runs[1].error
    where = Path(runs[2].results[0].strip("'"))
    assert worker.home in where.parents
    probe = "import importlib.util as u; print(u.find_spec('tomli_w') is None)"
    base = os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]
    machines = [path for path in ("/usr/bin/python3",) if os.path.exists(path)]
    for python in (sys.executable, base, *machines):
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
        assert done.stdout.strip() == "True", python


EXITS = "%%tetra {target}\nimport sys\nprint('about to exit')\nsys.exit('bye')"


def test_sys_exit_ends_the_cell_at_once_and_the_worker_lives(
    published: LoopbackEndpoint,
) -> None:
    """At home sys.exit() in a cell ends that cell with SystemExit and the kernel goes on; on
    the published worker it must not end the worker's process (and with it the job that
    would report it: the cell would wait forever)."""
    [(remote, home), (after, _)] = remote_and_home(published, EXITS, "%%tetra {target}\n1 + 1")
    assert remote.stdout == home.stdout == "about to exit\n"
    assert remote.error is not None and home.error is not None
    assert (remote.error["ename"], remote.error["evalue"]) == ("SystemExit", "bye")
    assert (home.error["ename"], home.error["evalue"]) == ("SystemExit", "bye")
    assert after.error is None and after.results == ["2"]


MAPPED = "print('item', n)\nif n == 3:\n    raise ValueError(f'bad item {n}')\nsquare = n * n"


@NEEDS_REAL
def test_a_batched_map_runs_each_item_on_its_own_there(published: LoopbackEndpoint) -> None:
    """--map with --batch on the published worker: two items per job, the runtime sent
    along runs them one by one; each item's lines are tagged with its own index, and the
    failing item fails none of its shard-mates."""
    body = "".join(f"        {line}\n" for line in MAPPED.splitlines())
    home = run_cells(
        "n = 3\n" + MAPPED,  # the failing item, at home
        "squares = []\nfor n in range(5):\n    try:\n"
        f"{body}    except ValueError:\n        square = None\n    squares.append(square)",
        "print({'square': squares})",
    )
    cells = run_cells(
        "%load_ext tetra_magic",
        f"%%tetra --endpoint {published.url} --map n in range(5) --batch 2 --out job\n{MAPPED}",
        "print(job.result())\nprint(len(job.jobs))",
        env=kernel_env(published),
    )
    error = cells[1].error
    assert error is not None and error["ename"] == "MapFailed", cells[1]
    failed = f"[3] {home[0].error['ename']}: {home[0].error['evalue']}"
    assert error["evalue"].startswith(f"1 of 5 items failed: {failed}.")
    assert sorted(cells[1].stdout.splitlines()) == sorted(f"[{n}] item {n}" for n in range(5))
    assert cells[2].stdout == home[2].stdout + "3\n"  # the others' values, in three jobs
