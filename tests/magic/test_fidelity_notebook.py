"""A remote cell behaves as the same cell run in the kernel (issue 10, kinds 1 to 4): the
notebook's classes and functions are never altered, the cell runs as `__main__`, in-place
changes come back, and exceptions are the user's own. Each test runs its cells twice, locally
and with the marked cells remote (tests/helpers/twins.py), and compares what the user sees."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.kernels import CellRun, private_local_endpoint, shared_worker_env
from helpers.twins import Remote, assert_same, run_twins, seen

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home")):
        yield


CLASSES = """\
import enum, functools, math
from dataclasses import dataclass, field
from typing import NamedTuple, TypedDict

@dataclass
class Point:
    x: int
    y: int = 0

@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int = 0

class Color(enum.Enum):
    RED = 1
    GREEN = 2

class Perm(enum.Flag):
    NONE = 0
    R = 4
    W = 2
    X = 1
    RW = R | W

class Level(enum.IntFlag):
    LOW = 1
    HIGH = 2

class Pair(NamedTuple):
    left: int
    right: str = "r"

class Movie(TypedDict):
    title: str
    year: int

class Slotted:
    __slots__ = ("a", "b")
    def __init__(self, a, b):
        self.a, self.b = a, b
    def __repr__(self):
        return f"Slotted({self.a}, {self.b})"

class Circle:
    unit = "cm"
    def __init__(self, r):
        self.r = r
    @property
    def area(self):
        return round(math.pi * self.r ** 2, 3)
    @classmethod
    def unit_one(cls):
        return cls(1)
    @staticmethod
    def describe():
        return f"circle in {Circle.unit}"
    def __repr__(self):
        return f"Circle({self.r}{self.unit})"

def scaled(v, k=2):
    return v * k

p = Point(1, 2)
originals = {c: dict(vars(c)) for c in (Point, Version, Color, Perm, Level, Pair, Slotted, Circle)}
classes = (Point, Version, Color, Perm, Level, Pair, Movie, Slotted, Circle, scaled)
"""

ROUND_TRIP = """\
q = Point(p.x + 1, p.y)
v = [Version(1, 2), Version(1, 0)]
colors = [Color.RED, Color(2)]
perms = [Perm.NONE, Perm.RW, Perm.R | Perm.X, Perm(0)]
levels = Level.LOW | Level.HIGH
pair = Pair(1)
movie = Movie(title="Alien", year=1979)
slotted = Slotted(1, [2])
circle = Circle.unit_one()
desc = Circle.describe()
doubled = scaled(q.x)
print(repr(q), sorted(v), perms, int(levels), pair, movie, slotted, circle.area)
"""

CHECK_VALUES = """\
print(repr(p), repr(q), type(q) is Point, isinstance(q, Point))
print(sorted(v), v[0] > v[1], type(v[0]) is Version, hash(v[0]) == hash(Version(1, 2)))
print(colors, [c is Color.RED for c in colors], perms, [type(x) is Perm for x in perms])
print(perms[0] is Perm.NONE, perms[1] is Perm.RW, levels, type(levels) is Level)
print(pair, type(pair) is Pair, pair._asdict(), movie, slotted, type(slotted) is Slotted)
print(circle, circle.area, type(circle) is Circle, desc, doubled)
print(repr(Point(5)), Circle(2), Perm.R | Perm.W, list(Perm), list(Color))
"""

# `__slotnames__` is pickle's own cache (copyreg adds it to a class whose instance it pickles,
# in a local cell too); anything else added, removed or replaced is damage.
CHECK_CLASSES = """\
def unchanged(c, before):
    now = {k: w for k, w in vars(c).items() if k != "__slotnames__"}
    return now.keys() == before.keys() and all(now[k] is w for k, w in before.items())
print(all(unchanged(c, before) for c, before in originals.items()))
print((Point, Version, Color, Perm, Level, Pair, Movie, Slotted, Circle, scaled) == classes)
"""


def test_notebook_classes_come_home_as_themselves_and_stay_unchanged() -> None:
    """Values of the notebook's dataclasses, enums, flags (zero and multi-bit members too),
    NamedTuple, TypedDict, slotted and property/classmethod classes come home instances of the
    notebook's very classes, which keep every attribute they had (issue 10: repr(p) raised
    NameError '_thread' after one round trip)."""
    twins = run_twins(
        CLASSES, Remote(ROUND_TRIP), CHECK_VALUES, CHECK_CLASSES, Remote(CHECK_VALUES)
    )
    assert_same(twins)
    assert twins.local[3].stdout == "True\nTrue\n"  # the checks themselves ran


MAIN = """\
import copy, functools, multiprocessing, pickle

class Net:
    def __init__(self, width):
        self.width = width
    def __eq__(self, other):
        return type(other) is Net and other.width == self.width

def square(v):
    return v * v

@functools.cache
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

@functools.lru_cache(maxsize=None)
def slow_square(n):
    return square(n)
