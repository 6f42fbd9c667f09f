"""Test-wide settings: kernels started by tests show the deterministic plain-text view; the
`fake` fixture is a loopback stand-in for RunPod's cloud (tests/runpod_fakes.py), never ours."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from runpod_fakes import FakeRunPod

os.environ["TETRA_MAGIC_DISPLAY"] = "text"


@pytest.fixture
def fake() -> Iterator[FakeRunPod]:
    """A fake RunPod that accepts cloud_kernels.KEY, closed at the end of the test."""
    from cloud_kernels import KEY

    server = FakeRunPod(KEY)
    yield server
    server.close()
