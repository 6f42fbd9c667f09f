"""What shapes a remote cell's output at home shapes it remotely too: plotly's renderer in the
kernel, the inline backend's figure formats, and the display options the cell itself sets.

Each remote cell is compared with the very same cell run in a plain kernel (tests/helpers/
twins.py). plotly, matplotlib and pandas are big, and the project's environment has none of
them: they are installed once per test run into a folder of the tests' own, which the kernels
of both twins find on PYTHONPATH (the local endpoint's workers, started before, do not: the
remote cells get theirs with `--deps`, as a user's would).
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import published as harness
from helpers.kernels import CellRun, environ, private_local_endpoint, run_cells
from helpers.published import REAL, LoopbackEndpoint, kernel_env
from helpers.twins import Remote, run_twins

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

LOAD = "%load_ext tetra_magic"
# RunPod's published worker behind a loopback endpoint (helpers/published.py), for the test
# that runs plotly there.
worker = harness.worker
published = harness.published


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home")):
        yield


@pytest.fixture(scope="module")
def kernel_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plotly, matplotlib and pandas where the twins' kernels import them from."""
    from uv import find_uv_bin

    folder = tmp_path_factory.mktemp("kernel-packages")
    command = [find_uv_bin(), "pip", "install", "--quiet", "--target", str(folder)]
    subprocess.run([*command, "plotly", "matplotlib", "pandas"], check=True)
    return folder


@pytest.fixture
def on_path(kernel_packages: Path) -> Iterator[None]:
    """Kernels started in the test import plotly, matplotlib and pandas."""
    with environ({"PYTHONPATH": str(kernel_packages)}):
        yield


def _shown(run: CellRun) -> list[tuple[str, Any, Any]]:
    """A cell's outputs as the notebook keeps them, but for the remote job's own status line."""
    return [
        (o.output_type, o.get("text") or dict(o.get("data", {})), dict(o.get("metadata", {})))
        for o in run.outputs
        if not o.get("data", {}).get("text/plain", "").startswith("tetra: ")
    ]


def _saved_size(runs: list[CellRun]) -> int:
    return sum(len(json.dumps(run.outputs)) for run in runs)


FIGURE = (
    "import plotly.graph_objects as go\n"
    "fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[4, 1, 2]))\n"
    "fig.show()"
)


@pytest.mark.usefixtures("on_path")
def test_plotly_figures_show_as_in_the_kernel_and_the_saved_notebook_stays_small() -> None:
    """fig.show(), display(fig) and fig as the last line: plotly's own mime bundle, once each,
    with the same data as at home; nothing on stdout; no plotly.js in every output."""
    deps = "--deps plotly"
    twins = run_twins(Remote(FIGURE, deps), Remote("display(fig)", deps), Remote("fig", deps))
    for local, remote in zip(twins.local, twins.remote, strict=True):
        assert _shown(remote) == _shown(local), (remote.stderr, remote.error)
        assert remote.stdout == "" and remote.error is None
    assert [o[0] for run in twins.local for o in _shown(run)] == ["display_data"] * 3
    assert _saved_size(twins.remote) <= 2 * _saved_size(twins.local)


def test_a_plotly_figure_as_the_last_value_shows_as_at_home_where_the_kernel_has_no_plotly(
    kernel_packages: Path,
) -> None:
    """The kernel cannot load the figure: it shows the chart the worker rendered, as the
    figure shows itself in a kernel with plotly: a display output of plotly's bundle, with no
    Out and no `Figure({...})` text."""
    last = FIGURE.replace("fig = ", "").replace("\nfig.show()", "")
    remote = run_cells(LOAD, f"%%tetra --local --deps plotly\n{last}")[1]
    with environ({"PYTHONPATH": str(kernel_packages)}):
        local = run_cells(last)[0]
    assert remote.error is None and remote.stdout == "", remote.stderr
    assert _shown(remote) == _shown(local)
    assert [kind for kind, _, _ in _shown(local)] == ["display_data"]


@pytest.mark.usefixtures("on_path")
@pytest.mark.skipif(REAL is None, reason="needs worker-flash's code (it installs --deps)")
def test_plotly_figures_show_the_same_from_the_published_worker(
    published: LoopbackEndpoint,
) -> None:
    """The published worker (worker-flash's code) runs the cell in its own process, where
    plotly finds no notebook: the figures still show as the kernel's renderer makes them."""
    target = f"%%tetra --endpoint {published.url} --deps plotly\n"
    with environ(kernel_env(published)):
        remote = run_cells(LOAD, target + FIGURE, target + "display(fig)\nfig")[1:]
    local = run_cells(FIGURE, "display(fig)\nfig")
    for home, there in zip(local, remote, strict=True):
        assert _shown(there) == _shown(home), (there.stderr, there.error)
        assert there.stdout == ""
    assert [o[0] for run in local for o in _shown(run)] == ["display_data"] * 3


PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"


def _images(run: CellRun) -> list[tuple[list[str], dict[str, Any]]]:
    """Each figure's mime types and metadata (the bytes differ between matplotlib builds)."""
    return [
        (sorted(data), metadata)
        for kind, data, metadata in _shown(run)
        if kind == "display_data" and any(m.startswith("image/") for m in data)
    ]


@pytest.mark.usefixtures("on_path")
@pytest.mark.parametrize("figure_format", ["svg", "retina"])
def test_the_kernels_figure_format_applies_to_remote_figures(figure_format: str) -> None:
    """`%config InlineBackend.figure_format` (once the kernel has loaded matplotlib, as IPython
    needs), print_figure_kwargs and rc: the remote figure comes in that format, with the same
    metadata (a retina image's size: the rc's figure size, uncropped) as the same plot at
    home."""
    setup = (
        "import matplotlib.pyplot\n"
        f"%config InlineBackend.figure_format = {figure_format!r}\n"
        "%config InlineBackend.print_figure_kwargs = {'bbox_inches': None}\n"
        "%config InlineBackend.rc = {'figure.figsize': (3, 2)}"
    )
    twins = run_twins(setup, Remote(PLOT, "--deps matplotlib"))
    local, remote = twins.local[1], twins.remote[1]
    assert remote.error is None, remote.stderr
    assert _images(remote) == _images(local)
    expected = "image/svg+xml" if figure_format == "svg" else "image/png"
    assert len(_images(local)) == 1 and expected in _images(local)[0][0]
    if figure_format == "retina":
        assert _images(local)[0][1] == {"image/png": {"width": 300, "height": 200}}


def _figures(run: CellRun) -> list[tuple[str, list[str], dict[str, Any]]]:
    """Each output showing a figure: its kind (display or Out), mime types and metadata."""
    return [
        (kind, sorted(data), metadata)
        for kind, data, metadata in _shown(run)
        if isinstance(data, dict) and any(m.startswith("image/") for m in data)
    ]


SHOWN_FIGURE = (
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots()\n"
    "ax.plot([1, 2])\n"
    "plt.close(fig)\n"
    "display(fig)\n"
    "fig"
)


@pytest.mark.usefixtures("on_path")
@pytest.mark.parametrize(
    ("figure_format", "deps"),
    [("svg", "matplotlib"), ("retina", "matplotlib"), ("retina", "matplotlib ipython")],
    ids=["svg", "retina", "retina-with-ipython"],
)
def test_a_figure_displayed_or_left_as_the_last_value_follows_the_kernels_format(
    figure_format: str, deps: str
) -> None:
    """`display(fig)` and `fig` as the last line come in the kernel's figure format with its
    print_figure_kwargs (a retina image with its size as metadata), on a worker with IPython
    or without, as the same cell shows them at home."""
    setup = (
        "import matplotlib.pyplot\n"
        f"%config InlineBackend.figure_format = {figure_format!r}\n"
        "%config InlineBackend.print_figure_kwargs = {'bbox_inches': None}"
    )
    twins = run_twins(setup, Remote(SHOWN_FIGURE, f"--deps {deps}"))
    local, remote = twins.local[1], twins.remote[1]
    assert remote.error is None, remote.stderr
    assert _figures(remote) == _figures(local)
    assert [kind for kind, _, _ in _figures(local)] == ["display_data", "execute_result"]


def _png_sizes(run: CellRun) -> list[tuple[int, int]]:
    """The pixel size of each PNG the cell showed (from its header)."""
    images = [data["image/png"] for _, data, _ in _shown(run) if "image/png" in data]
    return [struct.unpack(">II", base64.b64decode(image)[16:24]) for image in images]


