"""Many notebooks on one local endpoint at once: every cell of every kernel runs, brings its
value back to its own kernel, and shows only its own output.

8 kernels x 25 cells: each round submits one cell in every kernel at the same time (so the two
workers always have a queue), and a cell's value and print name its kernel and cell: a value
or a line that lands in the wrong kernel, or not at all, is seen. benchmarks/bench_load.py
times this same driver (helpers/load.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.kernels import LiveKernel, loaded_kernels, private_local_endpoint
from helpers.load import run_load

pytestmark = pytest.mark.slow


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
