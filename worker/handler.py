"""The runpod handlers: one request in, output chunks and a FunctionResponse out.

`stream_handler` is the default: an async generator of output chunks, batched so one goes out at
least every BATCH_SECONDS while there is output, ending with a "response" chunk that carries the
FunctionResponse. Every chunk fits RunPod's 1 MB stream limit: long texts, display messages and
responses (a 10 MB result is a 13 MB response) are cut into pieces (`_pieces`).

`plain_handler` returns just the FunctionResponse dict, with all output in its
`stdout` (display outputs framed in it, in order), as the published tetra worker does
(TETRA_WORKER_STREAM=0, and `--test_input` runs).

Either way the request runs as part of the task the runpod SDK gave the job, so when the SDK stops
a job (cancel, or the endpoint's timeout) by cancelling that task, the executor child running the
code is killed and the worker carries on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from worker import deps, frames
from worker.executor import Executor
from worker.info import worker_info
from worker.protocol import EXECUTOR_RESTARTED, Emit, FunctionRequest, FunctionResponse, chunk

BATCH_SECONDS = 0.1
# RunPod takes stream chunks of at most 1 MB, as the runpod SDK posts them (`_posted_size`).
STREAM_CHUNK_BYTES = 1_000_000
# The first cut of a long text: 0.8 MB posted where every character doubles as a JSON escape; a
# cut that still posts too big (control characters, UTF-8 of non-ASCII) is halved until it fits.
STREAM_CHUNK_CHARS = 400_000
TEXT_KINDS = ("stdout", "stderr", "log")
EXECUTOR = Executor()
log = logging.getLogger(__name__)


async def _install(request: FunctionRequest, emit: Emit) -> None:
    """System deps first (Python packages may build against them), then Python deps."""
    if request.system_dependencies:
        emit(chunk("phase", "installing"))
        await deps.install_system(request.system_dependencies, emit)
    if request.dependencies:
        emit(chunk("phase", "installing"))
        layer = deps.layer(request.kernel_id)
        if await deps.install_python(request.dependencies, emit, layer):
            emit(chunk("log", EXECUTOR_RESTARTED))
            EXECUTOR.close(request.kernel_id)


async def _respond(request: FunctionRequest, emit: Emit) -> FunctionResponse:
    try:
        await _install(request, emit)
    except deps.InstallError as exc:
        return FunctionResponse(success=False, error=str(exc), failure="install")
    payload = request.model_dump()
    return FunctionResponse.model_validate(await EXECUTOR.run(payload, emit, request.timeout))


async def process(job: dict[str, Any], emit: Emit, stdout_kinds: tuple[str, ...]) -> dict[str, Any]:
    """Run one job, handing every chunk to `emit`; the FunctionResponse dict, stamped with
    where it ran and with the text of the `stdout_kinds` chunks as its `stdout`."""
    captured: list[str] = []

    def record(item: dict[str, Any]) -> None:
        if item["kind"] == "display" and "display" in stdout_kinds:
            captured.append(frames.encode(item["text"]))  # in order, as the published worker's
        elif item["kind"] in stdout_kinds:
            captured.append(item["text"])
        emit(item)

    info = worker_info()
    record(chunk("info", **info.model_dump()))
    try:
        request = FunctionRequest.model_validate(job.get("input") or {})
    except ValidationError as exc:
        error = f"invalid request: {exc}"
        response = FunctionResponse(success=False, error=error, failure="invalid")
    else:
        response = await _respond(request, record)
    response.worker = info
    response.stdout = "".join(captured)
    return response.model_dump()


def _internal_failure(exc: BaseException) -> dict[str, Any]:
    """A response for a bug in the worker itself, so the client still gets one."""
    log.error("worker error", exc_info=exc)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    response = FunctionResponse(
        success=False,
        error=f"the worker failed: {text}",
        error_type=type(exc).__name__,
        failure="internal",
        worker=worker_info(),
    )
    return response.model_dump()


def _merge(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive text chunks of one kind become one chunk."""
    merged: list[dict[str, Any]] = []
    for item in batch:
        last = merged[-1] if merged else None
        if last and item["kind"] == last["kind"] and item["kind"] in TEXT_KINDS:
            last["text"] += item["text"]
        else:
            merged.append(dict(item))
    return merged


