"""The worker's job loop (worker/loop.py): the runpod SDK's JobScaler, minus its timers.

`JobLoop` replaces two methods of the SDK's JobScaler and relies on the rest of that class, and
on the SDK's transport functions, as runpod 1.12.0 has them. The first test pins that version
and the behaviour of its own loop that JobLoop exists to replace, so a new SDK fails here,
loudly, until someone has read its rp_scale.py again. The in-process tests drive JobLoop through
the SDK's own hooks for local testing (job source, handler, stop channel); the last one runs the
real worker process, as RunPod starts it, against our endpoint's job API on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import runpod
from helpers.polling import until
from helpers.published import LoopbackEndpoint
from runpod.serverless.modules.rp_scale import JobScaler
from runpod.serverless.modules.worker_state import JobsProgress

from tetra_magic.local import environment
from tetra_magic.local.job_store import JobStore
from tetra_magic.local.jobs import Job
from tetra_magic.local.workers import WorkerUrls
from worker.loop import JobLoop
from worker.protocol import FunctionResponse, decode

ROOT = Path(__file__).resolve().parents[2]
SDK_VERSION = "1.12.0"  # the version whose rp_scale.py / rp_job.py worker/loop.py was written for


@pytest.fixture(autouse=True)
def no_jobs_in_progress() -> Iterator[None]:
    """The SDK keeps the jobs in progress in a process-wide singleton: start and end empty."""
    JobsProgress().clear()
    yield
    JobsProgress().clear()


class Turns:
    """Counts event-loop turns: a callback that schedules itself again on every turn."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self.start)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


async def turns_from_take_to_start(loop_class: type[JobScaler]) -> int:
    """Event-loop turns from the job source handing over a job to its handler starting."""
    turns, started = Turns(), asyncio.Event()
    taken_at: list[int] = []

    async def fetch(session: Any, wanted: int) -> list[dict[str, Any]] | None:
        if not taken_at:
            taken_at.append(turns.count)
            return [{"id": "job-1", "input": {}}]
        await asyncio.Event().wait()  # a long poll that nothing answers
        return None

    async def handle(session: Any, config: dict[str, Any], job: dict[str, Any]) -> None:
        taken_at.append(turns.count)
        started.set()

    async def no_stops(session: Any) -> list[str]:
        await asyncio.Event().wait()
        return []

    config = {"handler": None, "jobs_fetcher": fetch, "jobs_handler": handle}
    scaler = loop_class({**config, "stop_signals_fetcher": no_stops})
    turns.start()
    running = asyncio.create_task(scaler.run())
    await asyncio.wait_for(started.wait(), 30)
    turns.stop()
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    return taken_at[1] - taken_at[0]


def test_the_sdk_version_and_the_tick_it_makes_taken_jobs_wait_for() -> None:
    """Every place that installs runpod pins this version; its own loop starts a taken job
    only at its next 0.1 s tick (thousands of turns of a busy event loop), ours within a few
    turns, with no timer in between."""
    assert runpod.__version__ == SDK_VERSION
    assert f"runpod=={SDK_VERSION}" == environment.RUNPOD_PIN
    for path in ("pyproject.toml", "Dockerfile", "Dockerfile-cpu"):
        assert f'"runpod=={SDK_VERSION}"' in (ROOT / path).read_text(), path
    sdk = asyncio.run(turns_from_take_to_start(JobScaler))
    ours = asyncio.run(turns_from_take_to_start(JobLoop))
    assert ours <= 10 < 100 < sdk, (ours, sdk)


async def serve_jobs(loop: JobLoop, count: int) -> tuple[list[str], list[int]]:
    """Hand `count` jobs to `loop`, one per job-take, each job yielding to the loop a few
    times as real ones do; the order the jobs ran in, and the jobs in progress at each take."""
    waiting = [{"id": f"job-{n}", "input": {}} for n in range(count)]
    ran: list[str] = []
    busy_at_take: list[int] = []

    async def fetch(session: Any, wanted: int) -> list[dict[str, Any]] | None:
        busy_at_take.append(JobsProgress().get_job_count())
        if waiting:
            return [waiting.pop(0)]
        await asyncio.sleep(0.01)
        return None

    async def handle(session: Any, config: dict[str, Any], job: dict[str, Any]) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        ran.append(job["id"])
        if len(ran) == count:
            loop.kill_worker()

    loop.jobs_fetcher, loop.jobs_handler = fetch, handle
    await asyncio.wait_for(loop.run(), 30)
    return ran, busy_at_take


