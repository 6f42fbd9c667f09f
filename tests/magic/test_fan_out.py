"""`%%tetra --map NAME in EXPR`, in real kernels on the real local endpoint (2 workers): each
name the cell binds comes back as a list in item order, equal to the same cell run at home
once per item; shards run at once, their lines tagged; a failed item loses no other."""

from __future__ import annotations

import contextlib
import io
import math
import threading
from pathlib import Path

import pytest
from helpers.kernels import loaded_kernels, run_cells

from tetra_magic.job.fan_out import ItemMarkers, TaggedView
from tetra_magic.view.text import TextView
from worker.frames import split

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


def _loop_at_home(items: str, body: str, names: list[str], *before: str) -> str:
    """What `print(*names)` shows after the cell's body ran at home once per item (bound to
    n), each name it binds collected into a list."""
    row = "".join(f"{name}, " for name in names)
    loop = (
        f"results = []\nfor n in {items}:\n"
        + "".join(f"    {line}\n" for line in body.splitlines())
        + f"    results.append(({row}))\n"
        + f"{row} = (list(column) for column in zip(*results))"
    )
    return run_cells(*before, loop, f"print({row})")[-1].stdout


def test_a_batch_runs_several_items_per_job_each_tagged_with_its_own_index() -> None:
    """Seven items, three per job: three jobs, the names those of the loop at home, every
    printed line tagged with its item's own index, whichever job ran it."""
    expected = _loop_at_home("range(7)", BODY, ["square", "word"], "offset = 10")
    cells = run_cells(
        LOAD,
        "offset = 10",
        f"%%tetra --local --map n in range(7) --batch 3 --out job\n{BODY}",
        "print(square, word)",
        "print(len(job.jobs), job.shards)",
    )
    assert cells[2].error is None, cells[2]
    assert cells[3].stdout == expected
    assert sorted(cells[2].stdout.splitlines()) == sorted(f"[{n}] item {n}" for n in range(7))
    assert cells[4].stdout == "3 [[0, 1, 2], [3, 4, 5], [6]]\n"


def test_a_failing_item_fails_none_of_its_batch() -> None:
    failing = "if n == 4:\n    raise ValueError(f'bad item {n}')\nsquare = n * n\nprint('done', n)"
    home = run_cells("n = 4\n" + failing)[0]  # the failing item, at home
    cells = run_cells(
        LOAD,
        "square = 'before'",
        f"%%tetra --local --map n in range(6) --batch 3 --out job\n{failing}",
        "print(square, job.result(), sorted(job.errors))",
    )
    error = cells[2].error
    assert error is not None and error["ename"] == "MapFailed", cells[2]
    assert error["evalue"].startswith(
        f"1 of 6 items failed: [4] {home.error['ename']}: {home.error['evalue']}."
    )
    assert "raise ValueError(f'bad item {n}')" in "\n".join(error["traceback"])
    # Its shard-mates 3 and 5 ran and came back; the notebook is as it was.
    assert sorted(cells[2].stdout.splitlines()) == sorted(
        f"[{n}] done {n}" for n in range(6) if n != 4
    )
    squares = [None if n == 4 else n * n for n in range(6)]
    assert cells[-1].stdout == f"before {{'square': {squares}}} [4]\n"


def test_retries_run_a_batchs_failed_items_again_as_one_job(tmp_path: Path) -> None:
    """Items 1 and 2 of a batch of three fail on their first try only: one new job runs the
    two of them again (item 0 does not run twice), and the map ends as the loop at home."""
    flaky = (
        "import os\n"
        f"marker = os.path.join({str(tmp_path)!r}, f'tried-{{n}}')\n"
        "first_try = not os.path.exists(marker)\n"
        "open(marker, 'w').close()\n"
        "print('ran', n)\n"
        "if n in (1, 2) and first_try:\n"
        "    raise ConnectionError('worker lost')\n"
        "square = n * n"
    )
    cells = run_cells(
        LOAD,
        f"%%tetra --local --map n in range(4) --batch 3 --retries 1 --out job\n{flaky}",
        "print(square, len(job.jobs), len(job.retried))",
    )
    assert cells[1].error is None, cells[1]
    assert cells[1].stderr.splitlines() == [
        f"[{n}] failed (ConnectionError: worker lost); running it again" for n in (1, 2)
    ]
    ran = [0, 1, 2, 3, 1, 2]  # every item once, then the failed two again
    assert sorted(cells[1].stdout.splitlines()) == sorted(f"[{n}] ran {n}" for n in ran)
    assert cells[2].stdout == f"{[n * n for n in range(4)]} 2 1\n"


