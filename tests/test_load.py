"""Many notebooks on one local endpoint at once: every cell of every kernel runs, brings its
value back to its own kernel, and shows only its own output.

8 kernels x 25 cells: each round submits one cell in every kernel at the same time (so the two
workers always have a queue), and a cell's value and print name its kernel and cell: a value
or a line that lands in the wrong kernel, or not at all, is seen. benchmarks/bench_load.py
times this same driver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kernels import LiveKernel, loaded_kernels, private_local_endpoint

pytestmark = pytest.mark.slow


@dataclass
class LoadReport:
    """What a load run saw: errors, values lost or wrong, lines in the wrong kernel."""

    cells: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    crossed: list[str] = field(default_factory=list)


def _cell(kernel: int, cell: int) -> str:
    return (
        f"%%tetra --local\nvalue_{cell} = {kernel} * 1000 + {cell}\n"
        f"print('kernel {kernel} cell {cell}')"
    )


def run_load(kernels: list[LiveKernel], cells: int) -> LoadReport:
    """Run `cells` rounds of one cell per kernel, all kernels at once; what went wrong."""
    report = LoadReport()
    start = time.monotonic()
    for cell in range(cells):
        sent = [(k, kernel, kernel.execute(_cell(k, cell))) for k, kernel in enumerate(kernels)]
        for k, kernel, msg_id in sent:
            run = kernel.outputs(msg_id, timeout=300)
            report.cells += 1
            if run.error is not None:
                report.errors.append(f"kernel {k} cell {cell}: {run.error['evalue']}")
            elif run.stdout != f"kernel {k} cell {cell}\n":
                report.crossed.append(f"kernel {k} cell {cell} showed {run.stdout!r}")
    report.seconds = time.monotonic() - start
    for k, kernel in enumerate(kernels):
        values = kernel.run(f"print([globals().get(f'value_{{i}}') for i in range({cells})])")
        expected = [k * 1000 + cell for cell in range(cells)]
        if values.stdout != f"{expected}\n":
            report.lost.append(f"kernel {k} holds {values.stdout.strip()}")
    return report


@pytest.fixture
def kernels(tmp_path: Path) -> Iterator[list[LiveKernel]]:
    with private_local_endpoint(tmp_path / "home", workers=2), loaded_kernels(8) as started:
        yield started


def test_eight_notebooks_at_once_lose_nothing_and_cross_nothing(
    kernels: list[LiveKernel],
) -> None:
    report = run_load(kernels, cells=25)
    assert report.cells == 200
    assert report.errors == [] and report.lost == [] and report.crossed == [], report