@pytest.mark.usefixtures("on_path")
def test_rcparams_the_kernel_set_apply_to_remote_figures() -> None:
    """`plt.rcParams['figure.figsize'] = (3, 2)` in the kernel: the remote figure is drawn at
    that size, as the same plot at home (not matplotlib's default 640x480)."""
    setup = (
        "%matplotlib inline\n"
        "import matplotlib.pyplot as plt\n"
        "plt.rcParams['figure.figsize'] = (3, 2)\n"
        "%config InlineBackend.print_figure_kwargs = {'bbox_inches': None}"
    )
    twins = run_twins(
        setup, Remote("import matplotlib.pyplot as plt\nplt.plot([1, 2])", "--deps matplotlib")
    )
    local, remote = twins.local[1], twins.remote[1]
    assert remote.error is None, remote.stderr
    assert _png_sizes(remote) == _png_sizes(local)
    assert len(_png_sizes(local)) == 1 and _png_sizes(local) != [(640, 480)]


def test_an_array_of_axes_is_left_out_without_a_note(kernel_packages: Path) -> None:
    """`fig, axes = plt.subplots(1, 2)` in a kernel without numpy or matplotlib: the figure
    shows, and neither it nor the axes array is named, as the cell says nothing at home."""
    cell = "import matplotlib.pyplot as plt\nfig, axes = plt.subplots(1, 2)\naxes[0].plot([1, 2])"
    remote = run_cells(LOAD, f"%%tetra --local --deps matplotlib\n{cell}")[1]
    with environ({"PYTHONPATH": str(kernel_packages)}):
        local = run_cells(cell)[0]
    assert remote.error is None, remote.stderr
    assert "tetra: " not in remote.stderr and _figures(remote) == _figures(local)
    assert len(_figures(local)) == 1


@pytest.mark.usefixtures("on_path")
def test_a_figure_left_open_shows_after_the_cells_result_as_at_home() -> None:
    """The inline backend shows a cell's open figures once the cell has run, after its Out;
    a remote cell's come in the same order, and a failing cell's after its traceback."""
    ending = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\n'plotted'"
    failing = "plt.plot([2, 1])\nraise ValueError('bad data')"
    deps = "--deps matplotlib"
    twins = run_twins(Remote(ending, deps), Remote(failing, deps))
    for local, remote in zip(twins.local, twins.remote, strict=True):
        assert [o[0] for o in _shown(remote)] == [o[0] for o in _shown(local)], remote.stderr
    assert [o[0] for o in _shown(twins.local[0])] == ["execute_result", "display_data"]
    assert [o[0] for o in _shown(twins.local[1])] == ["error", "display_data"]


def test_the_figure_format_set_in_a_kernel_without_matplotlib_applies() -> None:
    """The usual case: matplotlib only on the worker, `%config` in the kernel (IPython keeps it
    for the inline backend to come): the remote figure is an SVG."""
    runs = run_cells(
        LOAD,
        "%config InlineBackend.figure_format = 'svg'",
        f"%%tetra --local --deps matplotlib\n{PLOT}",
    )
    assert runs[2].error is None, runs[2].stderr
    assert [mimes for mimes, _ in _images(runs[2])] == [["image/svg+xml", "text/plain"]]


MANY_ROWS = (
    "import pandas as pd\npd.set_option('display.max_rows', 5)\npd.DataFrame({'n': range(20)})"
)


def test_display_options_the_cell_sets_apply_to_its_own_out(kernel_packages: Path) -> None:
    """`pd.set_option('display.max_rows', 5)` in the cell shapes the Out the cell ends with:
    the worker renders the last value after the cell ran, options in force. The remote kernel
    has no pandas (the worker's rendering shows), the plain one has."""
    remote = run_cells(LOAD, f"%%tetra --local --deps pandas\n{MANY_ROWS}")[1]
    with environ({"PYTHONPATH": str(kernel_packages)}):
        local = run_cells(MANY_ROWS)[0]
    assert remote.error is None, remote.stderr
    assert remote.results[-1] == local.results[-1]
    assert "[20 rows x 1 columns]" in local.results[-1]


def test_display_options_the_cell_sets_hold_in_a_kernel_with_pandas_too(on_path: None) -> None:
    """Where the kernel has pandas the DataFrame itself comes home and the kernel renders it:
    the options the cell set are set in the kernel too, as running the cell there would, so
    its Out and a later cell's (a DataFrame made at home) show 5 rows as at home."""
    later = "pd.DataFrame({'m': range(30)})"
    twins = run_twins("import pandas as pd", Remote(MANY_ROWS, "--deps pandas"), later)
    assert twins.remote[1].error is None, twins.remote[1].stderr
    assert [run.results for run in twins.remote] == [run.results for run in twins.local]
    assert "[30 rows x 1 columns]" in twins.local[2].results[-1]