def test_a_large_shared_input_travels_once_per_job_not_once_per_item() -> None:
    """Twenty items in two jobs read a 2 MB input: the requests sent are about twice its
    size in all (base64 makes each a third bigger), not twenty times."""
    cells = run_cells(
        LOAD,
        "import os\nblob = os.urandom(2_000_000)",
        "%%tetra --local --map n in range(20) --batch 10 --out job\nsize = len(blob) + n",
        "print(size == [len(blob) + n for n in range(20)], len(job.jobs))",
        "print([job.request_bytes for job in job.jobs])",
    )
    assert cells[2].error is None, cells[2]
    assert cells[3].stdout == "True 2\n"
    sent = eval(cells[4].stdout)
    assert all(2_000_000 < size < 3_000_000 for size in sent), sent


def test_small_items_share_jobs_by_default() -> None:
    """200 tiny items without --batch: cut as multiprocessing.Pool.map cuts its chunks, about
    four jobs per job followed at once, so far fewer jobs than items."""
    items, body = 200, "cube = n ** 3"
    expected = _loop_at_home(f"range({items})", body, ["cube"])
    cells = run_cells(
        LOAD,
        f"%%tetra --local --map n in range({items}) --out job\n{body}",
        "print(cube)",
        "print(len(job.jobs), job.at_once)",
    )
    assert cells[1].error is None, cells[1]
    assert cells[2].stdout == expected
    jobs, at_once = map(int, cells[3].stdout.split())
    assert jobs == math.ceil(items / math.ceil(items / (4 * at_once))) < items / 3


def test_a_shards_view_tags_each_items_lines_from_the_runtimes_marks() -> None:
    """The contract with the views: a mark framed in a shard's stdout reaches the view as an
    "item" chunk, which switches TaggedView's tag (a line cut off at the switch ends under
    its own item's tag); the plain views ignore the kind."""

    def mark(index: int) -> str:
        return f'\x00tetra-display:{{"type":"item","index":{index}}}\n'

    with contextlib.redirect_stdout(io.StringIO()) as shown:
        view = ItemMarkers(TaggedView(4, threading.Lock()))
        for chunk in split(f"a\nb{mark(5)}c\n{mark(6)}d\n"):
            view.chunk(chunk)
        view.close(None)
        plain = ItemMarkers(TextView())
        for chunk in split(f"x\n{mark(7)}y\n"):
            plain.chunk(chunk)
    assert shown.getvalue() == "[4] a\n[4] b\n[5] c\n[6] d\nx\ny\n"


GATED = (
    "import os, time\nprint('waiting')\n"
    "while not os.path.exists({go!r}):\n    time.sleep(0.05)\nsquare = n * n"
)


def test_ctrl_c_cancels_a_map_and_leaves_the_notebook_as_it_was(tmp_path: Path) -> None:
    """Three items, one job at a time: Ctrl-C while the first waits cancels it on the endpoint;
    the others are never submitted, and nothing is bound."""
    cell = GATED.format(go=str(tmp_path / "never"))
    with loaded_kernels(1) as (kernel,):
        running = kernel.execute(f"%%tetra --local --map n in range(3) --workers 1 --out m\n{cell}")
        kernel.outputs(running, until=lambda run: "waiting" in run.stdout)
        kernel.interrupt()
        stopped = kernel.outputs(running)
        assert stopped.error is not None and stopped.error["ename"] == "CellInterrupted", stopped
        assert "the map over n was interrupted" in stopped.error["evalue"]
        after = kernel.run(
            "print([job.status.value for job in m.jobs], [job.id is None for job in m.jobs],"
            " 'square' in globals())"
        )
        assert after.stdout == "['CANCELLED', 'CANCELLED', 'CANCELLED'] [False, True, True] False\n"


