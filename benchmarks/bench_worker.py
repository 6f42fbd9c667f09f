"""What the worker costs a request, measured against what it is compared with, in one run.

- warm deps: a request whose dependencies are all installed already, against the same request
  with none (the metadata check that keeps uv, and the network, out of the warm path);
- isolation: a request through the streaming handler and the executor child, against calling
  the same function in this process (validation, pickling, the pipes, the response);
- a cold executor: the first request of a fresh worker, which starts the child process;
- another kernel: a request whose kernel differs from the last one's, which gets a fresh
  executor so that nothing of the other kernel's reaches it.

Each figure is the median of REPEATS requests through `worker.handler.stream_handler`, the
handler the runpod SDK calls in production; nothing here talks to an endpoint.

    python benchmarks/run.py worker
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from worker import handler
from worker.executor import Executor
from worker.protocol import encode

REPEATS = 30
WARM_DEPS = ["cloudpickle>=3", "pydantic>=2", "packaging"]
TINY = "def f(x):\n    return x + 1\n"
WORK = "def f(n):\n    return sum(i * i for i in range(n))\n"
WORK_N = 200_000


def _request(source: str, arg: Any, **fields: Any) -> dict[str, Any]:
    return {
        "id": "bench",
        "input": {"function_name": "f", "function_code": source, "args": [encode(arg)], **fields},
    }


async def _one(job: dict[str, Any]) -> float:
    """Seconds for one request through the streaming handler, until its response chunk."""
    started = time.perf_counter()
    async for item in handler.stream_handler(job):
        if item["kind"] == "response":
            assert item["response"]["success"], item["response"]["error"]
    return time.perf_counter() - started


async def _median(job: dict[str, Any], repeats: int) -> float:
    return statistics.median([await _one(job) for _ in range(repeats)])


def _in_process(source: str, arg: Any, repeats: int) -> float:
    """Median seconds to call the function here, defined once as the worker would."""
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    function: Callable[[Any], Any] = namespace["f"]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function(arg)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _row(name: str, value: float, baseline_name: str, baseline: float) -> dict[str, Any]:
    return {"name": name, "value_s": value, "baseline_name": baseline_name, "baseline_s": baseline}


async def _measure(repeats: int) -> list[dict[str, Any]]:
    cold = await _one(_request(TINY, 1))
    no_deps = await _median(_request(TINY, 1), repeats)
    warm_deps = await _median(_request(TINY, 1, dependencies=WARM_DEPS), repeats)
    work = await _median(_request(WORK, WORK_N), repeats)
    kernels = [_request(TINY, 1, kernel_id=f"kernel-{i % 2}") for i in range(repeats)]
    switching = statistics.median([await _one(job) for job in kernels])
    return [
        _row("request, deps already installed", warm_deps, "request, no deps", no_deps),
        _row(
            "request, tiny function",
            no_deps,
            "tiny function in-process",
            _in_process(TINY, 1, repeats),
        ),
        _row(
            f"request, sum of {WORK_N} squares",
            work,
            "same function in-process",
            _in_process(WORK, WORK_N, repeats),
        ),
        _row("first request (starts the executor)", cold, "request, tiny function", no_deps),
        _row(
            "request from another kernel than the last", switching, "request, same kernel", no_deps
        ),
    ]


def run(repeats: int = REPEATS) -> list[dict[str, Any]]:
    """The figures, as rows {name, value_s, baseline_name, baseline_s}."""
    executor, saved = Executor(), handler.EXECUTOR
    handler.EXECUTOR = executor
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_measure(repeats))
    finally:
        executor.close()
        handler.EXECUTOR = saved
        loop.run_until_complete(asyncio.sleep(0.05))
        loop.close()
