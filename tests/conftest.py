"""Test-wide settings, for the tests in every folder: kernels started by tests show the
deterministic plain-text view; the `fake` fixture is a loopback stand-in for RunPod's cloud
(helpers/runpod_fakes.py), never ours.

This file's folder, tests/, is on sys.path (pytest's "prepend" import mode puts it there), which
is how every test folder imports the shared `helpers` package (helpers/__init__.py lists them).
Test folders have no __init__.py, so each test module's basename must be unique across tests/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.runpod_fakes import FakeRunPod

os.environ["TETRA_MAGIC_DISPLAY"] = "text"


@pytest.fixture
def fake() -> Iterator[FakeRunPod]:
    """A fake RunPod that accepts cloud_kernels.KEY, closed at the end of the test; no test
    may have sent it a GraphQL request (RunPod retires GraphQL: everything goes over REST v2)."""
    from helpers.cloud_kernels import KEY

    server = FakeRunPod(KEY)
    yield server
    server.close()
    sent = [f"{r.method} {r.path}" for r in server.graphql_requests]
    assert not sent, f"GraphQL requests reached the RunPod stand-in: {sent}"


@pytest.fixture
def in_process(fake: FakeRunPod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRunPod:
    """This process pointed at `fake` as a kernel is (state under tmp_path), with a new
    kernel's empty memory of RunPod endpoints."""
    from helpers.cloud_kernels import kernel_env

    from tetra_magic.cloud import provision

    for name, value in kernel_env(fake, tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(provision, "_known", {})
    monkeypatch.setattr(provision, "_checked", set())
    monkeypatch.setattr(provision, "_specs", {})
    return fake
