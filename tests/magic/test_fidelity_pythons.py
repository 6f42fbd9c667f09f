"""A worker of another Python minor version never crashes anything (issue 10, kind 5).

The workers of this module's local endpoint run another Python than the kernel
(TETRA_MAGIC_WORKER_PYTHON). Notebook functions and classes travel as their source and work
there as at home, functions the cell defines come home the same way and can be called here, and
what can only travel as bytecode (a lambda) is refused before it is loaded, on either side, with
a message naming the variable and both versions. The kernel and the worker survive all of it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.kernels import environ, private_local_endpoint, run_cells, shared_worker_env
from helpers.twins import LOAD, Remote, assert_same, run_twins

from tetra_magic.local.environment import python_version

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def _minor(python: str) -> str | None:
    version = python_version(python)
    return ".".join(version.split()[0].split(".")[:2]) if version else None


def other_python() -> tuple[str, str] | None:
    """(path, "3.X") of an installed Python whose minor version is not this one's:
    $TETRA_TEST_OTHER_PYTHON, else python3.12, 3.13, 3.10 on PATH, under pyenv, or from uv."""
    here = HERE
    chosen = os.environ.get("TETRA_TEST_OTHER_PYTHON")
    candidates = [chosen] if chosen else []
    for version in ("3.12", "3.13", "3.10"):
        candidates.append(shutil.which(f"python{version}"))
        pyenv = Path.home() / ".pyenv" / "versions"
        candidates += [str(p) for p in sorted(pyenv.glob(f"{version}.*/bin/python{version}"))]
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        found = subprocess.run(
            [uv, "python", "find", "--no-python-downloads", version],
            capture_output=True,
            text=True,
            check=False,
        )
        candidates.append(found.stdout.strip() if found.returncode == 0 else None)
    for python in filter(None, candidates):
        minor = _minor(python)
        if minor and minor != here:
            return python, minor
    return None


OTHER = other_python()
pytestmark = [
    pytest.mark.skipif(OTHER is None, reason="no Python of another minor version here"),
    pytest.mark.slow,  # kernels on a local endpoint: not in the fast tier (-m "not slow")
]


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    assert OTHER is not None
    python, minor = OTHER
    env = f"{shared_worker_env()}-py{minor}"
    with (
        environ({"TETRA_MAGIC_WORKER_PYTHON": python}),
        private_local_endpoint(tmp_path_factory.mktemp("tetra-home"), worker_env=env),
    ):
        yield


NOTEBOOK = """\
import math
from dataclasses import dataclass

class ParseError(ValueError):
    pass

@dataclass
class Reading:
    value: float
    unit: str = "C"

def parse(text):
    try:
        return Reading(float(text))
    except ValueError as exc:
        raise ParseError(f"not a number: {text!r}") from exc

def summary(readings):
    return round(math.fsum(r.value for r in readings) / len(readings), 2)

twice = lambda v: v * 2
"""

USES_THEM = """\
readings = [parse(t) for t in ["1.5", "2.5", "4"]]
mean = summary(readings)
print(mean, readings, type(readings[0]) is Reading)
"""

DEFINES = """\
def kelvin(reading):
    try:
        return round(reading.value + 273.15, 2)
    except AttributeError:
        return None

class Probe:
    def read(self):
        return [kelvin(r) for r in readings]

probe = Probe()
"""

CALLS_THEM = """\
print(kelvin(readings[0]), kelvin(None), probe.read(), type(probe) is Probe)
"""


def test_notebook_code_works_on_a_worker_of_another_python() -> None:
    """Functions with try/except, dataclasses and exception classes from the notebook run on
    the worker; the function and class the cell defined come home and run in the kernel; the
    exception raised there is the notebook's own. Same outputs as the cells run locally."""
    twins = run_twins(
        NOTEBOOK, Remote(USES_THEM), Remote(DEFINES), CALLS_THEM, Remote('parse("x")')
    )
    assert_same(twins)
    assert twins.remote[4].error["ename"] == "ParseError"


def test_bytecode_is_refused_before_it_runs_and_nothing_crashes() -> None:
    """A lambda cannot travel as source: sent to the worker, the cell fails at once naming it
    and both versions; made by the cell, it stays on the worker with the same explanation while
    the rest comes home. Then the worker and the kernel still run cells."""
    assert OTHER is not None
    other = OTHER[1]
    cells = run_cells(
        LOAD,
        NOTEBOOK,
        "%%tetra --local\ndoubled = twice(2)",
        "%%tetra --local\nhalf = lambda v: v / 2\nkept = 5",
        "%%tetra --local\nimport sys\nprint('worker', '%d.%d' % sys.version_info[:2])",
        "print('kernel', kept, 'half' in dir(), 'doubled' in dir())",
    )
    sent, made, worker, kernel = cells[2:]
    assert sent.error is not None
    message = sent.error["evalue"] + "\n".join(sent.error["traceback"])
    assert re.search(rf"'twice'.*Python {HERE}.*Python {other}", message, re.S), message
    assert "crash" not in message
    assert made.error is None
    assert "half was not brought back" in made.stderr
    assert f"Python {other}" in made.stderr and f"Python {HERE}" in made.stderr
    assert worker.stdout == f"worker {other}\n"
    assert kernel.stdout == "kernel 5 False False\n"
