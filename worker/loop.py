"""The worker's job loop: the runpod SDK's own, less the timers it makes jobs wait for.

The SDK's loop (runpod 1.12.0, `rp_scale.JobScaler`) hands a job it has taken to a second loop
that looks for jobs to start every 0.1 s, and, while its one slot is taken, asks for the next
job only on a 1 s tick. A trivial cell therefore waited ~50 ms for nothing, and a cell sent as
the previous one ended up to a second more. `JobLoop` keeps everything of the SDK's loop but
those two loops, which it replaces with ones that wait for the event itself: a job taken starts
at once, and a job ending lets the next one be asked for at once.

Everything that crosses the wire is still the SDK's: job-take (`rp_job.get_job`), stream and
done posts (`rp_job.handle_job`), the stop channel (`JobScaler.monitor_stop_signals`,
`stop_job`) and the ping process; so are the fitness checks, start-up and shutdown. The loop
relies on JobScaler internals of that one SDK version (tests/worker/test_worker_loop.py pins it).

Take-ahead (TETRA_WORKER_TAKE_AHEAD=1, local endpoint only): one job-take stays open while a
job runs, so the next job arrives the moment this one is done. RunPod would answer it with a
second job to run alongside, which is why it is off by default: there the worker asks for a
job only while it has room for one, as the SDK does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from runpod.http_client import ClientSession, TooManyRequests
from runpod.serverless import worker as sdk_worker
from runpod.serverless.modules.rp_fitness import run_fitness_checks
from runpod.serverless.modules.rp_logger import RunPodLogger
from runpod.serverless.modules.rp_scale import JobScaler
from runpod.serverless.modules.worker_state import JobsProgress, PingJobMirror

T = TypeVar("T")
log = RunPodLogger()
# After an unexpected job-take failure (the endpoint unreachable), before asking again.
RETRY_S = 1.0
# What the SDK waits after a 429 from job-take.
RATE_LIMITED_S = 5.0


class JobLoop(JobScaler):
    """The SDK's JobScaler with event-driven `get_jobs` and `run_jobs`."""

    def __init__(self, config: dict[str, Any], take_ahead: bool = False) -> None:
        super().__init__(config)
        self.take_ahead = take_ahead
        self._job_ended = asyncio.Event()

    def _wanted(self) -> int:
        """How many jobs to ask for now. A taken job counts until its task ends (the SDK's
        own count also counts it twice while it waits in the queue)."""
        room = self.current_concurrency + (1 if self.take_ahead else 0)
        return room - self.job_progress.get_job_count()

    async def get_jobs(self, session: ClientSession) -> None:
        """Take jobs while there is room, and the moment a job ending makes room."""
        while self.is_alive():
            wanted = self._wanted()
            if wanted <= 0:
                self._job_ended.clear()
                await self._unless_stopping(self._job_ended.wait())
                continue
            try:
                jobs = await asyncio.wait_for(
                    self.jobs_fetcher(session, wanted), timeout=self.jobs_fetcher_timeout
                )
            except TooManyRequests:
                await asyncio.sleep(RATE_LIMITED_S)
                continue
            except asyncio.TimeoutError:
                continue
            except Exception as error:
                log.error(f"Failed to get job. | {type(error).__name__}: {error}")
                await asyncio.sleep(RETRY_S)
                continue
            for job in jobs or []:
                self.job_progress.add(job)
                await self.jobs_queue.put(job)

    async def run_jobs(self, session: ClientSession) -> None:
        """Start each taken job as soon as it is queued; at shutdown, let running ones end."""
        tasks: set[asyncio.Task[None]] = set()
        while self.is_alive() or not self.jobs_queue.empty():
            job = await self._unless_stopping(self.jobs_queue.get())
            if job is None:
                continue
            task = asyncio.create_task(self.handle_job(session, job))
            self.jobs_tasks[job["id"]] = task
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: self._job_ended.set())
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error(f"JobLoop.run_jobs | Task failed during shutdown drain: {result}")

    async def _unless_stopping(self, awaitable: Awaitable[T]) -> T | None:
        """`awaitable`'s result, or None if the worker is told to shut down first."""
        work = asyncio.ensure_future(awaitable)
        stopping = asyncio.ensure_future(self._shutdown_event.wait())
        done, _ = await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for future in (work, stopping):
            if future not in done:
                future.cancel()
        return work.result() if work in done else None


def serve(config: dict[str, Any], take_ahead: bool) -> None:
    """Run the production worker: the SDK's `worker.run_worker`, with JobLoop for JobScaler."""
    asyncio.run(run_fitness_checks())
    mirror = PingJobMirror()
    JobsProgress().set_mirror(mirror)
    sdk_worker.heartbeat.start_ping(mirror)
    JobLoop(config, take_ahead).start()
