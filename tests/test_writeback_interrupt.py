"""Ctrl-C while a remote cell's values are written back into the notebook: a real kernel on a
local endpoint of this module's own, interrupted by a real SIGINT, as the frontend's stop
button sends it, while the cell's second value loads. The notebook never holds half a cell."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kernels import private_local_endpoint, run_cells


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home"), workers=1):
        yield


TRIPWIRE = """\
import os, signal
KERNEL = os.getpid()
class Tripwire:
    def __init__(self):
        self.armed = True
    def __setstate__(self, state):
        # Loaded in this kernel: Ctrl-C now, in the middle of the cell's write-back.
        self.__dict__.update(state)
        if os.getpid() == KERNEL:
            os.kill(KERNEL, signal.SIGINT)
"""


def test_ctrl_c_during_write_back_lands_after_every_value() -> None:
    _, _, cell, after = run_cells(
        "%load_ext tetra_magic",
        TRIPWIRE,
        "%%tetra --local\nfirst = 1\nwire = Tripwire()\nlast = 3",
        "print(first, type(wire).__name__, last)",
    )
    assert cell.error is not None and cell.error["ename"] == "CellInterrupted"
    assert cell.error["traceback"] == [
        "KeyboardInterrupt: the cell had ended: its values were all written into the notebook first"
    ]
    assert after.error is None
    assert after.stdout == "1 Tripwire 3\n"
