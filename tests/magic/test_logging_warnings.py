"""A remote cell logs and warns as the same cell does at home, and a module the worker lacks
says which --deps would bring it.

The kernel's logging setup (the root logger's level, its handlers on the cell's stdout or
stderr with their formats, the levels of named loggers) and its warning filters (IPython's
own included) apply to the cell on the worker, and only to it; the magic's own logging (its
HTTP requests) never shows. Each remote cell is compared with the very same cells run in a
plain kernel: the expected output is never written down. The in-process tests at the top run
in the fast tier; those that start kernels are marked slow.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.kernels import CellRun, as_local, private_local_endpoint, run_cells

from tetra_magic.errors import import_hint
from tetra_magic.runtime import at_home

LOAD = "%load_ext tetra_magic"
# What the magic's own logging would look like, were any of it to reach a cell's output.
OURS = re.compile(r"httpx|httpcore|runpod|tetra_magic|HTTP Request", re.IGNORECASE)


# ---- in process: the setup travels as data, and the worker gets its own back --------------


@pytest.fixture
def clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("chatty").level
    with warnings.catch_warnings():
        yield
    root.handlers, _, _ = saved
    root.setLevel(saved[1])
    logging.getLogger("chatty").setLevel(saved[2])


def test_the_setup_applies_for_the_cell_and_the_workers_own_comes_back(
    clean_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    root.handlers = []
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="{levelname}|{message}", style="{"
    )
    logging.getLogger("chatty").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.filterwarnings("ignore", message="quiet")
    home = at_home.describe()
    # the worker's own: a handler of its own on the root, at DEBUG, warnings all shown
    worker_handler = logging.StreamHandler(sys.stderr)
    root.handlers = [worker_handler]
    root.setLevel(logging.DEBUG)
    logging.getLogger("chatty").setLevel(logging.NOTSET)
    warnings.resetwarnings()
    worker_filters = list(warnings.filters)

    with warnings.catch_warnings(record=True) as caught:
        restore = at_home.for_this_cell(home)
        logging.info("from the cell")
        logging.getLogger("chatty").warning("not shown")
        logging.getLogger("tetra_magic.http").warning("not the cell's")
        warnings.warn("quiet please", stacklevel=1)
        warnings.warn("old", DeprecationWarning, stacklevel=1)
        warnings.warn("loud", stacklevel=1)
        logging.getLogger("its.own").addHandler(logging.StreamHandler(sys.stdout))
        restore()

    assert capsys.readouterr().out == "INFO|from the cell\n"
    assert [str(w.message) for w in caught] == ["loud"]
    assert root.handlers == [worker_handler] and root.level == logging.DEBUG
    assert logging.getLogger("chatty").level == logging.NOTSET
    assert logging.getLogger("its.own").handlers == []
    assert warnings.filters == worker_filters


def test_a_filter_for_a_packages_warning_needs_no_import_on_the_worker() -> None:
    """A category is matched by its name when a warning is checked: the filter for a class of
    the notebook's own (or of a package the cell imports later) holds for the cell's class of
    that name."""

    class Local(UserWarning):
        pass

    Local.__qualname__ = "Noisy"  # as if defined at a notebook's top level
    Local.__module__ = "__main__"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Local)
        home = at_home.describe()
    with warnings.catch_warnings(record=True) as caught:
        restore = at_home.for_this_cell(home)
        warnings.simplefilter("always", UserWarning)
        warnings.filters.append(warnings.filters.pop(0))  # the notebook's filter first again
        warnings.warn("hidden", Local, stacklevel=1)
        warnings.warn("shown", UserWarning, stacklevel=1)
        restore()
    assert [str(w.message) for w in caught] == ["shown"]


@pytest.mark.parametrize(
    ("module", "install"),
    [("sklearn", "scikit-learn"), ("cv2", "opencv-python"), ("PIL", "pillow")],
)
def test_the_hint_names_the_package_to_install(module: str, install: str) -> None:
    text = f"Traceback ...\nModuleNotFoundError: No module named '{module}'\n"
    assert import_hint(text) == (
        f"tetra: the worker has no module '{module}'; add --deps {install} to the %%tetra line"
    )


def test_a_name_the_table_does_not_know_is_suggested_with_a_caveat() -> None:
    """`import tabulatee` (a typo, or a helper missing from beside the notebook): a package of
    that name on PyPI may be anyone's."""
    text = "Traceback ...\nModuleNotFoundError: No module named 'tabulatee'\n"
    assert import_hint(text) == (
        f"tetra: the worker has no module 'tabulatee', and none is beside the notebook"
        f" ({Path.cwd()}); if it is a package on PyPI, add --deps tabulatee to the %%tetra line"
        " (check the spelling)"
    )


