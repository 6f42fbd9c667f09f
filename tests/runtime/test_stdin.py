"""Code that waits for someone to type (input(), getpass(), breakpoint(), reading sys.stdin)
ends a remote cell at once with EOFError, as Python does when stdin is closed, and a message
that says stdin is not available on the worker and how to pass the value instead. Nothing the
cell would have bound lands in the notebook. (No local run to compare with: in a notebook
these calls prompt the user.)"""

from __future__ import annotations

import builtins
import getpass
import os
import sys
from collections.abc import Iterator

import pytest
from helpers.kernels import private_local_endpoint, run_cells

from tetra_magic.runtime import cell_env

LOAD = "%load_ext tetra_magic"
ASK = "stdin is not available on the worker: ask in the notebook instead"


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home")):
        yield


SHAPES = {
    "input": "answer = input('Your name? ')",
    "input in a notebook function": "answer = ask()",
    "getpass": "import getpass\nanswer = getpass.getpass()",
    "getpass imported by name": "from getpass import getpass as secret\nanswer = secret('Key: ')",
    "sys.stdin.read": "import sys\nanswer = sys.stdin.read()",
    "iterating sys.stdin": "import sys\nanswer = [line for line in sys.stdin]",
    "a terminal check first": "import os, sys\n"
    "answer = sys.stdin.readline() if not os.isatty(sys.stdin.fileno()) else ''",
}


@pytest.mark.slow
def test_reading_stdin_ends_the_cell_with_a_way_out() -> None:
    remote = [f"%%tetra --local --timeout 60\n{code}" for code in SHAPES.values()]
    cells = run_cells(
        LOAD, "answer = 'before'\ndef ask():\n    return input('? ')", *remote, "print(answer)"
    )
    for name, cell in zip(SHAPES, cells[2:-1], strict=True):
        assert cell.error is not None, name
        assert cell.error["ename"] == "EOFError", (name, cell.error)
        assert ASK in cell.error["evalue"] and "--env NAME" in cell.error["evalue"], name
    assert cells[-1].stdout == "before\n"


@pytest.mark.slow
def test_breakpoint_says_to_debug_in_the_notebook() -> None:
    cells = run_cells(
        LOAD, "%%tetra --local --timeout 60\nx = 1\nbreakpoint()\ny = 2", "print('y' in dir())"
    )
    assert cells[1].error["ename"] == "EOFError"
    assert cells[1].error["evalue"] == (
        "breakpoint() waits for debugger commands, and stdin is not available on the worker:"
        " debug the code in a cell without %%tetra"
    )
    assert cells[2].stdout == "False\n"


@pytest.mark.slow
def test_code_that_expects_no_stdin_carries_on() -> None:
    """EOFError is what a script run without stdin gets, so code written for that works; a
    subprocess reading stdin reads nothing and ends; multiprocessing, whose children close
    stdin as they start, works; the next cell runs normally."""
    cell = (
        "%%tetra --local --timeout 60\nimport multiprocessing, subprocess\n"
        "try:\n    name = input()\nexcept EOFError:\n    name = 'default'\n"
        "piped = subprocess.run(['cat'], capture_output=True, text=True).stdout\n"
        "with multiprocessing.Pool(2) as pool:\n    sizes = pool.map(abs, [-1, -2])"
    )
    cells = run_cells(
        LOAD, cell, "%%tetra --local\nafter = 'ran'", "print(name, repr(piped), sizes, after)"
    )
    assert cells[1].stderr == "" and cells[-1].stdout == "default '' [1, 2] ran\n", cells


def test_the_stand_ins_last_for_the_cell_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `run_cell` changes in the process it runs in (the published worker runs cells in
    its own) is back as it was once the cell ends, an --env variable the process had too."""
    monkeypatch.setenv("TETRA_STDIN_TEST", "process")
    before = (builtins.input, getpass.getpass, sys.breakpointhook, sys.stdin)
    restore = cell_env.for_this_cell({"TETRA_STDIN_TEST": "cell", "TETRA_NEW": "x"})
    assert builtins.input is not before[0] and os.environ["TETRA_STDIN_TEST"] == "cell"
    with pytest.raises(EOFError, match="stdin is not available"):
        input()
    restore()
    assert (builtins.input, getpass.getpass, sys.breakpointhook, sys.stdin) == before
    assert os.environ["TETRA_STDIN_TEST"] == "process" and "TETRA_NEW" not in os.environ
