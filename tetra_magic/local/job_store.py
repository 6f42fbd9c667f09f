"""The job store: the queue, each job's way through RunPod's states, its worker's posts and
its execution timeout; it drops jobs by retention.py's rules, and hands a job another worker
when take_up.py finds its worker never took it up.

One `JobStore` lives in the server's event loop; the HTTP handlers and the worker supervisor
are its only callers, so nothing here needs locks. States follow RunPod:

    IN_QUEUE -> IN_PROGRESS -> COMPLETED | FAILED | TIMED_OUT | CANCELLED
    IN_QUEUE -> CANCELLED (cancel, purge-queue) | FAILED (no worker environment)

A final state is never left: a worker that posts a result for a job already cancelled or timed
out is ignored, as RunPod does. Stopping a running job is a message to its worker, kept pending
until the worker lets the job go (stop_signals.py).

A session (`"session"` in a job's input, see worker/protocol.py) lives in one worker's process,
so its jobs are pinned: once one has started on a worker, the session's later jobs wait for that
worker while it lives, and other workers take the jobs queued behind them. When the worker is
gone its pins go too, so the session's next job runs anywhere, and the cell runtime there says
the session was lost. Its other look inside a job's input: which kernels have a detached job
(`"detached"`, with its `"kernel_id"`) not yet ended, whose processes and files the sweep of
gone kernels must leave alone until it has (kernels.py).
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from typing import Any

from tetra_magic.cloud.status import JobStatus
from tetra_magic.local import retention, take_up
from tetra_magic.local.jobs import Job, Policy
from tetra_magic.local.stop_signals import StopSignals

_MISSING: Any = object()  # "no output field", as opposed to an output of None


def _session(job: Job) -> str | None:
    """The session a job runs in, if its input names one."""
    session = job.input.get("session") if isinstance(job.input, dict) else None
    return session if isinstance(session, str) else None


class JobStore:
    """All jobs of one endpoint, the queue of waiting ones, and the stop messages to workers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._queue_changed = asyncio.Event()
        self._gone = retention.Tombstones()
        self._dead_workers: set[str] = set()
        self._polling = collections.Counter[str]()  # worker id -> job-take requests waiting
        self._running: dict[str, Job] = {}  # worker id -> the job it was last given
        self._pins: dict[str, str] = {}  # session -> the worker id holding it
        self._stops = StopSignals(clock)
        self.totals = collections.Counter[str]()
        # Told (worker id, job id) when a worker never took up a job it was handed.
        self.on_unresponsive: Callable[[str, str], None] | None = None

    # ----------------------------------------------------------------- client side

    def submit(self, job_input: Any, policy: Policy, *, sync: bool) -> Job:
        """Queue a new job; runsync jobs get a "sync-" id as on RunPod."""
        job_id = ("sync-" if sync else "") + str(uuid.uuid4())
        job = Job(id=job_id, input=job_input, policy=policy, sync=sync, submitted=self.clock())
        self._jobs[job_id] = job
        self._queue.append(job_id)
        self._wake_takers()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def why_gone(self, job_id: str) -> str | None:
        """Why a job that existed is no longer here (expired), if we remember it."""
        return self._gone.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job; a final job is left as it is."""
        job = self._jobs.get(job_id)
        if job is not None and not job.status.final:
            self._finalize(job, JobStatus.CANCELLED, error=None)
        return job

    def purge_queue(self) -> int:
        """Cancel every job still waiting in the queue; running jobs are not touched."""
        return self._end_queued(JobStatus.CANCELLED, "removed from the queue by purge-queue")

    def fail_queued(self, reason: str) -> int:
        """Fail every queued job (the workers cannot start); returns how many."""
        return self._end_queued(JobStatus.FAILED, reason)

    def _end_queued(self, status: JobStatus, reason: str) -> int:
        ended = 0
        for job_id in self._queue:
            job = self._jobs.get(job_id)
            if job is not None and job.status is JobStatus.IN_QUEUE:
                self._finalize(job, status, error=reason)
                ended += 1
        self._queue.clear()
        return ended

    def counts(self) -> dict[str, int]:
        """The /health "jobs" section: totals since start, plus current queue and runs."""
        live = collections.Counter(job.status for job in self._jobs.values())
        return {
            "completed": self.totals["completed"],
            "failed": self.totals["failed"],
            "inProgress": live[JobStatus.IN_PROGRESS],
            "inQueue": live[JobStatus.IN_QUEUE],
            "retried": self.totals["retried"],
        }

    def running_on(self, worker_id: str) -> Job | None:
        job = self._running.get(worker_id)
        return job if job is not None and job.status is JobStatus.IN_PROGRESS else None

    def detached_kernels(self) -> set[str]:
        """The kernels with a detached job (`%%tetra --bg --detach`) queued or running: what
        they left on the workers must outlive them until it has ended."""
        return {
            job.input["kernel_id"]
            for job in self._jobs.values()
            if isinstance(job.input, dict)
            and job.input.get("detached") is True
            and isinstance(job.input.get("kernel_id"), str)
            and not job.status.final
        }

    def pending(self) -> int:
        """Jobs not yet final: the server is not idle while there are any."""
        return sum(1 for job in self._jobs.values() if not job.status.final)

    # ----------------------------------------------------------------- worker side

    async def take(self, worker_id: str, timeout: float) -> Job | None:
        """Long-poll for the next queued job; None after `timeout` s without one."""
        self._polling[worker_id] += 1
        try:
            return await self._take(worker_id, self.clock() + timeout)
        finally:
            self._polling[worker_id] -= 1
            if self._polling[worker_id] <= 0:
                del self._polling[worker_id]

    def polling(self, worker_id: str) -> bool:
        """Whether the worker is waiting in job-take with no job running, i.e. would start a
        new job at once. A worker between a job's end and its next job-take is up but not idle."""
        return worker_id in self._polling and self.running_on(worker_id) is None

    async def _take(self, worker_id: str, deadline: float) -> Job | None:
        while True:
            if worker_id in self._dead_workers:
                return None
            job = self.take_nowait(worker_id)
            if job is not None:
                return job
            event = self._queue_changed
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                return None

    def take_nowait(self, worker_id: str) -> Job | None:
        """The next queued job, started on `worker_id`; None if the queue is empty or the worker
        is running a job. One job per worker: a worker has one executor, so a second job would
        wait behind the first while another worker sits idle. Our workers keep a job-take open
        while they run a job (TETRA_WORKER_TAKE_AHEAD), and it is answered the moment the job
        ends, before the worker could ask again."""
        if worker_id in self._dead_workers or self.running_on(worker_id) is not None:
            return None
        job = self._next_for(worker_id)
        if job is not None:
            self._start(job, worker_id)
        return job

    def _next_for(self, worker_id: str) -> Job | None:
        """The first queued job `worker_id` may take, out of the queue: FIFO, except that a
        job of a session pinned to another worker waits for it. Ended jobs are dropped."""
        passed: list[str] = []
        while self._queue:
            job_id = self._queue.popleft()
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.IN_QUEUE:
                continue
            session = _session(job)
            if session is not None and self._pins.get(session, worker_id) != worker_id:
                passed.append(job_id)
                continue
            self._queue.extendleft(reversed(passed))
            return job
        self._queue.extend(passed)
        return None

    def taken_up(self, worker_id: str, job_ids: list[str]) -> None:
        """The worker says (its ping) it is working on these jobs."""
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is not None and job.worker_id == worker_id:
                take_up.taken_up(job)

    def worker_idle(self, worker_id: str) -> None:
        """The worker asked for work with nothing in progress: it has let go of stopped jobs."""
        self._stops.drop(worker_id)

    def add_stream(self, job_id: str, worker_id: str, body: Any) -> bool:
        """Record one streamed item ({"output": chunk}); False if the post was ignored."""
        job = self._owned(job_id, worker_id)
        if job is None:
            return False
        job.stream.append(body.get("output") if isinstance(body, dict) else body)
        job.touch()
        return True

    def finish(self, job_id: str, worker_id: str, body: Any) -> bool:
        """Record a worker's job-done post; False if the job had already ended (or is unknown).

        A body with a truthy "error" fails the job, as the SDK means it; otherwise its "output"
        (for a streaming handler: the aggregated list, or [] without return_aggregate_stream)
        is the job's output. A body with `"status": "IN_PROGRESS"` is a progress update (the
        SDK's `progress_update`): the job goes on, and `/status` shows it as the output.
        """
        if not isinstance(body, dict):
            body = {"output": body}
        if body.get("status") == JobStatus.IN_PROGRESS.value:
            return self._progress(job_id, worker_id, body.get("output"))
        job = self._owned(job_id, worker_id)
        if job is None:
            return False
        error = body.get("error")
        if error:
            text = error if isinstance(error, str) else repr(error)
            self._finalize(job, JobStatus.FAILED, error=text, output=body.get("output", _MISSING))
        else:
            self._finalize(job, JobStatus.COMPLETED, error=None, output=body.get("output"))
        return True

    def _progress(self, job_id: str, worker_id: str, output: Any) -> bool:
        """A progress update; one that arrives after the job ended (the SDK sends them from a
        thread of their own) is dropped, not taken for a worker still at work on it."""
        job = self._jobs.get(job_id)
        if job is None or job.worker_id != worker_id or job.status is not JobStatus.IN_PROGRESS:
            return False
        take_up.taken_up(job)
        job.output, job.has_output = output, True
        job.touch()
        return True

    def worker_gone(self, worker_id: str, reason: str) -> list[Job]:
        """A worker process ended: fail what it was running, refuse it further jobs."""
        self._dead_workers.add(worker_id)
        self._stops.drop(worker_id)
        self._pins = {s: w for s, w in self._pins.items() if w != worker_id}
        self._wake_takers()
        lost = [
            job
            for job in self._jobs.values()
            if job.worker_id == worker_id and job.status is JobStatus.IN_PROGRESS
        ]
        for job in lost:
            self._finalize(job, JobStatus.FAILED, error=reason)
        return lost

    async def stop_signals(self, worker_id: str, timeout: float) -> list[str]:
        """Long-poll for the ids of jobs this worker must stop (the SDK's job-stop channel)."""
        return await self._stops.wait(worker_id, timeout, self._dead_workers.__contains__)

    # ----------------------------------------------------------------- housekeeping

    def sweep(self) -> None:
        """Drop jobs past their ttl or their result retention; stop expired running ones."""
        now = self.clock()
        for job in list(self._jobs.values()):
            if (reason := retention.expiry(job, now)) is not None:
                self._expire(job, reason)

    async def sweeper(self, interval: float = 1.0) -> None:
        """Run `sweep` forever (a background task of the server)."""
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    # ----------------------------------------------------------------- internals

    def _owned(self, job_id: str, worker_id: str) -> Job | None:
        """The job if `worker_id` is running it now; stale posts get None (and a stop)."""
        job = self._jobs.get(job_id)
        if job is None or job.worker_id != worker_id:
            return None
        if job.status.final:
            self._send_stop(worker_id, job_id)  # it is still working on it: stop it again
            return None
        take_up.taken_up(job)
        return job

    def _not_taken_up(self, job: Job, worker_id: str) -> None:
        """The worker handed `job` never showed it took it up: the job goes back to the front
        of the queue for another worker, and this one gets no more jobs."""
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        job.status, job.worker_id, job.started = JobStatus.IN_QUEUE, None, None
        self._running.pop(worker_id, None)
        self._queue.appendleft(job.id)
        self.totals["retried"] += 1
        self.worker_gone(worker_id, f"it did not take up job {job.id}")  # no job of it is lost
        job.touch()
        if self.on_unresponsive is not None:
            self.on_unresponsive(worker_id, job.id)

    def _start(self, job: Job, worker_id: str) -> None:
        job.status = JobStatus.IN_PROGRESS
        job.worker_id = worker_id
        self._running[worker_id] = job
        if (session := _session(job)) is not None:
            self._pins[session] = worker_id
        job.started = self.clock()
        loop = asyncio.get_running_loop()
        job.timer = loop.call_later(job.policy.execution_timeout, self._time_out, job)
        take_up.watch(job, worker_id, self._not_taken_up)
        job.touch()

    def _time_out(self, job: Job) -> None:
        if job.status is JobStatus.IN_PROGRESS:
            limit = job.policy.execution_timeout
            message = f"the job ran past its execution timeout of {limit:g} s and was stopped"
            self._finalize(job, JobStatus.TIMED_OUT, error=message)

    def _finalize(
        self, job: Job, status: JobStatus, *, error: str | None, output: Any = _MISSING
    ) -> None:
        was_running = job.status is JobStatus.IN_PROGRESS
        job.status = status
        job.finished = self.clock()
        job.error = error
        if output is not _MISSING:
            job.output, job.has_output = output, True
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        take_up.taken_up(job)  # nothing left to take up
        if status is JobStatus.COMPLETED:
            self.totals["completed"] += 1
        elif status in (JobStatus.FAILED, JobStatus.TIMED_OUT):
            self.totals["failed"] += 1
        if was_running and status in (JobStatus.CANCELLED, JobStatus.TIMED_OUT):
            self._send_stop(job.worker_id, job.id)
        if was_running:
            self._wake_takers()  # its worker may be holding a job-take for the next job
        job.touch()

    def _expire(self, job: Job, reason: str) -> None:
        take_up.taken_up(job)
        if job.status is JobStatus.IN_PROGRESS and job.worker_id is not None:
            self._send_stop(job.worker_id, job.id)
        if job.timer is not None:
            job.timer.cancel()
        del self._jobs[job.id]
        if job.worker_id is not None and self._running.get(job.worker_id) is job:
            del self._running[job.worker_id]
        self._gone.add(job.id, reason)
        job.touch()

    def _send_stop(self, worker_id: str | None, job_id: str) -> None:
        if worker_id is None or worker_id in self._dead_workers:
            return
        self._stops.send(worker_id, job_id)

    def _wake_takers(self) -> None:
        self._queue_changed.set()
        self._queue_changed = asyncio.Event()
