"""Running the same cells twice, in two fresh kernels: once as written, once with the marked
cells run remotely (`%%tetra --local`), so a test compares a remote cell with what the very same
cell gives locally, rather than with a value written down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helpers.kernels import CellRun, run_cells

LOAD = "%load_ext tetra_magic"
REMOTE = "%%tetra --local\n"


@dataclass(frozen=True)
class Remote:
    """A cell that the remote twin runs with `%%tetra --local` (and `options`)."""

    source: str
    options: str = ""


@dataclass
class Twins:
    local: list[CellRun]
    remote: list[CellRun]


def run_twins(*cells: str | Remote, cwd: Path | None = None) -> Twins:
    """Run `cells` locally and with the `Remote` ones remote (both kernels working in `cwd`
    when given); the outputs of each side, the %load_ext cell left out."""
    plain = [c.source if isinstance(c, Remote) else c for c in cells]
    magic = [
        f"%%tetra --local {c.options}\n{c.source}" if isinstance(c, Remote) else c for c in cells
    ]
    return Twins(run_cells(LOAD, *plain, cwd=cwd)[1:], run_cells(LOAD, *magic, cwd=cwd)[1:])


def seen(run: CellRun) -> tuple:
    """What a user reads off a cell: its stdout, its results, and its error's name and
    message."""
    error = run.error and (run.error["ename"], run.error["evalue"])
    results = [r for r in run.results if not r.startswith("tetra: ")]  # the job's status line
    return run.stdout, results, error


def assert_same(twins: Twins) -> None:
    """Every cell shows the same thing locally and with its marked cells remote, and no
    remote cell lost a value on the way."""
    for index, (local, remote) in enumerate(zip(twins.local, twins.remote, strict=True)):
        assert seen(remote) == seen(local), f"cell {index + 1}: {remote.stderr}"
        assert "was not brought back" not in remote.stderr, f"cell {index + 1}: {remote.stderr}"
