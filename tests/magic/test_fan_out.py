"""`%%tetra --map NAME in EXPR`, in real kernels on the real local endpoint (2 workers): each
name the cell binds comes back as a list in item order, equal to the same cell run at home
once per item; shards run at once, their lines tagged; a failed item loses no other."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.kernels import run_cells

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

LOAD = "%load_ext tetra_magic"
ITEMS = "[3, 1, 4, 1, 5]"
BODY = "square = n * n\nword = 'x' * n + str(offset)\nprint('item', n)"


def test_each_name_comes_back_as_a_list_equal_to_the_loop_at_home() -> None:
    # At home: the cell's body once per item, collecting what each run bound.
    expected = run_cells(
        "offset = 10",
        f"results = []\nfor n in {ITEMS}:\n"
        + "".join(f"    {line}\n" for line in BODY.splitlines())
        + "    results.append((square, word))\n"
        "square, word = (list(column) for column in zip(*results))",
        "print(square, word)",
    )[-1].stdout
    cells = run_cells(
        LOAD, "offset = 10", f"%%tetra --local --map n in {ITEMS}\n{BODY}", "print(square, word)"
    )
    assert cells[2].error is None, cells[2]
    assert cells[-1].stdout == expected
    # Every shard's line, tagged with its index; whole lines, in any order across shards.
    assert sorted(cells[2].stdout.splitlines()) == sorted(
        f"[{i}] item {n}" for i, n in enumerate(eval(ITEMS))
    )


def test_shards_run_at_once(tmp_path: Path) -> None:
    """Each of two shards waits for the other to have started: only jobs running at the
    same time on the endpoint's two workers get past that."""
    barrier = (
        "import os, time\n"
        f"open(os.path.join({str(tmp_path)!r}, f'started-{{n}}'), 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        f"while len(os.listdir({str(tmp_path)!r})) < 2:\n"
        "    assert time.monotonic() < deadline, 'the other shard never started'\n"
        "    time.sleep(0.05)\n"
        "met = n"
    )
    cells = run_cells(LOAD, f"%%tetra --local --map n in range(2)\n{barrier}", "print(met)")
    assert cells[1].error is None, cells[1]
    assert cells[-1].stdout == "[0, 1]\n"


def test_a_failed_item_loses_no_other_and_leaves_the_notebook_as_it_was() -> None:
    failing = "if n == 2:\n    raise ValueError(f'bad item {n}')\nsquare = n * n"
    home = run_cells("n = 2\n" + failing)[0]  # the failing item, at home
    cells = run_cells(
        LOAD,
        "square = 'before'",
        f"%%tetra --local --map n in range(4) --out job\n{failing}",
        "print(square, job.result())",
    )
    error = cells[2].error
    assert error is not None and error["ename"] == "MapFailed", cells[2]
    assert error["evalue"].startswith(
        f"1 of 4 items failed: [2] {home.error['ename']}: {home.error['evalue']}"
    )
    # The first failure in full, its line in the cell.
    assert "raise ValueError(f'bad item {n}')" in "\n".join(error["traceback"])
    assert cells[-1].stdout == "before {'square': [0, 1, None, 9]}\n"


def test_retries_run_a_failed_item_again(tmp_path: Path) -> None:
    """Item 1 fails on its first try only (a file says it has tried): with --retries 1 the map
    succeeds, its values those of the loop at home, and says which item ran again."""
    flaky = (
        "import os\n"
        f"marker = os.path.join({str(tmp_path)!r}, f'tried-{{n}}')\n"
        "first_try = not os.path.exists(marker)\n"
        "open(marker, 'w').close()\n"
        "if n == 1 and first_try:\n"
        "    raise ConnectionError('worker lost')\n"
        "square = n * n"
    )
    cells = run_cells(LOAD, f"%%tetra --local --map n in range(3) --retries 1\n{flaky}", "square")
    assert cells[1].error is None, cells[1]
    assert "[1] failed (ConnectionError: worker lost); running it again" in cells[1].stderr
    assert cells[2].results == [str([n * n for n in range(3)])]
