"""The local endpoint's job store and GPU planning, in-process: the rules that are slow or
impossible to reach through a live server (retention of 30 min, ttl, a stop that races job-take,
machines with several GPUs)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from tetra_magic.cloud.status import JobStatus
from tetra_magic.local.job_store import JobStore
from tetra_magic.local.jobs import Policy, PolicyError
from tetra_magic.local.worker_gpus import gpu_plan, visible_gpus
from tetra_magic.local.workers import exit_reason


class Clock:
    """A hand-turned clock for the store's retention and ttl rules."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, None]) -> None:
    return asyncio.run(coro)


def test_policy_defaults_and_limits() -> None:
    assert Policy.parse(None) == Policy(execution_timeout=600.0, ttl=86400.0)
    assert Policy.parse({"executionTimeout": 5000, "ttl": 10000}) == Policy(5.0, 10.0)
    for bad in ({"executionTimeout": 4999}, {"ttl": 9999}, {"ttl": True}, "fast"):
        with pytest.raises(PolicyError):
            Policy.parse(bad)


def test_results_are_kept_30_min_for_run_and_1_min_for_runsync() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = JobStore(clock)
        jobs = [store.submit({}, Policy(), sync=sync) for sync in (False, True)]
        for job in jobs:
            assert await store.take("w", 0) is job
            assert store.finish(job.id, "w", {"output": [1]})
        clock.now += 61
        store.sweep()
        assert store.get(jobs[0].id) is jobs[0]
        assert store.get(jobs[1].id) is None
        assert "kept 1 min" in store.why_gone(jobs[1].id)
        clock.now += 30 * 60
        store.sweep()
        assert store.get(jobs[0].id) is None

    run(scenario())


