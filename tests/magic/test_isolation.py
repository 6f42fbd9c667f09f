"""Nothing one remote cell leaves behind reaches another cell or another kernel: --env lasts
for its cell, output a cell's thread prints late stays with its own kernel, files a cell writes
stay in its kernel's working directory and cannot stop the next cell from starting.

Leaks need a shared worker to show, so this module's local endpoint has ONE worker: every
cell of every kernel here runs on it, one after the other, as two notebooks sharing a busy
endpoint's worker would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import published as harness
from helpers.kernels import (
    LiveKernel,
    as_local,
    environ,
    loaded_kernels,
    private_local_endpoint,
    run_cells,
)
from helpers.published import LoopbackEndpoint, kernel_env

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

LOAD = "%load_ext tetra_magic"
# The published worker (worker-flash's own code, or its stand-in), for this module.
worker = harness.worker
published = harness.published
PRESET = "TZ"  # in the worker's own environment (passed to it: local/passed_env.py)


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("tetra-home")
    with environ({PRESET: "from-worker"}), private_local_endpoint(home, workers=1):
        yield


@pytest.fixture
def kernels() -> Iterator[tuple[LiveKernel, LiveKernel]]:
    """Two notebooks open at once, both with the extension loaded."""
    with loaded_kernels(2) as (a, b):
        yield a, b


READ_ENV = (
    f"import os\nseen = [os.environ.get(n) for n in ('TETRA_ISO', 'TETRA_HOME_VAR', {PRESET!r})]"
)


def test_env_lasts_for_its_cell_only() -> None:
    """Set from a value, from the kernel's own variable, over a variable the worker has, and in
    a cell that fails: each is gone (or back to the worker's value) in the next cell."""
    cells = run_cells(
        LOAD,
        "import os\nos.environ['TETRA_HOME_VAR'] = 'kernel-value'",
        f"%%tetra --local --env TETRA_ISO=one --env TETRA_HOME_VAR --env {PRESET}=cell\n"
        f"{READ_ENV}\nduring = seen",
        "%%tetra --local --env TETRA_ISO=failing\nimport os\n"
        "raise ValueError(os.environ['TETRA_ISO'])",
        f"%%tetra --local\n{READ_ENV}\nafter = seen",
        "print(during, after)",
    )
    assert cells[3].error["evalue"] == "failing"
    assert cells[-1].stdout == ("['one', 'kernel-value', 'cell'] [None, None, 'from-worker']\n"), (
        cells
    )


def test_env_of_one_kernel_never_reaches_another(kernels: tuple[LiveKernel, LiveKernel]) -> None:
    a, b = kernels
    first = a.run(f"%%tetra --local --env TETRA_ISO=secret-a\n{READ_ENV}\nprint(seen)")
    assert first.stdout == "['secret-a', None, 'from-worker']\n", first
    # The other kernel's cells, one after and one at the same time as another --env cell.
    assert b.run(f"%%tetra --local\n{READ_ENV}\nprint(seen)").stdout == (
        "[None, None, 'from-worker']\n"
    )
    both = (
        a.execute(f"%%tetra --local --env TETRA_ISO=again-a\n{READ_ENV}\nprint(seen)"),
        b.execute(f"%%tetra --local\n{READ_ENV}\nprint(seen)"),
    )
    assert a.outputs(both[0]).stdout == "['again-a', None, 'from-worker']\n"
    assert b.outputs(both[1]).stdout == "[None, None, 'from-worker']\n"


def late_printer(tmp_path: Path, text: str) -> str:
    """A remote cell whose thread prints `text` once tmp_path/go exists (after the cell has
    ended), then creates tmp_path/done."""
    return (
        "%%tetra --local\nimport os, threading, time\n"
        "def late():\n"
        f"    while not os.path.exists({str(tmp_path / 'go')!r}):\n"
        "        time.sleep(0.01)\n"
        f"    print({text!r}, flush=True)\n"
        f"    open({str(tmp_path / 'done')!r}, 'w').close()\n"
        "threading.Thread(target=late, daemon=True).start()\n"
    )


def release(tmp_path: Path) -> None:
    """Let the late printer print, and wait until it has: its output now sits on the worker."""
    (tmp_path / "go").touch()
    deadline = time.monotonic() + 60
    while not (tmp_path / "done").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "done").exists(), "the cell's thread never printed"


