"""What the notebook holds for a value it cannot load, read as the user's own thing, and what
never leaves it (issue 21, a new user's trial): a name a remote cell imported from a package
only the worker has comes home as the stand-in any unloadable value gets, usable by the next
remote cell; a stand-in reads as the class the user knows (`type()`, its repr, a TypeError),
never as ours; IPython's own `open` in the notebook stays home, as the builtin it stands for.

The blobs here are real pickles of a package made in a temporary folder and then removed, as
a package only the worker has; the kernel test installs a real one on the worker."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.following import OPTIONS
from helpers.kernels import private_local_endpoint, run_cells
from helpers.twins import LOAD
from IPython.core.interactiveshell import _modified_open

from tetra_magic.cell import outcome, unloaded
from tetra_magic.cell.analysis import analyse
from tetra_magic.cell.packing import pack
from tetra_magic.cell.unloaded import Unloaded
from tetra_magic.runtime.pickling import MainNames

PRIVATE = {
    "__init__.py": "from .linear_model import LinearRegression\n",
    "linear_model/__init__.py": "from ._base import LinearRegression\n",
    "linear_model/_base.py": "class LinearRegression:\n    pass\n",
}


def _blob_of_a_package_gone(tmp_path: Path, package: str, value: str) -> bytes:
    """The blob of `value` (an expression over the package `package`, made from PRIVATE in
    `tmp_path`); the package is then gone from this process, as from a kernel without it."""
    for name, text in PRIVATE.items():
        (tmp_path / package / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / package / name).write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        blob = MainNames({}).dumps(eval(value, {package: importlib.import_module(package)}))
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.partition(".")[0] == package]:
            del sys.modules[name]
        importlib.invalidate_caches()
    assert importlib.util.find_spec(package) is None
    return blob


def _came_back(**values: bytes) -> tuple[outcome.CellResult, dict[str, Any]]:
    user_ns: dict[str, Any] = {}
    result = outcome.CellResult(payload={"values": values})
    outcome.apply(result, user_ns)
    return result, user_ns


def test_a_stand_in_reads_as_the_class_the_user_imports(tmp_path: Path) -> None:
    """`sklearn.linear_model._base.LinearRegression` is `sklearn.linear_model.LinearRegression`
    to its user: so its stand-in's type, repr, note and a TypeError name it."""
    blob = _blob_of_a_package_gone(tmp_path, "tetra_gone_sk", "tetra_gone_sk.LinearRegression()")
    result, user_ns = _came_back(model=blob)
    model = user_ns["model"]
    assert isinstance(model, Unloaded)
    assert repr(type(model)) == "<class 'tetra_gone_sk.linear_model.LinearRegression'>"
    assert repr(model).startswith("<tetra: tetra_gone_sk.linear_model.LinearRegression, not")
    with pytest.raises(TypeError) as raised:
        model + 1
    assert "'LinearRegression' and 'int'" in str(raised.value)
    note = unloaded.note("model", model) or ""
    assert "model" in result.problems
    assert note.startswith("tetra: model is kept as a stand-in (tetra_gone_sk.linear_model.Lin")
    for shown in (repr(type(model)), repr(model), str(raised.value), note):
        assert "tetra_magic" not in shown and "Unloaded" not in shown and "_base" not in shown


def test_a_list_of_such_values_is_a_list_to_its_user(tmp_path: Path) -> None:
    blob = _blob_of_a_package_gone(tmp_path, "tetra_gone_sk", "[tetra_gone_sk.LinearRegression()]")
    models = _came_back(models=blob)[1]["models"]
    assert repr(type(models)) == "<class 'list'>"
    assert repr(models).startswith("<tetra: list holding tetra_gone_sk.linear_model.Linear")


def test_ipythons_open_stays_home_and_the_notebooks_own_open_goes() -> None:
    """In a kernel `open` is IPython's wrapper of the builtin: a cell that opens a file reads
    the worker's builtin, not a copy of the kernel's wrapper. An `open` the notebook defined
    itself is a notebook value like any other."""
    analysis = analyse("\nwith open('x.txt', 'w') as f:\n    f.write(str(n))", "<tetra-cell-1>")

    def packed(user_ns: dict[str, Any]) -> tuple[str, ...]:
        return pack(analysis, user_ns, OPTIONS, filename="<tetra-cell-1>", limit=10**7).shipped

    assert packed({"open": _modified_open, "n": None}) == ("n",)
    assert packed({"open": print, "n": 1}) == ("n", "open")


@pytest.mark.slow
def test_a_name_imported_from_a_package_only_the_worker_has_serves_the_next_remote_cell(
    tmp_path: Path,
) -> None:
    """`from tabulate import tabulate` on a worker with --deps tabulate, in a kernel without
    it: `tabulate` is a stand-in here (no note: the cell imported it to use it there), the
    next remote cell calls the real function, and calling it here names what to install."""
    if importlib.util.find_spec("tabulate") is not None:
        pytest.skip("this kernel has tabulate")
    table = "print(tabulate([[1, 22], [333, 4]]))"
    with private_local_endpoint(tmp_path / "home", workers=1):
        made, used, shown, called = run_cells(
            LOAD,
            f"%%tetra --local --deps tabulate\nfrom tabulate import tabulate\n{table}",
            f"%%tetra --local --deps tabulate\n{table}",
            "print(repr(tabulate))",
            "tabulate([[1]])",
        )[1:]
    assert made.error is None and made.stdout.count("333") == 1, made
    assert "tabulate" not in made.stderr, made.stderr
    assert used.error is None, used.error
    assert used.stdout == made.stdout  # the worker's own tabulate, both times
    assert shown.stdout.startswith("<tetra: tabulate.tabulate, not loadable here: No module")
    assert called.error is not None and called.error["ename"] == "TetraError"
    assert "pip install tabulate here" in called.error["evalue"]