"""

AS_MAIN = """\
net = Net(3)
clone = pickle.loads(pickle.dumps(net))
deep = copy.deepcopy([net, square])
with multiprocessing.get_context("fork").Pool(2) as pool:
    squares = pool.map(square, range(5))
fibs = [fib(20), slow_square(7), fib.cache_info().hits > 0]
if __name__ == "__main__":
    main_ran = True
print(clone == net, type(clone) is Net, deep[1] is square, squares, fibs, __name__)
print(pickle.loads(pickle.dumps(fib))(10), pickle.dumps(Net) == pickle.dumps(Net))
"""

CHECK_MAIN = """\
print(type(clone) is Net, clone == Net(3), squares, fibs, main_ran, fib(5), slow_square(3))
"""


def test_the_cell_runs_as_main() -> None:
    """pickle and copy of notebook classes and functions, multiprocessing with a notebook
    function, functools.cache functions and `if __name__ == "__main__":` work remotely as in
    the kernel."""
    # The closed Pool itself cannot travel (multiprocessing refuses to pickle one).
    assert_same(run_twins(MAIN, Remote(AS_MAIN, "--drop pool"), CHECK_MAIN))


IN_PLACE = """\
class Model:
    def __init__(self):
        self.epochs = 1

items = [1, 2, 3]
alias = items
config = {"lr": 0.01}
model = Model()
seen_model = [model]
tags = {"a"}
untouched = list(range(1000))
"""

CHANGES = """\
items.append(4)
config["lr"] = 0.1
model.epochs = 5
tags.add("b")
print(sum(untouched))
"""

CHECK_IN_PLACE = """\
print(items, alias, alias is items, config, model.epochs, seen_model[0].epochs, sorted(tags))
print(type(model) is Model, len(untouched))
"""


def test_in_place_changes_come_back() -> None:
    """A cell that changes a notebook value without assigning it leaves the notebook's value
    changed, under every name and reference the notebook holds to it, as a local cell does;
    an input it did not change does not travel back (the --out record names what did)."""
    twins = run_twins(IN_PLACE, Remote(CHANGES, "--out rec"), CHECK_IN_PLACE, "rec.returned")
    returned = twins.remote[3]
    twins.local, twins.remote = twins.local[:3], twins.remote[:3]  # only the remote has a record
    assert_same(twins)
    assert returned.results == [repr(["config", "items", "model", "tags"])]


NUMPY_CHANGE = """\
arr *= 2
view_sum = int(arr.sum())
"""


@pytest.fixture(scope="module")
def numpy_dir() -> str:
    """numpy for the kernels, in a directory of its own that their first cell puts on sys.path:
    the test environment itself must not have it (notebooks/ show it as worker-only)."""
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    target = Path(shared_worker_env()).parent / f"numpy-for-kernels-{python}"
    if not (target / "numpy").is_dir():
        uv = [sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", sys.executable]
        subprocess.run([*uv, "--target", str(target), "numpy"], check=True, timeout=600)
    return str(target)


def test_numpy_arrays_changed_in_place_come_back(numpy_dir: str) -> None:
    """`arr *= 2` changes the array itself: a view of it taken before sees the change."""
    twins = run_twins(
        f"import sys\nsys.path.insert(0, {numpy_dir!r})\n"
        "import numpy as np\narr = np.arange(6)\nfirst = arr[:3]",
        Remote(NUMPY_CHANGE, "--deps numpy"),
        "print(arr, first, view_sum)",
    )
    assert_same(twins)


ERRORS = """\
class ValidationError(ValueError):
    pass

class Quiet(Exception):
    pass
"""

CHAINED = """\
try:
    int("")
except ValueError as exc:
    raise ValidationError("row 3 is invalid\\ncolumn 'age' is empty") from exc
"""

NOTED = """\
err = ValidationError("bad row")
err.add_note("while reading data.csv")
err.add_note("line 12")
raise err
"""

CONTEXT = """\
try:
    {}["missing"]
except KeyError:
    raise Quiet()
"""

CAUGHT = """\
def attempt(cell):
    try:
        get_ipython().run_cell_magic("tetra", "--local", cell) if REMOTE else exec(cell, globals())
    except ValueError as exc:
        cause = exc.__cause__
        print(type(exc).__name__, type(exc) is ValidationError, repr(str(exc)))
        print(getattr(exc, "__notes__", None), type(cause).__name__, cause)
