"""Helper modules beside the notebook travel with the cell (issue 21): `import cleaning` in a
remote cell finds the notebook's own cleaning.py (or package) on any worker, as it is on disk
when the cell is sent, and a traceback through it reads as at home.

What a cell gives is compared with the same cells in a plain kernel (the kernel's working
directory is the notebook's folder, a tmp dir here), never with values written down. The
in-process tests check the two halves on their own: what the kernel sends
(tetra_magic/cell/local_modules.py), and what the worker makes of it
(tetra_magic/runtime/local_modules.py)."""

from __future__ import annotations

import re
import sys
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from helpers import published as harness
from helpers.following import OPTIONS
from helpers.kernels import CellRun, private_local_endpoint, run_cells
from helpers.published import LoopbackEndpoint, kernel_env
from helpers.twins import LOAD, Remote, Twins, assert_same, run_twins
from IPython.core.error import UsageError

from tetra_magic.cell import local_modules
from tetra_magic.cell.analysis import analyse
from tetra_magic.cell.packing import pack
from tetra_magic.errors import import_hint
from tetra_magic.runtime import local_modules as on_worker

# The published worker behind a loopback endpoint, for the test that runs cells on it.
worker = harness.worker
published = harness.published
T = TypeVar("T")

HELPERS = """\
import textutil

def clean(s):
    return textutil.strip(s).lower()

def boom(x):
    return 1 / x
"""
OTHER = "def strip(s):\n    return s.strip()\n"
PACKAGE = {
    "pkg/__init__.py": "from .sub import twice\n",
    "pkg/sub.py": "def twice(v):\n    return 2 * v\n",
}


def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


@pytest.fixture
def notebook_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder with a helper module and a helper package, on sys.path as a kernel's working
    directory is; the modules imported from it are forgotten afterwards."""
    write(tmp_path, {"cleaning.py": HELPERS, "textutil.py": OTHER, **PACKAGE})
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.partition(".")[0] in ("cleaning", "textutil", "pkg")]:
        del sys.modules[name]


# --------------------------------------------------------------------------- in process


def test_the_notebooks_own_modules_travel_and_installed_ones_do_not(
    notebook_folder: Path,
) -> None:
    """The cell's imports, and what those import in turn; a package whole; never the standard
    library or an installed package."""
    found = local_modules.needed(["import cleaning, json, pytest\nfrom pkg.sub import twice"], [])
    assert sorted(found) == ["cleaning", "pkg", "textutil"]
    assert found["pkg"]["files"] == {
        "pkg": [str(notebook_folder / "pkg/__init__.py"), PACKAGE["pkg/__init__.py"]],
        "pkg.sub": [str(notebook_folder / "pkg/sub.py"), PACKAGE["pkg/sub.py"]],
    }
    # a function shipped by source that imports a helper in its body counts too
    assert sorted(local_modules.needed(["def f():\n    import textutil\n"], [])) == ["textutil"]


def test_a_package_installed_into_a_folder_the_user_added_is_not_the_notebooks(
    notebook_folder: Path,
) -> None:
    """`pip install --target DIR numpy` and DIR on sys.path: installed (its metadata says so,
    and its compiled parts could not travel as source); --deps brings it on the worker."""
    write(
        notebook_folder,
        {
            "vendored/__init__.py": "",
            "vendored-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: vendored\n",
            "vendored-1.0.dist-info/top_level.txt": "vendored\n",
            "compiled/__init__.py": "",
            "compiled/_core.so": "",
        },
    )
    assert local_modules.needed(["import vendored, compiled, cleaning"], []).keys() == {
        "cleaning",
        "textutil",
    }


def test_a_notebook_value_from_a_helper_takes_its_module_along(notebook_folder: Path) -> None:
    """`from cleaning import clean` at home, then `clean(...)` in the cell: the pickle names
    cleaning, which goes along."""
    import cleaning

    analysis = analyse("\nclean(' A ')", "<tetra-cell-1>")
    packed = pack(
        analysis, {"clean": cleaning.clean}, OPTIONS, filename="<tetra-cell-1>", limit=10**7
    )
    assert sorted(packed.spec["local_modules"]) == ["cleaning", "textutil"]


def test_over_the_limit_the_error_names_the_modules_sources(notebook_folder: Path) -> None:
    (notebook_folder / "big.py").write_text("DATA = " + repr("x" * 400_000) + "\n")
    analysis = analyse("\nimport big", "<tetra-cell-1>")
    with pytest.raises(UsageError, match=r"sources of the notebook's modules big: 0\.4 MB"):
        pack(analysis, {}, OPTIONS, filename="<tetra-cell-1>", limit=100_000)


def test_on_the_worker_a_helper_is_kept_while_its_text_holds_and_replaced_when_it_changed(
    notebook_folder: Path,
) -> None:
    """Same sources: the very module of the cell before. New sources: a new module, and the
    cleaning that imported from the old one are new too. Between cells the worker's own module
    of the same name is back."""
    first = local_modules.needed(["import cleaning"], [])
    (notebook_folder / "textutil.py").write_text("def strip(s):\n    return s.strip() + '!'\n")
    changed = local_modules.needed(["import cleaning"], [])
    theirs = types.ModuleType("textutil")
    sys.modules["textutil"] = theirs
    restore = on_worker.for_this_cell(first)
    import cleaning

    before = (cleaning, sys.modules["textutil"])
    assert cleaning.clean(" A ") == "a" and before[1] is not theirs
    restore()
    assert sys.modules["textutil"] is theirs and "cleaning" not in sys.modules
    restore = on_worker.for_this_cell(first)
    assert (sys.modules["cleaning"], sys.modules["textutil"]) == before
    restore()
    restore = on_worker.for_this_cell(changed)
    import cleaning as again

    assert again is not before[0] and again.clean(" A ") == "a!"
    restore()


def _helper_frames(exc: BaseException, folder: Path) -> list[tuple[str, int | None, str | None]]:
    return [
        (frame.filename, frame.lineno, frame.line)
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename.startswith(str(folder))
    ]


def test_a_traceback_through_a_helper_reads_as_at_home(notebook_folder: Path) -> None:
    """Its file and line as at home, and the line's text, though the file is not there."""
    import cleaning

    with pytest.raises(ZeroDivisionError) as home:
        cleaning.boom(0)
    expected = _helper_frames(home.value, notebook_folder)
    packages = local_modules.needed(["import cleaning"], [])
    del sys.modules["cleaning"], sys.modules["textutil"]
    (notebook_folder / "cleaning.py").rename(notebook_folder / "moved.txt")
    restore = on_worker.for_this_cell(packages)
    try:
        import cleaning as shipped

        with pytest.raises(ZeroDivisionError) as remote:
            shipped.boom(0)
    finally:
        restore()
    assert expected and _helper_frames(remote.value, notebook_folder) == expected