def test_no_hint_where_deps_would_not_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hint(name: str, deps: tuple[str, ...] = ()) -> str | None:
        return import_hint(f"ModuleNotFoundError: No module named '{name}'", deps)

    assert hint("sklearn.linear_model") is None  # a submodule: the package is there
    assert hint("sklearn", ("scikit-learn>=1.3",)) is None  # asked for already
    assert import_hint("ValueError: No module named 'x'") is None
    (tmp_path / "helpers_of_mine.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert hint("helpers_of_mine") is None  # a file of the notebook's folder travels itself


# ---- in kernels: the same cells at home and remote ---------------------------------------


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home")):
        yield


def twins(*cells: str) -> list[tuple[CellRun, CellRun]]:
    """(remote, home) of each cell: the %%tetra cells run remotely in one kernel, and as
    plain cells in another (a folder of its own each)."""
    remote = run_cells(LOAD, *cells)[1:]
    home = run_cells(LOAD, *(as_local(cell) for cell in cells))[1:]
    return list(zip(remote, home, strict=True))


def streams(run: CellRun) -> list[tuple[str, str]]:
    """The cell's stream outputs in the order they came, as (stream, line) pairs, a
    warning's "FILE:LINE: " (a cell's file and line differ between kernels) left out."""
    lines = []
    for output in run.outputs:
        if output.output_type == "stream":
            for line in output.text.splitlines():
                lines.append((output.name, re.sub(r"^\S+:\d+: (\w+Warning)", r"\1", line)))
    return lines


def assert_as_at_home(remote: CellRun, home: CellRun) -> None:
    assert remote.error is None and home.error is None, (remote.error, home.error)
    assert remote.results == home.results
    assert remote.stdout == home.stdout
    # each stream alone in order; lines of two streams may pass each other on the way
    for name in ("stdout", "stderr"):
        mine = [line for stream, line in streams(remote) if stream == name]
        assert mine == [line for stream, line in streams(home) if stream == name], name
    assert not OURS.search(remote.stdout + remote.stderr), remote.stderr


def as_at_home_after_each(setups: dict[str, str], cell: str) -> list[tuple[CellRun, CellRun]]:
    """Each setup (a plain cell), then `cell`, in one notebook: `cell` shows as at home
    after each; (remote, home) of every cell."""
    runs = twins(*(ran for setup in setups.values() for ran in (setup, cell)))
    for name, (remote, home) in zip(setups, runs[1::2], strict=True):
        try:
            assert_as_at_home(remote, home)
        except AssertionError as failure:
            raise AssertionError(f"after {name!r}: {failure}") from failure
    return runs


LOGS = """%%tetra --local
import logging, warnings
log = logging.getLogger("model")
print("start")
warnings.warn("a warning the setup may capture")
log.info("loading %s", "weights")
log.debug("details")
logging.getLogger("chatty").warning("chatter")
print("middle")
logging.warning("careful")
logging.getLogger("model.layer").error("broken")
print("end")
"""
# Each setup as a notebook's first cells have it; `force=True` replaces the previous one.
SETUPS = {
    "none": "import logging",
    "info": "logging.basicConfig(level=logging.INFO, force=True)",
    "debug": "logging.basicConfig(level=logging.DEBUG, force=True)",
    "stdout and a format": (
        "import sys\nlogging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,"
        " format='{asctime} [{levelname}] {name}: {message}', datefmt='%Y', style='{')"
    ),
    "a named logger's level": (
        "logging.basicConfig(level=logging.DEBUG, force=True, format='%(name)s %(message)s')\n"
        "logging.getLogger('chatty').setLevel(logging.ERROR)\n"
        "logging.getLogger('model').setLevel(logging.WARNING)"
    ),
    "logging.disable": (
        "logging.basicConfig(level=logging.DEBUG, force=True)\nlogging.disable(logging.WARNING)"
    ),
    "warnings captured by logging": (
        "logging.disable(logging.NOTSET)\n"
        "logging.basicConfig(level=logging.INFO, force=True, format='%(levelname)s|%(message)s')\n"
        "logging.captureWarnings(True)"
    ),
}


@pytest.mark.slow
def test_a_remote_cell_logs_as_at_home_under_each_setup(endpoint: None) -> None:
    """The notebook's logging at no setup, INFO, DEBUG, on stdout with a format of its own and
    with levels on named loggers: the cell's records show as at home, in order among its
    prints, and nothing of the magic's own (httpx, httpcore, runpod, tetra_magic) shows."""
    runs = as_at_home_after_each(SETUPS, LOGS)
    # the setups differ, as the comparisons show something
    stdout_setup = runs[7][1]
    assert "[INFO] model: loading weights" in stdout_setup.stdout
    assert "DEBUG:model:details" in runs[5][1].stderr
    disabled, captured = runs[11][1], runs[13][1]
    assert "careful" not in disabled.stderr and "ERROR:model.layer:broken" in disabled.stderr
    assert "WARNING|" in captured.stderr and "a warning the setup may capture" in captured.stderr


OWN_SETUP = """%%tetra --local
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
mine = logging.getLogger("mine")
mine.addHandler(logging.StreamHandler(sys.stderr))
mine.propagate = False
print("configured")
logging.info("root record")
mine.warning("own handler")
"""


@pytest.mark.slow
def test_a_cell_that_configures_logging_itself_logs_as_at_home(endpoint: None) -> None:
    [(remote, home)] = twins(OWN_SETUP)
    assert_as_at_home(remote, home)
    assert home.stdout == "configured\nINFO root record\n" and home.stderr == "own handler\n"


WARNS = """%%tetra --local
import warnings
print("before")
warnings.warn(f"plain {tag}")
warnings.warn(f"old api {tag}", FutureWarning)
warnings.warn(f"deprecated {tag}", DeprecationWarning)
warnings.warn(f"skip {tag}", RuntimeWarning)
print("after")
"""
FILTERS = {
    "none": "import warnings\ntag = 0",
    "ignore all": "tag = 1\nwarnings.filterwarnings('ignore')",
    "ignore one category": (
        "tag = 2\nwarnings.resetwarnings()\nwarnings.simplefilter('ignore', FutureWarning)"
    ),
    "by message": (
        "tag = 3\nwarnings.resetwarnings()\nwarnings.filterwarnings('ignore', message='skip')"
    ),
}


@pytest.mark.slow
def test_warning_filters_set_at_home_apply_to_the_remote_cell(endpoint: None) -> None:
    """No filter of the notebook's own (IPython's: a DeprecationWarning the cell raises
    shows), ignore all, ignore a category, ignore by message: the same warnings show."""
    runs = as_at_home_after_each(FILTERS, WARNS)
    assert "DeprecationWarning: deprecated 0" in runs[1][1].stderr  # IPython shows it at home
    assert runs[3][1].stderr == ""


WARNS_AND_FILTERS = """%%tetra --local
import warnings
warnings.simplefilter("ignore", UserWarning)
warnings.warn("mine, ignored")
warnings.warn("shown", RuntimeWarning)
"""


@pytest.mark.slow
def test_filters_the_cell_sets_apply_to_it_and_end_with_it(endpoint: None) -> None:
    after = "%%tetra --local\nimport warnings\nwarnings.warn('shown again')"
    (remote, home), (remote_after, _) = twins(WARNS_AND_FILTERS, after)
    assert_as_at_home(remote, home)
    assert "RuntimeWarning: shown" in remote.stderr and "mine" not in remote.stderr
    # the worker's process forgot the cell's filter; the notebook never had it
    assert "UserWarning: shown again" in remote_after.stderr


@pytest.mark.slow
def test_a_missing_module_says_which_deps_bring_it(endpoint: None) -> None:
    """`import sklearn` on a worker without it: the error is the one the kernel would raise
    without the package, with one line under it naming the package to install."""
    cell = "%%tetra --local\nimport sklearn"
    remote = run_cells(LOAD, cell)[1]
    assert remote.error is not None
    assert (remote.error["ename"], remote.error["evalue"]) == (
        "ModuleNotFoundError",
        "No module named 'sklearn'",
    )
    shown = "\n".join(remote.error["traceback"]).rstrip().splitlines()
    assert shown[-2:] == [
        "ModuleNotFoundError: No module named 'sklearn'",
        "tetra: the worker has no module 'sklearn'; add --deps scikit-learn to the %%tetra line",
    ]


@pytest.mark.slow
def test_debug_logging_before_the_first_remote_cell_shows_nothing_of_ours(
    endpoint: None,
) -> None:
    """At DEBUG from the start: the first remote cell, in the widget view (whose Cancel button
    sets up an ipykernel subshell, an event loop with it), shows only what it shows at home."""
    setup = (
        "import logging, os\nlogging.basicConfig(level=logging.DEBUG)\n"
        "os.environ['TETRA_MAGIC_DISPLAY'] = 'widget'"
    )
    (_, (remote, home)) = twins(setup, "%%tetra --local\nprint('one')")
    assert remote.stdout == home.stdout == "one\n"
    assert remote.stderr == home.stderr == "", remote.stderr
