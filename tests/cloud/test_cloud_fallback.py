"""Without a RunPod API key the magic runs cells on the embedded local endpoint, says so once per
kernel, and asks RunPod for nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cloud_kernels import KEY, kernel_env
from helpers.kernels import run_cells, shared_worker_env
from helpers.runpod_fakes import FakeRunPod

from tetra_magic.local import launcher

# Starts kernels against the RunPod stand-in: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

NOTICE = (
    "tetra: no RunPod API key (RUNPOD_API_KEY or ~/.runpod/config.toml); running on the local"
    " endpoint.\n"
)


def test_no_key_runs_on_the_local_endpoint_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    fake = FakeRunPod(KEY)
    env = {**kernel_env(fake, tmp_path, key=None), "TETRA_MAGIC_WORKER_ENV": shared_worker_env()}
    try:
        runs = run_cells(
            "%load_ext tetra_magic",
            "%%tetra --gpu A100\nprint('here')\n1 + 1",
            "%%tetra --cpu\n'again'",
            "%tetra endpoints",
            env=env,
            timeout=600,
        )
    finally:
        monkeypatch.setenv("TETRA_MAGIC_HOME", env["TETRA_MAGIC_HOME"])
        launcher.stop()
        fake.close()
    first, second, listing = runs[1:]
    assert listing.error["ename"] == "TetraError"
    assert listing.error["evalue"].startswith("no RunPod API key: set RUNPOD_API_KEY")
    assert first.error is None and second.error is None, (first.error, second.error)
    assert (first.stdout, first.stderr, first.results) == ("here\n", NOTICE, ["2"])
    assert (second.stderr, second.results) == ("", ["'again'"])
    assert fake.requests == []
