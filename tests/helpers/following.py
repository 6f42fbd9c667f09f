"""The real follow loop (tetra_magic/job/follow.py) on a job submitted some other way: a test's
own client (a loopback endpoint's, or a scripted one) and view."""

from __future__ import annotations

from typing import Any

from tetra_magic.cloud.client import Endpoint
from tetra_magic.job.follow import follow
from tetra_magic.job.job import Job
from tetra_magic.job.waiting import QueueWatch
from tetra_magic.options import CellOptions

OPTIONS = CellOptions(
    gpus=(), gpu_ids=(), cpu=False, dependencies=(), system_dependencies=(), endpoint=None,
    local=True, timeout=60.0, name=None, out=None, stream=True, quiet=False, verbose=False,
)  # fmt: skip


def followed(
    client: Any,
    job_id: str,
    view: Any,
    deadline: float | None = None,
    watch: QueueWatch | None = None,
) -> Job:
    """The job `job_id`, followed on `client` to its end with `view` watching it (its fields
    are what the follow loop wrote into it); the loop's exceptions propagate."""
    target = getattr(client, "endpoint", Endpoint("http://127.0.0.1:9/v2", "test", ""))
    job = Job(target, OPTIONS, view)
    job.id = job_id
    follow(job, client, deadline, watch)
    return job
