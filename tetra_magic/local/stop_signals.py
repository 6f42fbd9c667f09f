"""The job-stop channel: per worker, the jobs it must stop, re-sent until it lets them go.

Stopping a running job (cancelled, timed out, expired) is a message to its worker, which the
runpod SDK long-polls for (job-stop). The job store sends one here and keeps it pending: a stop
that lands in the instant between job-take and the SDK starting the job's task is dropped by
the SDK, so each pending stop goes out again every STOP_RESEND_S until the worker shows it has
let the job go (asks for work with nothing in progress) or is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

STOP_RESEND_S = 1.0


class StopSignals:
    """The stops each worker has yet to act on, and the long-polls waiting for them."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        # worker id -> {job id: when the stop was last sent (None: not yet)}
        self._stops: dict[str, dict[str, float | None]] = {}
        self._stops_changed: dict[str, asyncio.Event] = {}

    def send(self, worker_id: str, job_id: str) -> None:
        """Have `worker_id` stop `job_id`, at its next job-stop poll and until it lets go."""
        self._stops.setdefault(worker_id, {}).setdefault(job_id, None)
        self._stops_changed.setdefault(worker_id, asyncio.Event()).set()

    def drop(self, worker_id: str) -> None:
        """The worker has let go of its stopped jobs (or is gone): nothing left to send it."""
        self._stops.pop(worker_id, None)

    async def wait(self, worker_id: str, timeout: float, gone: Callable[[str], bool]) -> list[str]:
        """Long-poll for the ids of jobs this worker must stop; [] once `gone(worker_id)`."""
        deadline = self.clock() + timeout
        while not gone(worker_id):
            now = self.clock()
            pending = self._stops.get(worker_id, {})
            due = [j for j, sent in pending.items() if sent is None or now - sent >= STOP_RESEND_S]
            if due:
                for job_id in due:
                    pending[job_id] = now
                return due
            if deadline <= now:
                return []
            resend_at = min(
                (sent + STOP_RESEND_S for sent in pending.values() if sent is not None),
                default=deadline,
            )
            wait = min(deadline, resend_at) - now
            event = self._stops_changed.setdefault(worker_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), max(0.0, wait))
            except asyncio.TimeoutError:
                pass
            else:
                self._stops_changed[worker_id] = asyncio.Event()
        return []
