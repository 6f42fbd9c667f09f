"""nbval's kernels get the environment tools/run_notebook.py gives the kernels that made the
saved outputs: the plain-text view and no RunPod key, so cells run on the local endpoint.

Every notebook cell is marked `slow`: it runs in a kernel, on the local endpoint, so the fast
tier (`pytest -m "not slow"`) leaves the notebooks out.

nbval starts a notebook's kernel while setting up its first cell, from this process's
environment, so that environment is switched for the duration of each cell's setup only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from run_notebook import kernel_environment


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(kernel_environment(saved))
    try:
        return (yield)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark each notebook cell nbval collects here `slow`, before `-m` selects."""
    item.add_marker(pytest.mark.slow)
