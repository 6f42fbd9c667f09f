"""ipywidgets made in a remote cell, relayed one way into a real kernel, against a local endpoint
and RunPod's published worker.

What the kernel sends its frontend (comm_open and comm_msg on iopub, and the widget's display) is
read off the kernel's iopub channel, as JupyterLab receives it, and compared with the same cell
run in the kernel itself: the same widget models, with the same state at the end, shown the same
way. ipywidgets is on the worker as a user puts it there (`--deps ipywidgets`, the kernel's own
version); the worker environment has none before this module's first test and after its last.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets
import pytest
from helpers import published as harness
from helpers.kernels import (
    LiveKernel,
    environ,
    private_local_endpoint,
    run_cells,
    shared_worker_env,
)
from helpers.published import LoopbackEndpoint, kernel_env
from helpers.twins import Remote, assert_same, run_twins

# Starts kernels, a local endpoint and the published worker: not in the fast tier.
pytestmark = pytest.mark.slow

worker = harness.worker
published = harness.published

DEPS = f"--deps ipywidgets=={ipywidgets.__version__}"
VIEW = "application/vnd.jupyter.widget-view+json"
TQDM = (
    "from tqdm.notebook import tqdm\nimport time\n"
    "for step in tqdm(range(20), desc='train'):\n    time.sleep(0.05)\n"
)
INT_PROGRESS = (
    "import ipywidgets\nfrom IPython.display import display\n"
    "bar = ipywidgets.IntProgress(max=5, description='load')\ndisplay(bar)\n"
    "for i in range(5):\n    bar.value = i + 1\n"
)


@dataclass
class WidgetRun:
    """What the kernel sent the frontend for one cell: its widget models (state as updated to
    the end), every value each model's `value` took, the models its outputs show, its streams."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: dict[str, list[Any]] = field(default_factory=dict)
    shown: list[str] = field(default_factory=list)
    stderr: str = ""
    error: dict[str, Any] | None = None

    def tree(self, model_id: str) -> dict[str, Any]:
        """A shown model's final state, the models it refers to put in place of their ids, and
        tqdm's timings (elapsed, rate) masked."""
        return {key: self._resolve(value) for key, value in sorted(self.models[model_id].items())}

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("IPY_MODEL_"):
            return self.tree(value.removeprefix("IPY_MODEL_"))
        if isinstance(value, list):
            return [self._resolve(item) for item in value]
        if isinstance(value, str):
            return re.sub(r"\[[^\]]*\]", "[…]", value)
        return value

    def shown_trees(self) -> list[dict[str, Any]]:
        return [self.tree(model_id) for model_id in self.shown]


def run_widgets(
    kernel: LiveKernel, code: str, timeout: float = 600, interrupt_at: int | None = None
) -> WidgetRun:
    """Run a cell and read every iopub message it caused, as the frontend gets them; with
    `interrupt_at`, interrupt it (Ctrl-C, ■) once a widget's value reaches that."""
    msg_id = kernel.execute(code)
    run = WidgetRun()
    while True:
        numbers = [v for values in run.values.values() for v in values if isinstance(v, float)]
        if interrupt_at is not None and any(number >= interrupt_at for number in numbers):
            kernel.interrupt()
            interrupt_at = None
        msg = kernel.client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status" and content["execution_state"] == "idle":
            return run
        if kind == "comm_open" and content["target_name"] == "jupyter.widget":
            run.models[content["comm_id"]] = dict(content["data"]["state"])
        elif kind == "comm_msg":
            state = content["data"].get("state") or {}
            run.models.setdefault(content["comm_id"], {}).update(state)
            if "value" in state:
                run.values.setdefault(content["comm_id"], []).append(state["value"])
        elif kind in ("display_data", "execute_result") and VIEW in content["data"]:
            run.shown.append(content["data"][VIEW]["model_id"])
        elif kind == "stream" and content["name"] == "stderr":
            run.stderr += content["text"]
        elif kind == "error":
            run.error = content


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKernel]:
    """A kernel on a private local endpoint, the worker environment without ipywidgets at
    first (and again at the end)."""
    _uninstall("ipywidgets", "ipython")
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home"), workers=1):
        started = LiveKernel()
        try:
            assert started.run("%load_ext tetra_magic").error is None
            yield started
        finally:
            started.close()
    _uninstall("ipywidgets", "ipython")


def _uninstall(*packages: str) -> None:
    python = Path(shared_worker_env()) / "bin" / "python"
    if python.exists():
        from uv import find_uv_bin

        command = [find_uv_bin(), "pip", "uninstall", "--python", str(python), *packages]
        subprocess.run(command, capture_output=True, check=False)


AUTO = (
    "from tqdm.auto import tqdm\nfor step in tqdm(range(20)):\n    pass\n"
    "print('notebook bar:', any(c.__name__ == 'tqdm_notebook' for c in tqdm.__mro__))"
)


