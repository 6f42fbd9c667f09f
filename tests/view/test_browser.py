"""The live cell view in a real JupyterLab page, checked from what the page renders.

JupyterLab runs on loopback with a token (tests/helpers/lab_page.py); Debian's Chromium, driven by
playwright, opens one notebook and runs its cells with Shift+Enter. Its kernel shows the widget
view and runs cells on a local endpoint of its own (a fresh TETRA_MAGIC_HOME, so the first
cell meets a cold start and is seen queued; the workers' venv is the one the other tests share).

JupyterLab's `commsOverSubshells` is "disabled", so the Cancel button's click reaches the
kernel as a plain comm message, as from frontends without that feature: what cancels the cell
is tetra_magic's own routing of the click to a kernel subshell (tetra_magic/view/cancel.py).

The tests run in file order on one page, each on its own cells; the last one saves, reloads,
and checks what all of them left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from helpers import lab_page
from helpers.kernels import environ, shared_worker_env

# JupyterLab in a headless browser, on a local endpoint: not in the fast tier (-m "not slow").
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

# Installed by no other test into the shared worker env, so a concurrent run cannot pre-install it.
DEPS_PACKAGE = "pyjokes"
CELLS = [
    "%load_ext tetra_magic",
    # 1: streaming, and the states of a cold start
    "%%tetra --local --name stream\nimport time\nprint('first line')\n"
    "for i in range(60):\n    print('row', i)\ntime.sleep(6)\nprint('second line')\n",
    # 2: a dependency to install; time to open the logs while it runs
    f"%%tetra --local --name deps --deps {DEPS_PACKAGE}\nimport time\n"
    f"def version():\n    import importlib.metadata\n    import {DEPS_PACKAGE}\n"
    f"    return importlib.metadata.version({DEPS_PACKAGE!r})\n"
    "print('installed', version())\ntime.sleep(5)\n",
    # 3: cancelled from its button
    "%%tetra --local --name long\nimport time\nprint('started')\ntime.sleep(120)\n"
    "print('never printed')\n",
    # 4: the next cell runs
    "print('next cell ran')",
    # 5: a remote error
    "%%tetra --local --name broken\nvalues = [1, 2]\nprint('before the error')\n"
    "total = values[5]\n",
    # 6: a plot, shown while the cell still runs
    "%%tetra --local --name plot --deps matplotlib\nimport time\nimport matplotlib.pyplot as plt\n"
    "print('plotting')\nplt.plot([1, 3, 2])\nplt.show()\ntime.sleep(8)\nprint('finished')\n",
    # 7: a tqdm.notebook bar, relayed from the worker as a real widget
    "%%tetra --local --name bar --deps ipywidgets\nfrom tqdm.notebook import tqdm\nimport time\n"
    "for step in tqdm(range(20), desc='train'):\n    time.sleep(0.4)\n",
    # 8: an IntProgress the cell displays and updates
    "%%tetra --local --name load --deps ipywidgets\nimport time\nimport ipywidgets\n"
    "bar = ipywidgets.IntProgress(max=5, description='load')\ndisplay(bar)\n"
    "for i in range(5):\n    time.sleep(1)\n    bar.value = i + 1\n",
]

# Records every text the status lines show, as they change, with the page's clock.
RECORD_STATES = """() => {
  window.__tetraStates = [];
  const seen = new Map();
  const look = () => document.querySelectorAll('.tetra-status').forEach((el) => {
    const text = el.innerText.trim();
    const name = text.split(' ')[1];
    if (seen.get(name) !== text) {
      seen.set(name, text);
      window.__tetraStates.push({text, t: performance.now() / 1000});
    }
  });
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true,
                                                     characterData: true});
}"""


def _chromium() -> None:
    """Debian's chromium, installed here if it is missing and we may (CI runs as root)."""
    if lab_page.missing() is None:
        return
    if not Path(lab_page.CHROMIUM).exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
        if subprocess.run(["apt-get", "install", "-y", "chromium"], **quiet).returncode:
            subprocess.run(["apt-get", "update"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "chromium"], **quiet)
    why = lab_page.missing()
    if why and os.environ.get("TETRA_MAGIC_REQUIRE_BROWSER") == "1":  # CI: must not skip
        pytest.fail(f"browser tests need {why}")
    if why:
        pytest.skip(f"browser tests need {why}")


