"""How long the local endpoint keeps a job, and what it remembers of one it dropped.

As on RunPod, a job goes when its ttl runs out (queued or running), and an ended job's result
is kept 30 minutes after a /run, 1 minute after a /runsync. The job store sweeps by these rules;
a later request for a dropped job learns from its tombstone why it is gone, not just that it is
unknown.
"""

from __future__ import annotations

import collections

from tetra_magic.local.jobs import Job

RUN_RETENTION_S = 30 * 60
RUNSYNC_RETENTION_S = 60
TOMBSTONES = 2000


def expiry(job: Job, now: float) -> str | None:
    """Why `job` is no longer kept at `now`; None while it is."""
    if now - job.submitted >= job.policy.ttl:
        return f"its ttl of {job.policy.ttl:g} s ran out"
    if job.finished is not None:
        keep = RUNSYNC_RETENTION_S if job.sync else RUN_RETENTION_S
        if now - job.finished >= keep:
            route = "/runsync" if job.sync else "/run"
            return f"results of {route} jobs are kept {keep // 60} min"
    return None


class Tombstones:
    """Why each of the last TOMBSTONES dropped jobs was dropped."""

    def __init__(self) -> None:
        self._why: collections.OrderedDict[str, str] = collections.OrderedDict()

    def add(self, job_id: str, reason: str) -> None:
        self._why[job_id] = reason
        while len(self._why) > TOMBSTONES:
            self._why.popitem(last=False)

    def get(self, job_id: str) -> str | None:
        return self._why.get(job_id)
