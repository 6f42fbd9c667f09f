"""The tetra wire protocol, defined once for the worker and the notebook client.

`FunctionRequest` and `FunctionResponse` keep the field names, types and defaults of the
published tetra worker (runpod-workers/worker-tetra), so a request either side accepts means the
same thing on both. Fields we add are optional and default to "off": the published worker ignores
them (pydantic's default config drops unknown fields), and our worker behaves like the published
one when they are absent.

Our worker streams. Each item it yields is a `Chunk` dict; the last item of a job is a chunk of
kind "response" carrying the `FunctionResponse`. The response is nested rather than yielded bare
because the runpod SDK turns any streamed dict with a truthy "error" key into a job failure and
drops the rest of it (stdout, worker info), which would lose exactly what a failed cell needs.
A response too big for one stream chunk (RunPod takes 1 MB) comes instead as consecutive
"response" chunks without a `response` field, whose texts joined are its JSON, all but the last
marked `more`.
A "display" chunk carries one display message of the cell (display_data, its update, or
clear_output) as JSON in its text (worker/frames.py); one too big for a stream chunk is split
into consecutive "display" chunks, all but the last marked `more`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from worker.codec import decode, encode

# The log line a worker sends when new --deps replaced installed packages and the process that
# runs cells starts afresh to load them (what it held, a session too, is gone).
EXECUTOR_RESTARTED = "packages were replaced: restarting the executor to load them\n"
ChunkKind = Literal["stdout", "stderr", "log", "phase", "info", "display", "response"]
# How a request failed (FunctionResponse.failure; see there).
Failure = Literal[
    "exception", "install", "start", "timeout", "crash", "cancelled", "invalid", "internal"
]
# What the worker is doing, in "phase" chunks: installing deps, starting an executor, running.
PHASES = ("installing", "starting", "running")


class FunctionRequest(BaseModel):
    """One call: a function (or a method of a kept class instance) with its arguments."""

    function_name: str | None = None
    function_code: str | None = None
    args: list[str] = Field(default_factory=list)
    kwargs: dict[str, str] = Field(default_factory=dict)
    dependencies: list[str] | None = None
    system_dependencies: list[str] | None = None
    execution_type: Literal["function", "class"] = "function"
    class_name: str | None = None
    class_code: str | None = None
    constructor_args: list[str] | None = Field(default_factory=list)
    constructor_kwargs: dict[str, str] | None = Field(default_factory=dict)
    method_name: str = "__call__"
    instance_id: str | None = None
    create_new_instance: bool = True
    accelerate_downloads: bool = True
    # Ours: a limit on the code's own run time, in seconds (install time not included).
    timeout: float | None = None
    # Ours: the file name the code is registered under, so tracebacks can name it.
    source_name: str | None = None
    # Ours: the notebook kernel the request comes from. Requests of one kernel share an executor
    # process and a working directory; another kernel's request gets a fresh process, so what
    # one kernel's code leaves running (a thread still printing) never reaches another kernel.
    kernel_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Ours: the session the request runs in ("<owner>:<name>"), whose namespace lives in the
    # executor process between requests: that process is kept while it holds one, and the local
    # endpoint sends the session's jobs to the worker that holds it.
    session: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,160}$")
    # Ours: the job runs on after its kernel exits (`%%tetra --bg --detach`): the local endpoint
    # keeps that kernel's processes and files until the job has ended.
    detached: bool | None = None


class WorkerInfo(BaseModel):
    """Where a request ran, so the client can show it and warn about Python mismatches."""

    worker_id: str
    python: str
    gpus: list[str] = Field(default_factory=list)
    gpu_memory_mb: list[int] = Field(default_factory=list)


class FunctionResponse(BaseModel):
    """The outcome of one request; `result` is base64 cloudpickle of the return value."""

    success: bool
    result: str | None = None
    error: str | None = None
    stdout: str | None = None
    instance_id: str | None = None
    instance_info: dict[str, Any] | None = None
    # Ours: the exception's type name, and how the request failed: the code raised
    # ("exception"), deps did not install, the process that runs the code did not start
    # ("start"), the worker ended it ("timeout", "crash"; "cancelled" is for clients to record
    # a cancel, since a cancelled job sends no response), the request was unusable
    # ("invalid"), or the worker itself went wrong ("internal").
    error_type: str | None = None
    failure: Failure | None = None
    # Ours: result entries that could not be pickled, by name, with the reason.
    unpicklable: dict[str, str] = Field(default_factory=dict)
    worker: WorkerInfo | None = None


Emit = Callable[[dict[str, Any]], None]
"""A callback that takes one chunk, as the worker's parts hand output to the handler."""


def chunk(kind: ChunkKind, text: str = "", **extra: Any) -> dict[str, Any]:
    """A stream item: what kind of output it is and its text (plus kind-specific fields)."""
    return {"kind": kind, "text": text, **extra}


__all__ = [
    "PHASES",
    "ChunkKind",
    "Emit",
    "Failure",
    "FunctionRequest",
    "FunctionResponse",
    "WorkerInfo",
    "chunk",
    "decode",
    "encode",
]