def test_a_busy_worker_gets_no_second_job_and_its_waiting_take_gets_the_next_at_once() -> None:
    """Each worker runs one job at a time; a job-take it holds while busy is answered the
    moment its job ends, so back-to-back cells do not wait for the worker to ask again."""

    async def scenario() -> None:
        store = JobStore(Clock())
        first, second = (store.submit({}, Policy(), sync=False) for _ in range(2))
        assert await store.take("w", 0) is first
        assert await store.take("w", 0) is None  # busy: the queued job waits for another worker
        waiting = asyncio.create_task(store.take("w", 5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert store.finish(first.id, "w", {"output": []})
        assert await asyncio.wait_for(waiting, 1) is second

    run(scenario())


def test_ttl_expires_queued_and_running_jobs_and_stops_the_running_one() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = JobStore(clock)
        running = store.submit({}, Policy(ttl=10), sync=False)
        queued = store.submit({}, Policy(ttl=10), sync=False)
        assert await store.take("w", 0) is running
        clock.now += 10
        store.sweep()
        assert store.get(running.id) is None and store.get(queued.id) is None
        assert "ttl of 10 s" in store.why_gone(queued.id)
        assert await store.stop_signals("w", 0) == [running.id]
        assert await store.take("w", 0) is None

    run(scenario())


def test_a_late_result_does_not_change_a_final_status() -> None:
    async def scenario() -> None:
        store = JobStore()
        job = store.submit({}, Policy(), sync=False)
        await store.take("w", 0)
        store.cancel(job.id)
        assert not store.add_stream(job.id, "w", {"output": "late"})
        assert not store.finish(job.id, "w", {"output": ["late"]})
        assert job.status is JobStatus.CANCELLED and "output" not in job.doc(0)
        assert store.counts()["completed"] == 0

    run(scenario())


def test_stream_hands_out_each_chunk_once() -> None:
    async def scenario() -> None:
        store = JobStore()
        job = store.submit({}, Policy(), sync=False)
        await store.take("w", 0)
        for item in ("a", "b"):
            store.add_stream(job.id, "w", {"output": item})
        assert job.new_chunks() == ["a", "b"]
        assert job.new_chunks() == []
        store.add_stream(job.id, "w", {"output": "c"})
        assert job.new_chunks() == ["c"]

    run(scenario())


def test_stop_is_resent_until_the_worker_asks_for_work_again() -> None:
    """A stop the SDK drops (job taken, its task not started yet) must come again."""

    async def scenario() -> None:
        store = JobStore()
        job = store.submit({}, Policy(), sync=False)
        await store.take("w", 0)
        store.cancel(job.id)
        assert await store.stop_signals("w", 0) == [job.id]
        assert await store.stop_signals("w", 0.2) == []  # not before the resend interval
        assert await store.stop_signals("w", 2) == [job.id]
        store.worker_idle("w")  # job-take with nothing in progress: it has let go
        assert await store.stop_signals("w", 0.2) == []

    run(scenario())


def test_a_dead_workers_job_fails_and_it_gets_no_more_jobs() -> None:
    async def scenario() -> None:
        store = JobStore()
        job = store.submit({}, Policy(), sync=False)
        await store.take("w", 0)
        store.submit({}, Policy(), sync=False)
        store.worker_gone("w", "the worker exited with signal SIGKILL while running the job")
        assert job.status is JobStatus.FAILED and "SIGKILL" in job.error
        assert await store.take("w", 0) is None
        assert await store.take("v", 0) is not None

    run(scenario())


def in_session(session: str | None) -> dict:
    return {"function_name": "f", "session": session}


def test_a_sessions_jobs_wait_for_the_worker_holding_it_while_others_take_later_jobs() -> None:
    """Once a session's job started on w, its later jobs go to w only; the other workers take
    the jobs queued behind them, in order. A same-named session of another kernel is another
    session (the owner is part of the name) and is not pinned."""

    async def scenario() -> None:
        store = JobStore()
        first = store.submit(in_session("k1:s"), Policy(), sync=False)
        assert await store.take("w", 0) is first
        assert store.finish(first.id, "w", {"output": []})
        names = ("k1:s", None, "k1:s", "k2:s", None)
        second, plain, third, other, last = (
            store.submit(in_session(n), Policy(), sync=False) for n in names
        )
        assert await store.take("v", 0) is plain
        assert await store.take("u", 0) is other
        assert await store.take("w", 0) is second
        assert await store.take("x", 0) is last  # `third` waits for w, which is busy
        assert await store.take("y", 0) is None
        assert store.finish(second.id, "w", {"output": []})
        assert await store.take("w", 0) is third

    run(scenario())


def test_a_session_whose_worker_is_gone_goes_to_any_worker() -> None:
    """The next job of a session whose worker died runs elsewhere, where the cell runtime
    finds the session missing and says so."""

    async def scenario() -> None:
        store = JobStore()
        first = store.submit(in_session("k1:s"), Policy(), sync=False)
        assert await store.take("w", 0) is first
        second = store.submit(in_session("k1:s"), Policy(), sync=False)
        waiting = asyncio.create_task(store.take("v", 5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        store.worker_gone("w", "the worker exited with signal SIGKILL while running the job")
        assert await asyncio.wait_for(waiting, 1) is second
        assert store.finish(second.id, "v", {"output": []})
        third = store.submit(in_session("k1:s"), Policy(), sync=False)
        assert await store.take("u", 0) is None  # now pinned to v
        assert await store.take("v", 0) is third

    run(scenario())


def test_execution_timeout_marks_the_job_timed_out_and_stops_it() -> None:
    async def scenario() -> None:
        store = JobStore()
        job = store.submit({}, Policy(execution_timeout=0.05), sync=False)
        await store.take("w", 0)
        assert await job.wait_final(2, store.clock)
        assert job.status is JobStatus.TIMED_OUT
        assert await store.stop_signals("w", 0) == [job.id]

    run(scenario())


def test_gpu_listing_honours_cuda_visible_devices() -> None:
    listing = "GPU 0: NVIDIA H100 (UUID: GPU-a)\nGPU 1: NVIDIA H100 (UUID: GPU-b)\n"
    assert visible_gpus(None, None) == []
    assert visible_gpus(listing, None) == ["0", "1"]
    assert visible_gpus(listing, "1") == ["1"]
    assert visible_gpus(listing, "GPU-b,-1,0") == ["GPU-b"]
    assert visible_gpus(listing, "") == []
    assert visible_gpus("No devices found.", "0") == []


def test_one_gpu_per_worker_only_when_there_are_several() -> None:
    assert gpu_plan([], 2) == [None, None]
    assert gpu_plan(["0"], 3) == [None, None, None]
    assert gpu_plan(["2", "3"], 3) == ["2", "3", "2"]


def test_exit_reason_names_the_signal() -> None:
    assert exit_reason(-9) == "with signal SIGKILL"
    assert exit_reason(3) == "with status 3"
