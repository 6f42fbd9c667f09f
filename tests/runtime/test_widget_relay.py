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
from helpers.kernels import LiveKernel, environ, private_local_endpoint, shared_worker_env
from helpers.published import LoopbackEndpoint, kernel_env

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


def run_widgets(kernel: LiveKernel, code: str, timeout: float = 600) -> WidgetRun:
    """Run a cell and read every iopub message it caused, as the frontend gets them."""
    msg_id = kernel.execute(code)
    run = WidgetRun()
    while True:
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


def test_without_ipywidgets_on_the_worker_tqdm_auto_is_the_terminal_bar_with_no_warning(
    kernel: LiveKernel,
) -> None:
    """In a kernel of its own: its worker process has not imported tqdm.auto before."""
    fresh = LiveKernel()
    try:
        assert fresh.run("%load_ext tetra_magic").error is None
        run = fresh.run(f"%%tetra --local --deps ipython\n{AUTO}", timeout=600)
    finally:
        fresh.close()
    assert run.error is None, run.error
    assert run.stdout == "notebook bar: False\n"
    assert "100%" in run.stderr and "20/20" in run.stderr
    assert "Warning" not in run.stderr and "Traceback" not in run.stderr, run.stderr


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