def test_late_output_goes_to_the_same_kernels_next_cell(tmp_path: Path) -> None:
    kernel = LiveKernel()
    try:
        assert kernel.run(LOAD).error is None
        started = kernel.run(late_printer(tmp_path, "late from this notebook"))
        assert started.error is None and started.stdout == ""
        release(tmp_path)
        later = kernel.run("%%tetra --local\nprint('next cell')")
        assert later.stdout == "late from this notebook\nnext cell\n"
    finally:
        kernel.close()


def test_late_output_never_reaches_another_kernel(
    kernels: tuple[LiveKernel, LiveKernel], tmp_path: Path
) -> None:
    a, b = kernels
    assert a.run(late_printer(tmp_path, "late from notebook A")).error is None
    release(tmp_path)
    cell = "%%tetra --local\nprint('notebook B')"
    other = b.run(cell)
    assert other.stdout == run_cells(as_local(cell))[0].stdout
    assert "notebook A" not in other.stdout + other.stderr
    # A's own next cell may have it or not (its process made way for B's cells); B never does.
    a.run("%%tetra --local\nprint('A again')")
    assert "notebook A" not in b.run(cell).stdout


WRITE = """%%tetra --local
import os
for name in ('json', 'ast', 'cloudpickle'):
    with open(name + '.py', 'w') as f:
        f.write('raise SystemExit(7)\\n')
with open('helper_mod.py', 'w') as f:
    f.write('VALUE = 42\\n')
"""
USE = """%%tetra --local
import json, helper_mod
print(json.dumps([helper_mod.VALUE]))
"""
LOOK = """%%tetra --local
import os
print(sorted(n for n in os.listdir() if n.endswith('.py')))
"""


def test_files_a_cell_writes_stay_with_its_kernel(
    kernels: tuple[LiveKernel, LiveKernel], tmp_path: Path
) -> None:
    """Notebook A writes modules named like the standard library's and cloudpickle into its
    working directory, and a helper module. Notebook B, next on the same worker, sees none of
    them; A's next cell starts (in a new process, B having had the worker) with the real
    modules and imports its helper, giving what the same cells give locally."""
    a, b = kernels
    assert a.run(WRITE).error is None
    assert b.run(LOOK).stdout == "[]\n"
    used = a.run(USE)
    assert used.error is None, used
    assert a.run(LOOK).stdout == "['ast.py', 'cloudpickle.py', 'helper_mod.py', 'json.py']\n"
    local = run_cells(f"%cd {tmp_path}", as_local(WRITE), as_local(USE))
    assert used.stdout == local[2].stdout == "[42]\n"
    assert b.run("%%tetra --local\nimport json\nprint(json.dumps(1))").stdout == "1\n"


def test_each_kernel_has_a_working_directory_of_its_own(
    kernels: tuple[LiveKernel, LiveKernel],
) -> None:
    cell = "%%tetra --local\nimport os\nprint(os.getcwd())"
    a, b = kernels
    first_a, first_b, again_a = a.run(cell).stdout, b.run(cell).stdout, a.run(cell).stdout
    assert first_a == again_a and first_a != first_b
    assert Path(first_a.strip()).parent == Path(first_b.strip()).parent


def test_a_new_local_endpoint_starts_with_empty_working_directories(tmp_path: Path) -> None:
    """Files cells wrote under a server that has stopped are gone when the next one starts,
    as on a fresh container, rather than piling up in the state directory."""
    from tetra_magic.local import state

    left = state.server_dir(tmp_path) / "kernels" / "0123abcd" / "model.pt"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"weights")
    with private_local_endpoint(tmp_path, workers=1):
        assert not left.parent.exists()


def test_env_and_stdin_on_the_published_worker(published: LoopbackEndpoint) -> None:
    """The published worker runs every kernel's cells in its own long-lived process: there
    too --env lasts for its cell, and input() ends the cell with the way out."""
    target = f"%%tetra --endpoint {published.url}"
    cells = run_cells(
        LOAD,
        f"{target} --env TETRA_ISO=one\n{READ_ENV}\nduring = seen",
        f"{target} --env TETRA_ISO=two\nname = input()",
        f"{target}\n{READ_ENV}\nafter = seen",
        "print(during[0], after[0])",
        env=kernel_env(published),
    )
    assert cells[2].error["ename"] == "EOFError"
    assert "stdin is not available on the worker" in cells[2].error["evalue"]
    assert cells[-1].stdout == "one None\n", cells


