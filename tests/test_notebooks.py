"""The example notebooks: saved as one real top-to-bottom run, and guarded by nbval.

nbval itself runs every notebook in the default pytest run (pyproject's addopts). These tests
check what nbval cannot: that it would notice a changed output at all, that the saved outputs
are the ones a real run made, and that the kernels never find a RunPod key.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "tools"))
from run_notebook import kernel_environment  # noqa: E402


def _code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_example_notebooks_exist() -> None:
    assert {p.name for p in NOTEBOOKS} >= {
        "quickstart.ipynb",
        "dependencies.ipynb",
        "training.ipynb",
        "live_plots.ipynb",
        "sessions.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_outputs_come_from_one_run_in_order(path: Path) -> None:
    cells = _code_cells(path)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
    assert any(c.source.startswith("%%tetra") for c in cells)
    for cell in cells:
        tagged = "raises-exception" in cell.metadata.get("tags", [])
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert bool(errors) == tagged, (
            f"In [{cell.execution_count}]: error without tag, or tag without error"
        )
        assert "execution" not in cell.metadata, "timings recorded: save with tools/run_notebook.py"
        kinds = " ".join(o.get("name", o.output_type) for o in cell.outputs)
        runs = re.findall(r"(?:(?:stdout|stderr) ?)+", kinds)  # streams between other outputs
        assert all(run.strip() in ("stdout", "stderr", "stdout stderr") for run in runs), (
            f"In [{cell.execution_count}]: streams not merged: save with tools/run_notebook.py"
        )
        for output in cell.outputs:
            data = output.get("data", {})
            assert "text/html" not in data and not any("widget" in k for k in data), (
                f"In [{cell.execution_count}] was saved from the widget view, not the text view"
            )


def test_remote_traceback_points_at_the_cell() -> None:
    """nbval does not compare tracebacks, so the saved one is checked here."""
    cells = _code_cells(ROOT / "notebooks" / "quickstart.ipynb")
    failed = next(c for c in cells if "raises-exception" in c.metadata.get("tags", []))
    error = next(o for o in failed.outputs if o.output_type == "error")
    text = "\n".join(error.traceback)
    assert error.ename == "ZeroDivisionError"
    assert f"Cell In[{failed.execution_count}], line 4" in text
    assert "prices[item] / count" in text
    assert "worker" not in text and "site-packages" not in text


def test_packages_the_notebooks_install_are_not_in_the_kernel() -> None:
    """dependencies.ipynb, training.ipynb, live_plots.ipynb and sessions.ipynb say these exist
    only on the worker."""
    for name in ("tabulate", "pyfiglet", "numpy", "matplotlib", "py3langid"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed in the test env"


def test_kernel_environment_has_no_key_and_the_text_view(tmp_path: Path) -> None:
    env = kernel_environment({"HOME": str(tmp_path), "RUNPOD_API_KEY": "rp_secret", "A": "1"})
    assert env == {"HOME": str(tmp_path), "TETRA_MAGIC_DISPLAY": "text", "A": "1"}


def test_kernel_environment_hides_the_runpod_config_file(tmp_path: Path) -> None:
    (tmp_path / ".runpod").mkdir()
    (tmp_path / ".runpod" / "config.toml").write_text('[default]\napi_key = "rp_secret"\n')
    env = kernel_environment({"HOME": str(tmp_path)})
    assert not (Path(env["HOME"]) / ".runpod").exists()
    assert env["TETRA_MAGIC_HOME"] == str(tmp_path / ".cache" / "tetra-magic")
    assert env["UV_CACHE_DIR"] == str(tmp_path / ".cache" / "uv")
    assert env["PYTHONUSERBASE"] == str(tmp_path / ".local")
    assert env["IPYTHONDIR"] == str(tmp_path / ".ipython")
    Path(env["HOME"]).rmdir()


@pytest.mark.slow
def test_nbval_fails_when_a_remote_output_changes(tmp_path: Path) -> None:
    """Edit one saved remote stdout in a copy of the quickstart: nbval must fail that cell, and
    only that one."""
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    index, cell = next((i, c) for i, c in enumerate(code) if "hello from the worker" in c.source)
    stdout = next(o for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    assert "hello from the worker\n" in stdout.text
    stdout.text = stdout.text.replace("hello from the worker", "hello from the kernel")
    copy = tmp_path / "quickstart.ipynb"
    nbformat.write(nb, copy)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # none of our addopts or conftests
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--nbval",
        "--nbval-current-env",
        f"--nbval-sanitize-with={ROOT / 'notebooks' / 'sanitize.cfg'}",
        "-q",
        "--color=no",
        str(copy),
    ]
    env = kernel_environment(os.environ)
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    summary = re.search(r"\b1 failed, (\d+) passed", output)
    assert summary and int(summary.group(1)) == len(code) - 1, output
    assert f"quickstart.ipynb::Cell {index} " in output, output
    assert "hello from the kernel" in output
