"""The executor child: a long-lived process that runs request code, one request at a time.

It lives apart from the worker so that user code can crash, hang or be killed without taking the
worker (and its runpod job loop) with it, and it persists across requests so imports stay warm.
Its fd 1 and 2 are pipes read by the worker, so output from C extensions and subprocesses is
captured as well as Python's own prints.

Messages arrive on a `multiprocessing.connection.Connection` as `FunctionRequest` dicts; each gets
back one `FunctionResponse` dict. After each request an end marker is written to fd 1 and fd 2,
so the worker knows it has read every byte of that request's output.
"""

from __future__ import annotations

import importlib
import linecache
import os
import sys
import traceback
import uuid
from multiprocessing.connection import Connection
from typing import Any

from worker.protocol import FunctionRequest, FunctionResponse, decode
from worker.results import encode_result

# Instances made by class requests, kept for the life of the child (the published worker keeps
# them for the life of the worker; the child lives as long unless user code kills it).
INSTANCES: dict[str, Any] = {}


def register_source(code: str, name: str) -> str:
    """Make `code` visible to traceback/linecache under `name`, so frames show the user's lines."""
    linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
    return name


def load(code: str, name: str) -> dict[str, Any]:
    """Execute definitions in a fresh namespace, as the published worker does with `exec`."""
    namespace: dict[str, Any] = {"__name__": "__tetra__"}
    exec(compile(code, register_source(code, name), "exec"), namespace)
    return namespace


def call(request: FunctionRequest) -> tuple[Any, str | None]:
    """Run the request's function or method; return its value and the instance id used."""
    args = [decode(a) for a in request.args]
    kwargs = {k: decode(v) for k, v in request.kwargs.items()}
    name = request.source_name or "<tetra>"
    if request.execution_type == "function":
        if not request.function_name or not request.function_code:
            raise ValueError("function requests need function_name and function_code")
        return load(request.function_code, name)[request.function_name](*args, **kwargs), None
    instance_id = request.instance_id or uuid.uuid4().hex
    if request.create_new_instance or instance_id not in INSTANCES:
        if not request.class_name or not request.class_code:
            raise ValueError("class requests need class_name and class_code")
        cls = load(request.class_code, name)[request.class_name]
        c_args = [decode(a) for a in request.constructor_args or []]
        c_kwargs = {k: decode(v) for k, v in (request.constructor_kwargs or {}).items()}
        INSTANCES[instance_id] = cls(*c_args, **c_kwargs)
    method = getattr(INSTANCES[instance_id], request.method_name)
    return method(*args, **kwargs), instance_id


def user_traceback(exc: BaseException) -> str:
    """The traceback from the user's code down, without this module's frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def run(request_data: dict[str, Any]) -> FunctionResponse:
    """Run one request and describe the outcome; never raises."""
    try:
        request = FunctionRequest.model_validate(request_data)
    except Exception as exc:
        return FunctionResponse(success=False, error=str(exc), failure="invalid")
    importlib.invalidate_caches()  # packages installed since the last request become importable
    try:
        value, instance_id = call(request)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt in user code end the request
        return FunctionResponse(
            success=False,
            error=user_traceback(exc),
            error_type=type(exc).__name__,
            failure="exception",
        )
    try:
        result, unpicklable = encode_result(value)
    except TypeError as exc:
        return FunctionResponse(
            success=False, error=str(exc), error_type="PicklingError", failure="exception"
        )
    info = {"class_name": request.class_name} if instance_id else None
    return FunctionResponse(
        success=True,
        result=result,
        unpicklable=unpicklable,
        instance_id=instance_id,
        instance_info=info,
    )


def end_marker(token: str) -> bytes:
    """The line written after a request's output; unlikely in real output, unique per request."""
    return f"\n\x00tetra-end:{token}\x00\n".encode()


def serve(conn: Connection) -> None:
    """Answer requests until the worker closes the connection."""
    while True:
        try:
            token, request_data = conn.recv()
        except EOFError:
            return
        response = run(request_data)
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            os.write(fd, end_marker(token))
        conn.send(response.model_dump())


def main() -> None:
    """Entry point: `python -m worker.child FD` where FD is the inherited connection."""
    conn = Connection(int(sys.argv[1]))
    # Unbuffered-enough: line buffering keeps prints flowing while a cell runs.
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    serve(conn)


if __name__ == "__main__":
    main()
