"""The load driver: many kernels at once on one local endpoint, each round one cell in every
kernel, and what went wrong. magic/test_load.py asserts on it; benchmarks/bench_load.py times it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from helpers.kernels import LiveKernel


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
