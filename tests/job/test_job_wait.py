"""`Job.wait(timeout)` waits, as ipyparallel's AsyncResult.wait does: False while the job is
queued or running, True once it has ended, however it ended. A background cell will hand the
user this object, so it is tried on a job followed in another thread, on the loopback RunPod
stand-in (tests/helpers/runpod_fakes.py: RunPod's /run, /stream, /status, /cancel)."""

from __future__ import annotations

import threading

import pytest
from helpers.cloud_kernels import KEY
from helpers.following import OPTIONS
from helpers.runpod_fakes import FakeRunPod

from tetra_magic.cell import outcome
from tetra_magic.cell.analysis import analyse
from tetra_magic.cell.packing import Packed, pack
from tetra_magic.cloud.client import Endpoint, EndpointError
from tetra_magic.cloud.status import JobStatus
from tetra_magic.errors import cell_labeler
from tetra_magic.job.job import Job
from tetra_magic.view.text import TextView

CELL = "\nx = sum(range(10))\ny = x * 2\n"


def _packed() -> Packed:
    """A real cell's request, as the magic packs it."""
    return pack(analyse(CELL, FILE), {}, OPTIONS, filename=FILE, limit=10_000_000)


FILE = "<tetra-cell-1>"


def _job(fake: FakeRunPod) -> Job:
    endpoint = Endpoint(f"{fake.url}/v2", fake.add_endpoint("wait-test"), KEY)
    return Job(endpoint, OPTIONS, TextView(live=False))


def test_wait_blocks_until_the_job_ends(fake: FakeRunPod) -> None:
    fake.queue_seconds = 1.5  # a cold start: the job waits for a worker first
    job = _job(fake)
    follower = threading.Thread(target=job.run, args=(_packed(),))
    follower.start()
    try:
        assert job.wait(0.3) is False
        assert not job.status.final
        assert job.wait(30) is True
        assert job.status is JobStatus.COMPLETED
        remote: dict[str, object] = {}
        outcome.apply(outcome.unpack(job.check(cell_labeler(None), remote)), remote)
        at_home: dict[str, object] = {}
        exec(CELL, at_home)
        assert remote == {"x": at_home["x"], "y": at_home["y"]}
    finally:
        follower.join(30)


def test_wait_on_a_job_never_sent_times_out() -> None:
    job = Job(Endpoint("http://127.0.0.1:9/v2", "none", ""), OPTIONS, TextView(live=False))
    assert job.wait(0.05) is False


def test_a_job_whose_endpoint_refused_it_has_ended(fake: FakeRunPod) -> None:
    """Submission failed (no such endpoint): nothing will come, so waiting returns at once."""
    job = Job(Endpoint(f"{fake.url}/v2", "no-such-endpoint", KEY), OPTIONS, TextView(live=False))
    with pytest.raises(EndpointError) as info:
        job.run(_packed())
    assert job.error == str(info.value)
    assert job.wait(5) is True and job.id is None
