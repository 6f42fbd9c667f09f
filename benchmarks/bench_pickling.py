"""What carrying notebook definitions by name costs when values are pickled, against plain
cloudpickle in the same run.

    python benchmarks/run.py pickling

Rows (`run()` returns them; benchmarks/run.py prints the table):
- object-heavy data (a million ints, 100k dict entries): `MainNames.dumps` looks at every
  object to tell notebook definitions from data, which plain cloudpickle does not.
- 2,000 instances of a notebook dataclass: each refers to its class by name.
- one 9 MB bytes value, pickled twice and hashed on the worker (as it arrives and as the cell
  leaves it) to tell whether it changed in place, against pickling it once: the price of not
  sending an unchanged input back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

from tetra_magic.runtime.pickling import MainNames


def _best(function: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _row(name: str, value: float, baseline_name: str, baseline: float) -> dict[str, Any]:
    return {"name": name, "value_s": value, "baseline_name": baseline_name, "baseline_s": baseline}


def run() -> list[dict[str, Any]]:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("from dataclasses import dataclass\n@dataclass\nclass Point:\n    x: int\n", namespace)
    names = MainNames(namespace, referable=lambda name: [])
    data = {"ints": list(range(1_000_000)), "strs": {str(i): [i, float(i)] for i in range(100_000)}}
    points = [namespace["Point"](i) for i in range(2_000)]
    big = bytes(9_000_000)

    def changed_check() -> None:
        for _ in range(2):
            hashlib.blake2b(names.dumps(big), digest_size=16).digest()

    return [
        _row(
            "MainNames.dumps, object-heavy data",
            _best(lambda: names.dumps(data)),
            "cloudpickle.dumps",
            _best(lambda: cloudpickle.dumps(data)),
        ),
        _row(
            "MainNames.dumps, 2,000 notebook dataclass instances",
            _best(lambda: names.dumps(points)),
            "cloudpickle.dumps (class by value)",
            _best(lambda: cloudpickle.dumps(points)),
        ),
        _row(
            "in-place check of a 9 MB input (2 pickles + hashes)",
            _best(changed_check),
            "pickling it once",
            _best(lambda: names.dumps(big)),
        ),
    ]