BREAK_START = """%%tetra --local
import os, sysconfig
open('stop-here', 'w').close()
site = sysconfig.get_paths()['purelib']
with open(os.path.join(site, 'zz_tetra_isolation_test.pth'), 'w') as f:
    f.write("import os; os.path.exists('stop-here') and os._exit(3)\\n")
print(site)
"""


def test_an_executor_that_cannot_start_says_so(kernels: tuple[LiveKernel, LiveKernel]) -> None:
    """Notebook A's cell leaves the worker's environment unable to start a process in A's
    working directory (a .pth file that exits there). B's cells still run; A's next cell, which
    needs a new process once B has had the worker, fails saying the process did not start and
    the cell did not run, rather than blaming code that never ran."""
    a, b = kernels
    broken = a.run(BREAK_START)
    pth = Path(broken.stdout.strip()) / "zz_tetra_isolation_test.pth"
    try:
        assert broken.error is None and pth.exists(), broken
        assert b.run("%%tetra --local\nprint('B runs')").stdout == "B runs\n"
        failed = a.run("%%tetra --local\nprint('never')")
    finally:
        pth.unlink(missing_ok=True)
    assert failed.stdout == "" and failed.error["ename"] == "JobFailed"
    assert failed.error["evalue"].startswith(
        "the worker could not start the process that runs cells, so the cell did not run:\n"
        "the process that runs the code exited with status 3 before it was ready"
    ), failed.error
    assert "crashed" not in failed.error["evalue"]
    assert a.run("%%tetra --local\nprint('A runs')").stdout == "A runs\n"


IMPORT_TABULATE = "import tabulate\nprint(tabulate.__name__)"


def test_packages_one_notebook_installs_stay_its_own(
    kernels: tuple[LiveKernel, LiveKernel],
) -> None:
    """Notebook A installs a package with --deps and another with %pip on the shared worker;
    notebook B's cells there do not see them (they fail as on a fresh worker, as they do in
    this plain kernel, which has neither), while A's later cells still do without --deps."""
    a, b = kernels
    home = run_cells(IMPORT_TABULATE, "import cowsay")
    assert [cell.error["ename"] for cell in home] == ["ModuleNotFoundError"] * 2, home
    installed = a.run(f"%%tetra --local --deps tabulate\n{IMPORT_TABULATE}")
    assert installed.stdout == "tabulate\n", installed
    piped = a.run("%%tetra --local\n%pip install -q cowsay==6.1\nimport cowsay")
    assert piped.error is None, piped
    assert a.run(f"%%tetra --local\n{IMPORT_TABULATE}\nimport cowsay").error is None

    for source, at_home in zip((IMPORT_TABULATE, "import cowsay"), home, strict=True):
        other = b.run(f"%%tetra --local\n{source}")
        assert other.error is not None, other
        assert (other.error["ename"], other.error["evalue"]) == (
            at_home.error["ename"],
            at_home.error["evalue"],
        )
    # B's own --deps gives it the package, as it would on a fresh worker.
    assert b.run(f"%%tetra --local --deps tabulate\n{IMPORT_TABULATE}").stdout == "tabulate\n"


def test_a_version_the_notebook_pins_wins_over_the_workers_own(
    kernels: tuple[LiveKernel, LiveKernel],
) -> None:
    """The worker's own environment has colorama (0.4.6, a runpod dependency); a notebook that
    pins another version imports the one it pinned, as it would after installing it at home;
    the other notebook still gets the worker's."""
    a, b = kernels
    version = "import colorama\nprint(colorama.__version__)"
    worker_own = b.run(f"%%tetra --local\n{version}").stdout
    assert worker_own != "0.4.5\n", worker_own
    assert a.run(f"%%tetra --local --deps colorama==0.4.5\n{version}").stdout == "0.4.5\n"
    assert b.run(f"%%tetra --local\n{version}").stdout == worker_own