async def _batched(queue: asyncio.Queue) -> AsyncIterator[dict[str, Any]]:
    """The queue's chunks until its None, text gathered into batches. A batch of whole lines
    goes out as soon as BATCH_SECONDS have passed since the last send, so a lone print is seen
    in milliseconds; a flood becomes one chunk per window; a partial line waits up to
    BATCH_SECONDS for the rest of itself."""
    loop = asyncio.get_running_loop()
    last_sent = -BATCH_SECONDS
    done = False
    while not done:
        batch = [await queue.get()]
        deadline = loop.time() + BATCH_SECONDS
        while batch[-1] is not None and batch[-1]["kind"] in TEXT_KINDS:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            until = deadline
            if batch[-1]["text"].endswith("\n"):
                until = min(deadline, last_sent + BATCH_SECONDS)
            if until <= loop.time():
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), until - loop.time()))
            except asyncio.TimeoutError:
                break
        done = batch[-1] is None
        for item in _merge([item for item in batch if item is not None]):
            yield item
        last_sent = loop.time()


def _posted_size(item: dict[str, Any]) -> int:
    """Bytes of `item` as the runpod SDK posts it to the stream: `{"output": item}` in UTF-8
    JSON, non-ASCII unescaped (runpod.serverless.modules.rp_http)."""
    return len(json.dumps({"output": item}, ensure_ascii=False).encode())


def _pieces(item: dict[str, Any]) -> list[dict[str, Any]]:
    """`item` as stream chunks RunPod accepts: one too big is cut by its text into several
    chunks of its kind; a display's or a response's pieces are marked `more`, but for the last,
    so the client knows to join them before reading the JSON they spell."""
    if _posted_size(item) <= STREAM_CHUNK_BYTES:
        return [item]
    text, pieces, at = item["text"], [], 0
    while at < len(text):
        piece = {**item, "text": text[at : at + STREAM_CHUNK_CHARS]}
        while len(piece["text"]) > 1 and _posted_size(piece) > STREAM_CHUNK_BYTES:
            piece["text"] = piece["text"][: len(piece["text"]) // 2]
        pieces.append(piece)
        at += len(piece["text"])
    if item["kind"] in ("display", "response"):
        for piece in pieces[:-1]:
            piece["more"] = True
    return pieces


def _response_chunks(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The "response" chunk that ends a job. One too big for a stream chunk carries the
    response as JSON text instead of a `response` field, cut into pieces for the client to join
    (a small one keeps the single-chunk shape older clients read)."""
    whole = chunk("response", response=response)
    if _posted_size(whole) <= STREAM_CHUNK_BYTES:
        return [whole]
    return _pieces(chunk("response", json.dumps(response)))


def _cancel_with_caller(work: asyncio.Task) -> None:
    """Cancel `work` when the SDK's task for this job ends. The SDK may cancel that task while
    this generator sits at a yield (its stream post in flight), where no exception reaches the
    generator until it is garbage collected; the callback does not wait for that."""
    caller = asyncio.current_task()
    if caller is not None:
        caller.add_done_callback(lambda _: work.cancel())


async def stream_handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The streaming runpod handler: output chunks as they come, the "response" chunk last."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    work = asyncio.create_task(process(job, queue.put_nowait, ("stdout",)))
    work.add_done_callback(lambda _: queue.put_nowait(None))
    _cancel_with_caller(work)
    try:
        async for item in _batched(queue):
            for piece in _pieces(item):
                yield piece
        exc = work.exception()
        response = _internal_failure(exc) if exc else work.result()
        for piece in _response_chunks(response):
            yield piece
    finally:
        work.cancel()  # a no-op once it has finished; otherwise kills the code it is running


async def plain_handler(job: dict[str, Any]) -> dict[str, Any]:
    """The published worker's shape: the FunctionResponse dict, all output in its `stdout`."""
    try:
        return await process(job, lambda _: None, (*TEXT_KINDS, "display"))
    except Exception as exc:
        return _internal_failure(exc)