def test_cancel_a_background_map(tmp_path: Path) -> None:
    cell = GATED.format(go=str(tmp_path / "never"))
    with loaded_kernels(1) as (kernel,):
        submitted = kernel.execute(
            f"%%tetra --local --bg --map n in range(3) --workers 1 --out m\n{cell}"
        )
        kernel.outputs(submitted)
        kernel.later(submitted, lambda run: "waiting" in run.stdout)
        # named by its --out name, as the notebook knows it
        assert kernel.run("%tetra cancel m").stdout == "tetra: job [1] cancelled\n"
        after = kernel.run(
            "%tetra wait\nprint(m.status.value, [job.status.value for job in m.jobs],"
            " 'square' in globals())"
        )
        assert after.stdout == "CANCELLED ['CANCELLED', 'CANCELLED', 'CANCELLED'] False\n", after
        record = kernel.run("r = m.to_dict()\nprint(r['shards'], [j['status'] for j in r['jobs']])")
        assert record.stdout == "[[0], [1], [2]] ['CANCELLED', 'CANCELLED', 'CANCELLED']\n"
        assert "background job [1] was cancelled; nothing was written back" in after.stderr


IMPORTS_AND_DEFS = (
    "import json\nimport math as m\ndef double(x):\n    return 2 * x\n"
    "class Box:\n    size = 3\nenc = json.dumps({'n': n})\nval = double(n) + Box.size"
)
CHECK = "print(json.dumps([1]), m.sqrt(4), double(5), Box.size, enc, val)"


def test_imports_and_definitions_come_back_as_the_loop_leaves_them() -> None:
    """A module or a function is what the last run of the loop at home leaves, not a list."""
    loop = "".join(f"    {line}\n" for line in IMPORTS_AND_DEFS.splitlines())
    home = run_cells(
        f"encs, vals = [], []\nfor n in range(3):\n{loop}    encs.append(enc)\n"
        "    vals.append(val)\nenc, val = encs, vals",
        CHECK,
    )[-1]
    cells = run_cells(LOAD, f"%%tetra --local --map n in range(3)\n{IMPORTS_AND_DEFS}", CHECK)
    assert cells[1].error is None and cells[-1].stdout == home.stdout, cells


def test_an_input_the_items_change_in_place_stays_as_it_was_and_says_so() -> None:
    cells = run_cells(
        LOAD,
        "acc = []\nkeep = acc",
        "%%tetra --local --map n in range(3)\nacc.append(n)\nsize = len(acc)",
        "print(acc, acc is keep, size)",
    )
    assert cells[2].error is None, cells[2]
    assert "tetra: --map: acc changed in place by the items, each in a copy" in cells[2].stderr
    assert cells[-1].stdout == "[] True [1, 1, 1]\n"


def test_a_class_whose_body_uses_the_cells_import_comes_back() -> None:
    cell = "import math\nclass Circle:\n    pi = round(math.pi, 2)\n    tag = w\nc = Circle()"
    check = "print(Circle.pi, Circle.tag, [x.tag for x in c])"
    home = run_cells(
        "cs = []\nfor w in ['alpha', 'beta']:\n"
        + "".join(f"    {line}\n" for line in cell.splitlines())
        + "    cs.append(c)\nc = cs",
        check,
    )[-1]
    cells = run_cells(LOAD, f"%%tetra --local --map w in ['alpha', 'beta']\n{cell}", check)
    assert cells[1].error is None and cells[-1].stdout == home.stdout, cells