def test_without_ipywidgets_on_the_worker_tqdm_auto_warns_as_a_kernel_without_it(
    kernel: LiveKernel,
) -> None:
    """The warning is the hint to add `--deps ipywidgets`. At home it is that of a kernel
    whose ipywidgets cannot be imported. In a kernel of its own: its worker process has not
    imported tqdm.auto before."""
    home = run_cells("import sys\nsys.modules['ipywidgets'] = None", AUTO)[1]
    fresh = LiveKernel()
    try:
        assert fresh.run("%load_ext tetra_magic").error is None
        run = fresh.run(f"%%tetra --local --deps ipython\n{AUTO}", timeout=600)
    finally:
        fresh.close()
    assert run.error is None, run.error
    assert run.stdout == home.stdout == "notebook bar: False\n"
    assert "TqdmWarning: IProgress not found" in home.stderr
    assert _warnings(run.stderr) == _warnings(home.stderr)
    assert "20/20" in run.stderr and "Traceback" not in run.stderr, run.stderr


def _warnings(stderr: str) -> str:
    """What stderr says before the bar, the place of tqdm's installation left out."""
    return re.sub(r"\S*/site-packages/", "", stderr.partition("\r")[0])


def test_a_tqdm_notebook_bar_arrives_as_the_same_widgets_moving_to_the_same_end(
    kernel: LiveKernel,
) -> None:
    home = run_widgets(kernel, TQDM)
    remote = run_widgets(kernel, f"%%tetra --local {DEPS}\n{TQDM}")
    assert remote.error is None and "Traceback" not in remote.stderr, remote.error
    assert len(home.shown) == 1 and remote.shown_trees() == home.shown_trees()
    bar = next(tree for tree in remote.shown_trees()[0]["children"] if "bar_style" in tree)
    assert bar["value"] == 20 and bar["bar_style"] == "success"
    # every step the bar took on the worker was sent, not only where it ended
    progress = [values for values in remote.values.values() if 20 in values]
    assert len(progress) == 1 and len(progress[0]) > 1


def test_tqdm_auto_picks_the_notebook_bar_on_the_worker_as_at_home(kernel: LiveKernel) -> None:
    home = run_widgets(kernel, AUTO)
    remote = run_widgets(kernel, f"%%tetra --local {DEPS}\n{AUTO}")
    assert remote.error is None, remote.error
    assert len(home.shown) == 1 and remote.shown_trees() == home.shown_trees()
    assert "Warning" not in remote.stderr, remote.stderr


def test_an_int_progress_the_cell_displays_and_updates(kernel: LiveKernel) -> None:
    home = run_widgets(kernel, INT_PROGRESS)
    remote = run_widgets(kernel, f"%%tetra --local {DEPS}\n{INT_PROGRESS}")
    assert remote.error is None, remote.error
    assert remote.shown_trees() == home.shown_trees()
    assert remote.shown_trees()[0]["value"] == 5
    # `bar` came home with the cell's values, still the widget on screen, as at home
    again = run_widgets(kernel, "bar.value = 2\nprint(type(bar).__name__, bar.value)")
    assert again.error is None, again.error
    assert again.values == {remote.shown[0]: [2]}
    # a page reloaded while the kernel runs asks for the model's state: it gets it whole
    assert request_state(kernel, remote.shown[0]) == {**remote.models[remote.shown[0]], "value": 2}


BOUND_BARS = (
    "import sys\nfrom tqdm.notebook import tqdm\nfrom tqdm import tqdm as text_bar\n"
    "bar = tqdm(total=3)\nbar.update(3)\nbar.close()\n"
    "with tqdm(total=3) as pbar:\n    pbar.update(3)\n"
    "with text_bar(total=3, file=sys.stdout, bar_format='{n}/{total}') as text:\n"
    "    text.update(3)\n"
    "running = tqdm(total=4, bar_format='{n}/{total}')\nrunning.update(1)\n"
)
USE_BARS = (
    "print(bar.n, pbar.n, text.n, running.n, str(text))\n"
    "running.update(3)\nrunning.close()\n"
    "print(running.n, [c.value for c in running.container.children])"
)


def test_tqdm_bars_the_cell_binds_come_home_as_bars_that_still_work(kernel: LiveKernel) -> None:
    """Closed or running, notebook or text bar, bound by `with` or not: no traceback, no
    note, and a running bar moves on in a later cell, as at home."""
    twins = run_twins(Remote(BOUND_BARS, DEPS), USE_BARS)
    assert_same(twins)
    for run in twins.remote:
        assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr


def test_a_widget_comes_home_as_one_object_however_many_names_hold_it(
    kernel: LiveKernel,
) -> None:
    shown = (
        "import ipywidgets as w\nbar = w.IntProgress(max=4, value=2)\n"
        "box = w.VBox([w.HTML('x'), bar])\ndisplay(box)"
    )
    moved = "print(box.children[1] is bar)\nbox.children[1].value = 3\nprint(bar.value)"
    twins = run_twins(Remote(shown, DEPS), moved)
    assert_same(twins)
    assert twins.remote[1].stdout == "True\n3\n"


