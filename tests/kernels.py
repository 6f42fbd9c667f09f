"""Running cells in a real Jupyter kernel, the way a notebook frontend does, and reading back
the outputs it would show."""

from __future__ import annotations

import os
from dataclasses import dataclass

import nbformat
from nbclient import NotebookClient


@dataclass
class CellRun:
    """One executed cell's outputs, split the way a user sees them."""

    stdout: str
    stderr: str
    results: list[str]
    error: dict | None
    outputs: list


def run_cells(
    *sources: str, env: dict[str, str] | None = None, timeout: int = 300
) -> list[CellRun]:
    """Execute `sources` as consecutive cells of one new kernel; errors do not stop later cells."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return [_split(cell) for cell in nb.cells]


def _split(cell) -> CellRun:
    stdout = "".join(
        o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"
    )
    stderr = "".join(
        o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"
    )
    results = [
        o.data.get("text/plain", "")
        for o in cell.outputs
        if o.output_type in ("execute_result", "display_data") and "text/plain" in o.data
    ]
    errors = [o for o in cell.outputs if o.output_type == "error"]
    return CellRun(stdout, stderr, results, errors[0] if errors else None, cell.outputs)
