"""Running cells in a real Jupyter kernel, the way a notebook frontend does, and reading back
the outputs it would show; and a private local endpoint for a test module's kernels."""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

OUTPUT_TYPES = ("stream", "execute_result", "display_data", "error")


@dataclass
class CellRun:
    """One executed cell's outputs, split the way a user sees them."""

    stdout: str
    stderr: str
    results: list[str]
    error: dict | None
    outputs: list


def run_cells(
    *sources: str, env: dict[str, str] | None = None, timeout: int = 300, cwd: Path | None = None
) -> list[CellRun]:
    """Execute `sources` as consecutive cells of one new kernel (working in `cwd`, the
    notebook's folder, when given); errors do not stop later cells."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    resources = {"metadata": {"path": str(cwd)}} if cwd is not None else {}
    with environ(env or {}):
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", allow_errors=True, resources=resources
        )
        client.execute()
    return [split(cell.outputs) for cell in nb.cells]


def split(outputs: list) -> CellRun:
    stdout = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    results = [
        o.data.get("text/plain", "")
        for o in outputs
        if o.output_type in ("execute_result", "display_data") and "text/plain" in o.data
    ]
    errors = [o for o in outputs if o.output_type == "error"]
    return CellRun(stdout, stderr, results, errors[0] if errors else None, outputs)


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set (kernels started inside inherit them), then as it was."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        yield


def shared_worker_env() -> str:
    """The local endpoint's worker venv, shared by every test run so only the first builds it."""
    return os.environ.get("TETRA_MAGIC_WORKER_ENV") or str(
        Path(tempfile.gettempdir()) / f"tetra-magic-tests-{os.getuid()}" / "worker-env"
    )


@contextlib.contextmanager
def private_local_endpoint(
    home: Path, workers: int = 2, worker_env: str | None = None
) -> Iterator[None]:
    """A local endpoint of its own (state in `home`), started now so its workers come up
    while the kernels start; kernels started inside use it. Stopped at the end."""
    from tetra_magic.local import launcher

    values = {
        "TETRA_MAGIC_HOME": str(home),
        "TETRA_MAGIC_WORKER_ENV": worker_env or shared_worker_env(),
    }
    with environ(values):
        launcher.ensure_running(workers=workers, idle_timeout=None)
        try:
            yield
        finally:
            launcher.stop()


@contextlib.contextmanager
def loaded_kernels(count: int) -> Iterator[list[LiveKernel]]:
    """`count` notebooks open at once, each with the extension loaded; shut down at the end."""
    started: list[LiveKernel] = []
    try:
        for _ in range(count):
            started.append(LiveKernel())
            assert started[-1].run("%load_ext tetra_magic").error is None
        yield started
    finally:
        for kernel in started:
            kernel.close()


class LiveKernel:
    """A kernel driven message by message, for what a notebook run cannot do: interrupting a
    cell while it runs, as the frontend's stop button does."""

    def __init__(self) -> None:
        self.manager, self.client = start_new_kernel(kernel_name="python3", startup_timeout=60)
        self.seen: dict[str, list] = {}  # msg_id -> the outputs of that cell so far

    def execute(self, code: str) -> str:
        return self.client.execute(code)

    def outputs(
        self, msg_id: str, until: Callable[[CellRun], bool] | None = None, timeout: float = 120
    ) -> CellRun:
        """The cell's outputs when it has finished, or as soon as `until` holds for them."""
        outputs = self.seen.setdefault(msg_id, [])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.client.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.1))
            if self._keep(msg) != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "status" and msg["content"]["execution_state"] == "idle":
                return split(outputs)
            if kind in OUTPUT_TYPES and until is not None and until(split(outputs)):
                return split(outputs)
        raise TimeoutError(f"the cell did not finish in {timeout} s: {split(outputs)}")

    def _keep(self, msg: dict) -> str | None:
        """File an output under the cell it belongs to, whichever cell is awaited: output a
        cell sends after it finished (a background thread's) stays readable (`later`)."""
        parent = msg["parent_header"].get("msg_id")
        if msg["msg_type"] in OUTPUT_TYPES and parent is not None:
            self.seen.setdefault(parent, []).append(nbformat.v4.output_from_msg(msg))
        return parent

    def later(self, msg_id: str, until: Callable[[CellRun], bool], timeout: float = 60) -> CellRun:
        """The outputs of a cell that has finished, once `until` holds for them (what it
        showed after it finished included); TimeoutError if it never does."""
        deadline = time.monotonic() + timeout
        while not until(split(self.seen.get(msg_id, []))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not seen in {timeout} s: {split(self.seen.get(msg_id, []))}")
            with contextlib.suppress(queue.Empty):
                self._keep(self.client.get_iopub_msg(timeout=0.2))
        return split(self.seen[msg_id])

    def run(self, code: str, timeout: float = 120) -> CellRun:
        return self.outputs(self.execute(code), timeout=timeout)

    def interrupt(self) -> None:
        self.manager.interrupt_kernel()

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def as_local(source: str) -> str:
    """A %%tetra cell as the same cell run in the kernel: its magic line removed."""
    first, _, rest = source.partition("\n")
    return rest if first.startswith("%%tetra") else source
