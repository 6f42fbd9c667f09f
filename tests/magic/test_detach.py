"""Detached background cells (`%%tetra --bg --detach`) in real kernels on a real local endpoint:
the job runs on when its kernel exits (not cancelled, and the endpoint's sweep of gone kernels
leaves its processes and files alone until it has ended), and `%tetra attach JOB_ID` in a
later kernel brings its values there. The endpoint is this module's own, so the detached jobs
on record in its state dir are this module's only."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers.kernels import LiveKernel, private_local_endpoint
from helpers.polling import until

from tetra_magic.local import kernels, launcher, state

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

BODY = "x = sum(n * n for n in range(1000))\nprint('done', x)"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The state dir of this module's own local endpoint (two workers), and its records."""
    folder = tmp_path_factory.mktemp("tetra-home")
    with private_local_endpoint(folder, workers=2):
        yield folder


def gated(go: Path, body: str, options: str) -> str:
    """A background cell that prints, waits until `go` exists, then runs `body`."""
    return (
        f"%%tetra --local --bg {options}\nimport os, time\nprint('started')\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n{body}"
    )


def status(job_id: str) -> str:
    endpoint = launcher.ensure_running()
    answer = requests.get(
        f"{endpoint.url}/status/{job_id}",
        headers={"Authorization": f"Bearer {endpoint.api_key}"},
        timeout=5,
    )
    return answer.json()["status"]


def loaded() -> LiveKernel:
    kernel = LiveKernel()
    assert kernel.run("%load_ext tetra_magic").error is None
    return kernel


def test_a_detached_job_outlives_its_kernel_and_attach_brings_its_values(
    home: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    at_home: dict = {}
    exec(BODY, at_home)  # the cell's computation, done here

    first = loaded()
    try:
        submitted = first.execute(gated(go, BODY, "--detach --out job"))
        cell = first.outputs(submitted)
        assert cell.error is None and "tetra: detached: job " in cell.stderr, cell
        # A background cell of the same kernel that is not detached, for contrast.
        assert first.run(gated(tmp_path / "never", "", "--out plain")).error is None
        first.later(submitted, lambda run: "started" in run.stdout)
        ids = first.run(
            "from tetra_magic.cell.packing import KERNEL_ID\nprint(job.id, plain.id, KERNEL_ID)"
        ).stdout.split()
        job_id, plain_id, kernel_id = ids
        first.client.stop_channels()
        first.manager.shutdown_kernel(now=False)  # as a restart does: the kernel exits itself
    finally:
        first.close()

    # The kernel's exit cancelled its plain background job, not the detached one.
    until(lambda: status(plain_id) == "CANCELLED", 30, f"job {plain_id} cancelled")
    # A sweep of gone kernels has run (it frees this unlocked stand-in for a kernel gone) and
    # left the detached job's kernel alone: the job still runs, its lock file is still there.
    probe = kernels.alive_dir() / "gone-kernel-probe"
    probe.touch()
    until(lambda: not probe.exists(), 30, "a sweep of gone kernels")
    assert status(job_id) == "IN_PROGRESS"
    assert (kernels.alive_dir() / kernel_id).exists()

    record = (home / "detached" / f"{job_id}.json").read_text()
    assert state.token() not in record  # nothing secret on record
    assert json.loads(record)["binds"] == ["x"]

    # A later kernel attaches while the job runs: the kernel is free, and what the job prints
    # from then on shows in the attach cell (what the first kernel showed is not repeated).
    second = loaded()
    try:
        listed = second.run("%tetra jobs").stdout
        assert "detached jobs on record" in listed and job_id in listed, listed
        attaching = second.execute(f"%tetra attach {job_id}")
        attached = second.outputs(attaching)
        assert attached.error is None, attached
        assert f"attached to detached job {job_id} as background job [1]; the kernel is free" in (
            attached.stderr
        )
        go.touch()
        assert second.run("%tetra wait\nprint(x)").stdout == f"{at_home['x']}\n"
        shown = second.later(attaching, lambda run: "done" in run.stdout)
        assert shown.stdout.splitlines() == [f"done {at_home['x']}"], shown
    finally:
        second.close()

    # Once it has ended, the next sweep frees what its kernel left: its working directory too.
    until(lambda: not (kernels.alive_dir() / kernel_id).exists(), 30, "the kernel freed")
    assert not (state.server_dir() / "kernels" / kernel_id).exists()

    # A kernel that attaches once it has ended gets its values in the attach cell itself.
    third = loaded()
    try:
        attached = third.run(f"%tetra attach {job_id}")
        assert attached.error is None, attached
        assert f"attached to detached job {job_id} as background job [1]: it had ended" in (
            attached.stderr
        )
        assert attached.stdout.splitlines()[-2:] == ["started", f"done {at_home['x']}"]
        assert third.run("print(x)").stdout == f"{at_home['x']}\n"
    finally:
        third.close()


def on_record(home: Path, job_id: str) -> Path:
    """A detached job on record that the endpoint does not know: kept past its retention, or
    run by a server since replaced."""
    from tetra_magic.job.attach import Detached

    gone = Detached(job_id, "local", "local", None, "<tetra-cell-1>", None, ["y"], time.time(), 60)
    path = home / "detached" / f"{job_id}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(gone)))
    return path


def test_attach_of_an_unknown_id_lists_the_detached_jobs_on_record(home: Path) -> None:
    on_record(home, "a1b2c3-listed")
    kernel = loaded()
    try:
        run = kernel.run("%tetra attach not-a-job")
        alone = kernel.run("%%tetra --local --detach\nx = 1")
    finally:
        kernel.close()
    assert alone.stderr == (
        "UsageError: --detach keeps a background cell's job running after the kernel exits: use"
        " it with --bg (%%tetra --bg --detach)\n"
    )
    assert run.stderr.startswith(
        "UsageError: %tetra attach not-a-job: no detached job of that id on record. The detached"
        " jobs on record"
    ), run
    assert "\n  a1b2c3-listed  <tetra-cell-1>  submitted " in run.stderr, run


def test_attach_says_when_a_jobs_results_are_gone(home: Path) -> None:
    record = on_record(home, "a1b2c3-gone")
    kernel = loaded()
    try:
        run = kernel.run("%tetra attach a1b2c3-gone")
    finally:
        kernel.close()
    assert run.error is not None and run.error["ename"] == "ResultsGone", run
    assert run.error["traceback"] == [
        "ResultsGone: job a1b2c3-gone's results are gone: Endpoint("
        f"{launcher.ensure_running().url}) no longer knows it (an endpoint keeps an ended job's"
        " results 30 minutes, RunPod and the local one alike)"
    ]
    assert not record.exists()  # off the record