@pytest.fixture(scope="module")
def endpoint_env() -> Iterator[dict[str, str]]:
    """A local endpoint for this module's kernel only, stopped at the end."""
    shared = shared_worker_env()
    home = tempfile.mkdtemp(prefix="tetra-browser-home-")
    env = {"TETRA_MAGIC_HOME": home, "TETRA_MAGIC_WORKER_ENV": shared}
    _uninstall(Path(shared), DEPS_PACKAGE)  # so the deps cell really installs it
    try:
        yield env
    finally:
        with environ(env):
            from tetra_magic.local import launcher

            launcher.stop()
        shutil.rmtree(home, ignore_errors=True)


def _uninstall(env: Path, package: str) -> None:
    python = env / "bin" / "python"
    if python.exists():
        from uv import find_uv_bin

        uninstall = [find_uv_bin(), "pip", "uninstall", "--python", str(python), package]
        subprocess.run(uninstall, capture_output=True, check=False)


@pytest.fixture(scope="module")
def nb(endpoint_env: dict[str, str]) -> Iterator[lab_page.NotebookPage]:
    _chromium()
    root = Path(tempfile.mkdtemp(prefix="tetra-browser-"))
    lab_page.write_notebook(root / "live.ipynb", CELLS)
    lab_ctx = lab_page.jupyterlab(root, env=endpoint_env, comms_over_subshells="disabled")
    with lab_ctx as lab, lab_page.browser() as context:
        page = context.new_page()
        notebook = lab_page.NotebookPage(page, lab, "live.ipynb").open()
        page.evaluate(RECORD_STATES)
        notebook.run(0)
        notebook.wait_done(0, timeout=60)
        yield notebook
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def picture_on_failure(request: pytest.FixtureRequest, nb: lab_page.NotebookPage) -> Iterator[None]:
    """When a test fails, a PNG of the whole page, to see what it showed."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        path = Path(tempfile.mkdtemp(prefix="tetra-browser-failure-")) / "page.png"
        nb.page.screenshot(path=str(path), full_page=True)
        print(f"the page when {request.node.name} failed: {path}")


def states(nb: lab_page.NotebookPage, name: str) -> list[str]:
    """The status texts the view of cell `name` showed, in order: '● name state 3 s ...'."""
    return [row["text"] for row in nb.page.evaluate("() => window.__tetraStates")
            if row["text"].split(" ")[1] == name]  # fmt: skip


def wait_live_or_done(
    nb: lab_page.NotebookPage, index: int, text: str, timeout: float, inside: str = ".tetra-output"
) -> str:
    """'live' once `text` shows in the element `inside` the cell (its live output box), 'done'
    if the cell ended first."""
    cell = f".jp-Notebook .jp-Cell:nth-child({index + 1})"
    handle = nb.page.wait_for_function(
        """([cell, text, inside]) => {
          const out = document.querySelector(cell + ' ' + inside);
          if (out && out.innerText.includes(text)) return 'live';
          const prompt = document.querySelector(cell + ' .jp-InputPrompt');
          return /\\[\\d+\\]/.test(prompt?.innerText || '') ? 'done' : false;
        }""",
        arg=[cell, text, inside],
        timeout=timeout * 1000,
    )
    return handle.json_value()


def test_remote_print_shows_while_the_cell_runs_then_the_rest(
    nb: lab_page.NotebookPage,
) -> None:
    nb.run(1)
    assert wait_live_or_done(nb, 1, "first line", timeout=180) == "live", (
        "the first print only showed once the cell had ended: the view does not stream"
    )
    shown_at = time.monotonic()
    assert nb.running(1)
    assert "second line" not in nb.output_text(1)
    box = nb.cell(1).locator(".tetra-output")
    box.get_by_text("row 59").wait_for(timeout=10_000)
    assert box_scrolls_to_its_end(box)
    nb.wait_done(1, timeout=60)
    assert time.monotonic() - shown_at > 3  # shown live, seconds before the end
    output = nb.output_text(1)
    rows = "".join(f"row {i}\n" for i in range(60))
    assert f"first line\n{rows}second line" in output  # all kept as the cell's own output
    assert re.search(r"stream done \d+(\.\d)? s", output)


def box_scrolls_to_its_end(box: object) -> bool:
    """The live output box is capped in height, scrolls, shows its last line, and its text can
    be selected (and so copied)."""
    return box.evaluate(  # type: ignore[attr-defined]
        """(box) => {
          const pre = box.querySelector('pre');
          const range = document.createRange();
          range.selectNodeContents(pre);
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          const copied = selection.toString();
          selection.removeAllRanges();
          const last = box.getBoundingClientRect();
          const end = range.getBoundingClientRect();
          return box.scrollHeight > box.clientHeight + 50
            && box.clientHeight < 24 * parseFloat(getComputedStyle(pre).fontSize)
            && Math.abs(end.bottom - last.bottom) < 8
            && getComputedStyle(pre).userSelect !== 'none'
            && copied.includes('first line') && copied.includes('row 59');
        }"""
    )


def test_status_moves_through_its_states_with_time_and_the_worker(
    nb: lab_page.NotebookPage,
) -> None:
    seen = states(nb, "stream")
    labels = [re.match(r"● stream (\w+)", text).group(1) for text in seen]
    order = [label for i, label in enumerate(labels) if i == 0 or labels[i - 1] != label]
    assert order[-3:] == ["queued", "running", "done"], seen
    running_times = {re.search(r"running (\d+) s", t).group(1) for t in seen if "running" in t}
    assert len(running_times) >= 3, seen  # the elapsed time moved while it ran
    where = nb.cell(1).locator(".tetra-summary").inner_text()
    assert re.search(r"worker \S+ · (no GPU|.+GB\)) · Python 3\.\d+", where), where


def test_logs_open_and_show_the_install_with_progress(nb: lab_page.NotebookPage) -> None:
    nb.run(2)
    assert wait_live_or_done(nb, 2, "installed", timeout=180) == "live"
    nb.cell(2).locator(".jupyter-widget-Collapse-header").click()
    logs = nb.cell(2).locator(".tetra-logs")
    logs.wait_for(state="visible", timeout=5000)
    text = logs.inner_text()
    assert f"$ uv pip install {DEPS_PACKAGE}" in text, text
    assert re.search(rf"Installed 1 package|\+ {DEPS_PACKAGE}==", text), text
    assert "[installing]" in text and "[running]" in text
    installing = [t for t in states(nb, "deps") if "installing deps" in t]
    assert installing, states(nb, "deps")
    assert any(re.search(r"installing deps \d+ s \S", t) for t in installing)  # progress
    nb.wait_done(2, timeout=60)
    summary = nb.cell(2).locator(".tetra-summary")
    summary.locator("summary").click()  # the saved record keeps the logs, folded
    assert f"uv pip install {DEPS_PACKAGE}" in summary.inner_text()


def test_cancel_stops_a_running_cell_and_the_next_cell_runs(nb: lab_page.NotebookPage) -> None:
    nb.run(3)
    assert wait_live_or_done(nb, 3, "started", timeout=120) == "live"
    nb.cell(3).locator(".tetra-cancel").click()
    clicked = time.monotonic()
    nb.wait_done(3, timeout=30)
    assert time.monotonic() - clicked < 5, "the cell took too long to stop"
    output = nb.output_text(3)
    assert "long cancelled" in output and "started" in output
    assert "Cancel button pressed" in output and "never printed" not in output
    nb.run(4)
    nb.wait_done(4, timeout=30)
    assert "next cell ran" in nb.output_text(4)


def test_a_remote_error_reads_as_a_traceback_of_the_cell(nb: lab_page.NotebookPage) -> None:
    nb.run(5)
    nb.wait_done(5, timeout=60)
    output = nb.output_text(5)
    error = nb.cell(5).locator("[data-mime-type='application/vnd.jupyter.stderr']").last
    traceback = error.inner_text()
    number = re.search(r"\[(\d+)\]", nb.prompt(5)).group(1)
    assert f"Cell In[{number}], line 4" in traceback, traceback
    assert "total = values[5]" in traceback
    assert traceback.rstrip().endswith("IndexError: list index out of range")
    assert "worker" not in traceback and "{" not in traceback  # no frames of ours, no JSON
    assert output.index("broken failed") < output.index("before the error")
    assert output.index("before the error") < output.index("Traceback")


def test_a_plot_shows_inside_the_running_cell_and_stays_after_it(
    nb: lab_page.NotebookPage,
) -> None:
    nb.run(6)
    # matplotlib is installed first
    plot = ".tetra-view img[src^='data:image/png']"
    seen = wait_live_or_done(nb, 6, "", timeout=300, inside=plot)
    assert seen == "live", "the plot only showed once the cell had ended"
    assert nb.running(6) and "finished" not in nb.cell(6).locator(".tetra-view").inner_text()
    nb.wait_done(6, timeout=60)
    output = nb.cell(6).locator(".jp-Cell-outputArea")
    assert output.locator(".tetra-view").count() == 0
    assert output.locator("img").count() == 1  # the plot, now an ordinary output of the cell
    text = nb.output_text(6)
    assert text.index("plotting") < text.index("finished")


def bar_percent(nb: lab_page.NotebookPage, index: int) -> float | None:
    """How full the last progress bar in the cell's output is drawn (percent), or None while
    none shows."""
    return nb.cell(index).evaluate(
        """(cell) => {
          const bars = cell.querySelectorAll('.widget-hprogress .progress-bar');
          return bars.length ? parseFloat(bars[bars.length - 1].style.width) : null;
        }"""
    )


def test_a_remote_tqdm_bar_moves_while_the_cell_runs_and_ends_full(
    nb: lab_page.NotebookPage,
) -> None:
    nb.run(7)
    seen: set[float] = set()
    deadline = time.monotonic() + 300  # ipywidgets is installed first
    while not re.search(r"\[\d+\]", nb.prompt(7)) and time.monotonic() < deadline:
        percent = bar_percent(nb, 7)
        if percent is not None and percent < 100:
            seen.add(percent)
        time.sleep(0.3)
    nb.wait_done(7, timeout=30)
    assert len(seen) >= 3, f"the bar did not move while the cell ran: {sorted(seen)}"
    assert bar_percent(nb, 7) == 100
    text = nb.output_text(7)
    assert re.search(r"train:\s*100%", text) and "20/20" in text, text
    assert "Error displaying widget" not in text


def test_an_int_progress_the_cell_updates_shows_its_last_value(nb: lab_page.NotebookPage) -> None:
    nb.run(8)
    nb.wait_done(8, timeout=300)
    assert "load" in nb.output_text(8) and "Error displaying widget" not in nb.output_text(8)
    assert bar_percent(nb, 8) == 100


def test_after_save_and_reload_the_cells_still_show_what_ran(nb: lab_page.NotebookPage) -> None:
    nb.save()
    nb.page.reload()
    nb.open()
    # the relayed widgets, from the widget state the notebook saved
    saved = nbformat.read(nb.lab.root / nb.name, as_version=4)
    widget_state = saved.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]
    names = [model["model_name"] for model in widget_state["state"].values()]
    assert names.count("FloatProgressModel") == 1 and names.count("IntProgressModel") == 1
    for index in (7, 8):
        nb.cell(index).locator(".widget-hprogress .progress-bar").last.wait_for(timeout=30_000)
        assert bar_percent(nb, index) == 100
    assert re.search(r"train:\s*100%", nb.output_text(7))
    page_text = nb.page.locator(".jp-Notebook").inner_text()
    assert "Loading widget" not in page_text and "Error displaying widget" not in page_text
    assert nb.page.locator(".tetra-view").count() == 0  # no live panel left anywhere
    assert nb.page.locator(".tetra-summary").count() == 7
    assert "row 59\nsecond line" in nb.output_text(1)
    assert "installed" in nb.output_text(2)
    assert "started" in nb.output_text(3) and "cancelled" in nb.output_text(3)
    assert "IndexError: list index out of range" in nb.output_text(5)
    assert "before the error" in nb.output_text(5)
    image = nb.cell(6).locator(".jp-Cell-outputArea img")
    assert image.count() == 1 and image.evaluate("(img) => img.naturalWidth > 100")
    assert "finished" in nb.output_text(6)
