"""RunPod's job statuses: one enum for the client, the follow loop, the views and the local
endpoint, holding only what RunPod sends."""

from __future__ import annotations

import enum


class JobStatus(str, enum.Enum):
    """A job's status; the string values are what RunPod's API returns.

    A status reads as RunPod's word (printed, in a repr, in JSON), and calling one returns it:
    `job.status` is the --out record's field and `job.status()` the question ipyparallel's
    AsyncResult users ask, with one answer.
    """

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def final(self) -> bool:
        return self not in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)

    def __call__(self) -> JobStatus:
        return self