# --------------------------------------------------------------------------- in kernels

V1 = {"cleaning.py": HELPERS, "textutil.py": OTHER, **PACKAGE}
V2 = {
    "textutil.py": "def strip(s):\n    return '<' + s.strip() + '>'\n",
    "pkg/sub.py": "def twice(v):\n    return [v, v]\n",
}
USE = """\
import cleaning
from pkg import twice
print(cleaning.clean('  Hello '), twice(4))
x = twice(1)"""
WRITE = """\
from pathlib import Path
for name, text in {}.items():
    Path(name).parent.mkdir(exist_ok=True)
    Path(name).write_text(text)"""


def _cells(marked: Callable[[str], T]) -> list[str | T]:
    """A notebook whose cleaning change between two cells that use them (with autoreload at
    home, so the local twin sees the change as the remote cell does), then a helper's function
    as a notebook value, and a traceback through a helper; `marked` makes a cell remote."""
    return [
        "%load_ext autoreload\n%autoreload 2",
        WRITE.format(repr(V1)),
        marked(USE),
        "x",
        WRITE.format(repr(V2)),
        marked(USE),
        "from cleaning import clean as home_clean",
        marked("home_clean(' Z ')"),
        marked("cleaning.boom(0)"),
    ]


def _helper_lines(run: CellRun) -> list[tuple[str, int]]:
    """(file, line) of each helper frame in an error's traceback, as IPython shows it at home
    (`File PATH:LINE, in`) or as the remote traceback does (`File "PATH", line LINE`)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(run.error["traceback"]))
    found = re.findall(r'File "?([^":\s]+cleaning\.py)"?(?::|, line )(\d+)', text)
    return [(path, int(line)) for path, line in found]


@pytest.mark.slow
def test_helpers_beside_the_notebook_travel_on_our_worker(tmp_path: Path) -> None:
    folder = tmp_path / "notebook"
    folder.mkdir()
    with private_local_endpoint(tmp_path / "home", workers=1):
        twins = run_twins(*_cells(Remote), cwd=folder)
    _assert_as_at_home(twins, folder)


@pytest.mark.slow
def test_helpers_beside_the_notebook_travel_on_the_published_worker(
    published: LoopbackEndpoint, tmp_path: Path
) -> None:
    folder = tmp_path / "notebook"
    folder.mkdir()
    home = run_cells(LOAD, *_cells(str), cwd=folder)[1:]
    cells = _cells(lambda source: f"%%tetra --endpoint {published.url}\n{source}")
    there = run_cells(LOAD, *cells, env=kernel_env(published), cwd=folder)[1:]
    _assert_as_at_home(Twins(home, there), folder)


def _assert_as_at_home(twins: Twins, folder: Path) -> None:
    assert_same(twins)
    assert "<hello>" in twins.local[5].stdout  # the change was seen at home too
    frames = _helper_lines(twins.local[-1])
    assert frames == [(str(folder / "cleaning.py"), 7)]
    assert _helper_lines(twins.remote[-1]) == frames
    remote_text = "\n".join(twins.remote[-1].error["traceback"])
    assert "return 1 / x" in remote_text


@pytest.mark.slow
def test_a_helper_with_a_syntax_error_reads_as_at_home(tmp_path: Path) -> None:
    """IPython renders a SyntaxError its own way, from the kernel's frames: the remote one
    must show the helper's line, as at home, not the magic's frames."""
    folder = tmp_path / "notebook"
    folder.mkdir()
    (folder / "badmod.py").write_text("x = 1\n\ndef broken(:\n    pass\n")
    with private_local_endpoint(tmp_path / "home", workers=1):
        twins = run_twins(Remote("import badmod"), cwd=folder)
    assert_same(twins)
    shown = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(twins.remote[0].error["traceback"]))
    assert "tetra_magic" not in shown and "interactiveshell" not in shown, shown
    assert f'File "{folder / "badmod.py"}", line 3' in shown and "def broken(:" in shown, shown


# ------------------------------------------- a notebook's own `worker`, and a helper gone

OWN_WORKER = {
    "module": {"worker.py": "def f(x):\n    return x * 10\n"},
    "package": {
        "worker/__init__.py": "from .sub import f\n",
        "worker/sub.py": "def f(x):\n    return x * 100\n",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(OWN_WORKER))
def test_a_notebooks_own_worker_module_is_its_own_at_home_and_on_the_worker(
    tmp_path: Path, kind: str
) -> None:
    """Our worker package is named `worker` too: the notebook's own worker.py (or worker/)
    is what `import worker` gets, at home and in a remote cell, while the magic and our
    worker keep running (the cells after it run in the same executor process)."""
    folder = tmp_path / "notebook"
    folder.mkdir()
    write(folder, OWN_WORKER[kind])
    with private_local_endpoint(tmp_path / "home", workers=1):
        twins = run_twins(
            Remote("import os\npid = os.getpid()\nfrom worker import f\nf(2)"),
            "from worker import f as home_f\nhome_f(3)",
            Remote("import worker\nprint('remote', worker.f(4))\nworker.f(4)"),
            Remote("g = f\ng(5)"),
            "g(6), worker.f(7)",
            Remote("os.getpid() == pid"),
            cwd=folder,
        )
    assert_same(twins)
    assert twins.local[0].results == ["20" if kind == "module" else "200"]
    assert twins.remote[-1].results[-1] == "True"


def test_a_helper_earlier_cells_sent_that_is_gone_is_not_a_package_to_install(
    notebook_folder: Path,
) -> None:
    """The hint under a ModuleNotFoundError: a helper the cell took along before, deleted
    since, is named with where it was, never as a --deps; an unknown name is said not to be
    beside the notebook."""
    local_modules.needed(["import textutil"], [])
    (notebook_folder / "textutil.py").unlink()
    missing = "Traceback ...\nModuleNotFoundError: No module named 'textutil'\n"
    hint = import_hint(missing, (), local_modules.sent())
    assert hint == (
        f"tetra: textutil is not beside the notebook any more: earlier cells sent it from"
        f" {notebook_folder / 'textutil.py'}, which is gone; put it back there, and cells take"
        " it along again"
    )
    unknown = import_hint(missing.replace("textutil", "helpers_never_seen"))
    assert unknown is not None and "and none is beside the notebook" in unknown


@pytest.mark.slow
def test_a_deleted_helper_is_named_as_gone_under_the_error(tmp_path: Path) -> None:
    """A function that imports a helper goes on to later cells; once helpers.py is deleted
    at home, the remote cell's ModuleNotFoundError says where the helper was."""
    folder = tmp_path / "notebook"
    folder.mkdir()
    (folder / "helpers.py").write_text("def h():\n    return 5\n")
    use = "def use():\n    import helpers\n    return helpers.h()\n"
    # Reached through a notebook variable too: a module the notebook imported, read by a
    # notebook function the cell calls.
    through = "import helpers as held\ndef use_held():\n    return held.h()"
    with private_local_endpoint(tmp_path / "home", workers=1):
        runs = run_cells(
            LOAD,
            f"%%tetra --local\n{use}use()",
            through,
            "import os\nos.remove('helpers.py')",
            "%%tetra --local\nuse()",
            "%%tetra --local\nuse_held()",
            cwd=folder,
        )[1:]
    assert runs[0].results[-1] == "5"
    gone = folder / "helpers.py"
    said = f"tetra: helpers is not beside the notebook any more: earlier cells sent it from {gone}"
    for run in runs[3:]:
        error = run.error
        assert error is not None and error["ename"] == "ModuleNotFoundError", run
        shown = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))
        assert f"{said}, which is gone" in shown, shown
        assert "--deps" not in shown
