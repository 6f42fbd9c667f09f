"""Running one request inside the executor child: a function, or a method of a kept instance.

The semantics are the published tetra worker's: the code is executed in a fresh namespace, the
named function (or class) is taken from it, arguments are base64 cloudpickle, coroutine functions
are awaited, and class instances are kept between requests when `create_new_instance` is false
and the request names an `instance_id` already made. Here the code is compiled under the
request's `source_name`, so a traceback can point at the user's own lines.

The child has already been told the request is well formed (the worker validated it), so this
module reads it as a plain dict and answers with a plain dict in FunctionResponse's shape; it
does not import pydantic, which keeps the child quick to start.
"""

from __future__ import annotations

import inspect
import sys
import uuid
from datetime import datetime, timezone
from types import CodeType
from typing import TYPE_CHECKING, Any

from worker.codec import decode
from worker.results import encode_result
from worker.tracebacks import register_source, user_traceback

if TYPE_CHECKING:
    from worker.protocol import Failure

DEFAULT_SOURCE_NAME = "<tetra>"

# Instances made by class requests, with the published worker's metadata, kept for the life of
# the child (which is the life of the worker unless a crash, timeout or cancel replaces it).
INSTANCES: dict[str, Any] = {}
METADATA: dict[str, dict[str, Any]] = {}
# Compiled request code, by its text (see `_compile`); cleared when it holds this many.
_COMPILED: dict[str, CodeType] = {}
COMPILED_KEPT = 16


class RequestError(Exception):
    """The request itself is unusable (a name missing from its code, an argument that will not
    load); reported without a traceback, since none of it is the user's code."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _load(code: str | None, name: str | None, source_name: str) -> Any:
    """Execute `code` in a fresh namespace and take `name` from it."""
    if not code or not name:
        raise RequestError("the request needs both the code and the name to call in it")
    namespace: dict[str, Any] = {"__name__": "__tetra__"}
    exec(_compile(code, register_source(code, source_name)), namespace)
    if name not in namespace:
        raise RequestError(f"{name!r} is not defined by the request's code")
    return namespace[name]


def _compile(code: str, filename: str) -> CodeType:
    """`code` compiled under `filename`. Every cell sends the same code (the runtime's
    bootstrap), whose compiling would cost time on every request: code seen before is compiled
    once and its code objects are renamed (tracebacks name each request's own source)."""
    compiled = _COMPILED.get(code)
    if compiled is None:
        compiled = compile(code, filename, "exec")
        if len(_COMPILED) >= COMPILED_KEPT:
            _COMPILED.clear()
        _COMPILED[code] = compiled
    return _renamed(compiled, filename)


def _renamed(code: CodeType, filename: str) -> CodeType:
    """`code`, and the code objects nested in it, under `filename`."""
    if code.co_filename == filename:
        return code
    consts = tuple(_renamed(c, filename) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def _decode_all(args: list[str] | None, kwargs: dict[str, str] | None) -> tuple[list, dict]:
    try:
        return [decode(a) for a in args or []], {k: decode(v) for k, v in (kwargs or {}).items()}
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise RequestError(f"an argument could not be loaded: {reason}") from None


def _instance(request: dict[str, Any], source_name: str) -> tuple[Any, str]:
    """The kept instance the request names, or a new one (which is then kept)."""
    instance_id = request.get("instance_id")
    if not request.get("create_new_instance", True) and instance_id:
        if instance_id in INSTANCES:
            return INSTANCES[instance_id], instance_id
        print(
            f"tetra: instance {instance_id!r} is not on this worker (it was restarted or the"
            " executor was replaced after a crash, timeout or cancel); creating a new one",
            file=sys.stderr,
        )
    class_name = request.get("class_name") or ""
    cls = _load(request.get("class_code"), class_name, source_name)
    args, kwargs = _decode_all(request.get("constructor_args"), request.get("constructor_kwargs"))
    instance = cls(*args, **kwargs)
    instance_id = instance_id or f"{class_name}_{uuid.uuid4().hex[:8]}"
    INSTANCES[instance_id] = instance
    METADATA[instance_id] = {
        "class_name": class_name,
        "created_at": _now(),
        "method_calls": 0,
        "last_used": _now(),
    }
    return instance, instance_id


def _await_if_needed(value: Any) -> Any:
    """Coroutine functions are awaited, as the published worker does (asyncio loaded only then)."""
    if inspect.iscoroutine(value):
        import asyncio

        return asyncio.run(value)
    return value


def _call(request: dict[str, Any]) -> dict[str, Any]:
    """Run the request; the response fields for a value it returned."""
    source_name = request.get("source_name") or DEFAULT_SOURCE_NAME
    if request.get("execution_type", "function") == "function":
        function = _load(request.get("function_code"), request.get("function_name"), source_name)
        args, kwargs = _decode_all(request.get("args"), request.get("kwargs"))
        return {"value": _await_if_needed(function(*args, **kwargs))}
    instance, instance_id = _instance(request, source_name)
    method_name = request.get("method_name") or "__call__"
    if not hasattr(instance, method_name):
        raise RequestError(f"{type(instance).__name__!r} has no method {method_name!r}")
    args, kwargs = _decode_all(request.get("args"), request.get("kwargs"))
    value = _await_if_needed(getattr(instance, method_name)(*args, **kwargs))
    METADATA[instance_id]["method_calls"] += 1
    METADATA[instance_id]["last_used"] = _now()
    return {"value": value, "instance_id": instance_id, "instance_info": METADATA[instance_id]}


def _failure(error: str, error_type: str, failure: Failure, **extra: Any) -> dict[str, Any]:
    return {"success": False, "error": error, "error_type": error_type, "failure": failure, **extra}


def run(request: dict[str, Any]) -> dict[str, Any]:
    """One request's FunctionResponse fields; never raises."""
    try:
        outcome = _call(request)
    except RequestError as exc:
        return _failure(str(exc), "RequestError", "invalid")
    except BaseException as exc:  # SystemExit and KeyboardInterrupt end the request, not the child
        return _failure(user_traceback(exc), type(exc).__name__, "exception")
    value = outcome.pop("value")
    try:
        result, unpicklable = encode_result(value)
    except TypeError as exc:
        return _failure(str(exc), "PicklingError", "exception", **outcome)
    return {"success": True, "result": result, "unpicklable": unpicklable, **outcome}
