"""%%tetra cells in real kernels against the local endpoint: what goes in, what comes back,
what the user sees. The kernels use the plain-text view (TETRA_MAGIC_DISPLAY=text), whose
output is deterministic, so outputs are compared exactly."""

from __future__ import annotations

import re

from kernels import run_cells

LOAD = "%load_ext tetra_magic"


def test_cell_reads_notebook_values_and_brings_its_own_back() -> None:
    cells = run_cells(
        LOAD,
        "import math\n"
        "base = 10\n"
        "def square(v):\n    return v * v\n"
        "class Point:\n    def __init__(self, x):\n        self.x = x\n"
        "scale = 3\n"
        "times = lambda v: v * scale\n"
        "def make_adder(n):\n    def add(v):\n        return v + n\n    return add\n"
        "add5 = make_adder(5)",
        "%%tetra --local\n"
        "p = Point(square(base))\n"
        "total = times(p.x) + add5(0) + math.floor(2.7)\n"
        "print('total is', total)\n"
        "total * 2",
        "print(total, p.x, type(p).__name__)",
    )
    remote, after = cells[2], cells[3]
    assert remote.error is None, remote.error
    assert remote.stdout == "total is 307\n"
    assert remote.results == ["614"]
    assert after.stdout == "307 100 Point\n"


def test_remote_error_shows_cell_lines_and_leaves_namespace_alone() -> None:
    cells = run_cells(
        LOAD,
        "x = 1",
        "%%tetra --local\nx = 2\nprint('before the error')\ny = 1 / 0\n",
        "print(x, 'y' in dir())",
    )
    failed = cells[2]
    assert failed.stdout == "before the error\n"
    assert failed.error["ename"] == "ZeroDivisionError"
    text = "\n".join(failed.error["traceback"])
    assert "Cell In[3], line 4" in text
    assert "y = 1 / 0" in text
    assert "run_cell" not in text and "worker" not in text
    assert cells[3].stdout == "1 False\n"


def test_unpicklable_global_is_named_before_anything_is_sent() -> None:
    cells = run_cells(
        LOAD,
        "import threading\nlock = threading.Lock()",
        "%%tetra --local\nwith lock:\n    pass",
    )
    assert re.match(r"UsageError: variable 'lock' \(_thread\.lock\) cannot be sent", cells[2].stderr)
