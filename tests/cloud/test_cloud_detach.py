"""Detached background cells on RunPod, against the loopback stand-in: a later kernel's
`%tetra attach JOB_ID` fetches a detached job's values by its id (the record of it names the
endpoint, never the key), and says in one line when RunPod no longer keeps them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cloud_kernels import COST_LINE, KEY, ok, run_cloud
from helpers.runpod_fakes import FakeRunPod

BODY = "x = sorted(str(n) for n in range(12))\nprint('done', len(x))"


@pytest.mark.slow
def test_attach_fetches_a_detached_jobs_values_by_id(fake: FakeRunPod, tmp_path: Path) -> None:
    at_home: dict = {}
    exec(BODY, at_home)  # the cell's computation, done here
    submitted, waited = run_cloud(
        fake,
        tmp_path,
        f"%%tetra --gpu A100 --bg --detach --out job\n{BODY}",
        "%tetra wait\nprint(job.id)",
    )
    assert f"tetra: detached: job {ok(waited).stdout.strip()} runs on" in ok(submitted).stderr
    job_id = waited.stdout.strip()
    record = json.loads((tmp_path / "tetra-state" / "detached" / f"{job_id}.json").read_text())
    assert KEY not in json.dumps(record)
    assert (record["where"], record["binds"]) == ("runpod", ["x"])
    assert record["endpoint_id"] == fake.jobs[job_id].endpoint_id

    provisioning = len(fake.management)
    listed, attached, reading = run_cloud(
        fake, tmp_path, "%tetra jobs", f"%tetra attach {job_id}", "print(x)"
    )
    assert job_id in ok(listed).stdout
    assert f"attached to detached job {job_id} as background job [1]: it had ended" in (
        ok(attached).stderr
    )
    assert attached.stdout.endswith(f"done {len(at_home['x'])}\n")
    assert COST_LINE.search(attached.stderr) is not None  # billed: its cost, as any cell's
    assert ok(reading).stdout == f"{at_home['x']}\n"
    assert len(fake.management) == provisioning  # by its id: no endpoint to look up or make

    # RunPod keeps a finished job's results 30 minutes; past that it answers 404.
    del fake.jobs[job_id]
    (gone,) = run_cloud(fake, tmp_path, f"%tetra attach {job_id}")
    assert gone.error is not None and gone.error["ename"] == "ResultsGone", gone
    assert len(gone.error["traceback"]) == 1
    assert gone.error["evalue"].startswith(f"job {job_id}'s results are gone: ")
    assert "keeps an ended job's results 30 minutes" in gone.error["evalue"]
