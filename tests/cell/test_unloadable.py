"""A value a remote cell bound that this kernel cannot load (its class is of a package only the
worker has) is kept as a stand-in: it says what it is, goes to later remote cells as the blob
it came as, and refuses to be read here with the package to install."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.kernels import run_cells
from helpers.twins import LOAD
from IPython.core.error import UsageError
from IPython.core.inputtransformer2 import TransformerManager

from tetra_magic.cell import outcome, unloaded
from tetra_magic.cell.analysis import analyse
from tetra_magic.cell.packing import pack
from tetra_magic.cell.unloaded import Unloaded
from tetra_magic.errors import TetraError
from tetra_magic.runtime.pickling import MainNames
from worker.deps import uv_binary

FILE = "<tetra-cell-3>"
MODULE = """
class RandomForestClassifier:
    def __init__(self, trees):
        self.trees = trees

    def predict(self, x):
        return [x * self.trees]
"""


def _blob_of_a_package_gone(tmp_path: Path, package: str, value: str) -> bytes:
    """The blob of `value` (an expression over `package.ensemble`), made while a package
    `package` existed in `tmp_path`; the package is then gone from this process."""
    folder = tmp_path / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "ensemble.py").write_text(MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(f"{package}.ensemble")
        blob = MainNames({}).dumps(eval(value, {"ensemble": module}))
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()
    assert importlib.util.find_spec(package) is None
    return blob


@pytest.fixture
def gone(tmp_path: Path) -> Iterator[bytes]:
    if importlib.util.find_spec("sklearn") is not None:
        pytest.skip("this kernel has scikit-learn")
    yield _blob_of_a_package_gone(tmp_path, "sklearn", "ensemble.RandomForestClassifier(3)")


def _came_back(values: dict[str, bytes], **payload: Any) -> tuple[outcome.CellResult, dict]:
    user_ns: dict[str, Any] = {}
    result = outcome.CellResult(payload={"values": values, **payload})
    outcome.apply(result, user_ns)
    return result, user_ns


def _options() -> Any:
    """The options of a plain `%%tetra --local` line: what packing reads of them."""
    return types.SimpleNamespace(
        send=(), drop=(), env=(), timeout=60.0, dependencies=(), system_dependencies=(),
        session_value_limit=None, files=(), get=(), detach=False,
    )  # fmt: skip


def _packed(cell: str, user_ns: dict[str, Any]) -> Any:
    analysis = analyse("\n" + TransformerManager().transform_cell(cell), FILE)
    return pack(analysis, user_ns, _options(), filename=FILE, limit=10_000_000)


def test_a_value_the_kernel_cannot_load_is_kept_as_a_stand_in_that_says_so(
    gone: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    result, user_ns = _came_back({"model": gone, "n": MainNames({}).dumps(5)})
    model = user_ns["model"]
    assert isinstance(model, Unloaded) and user_ns["n"] == 5
    assert repr(model) == (
        "<tetra: sklearn.ensemble.RandomForestClassifier, not loadable here: No module named"
        " 'sklearn'; it travels to later %%tetra cells as it came>"
    )
    outcome.report(result.problems, user_ns)
    assert capsys.readouterr().err == (
        "tetra: model is kept as a stand-in (sklearn.ensemble.RandomForestClassifier cannot be"
        " loaded here: No module named 'sklearn'); later %%tetra cells get it as it came\n"
    )


def test_reading_a_stand_in_at_home_names_the_package_to_install(gone: bytes) -> None:
    model = _came_back({"model": gone})[1]["model"]
    expected = (
        "model is a RandomForestClassifier that this kernel cannot load (No module named"
        " 'sklearn'): pip install scikit-learn here, or use it in %%tetra cells"
    )
    for read in (lambda: model.predict, lambda: model(1), lambda: model[0], lambda: len(model)):
        with pytest.raises(TetraError) as raised:
            read()
        assert str(raised.value) == expected
    assert not hasattr(model, "_repr_html_")  # IPython's probes see a plain object


def test_a_later_cell_sends_the_blob_as_it_came_and_the_worker_loads_the_real_object(
    gone: bytes, tmp_path: Path
) -> None:
    user_ns = _came_back({"model": gone})[1]
    packed = _packed("print(model.predict(2))", user_ns)
    assert packed.blobs["model"] == gone
    # on the worker, which has the package, the name is the real object again
    sys.path.insert(0, str(tmp_path))
    try:
        model = MainNames({}).load("model", packed.blobs["model"])
        assert type(model).__module__ == "sklearn.ensemble" and model.predict(2) == [6]
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.split(".")[0] == "sklearn"]:
            del sys.modules[name]


def test_a_cell_that_binds_the_name_again_brings_the_new_value(gone: bytes) -> None:
    user_ns = _came_back({"model": gone})[1]
    result = outcome.CellResult(payload={"values": {"model": MainNames({}).dumps([1])}})
    outcome.apply(result, user_ns)
    assert user_ns["model"] == [1] and not result.problems


def test_an_alias_of_a_stand_in_is_the_same_stand_in(gone: bytes) -> None:
    result, user_ns = _came_back({"model": gone}, aliases={"best": "model"})
    assert user_ns["best"] is user_ns["model"] and "best" in result.problems


def test_a_stand_in_inside_another_value_is_refused_before_sending(gone: bytes) -> None:
    user_ns = _came_back({"model": gone})[1]
    user_ns["models"] = [user_ns["model"]]
    with pytest.raises(UsageError, match="not inside another value"):
        _packed("print(models)", user_ns)


def test_what_a_blob_holds_is_told_without_loading_it(tmp_path: Path) -> None:
    blob = _blob_of_a_package_gone(
        tmp_path, "tetra_gone_pkg", "[ensemble.RandomForestClassifier(1)]"
    )
    assert unloaded.describe(blob, "tetra_gone_pkg") == (
        "list holding tetra_gone_pkg.ensemble.RandomForestClassifier"
    )
    assert unloaded.describe(MainNames({}).dumps(5)) == "value"
    model = Unloaded("m", blob, ModuleNotFoundError("No module named 'x_y'", name="x_y"))
    with pytest.raises(TetraError, match="pip install x-y here"):
        model.fit()


def test_a_value_that_fails_to_load_otherwise_is_still_named_and_left_out() -> None:
    result, user_ns = _came_back({"bad": b"tetra-pickle 3.11 -\nnot a pickle"})
    assert "bad" not in user_ns and "bad" in result.problems


# -- a real package the kernel lacks, through the local endpoint ----------------------------

TWO_CELLS = (
    "import tabulate\nfmt = tabulate._table_formats['grid']\n",
    "import tabulate\nprint(tabulate.tabulate([[1, 22], [333, 4]], tablefmt=fmt))\n",
)


def _worker_python_with_tabulate(tmp_path: Path) -> str:
    """What the two cells print as one cell in a Python that has tabulate (installed into a
    folder of its own, as the worker installs --deps)."""
    target = tmp_path / "site"
    install = [uv_binary(), "pip", "install", "--python", sys.executable, "--quiet"]
    subprocess.run([*install, "--target", str(target), "tabulate"], check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-c", "".join(TWO_CELLS)],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.mark.slow
def test_a_value_of_a_package_only_the_worker_has_works_in_the_next_remote_cell(
    tmp_path: Path,
) -> None:
    if importlib.util.find_spec("tabulate") is not None:
        pytest.skip("this kernel has tabulate")
    expected = _worker_python_with_tabulate(tmp_path)
    cells = run_cells(
        LOAD,
        f"%%tetra --local --deps tabulate\n{TWO_CELLS[0]}",
        "print(repr(fmt))",
        f"%%tetra --local --deps tabulate\n{TWO_CELLS[1]}",
        "fmt.padding",
    )
    made, shown, used, read = cells[1:]
    assert made.error is None, made.error
    assert "tetra: fmt is kept as a stand-in (tabulate.TableFormat cannot be loaded here" in (
        made.stderr
    ), made.stderr
    assert shown.stdout.startswith("<tetra: tabulate.TableFormat, not loadable here: No module")
    assert used.error is None, used.error
    assert used.stdout == expected
    assert read.error is not None and read.error["ename"] == "TetraError"
    assert read.error["evalue"].startswith("fmt is a TableFormat that this kernel cannot load")
    assert "pip install tabulate here" in read.error["evalue"]
