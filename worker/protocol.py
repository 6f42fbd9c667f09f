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
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import cloudpickle
from pydantic import BaseModel, Field

ChunkKind = Literal["stdout", "stderr", "log", "phase", "info", "response"]
PHASES = ("installing", "starting", "running", "done", "failed")


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
    # Ours: the exception's type name, and why the worker (not the code) ended the request.
    error_type: str | None = None
    failure: Literal["exception", "install", "timeout", "crash", "cancelled", "invalid"] | None = (
        None
    )
    # Ours: result entries that could not be pickled, by name, with the reason.
    unpicklable: dict[str, str] = Field(default_factory=dict)
    worker: WorkerInfo | None = None


def chunk(kind: ChunkKind, text: str = "", **extra: Any) -> dict[str, Any]:
    """A stream item: what kind of output it is and its text (plus kind-specific fields)."""
    return {"kind": kind, "text": text, **extra}


def encode(value: Any) -> str:
    """base64(cloudpickle(value)): the protocol's encoding for every argument and result."""
    return base64.b64encode(cloudpickle.dumps(value)).decode("ascii")


def decode(text: str) -> Any:
    """The inverse of `encode`."""
    return cloudpickle.loads(base64.b64decode(text))