def test_a_tqdm_loop_interrupted_turns_its_bar_red_as_at_home(kernel: LiveKernel) -> None:
    """The worker is stopped with the cell and cannot say so: home turns the bar red."""
    loop = "from tqdm.notebook import tqdm\nimport time\nfor step in tqdm(range(400)):\n"
    loop += "    time.sleep(0.05)\n"
    home = run_widgets(kernel, loop, interrupt_at=3)
    remote = run_widgets(kernel, f"%%tetra --local {DEPS}\n{loop}", interrupt_at=3)
    assert home.error is not None and remote.error is not None
    assert home.error["ename"] == "KeyboardInterrupt"
    assert remote.error["ename"] == "CellInterrupted"  # a KeyboardInterrupt (errors.py)
    bars = [
        next(model for model in run.models.values() if "bar_style" in model)
        for run in (home, remote)
    ]
    assert [bar["bar_style"] for bar in bars] == ["danger", "danger"], remote.stderr
    assert 3 <= bars[1]["value"] < 400


def request_state(kernel: LiveKernel, model_id: str) -> dict[str, Any]:
    """Ask for a model's state as the frontend does, and read the kernel's answer."""
    client = kernel.client
    message = client.session.msg(
        "comm_msg", {"comm_id": model_id, "data": {"method": "request_state"}}
    )
    client.shell_channel.send(message)
    while True:
        reply = client.get_iopub_msg(timeout=30)
        if reply["parent_header"].get("msg_id") != message["header"]["msg_id"]:
            continue
        if reply["msg_type"] == "comm_msg" and reply["content"]["comm_id"] == model_id:
            data = reply["content"]["data"]
            assert data["method"] == "update"
            return dict(data["state"])


def in_terminal_ipython(cell: str) -> subprocess.CompletedProcess[str]:
    """The cell run in terminal IPython (no kernel, no frontend), the extension loaded."""
    shell = "get_ipython()"
    code = f"{shell}.run_line_magic('load_ext', 'tetra_magic')\n_ = {shell}.run_cell({cell!r})"
    argv = [sys.executable, "-m", "IPython", "--no-banner", "--quick", "-c", code]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)


def test_in_terminal_ipython_the_bar_shows_as_its_text_as_at_home(kernel: LiveKernel) -> None:
    """(The module's endpoint serves this IPython too.)"""
    home = in_terminal_ipython(TQDM)
    remote = in_terminal_ipython(f"%%tetra --local {DEPS}\n{TQDM}")
    assert "train:" in home.stdout and remote.stdout == home.stdout
    assert remote.stderr == home.stderr == ""


@pytest.mark.parametrize(
    ("code", "what"),
    [
        ("ipywidgets.Button(description='go').on_click(print)", "Button.on_click"),
        ("ipywidgets.interact(lambda x: x, x=3)", "interact"),
    ],
)
def test_widgets_that_call_back_are_refused_in_one_sentence(
    kernel: LiveKernel, code: str, what: str
) -> None:
    run = kernel.run(f"%%tetra --local {DEPS}\nimport ipywidgets\n{code}", timeout=600)
    assert run.error is not None and run.error["ename"] == "NotImplementedError"
    message = run.error["evalue"]
    assert message.startswith(f"{what} needs the notebook to call back into the remote cell")
    assert "progress bars" in message and message.count(". ") == 0


def test_on_the_published_worker_the_bar_arrives_as_at_home(
    published: LoopbackEndpoint, kernel: LiveKernel
) -> None:
    home = run_widgets(kernel, TQDM)
    with environ(kernel_env(published)):
        theirs = LiveKernel()
    try:
        assert theirs.run("%load_ext tetra_magic").error is None
        remote = run_widgets(theirs, f"%%tetra --endpoint {published.url} {DEPS}\n{TQDM}")
    finally:
        theirs.close()
    assert remote.error is None and "Traceback" not in remote.stderr, remote.error
    assert remote.shown_trees() == home.shown_trees()


def test_widgets_coming_home_warn_nothing_where_the_notebook_shows_every_warning() -> None:
    """`warnings.simplefilter('default')` at home: loading the widgets a cell bound (which
    reads deprecated attributes of ipywidgets' classes) shows no warning, as at home, where
    nothing is loaded."""
    shown = "import ipywidgets as w\nslider = w.IntSlider(value=3)\nslider.value"
    twins = run_twins("import warnings\nwarnings.simplefilter('default')", Remote(shown, DEPS))
    assert twins.local[1].results == ["3"]
    assert twins.remote[1].results == twins.local[1].results
    assert twins.remote[1].stderr == twins.local[1].stderr == "", twins.remote[1].stderr