@pytest.mark.parametrize("take_ahead", [False, True])
def test_jobs_run_in_order_and_a_worker_asks_ahead_only_when_told(take_ahead: bool) -> None:
    """As on RunPod (concurrency 1), a worker asks for a job only once the one it runs has
    ended: RunPod would hand it a second job to run alongside. Take-ahead (the local endpoint)
    keeps one job-take open while a job runs."""

    async def no_stops(session: Any) -> list[str]:
        await asyncio.sleep(0.01)
        return []

    loop = JobLoop({"handler": None, "stop_signals_fetcher": no_stops}, take_ahead=take_ahead)
    ran, busy_at_take = asyncio.run(serve_jobs(loop, 5))
    assert ran == [f"job-{n}" for n in range(5)]
    assert max(busy_at_take) == (1 if take_ahead else 0)
    assert JobsProgress().get_job_count() == 0


class WatchedStore(JobStore):
    """Our endpoint's job store, noting each job-take that came from a worker running a job."""

    def __init__(self) -> None:
        super().__init__()
        self.takes = 0
        self.takes_while_busy = 0

    async def take(self, worker_id: str, timeout: float) -> Job | None:
        self.takes += 1
        self.takes_while_busy += self.running_on(worker_id) is not None
        return await super().take(worker_id, timeout)


@pytest.fixture
def http_endpoint() -> Iterator[tuple[LoopbackEndpoint, WatchedStore]]:
    store = WatchedStore()
    endpoint = LoopbackEndpoint(store)
    yield endpoint, store
    endpoint.close()


@pytest.mark.slow
@pytest.mark.parametrize("take_ahead", [False, True])
def test_the_worker_process_under_runpods_settings(
    http_endpoint: tuple[LoopbackEndpoint, WatchedStore], tmp_path: Path, take_ahead: bool
) -> None:
    """`python -m worker` with only RunPod's variables: jobs back to back come back right, a
    cancel reaches the code through job-stop and the next job runs, and the worker never asks
    for a job while it runs one. TETRA_WORKER_TAKE_AHEAD=1 (the local endpoint's) does."""
    endpoint, store = http_endpoint
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TETRA_WORKER_")},
        **WorkerUrls(endpoint.url).env(),
        "HOME": str(tmp_path),  # no ~/.runpod key for the SDK to prefer
        "RUNPOD_POD_ID": "worker-1",
        "RUNPOD_AI_API_KEY": endpoint.token,
        "RUNPOD_LOG_LEVEL": "ERROR",
        "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        "RUNPOD_SKIP_GPU_CHECK": "true",
        **({"TETRA_WORKER_TAKE_AHEAD": "1"} if take_ahead else {}),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # the SDK's ping process and the executor child go with it
    )
    http = httpx.Client(
        base_url=endpoint.url, headers={"Authorization": f"Bearer {endpoint.token}"}, timeout=30
    )

    def submit(source: str) -> str:
        body = {"input": {"function_name": "f", "function_code": source}}
        return http.post("/run", json=body).json()["id"]

    def final(job_id: str) -> dict[str, Any]:
        done = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
        return until(
            lambda: (doc := http.get(f"/status/{job_id}").json())["status"] in done and doc,
            60,
            f"job {job_id} never ended",
        )

    def value(doc: dict[str, Any]) -> Any:
        assert doc["status"] == "COMPLETED", doc
        return decode(FunctionResponse.model_validate(doc["output"][-1]["response"]).result)

    try:
        assert [value(final(submit(f"def f():\n    return {n}\n"))) for n in range(3)] == [0, 1, 2]
        slow = submit("def f():\n    import time\n    time.sleep(60)\n")
        until(lambda: http.get(f"/status/{slow}").json()["status"] == "IN_PROGRESS", 30, "no start")
        http.post(f"/cancel/{slow}")
        assert value(final(submit("def f():\n    return 'next'\n"))) == "next"
        assert final(slow)["status"] == "CANCELLED"
    finally:
        http.close()
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert store.takes >= 5
    assert (store.takes_while_busy > 0) == take_ahead
