"""Watching that a worker takes up the job it was handed.

A worker handed a job may never start it (stopped, hung), and the job would wait on it until
its execution timeout. So a worker handed a job has TAKE_UP_S to show it took it up: a stream
chunk, a result, or the SDK's ping naming the job. Else the job store gives the job to another
worker, and the supervisor restarts this one. Our workers send
their first chunk at once, and ping every second (workers.py sets RUNPOD_PING_INTERVAL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tetra_magic.cloud.status import JobStatus
from tetra_magic.local.jobs import Job

TAKE_UP_S = 5.0


def watch(job: Job, worker_id: str, missed: Callable[[Job, str], None]) -> None:
    """Wait for `worker_id` to take up `job`; `missed(job, worker_id)` if TAKE_UP_S pass first
    while the job is still its, in progress and not taken up."""
    job.taken_up = False
    loop = asyncio.get_running_loop()
    job.take_up_timer = loop.call_later(TAKE_UP_S, _check, job, worker_id, missed)


def taken_up(job: Job) -> None:
    """The job's worker showed it is working on it (or the job ended): the wait is over."""
    job.taken_up = True
    if job.take_up_timer is not None:
        job.take_up_timer.cancel()
        job.take_up_timer = None


def _check(job: Job, worker_id: str, missed: Callable[[Job, str], None]) -> None:
    job.take_up_timer = None
    if job.taken_up or job.worker_id != worker_id or job.status is not JobStatus.IN_PROGRESS:
        return
    missed(job, worker_id)
