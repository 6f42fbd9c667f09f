"""The runpod handlers: one request in, output chunks and a FunctionResponse out.

`stream_handler` is the default: an async generator whose items are output chunks, batched so
one goes out at least every BATCH_SECONDS while there is output, ending with a "response" chunk.
`plain_handler` returns just the FunctionResponse dict, as the published tetra worker does; set
TETRA_WORKER_STREAM=0 to serve it to clients that expect that shape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from worker import deps
from worker.executor import Executor
from worker.info import worker_info
from worker.protocol import FunctionRequest, FunctionResponse, chunk

BATCH_SECONDS = 0.1
EXECUTOR = Executor()


def _response(response: FunctionResponse | dict[str, Any], stdout: str) -> dict[str, Any]:
    """The final chunk: the response, stamped with where it ran and the full stdout."""
    if isinstance(response, dict):
        response = FunctionResponse.model_validate(response)
    response.worker = worker_info()
    response.stdout = stdout
    return chunk("response", response=response.model_dump())


async def _install(request: FunctionRequest) -> AsyncIterator[dict[str, Any]]:
    if request.dependencies:
        yield chunk("phase", "installing")
        async for line in deps.install_python(request.dependencies):
            yield chunk("log", line)
    if request.system_dependencies:
        yield chunk("phase", "installing")
        async for line in deps.install_system(request.system_dependencies):
            yield chunk("log", line)


async def process(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Every chunk of one job, unbatched, the "response" chunk last."""
    stdout: list[str] = []
    yield chunk("info", **worker_info().model_dump())
    try:
        request = FunctionRequest.model_validate(job.get("input") or {})
    except ValidationError as exc:
        failed = FunctionResponse(success=False, error=f"invalid request: {exc}", failure="invalid")
        yield _response(failed, "")
        return
    try:
        async for item in _install(request):
            yield item
    except deps.InstallError as exc:
        failed = FunctionResponse(success=False, error=str(exc), failure="install")
        yield _response(failed, "")
        return
    yield chunk("phase", "running")
    payload = request.model_dump()
    async for item in EXECUTOR.run(payload, request.timeout):
        if item.get("kind") is None:  # the executor's FunctionResponse dict
            yield _response(item, "".join(stdout))
            return
        if item["kind"] == "stdout":
            stdout.append(item["text"])
        yield item


async def _batched(items: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Merge runs of same-kind text chunks so at most one of each goes out per batch window."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def feed() -> None:
        async for item in items:
            await queue.put(item)
        await queue.put(None)

    feeder = asyncio.create_task(feed())
    try:
        done = False
        while not done:
            batch = [await queue.get()]
            loop = asyncio.get_running_loop()
            until = loop.time() + BATCH_SECONDS
            while batch[-1] is not None and batch[-1]["kind"] in ("stdout", "stderr", "log"):
                try:
                    batch.append(await asyncio.wait_for(queue.get(), until - loop.time()))
                except asyncio.TimeoutError:
                    break
            done = batch[-1] is None
            for item in _merge([item for item in batch if item is not None]):
                yield item
        await feeder
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeder


def _merge(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for item in batch:
        last = merged[-1] if merged else None
        if last and item["kind"] == last["kind"] and set(item) == {"kind", "text"}:
            last["text"] += item["text"]
        else:
            merged.append(dict(item))
    return merged


async def stream_handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The streaming runpod handler."""
    async for item in _batched(process(job)):
        yield item


async def plain_handler(job: dict[str, Any]) -> dict[str, Any]:
    """The published worker's shape: the FunctionResponse dict, with all output in `stdout`."""
    output: list[str] = []
    async for item in process(job):
        if item["kind"] == "response":
            response = item["response"]
            response["stdout"] = "".join(output)
            return response
        if item["kind"] in ("stdout", "stderr", "log"):
            output.append(item["text"])
    raise RuntimeError("the worker produced no response")