"""


def test_exceptions_are_the_users_own() -> None:
    """The notebook's own exception class (so `except ValueError` at home catches it), the
    whole multi-line message, notes after it, the cause and context chain, an empty message
    empty, and `Cell In[n], line m` in the traceback."""
    checks = [
        "attempt(" + repr(CHAINED) + ")",
        "attempt(" + repr(NOTED) + ")",
    ]
    twins = run_twins(
        ERRORS,
        Remote(CHAINED),
        "import sys\nprint(type(sys.last_value) is ValidationError, repr(str(sys.last_value)))",
        Remote(NOTED),
        Remote(CONTEXT),
        "import sys\nprint(type(sys.last_value) is Quiet, repr(str(sys.last_value)),"
        " type(sys.last_value.__context__).__name__)",
        "REMOTE = '%%tetra' in In[3]\n" + CAUGHT,
        *checks,
    )
    assert_same(twins)
    for index in (1, 3, 4):  # the cells that raised
        local, remote = (_traceback(twins.local[index]), _traceback(twins.remote[index]))
        # The remote cell's line 1 is its %%tetra line, so its lines are one further down.
        assert {c for c, _ in _cell_lines(remote)} == {c for c, _ in _cell_lines(local)}
        assert _cell_lines(remote)[-1][1] == _cell_lines(local)[-1][1] + 1, remote
        for phrase in ("direct cause", "During handling", "while reading data.csv", "line 12"):
            assert (phrase in remote) == (phrase in local), phrase
    noted = _traceback(twins.remote[3])
    assert noted.index("bad row") < noted.index("while reading data.csv") < noted.index("line 12")
    assert twins.remote[4].error["evalue"] == ""


def _traceback(run: CellRun) -> str:
    """An error's traceback as text, without IPython's colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(run.error["traceback"]))


def _cell_lines(text: str) -> list[tuple[int, int]]:
    """(cell, line) of each frame the traceback shows in a notebook cell."""
    found = re.findall(r"Cell In\[(\d+)\], line (\d+)", text)
    return [(int(cell), int(line)) for cell, line in found]


def test_changes_through_aliases_and_globals_a_function_rebinds_come_back() -> None:
    """`b = a` at home is one object on the worker too; `global total` in a notebook function
    the cell calls rebinds the notebook's name, as it does at home."""
    twins = run_twins(
        "a = [1]\nb = a\nkeep = {'k': 1}\nother = keep",
        "total = 0\ndef add(v):\n    global total\n    total += v",
        Remote("a.append(2)\nb.append(3)\nother['j'] = 2\nadd(5)\nadd(2)"),
        "a, b, a is b, keep, keep is other, total",
    )
    assert_same(twins)
    assert twins.remote[3].results == ["([1, 2, 3], [1, 2, 3], True, {'k': 1, 'j': 2}, True, 7)"]


def test_names_a_remote_cell_binds_to_one_object_come_home_as_one_object() -> None:
    """`b = a` in a remote cell is one object at home; a name bound to an input (`c = arr`),
    changed in place or not, is the notebook's very object. A number bound twice stays out."""
    twins = run_twins(
        "arr = [0]\nold = arr\nkept = [7]",
        Remote(
            "a = [1, 2]\nb = a\nc = arr\nkept.append(8)\nk = kept\nd = {'x': 1}\ne = d"
            "\nn = 5\nm = n"
        ),
        "a.append(3)\nd['y'] = 2\nold.append(1)\n"
        "(a is b, b, c is old, c, k is kept, kept, e is d, e, m)",
    )
    assert_same(twins)
    assert twins.remote[2].results == [
        "(True, [1, 2, 3], True, [0, 1], True, [7, 8], True, {'x': 1, 'y': 2}, 5)"
    ]


def test_an_exception_group_is_shown_not_a_crash() -> None:
    cells = (
        Remote("raise ExceptionGroup('grp', [ValueError(1), TypeError(2)])"),
        "'still' + ' here'",
    )
    twins = run_twins(*cells)
    # IPython prints a local group's traceback on stderr; remotely it is the cell's error
    assert "ExceptionGroup: grp (2 sub-exceptions)" in twins.local[0].stderr
    error = twins.remote[0].error
    assert (error["ename"], error["evalue"]) == ("ExceptionGroup", "grp (2 sub-exceptions)")
    assert "ValueError: 1" in "\n".join(error["traceback"])
    assert seen(twins.remote[1]) == seen(twins.local[1])


AWAITING = """\
import asyncio

async def fetch(n):
    await asyncio.sleep(0)
    return 10 // n

await fetch(0)
"""


def test_an_awaiting_cell_shows_only_its_own_frames() -> None:
    """A cell with top-level await runs in an event loop on the worker, as in IPython's at
    home; its traceback shows the cell's frames as at home, none of asyncio's that run it."""
    twins = run_twins(Remote(AWAITING))
    assert_same(twins)
    local, remote = _traceback(twins.local[0]), _traceback(twins.remote[0])
    assert "asyncio" + "/" not in remote and "File " not in remote, remote
    assert [line for _, line in _cell_lines(remote)] == [line + 1 for _, line in _cell_lines(local)]


def test_a_class_whose_body_uses_the_cells_own_import_comes_back() -> None:
    """Its body runs again at home, with the modules the cell imported already there."""
    cell = "import fractions\nclass Half:\n    value = fractions.Fraction(1, 2)\nh = Half()"
    assert_same(run_twins(Remote(cell), "print(Half.value, h.value, type(h).__name__)"))
