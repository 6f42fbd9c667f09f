"""A real JupyterLab in headless Chromium: the browser tests' and the screenshot tool's harness.

JupyterLab runs on loopback with a token, in a temporary root with its own settings, data and
runtime dirs (so nothing of the user's leaks in: kernelspecs, themes, workspaces). Chromium is
Debian's `chromium` package, driven by the `playwright` package with `executable_path`: no
browser is downloaded. Kernels started by this JupyterLab show the widget view (the test
process itself forces the text view, so the server's environment drops that setting).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

CHROMIUM = os.environ.get("TETRA_MAGIC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"the {module} package is not installed (pip install {module})"
    return None


@dataclass
class Lab:
    """A running JupyterLab server."""

    url: str
    token: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    def notebook_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def write_notebook(path: Path, sources: list[str]) -> None:
    """A notebook of code cells, with the python3 kernel named so no kernel dialog opens."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(directory: Path, theme: str, comms_over_subshells: str | None) -> None:
    """User settings: the theme, no news or update checks, every cell kept in the DOM, widget
    state saved with the notebook (ipywidgets' "saveState", off by default); and optionally how
    JupyterLab sends comm messages (its own subshells, or not at all)."""
    values: dict[str, dict[str, Any]] = {
        "@jupyterlab/apputils-extension/themes": {"theme": THEMES[theme]},
        "@jupyterlab/apputils-extension/notification": {
            "checkForUpdates": False,
            "fetchNews": "false",
        },
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyter-widgets/jupyterlab-manager/plugin": {"saveState": True},
    }
    if comms_over_subshells is not None:
        values["@jupyterlab/apputils-extension/kernels-settings"] = {
            "commsOverSubshells": comms_over_subshells
        }
    for name, value in values.items():
        path = directory / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@contextlib.contextmanager
def jupyterlab(
    root: Path,
    env: dict[str, str] | None = None,
    theme: str = "light",
    comms_over_subshells: str | None = None,
) -> Iterator[Lab]:
    """JupyterLab serving `root` until the block ends; `env` is added to its environment.
    `comms_over_subshells` is JupyterLab's setting of that name ("disabled", "perComm",
    "perCommTarget"; its own default when None)."""
    private = Path(tempfile.mkdtemp(prefix="tetra-lab-"))
    _settings(private / "settings", theme, comms_over_subshells)
    token, port = secrets.token_hex(16), _free_port()
    server_env = {k: v for k, v in os.environ.items() if k != "TETRA_MAGIC_DISPLAY"}
    server_env.update(
        JUPYTERLAB_SETTINGS_DIR=str(private / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(private / "workspaces"),
        JUPYTER_CONFIG_DIR=str(private / "config"),
        JUPYTER_DATA_DIR=str(private / "data"),
        JUPYTER_RUNTIME_DIR=str(private / "runtime"),
        **(env or {}),
    )
    argv = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if os.geteuid() == 0:
        argv.append("--allow-root")  # CI containers run as root
    log = private / "lab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=server_env, stdout=out, stderr=subprocess.STDOUT)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, process, log)
    try:
        _wait_up(lab)
        yield lab
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(private, ignore_errors=True)


def _wait_up(lab: Lab, timeout: float = 60.0) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if lab.process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited:\n{lab.log_tail()}")
        status = f"{lab.url}/api/status?token={lab.token}"
        with contextlib.suppress(OSError), urllib.request.urlopen(status, timeout=2):
            return
        time.sleep(0.2)
    raise RuntimeError(f"JupyterLab did not answer in {timeout} s:\n{lab.log_tail()}")


@contextlib.contextmanager
def browser(width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A playwright browser context on Debian's Chromium, with a fresh profile."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="tetra-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class NotebookPage:
    """One notebook open in JupyterLab, driven the way a user drives it."""

    def __init__(self, page: Any, lab: Lab, name: str) -> None:
        self.page = page
        self.lab = lab
        self.name = name

    def open(self, timeout: float = 60.0) -> NotebookPage:
        """Load the notebook and wait until its kernel is idle."""
        self.page.goto(self.lab.notebook_url(self.name))
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
        self.page.wait_for_function(
            "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel"
            "?.status === 'idle'",
            timeout=timeout * 1000,
        )
        return self

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def run(self, index: int) -> None:
        """Select the cell by its prompt and press Shift+Enter, as a user would."""
        self.cell(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Shift+Enter")

    def prompt(self, index: int) -> str:
        return self.cell(index).locator(".jp-InputPrompt").inner_text().strip()

    def running(self, index: int) -> bool:
        return "*" in self.prompt(index)

    def wait_done(self, index: int, timeout: float = 120.0) -> None:
        """Until the cell's prompt shows its execution number."""
        prompt = f".jp-Notebook .jp-Cell:nth-child({index + 1}) .jp-InputPrompt"
        self.page.wait_for_function(
            "sel => /\\[\\d+\\]/.test(document.querySelector(sel)?.innerText || '')",
            arg=prompt,
            timeout=timeout * 1000,
        )

    def output_text(self, index: int) -> str:
        return self.cell(index).locator(".jp-OutputArea").inner_text()

    def save(self) -> None:
        self.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        self.page.wait_for_function(
            "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000
        )
