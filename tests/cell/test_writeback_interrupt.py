"""Ctrl-C while a remote cell's values are written back into the notebook: a real kernel on a
local endpoint of this module's own, interrupted by a real SIGINT, as the frontend's stop
button sends it, while the cell's second value loads. The notebook never holds half a cell."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.kernels import private_local_endpoint, run_cells

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home"), workers=1):
        yield


def tripwire(base: str = "object") -> str:
    """A notebook class `Tripwire(base)` whose instance, given an attribute on the worker, sends
    the kernel a real Ctrl-C (SIGINT, as the stop button does) as it loads in the kernel."""
    return f"""\
import os, signal
KERNEL = os.getpid()
class Tripwire({base}):
    def __setstate__(self, state):
        self.__dict__.update(state)
        if os.getpid() == KERNEL:
            os.kill(KERNEL, signal.SIGINT)
"""


def test_ctrl_c_during_write_back_lands_after_every_value() -> None:
    _, _, cell, after = run_cells(
        "%load_ext tetra_magic",
        tripwire(),  # loads in the middle of the cell's write-back
        "%%tetra --local\nfirst = 1\nwire = Tripwire()\nwire.armed = True\nlast = 3",
        "print(first, type(wire).__name__, last)",
    )
    assert cell.error is not None and cell.error["ename"] == "CellInterrupted"
    assert cell.error["traceback"] == [
        "KeyboardInterrupt: the cell had ended: its values were all written into the notebook first"
    ]
    assert after.error is None
    assert after.stdout == "1 Tripwire 3\n"


def test_ctrl_c_after_the_job_ended_but_before_write_back_says_so_in_one_line() -> None:
    """The job is over; the kernel is reading its answer (the cell's exception, loading) when
    Ctrl-C comes: one line says the job had ended and nothing was written back, never a
    traceback through the magic's HTTP client."""
    _, _, cell, after = run_cells(
        "%load_ext tetra_magic",
        tripwire("Exception"),  # loads as the cell's exception is read
        "%%tetra --local\nfirst = 1\nerror = Tripwire('boom')\nerror.armed = True\nraise error",
        "print('first' in globals())",
    )
    assert cell.error is not None and cell.error["ename"] == "CellInterrupted"
    assert len(cell.error["traceback"]) == 1
    assert cell.error["traceback"][0].startswith("KeyboardInterrupt: job ")
    assert cell.error["traceback"][0].endswith(
        "had ended (COMPLETED); interrupted before its values were written back: the notebook"
        " is as it was before the cell"
    )
    assert after.stdout == "False\n"
