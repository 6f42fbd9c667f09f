"""The worker's side of sessions: namespaces that outlive a cell, in the process that runs cells.

A session cell runs in the session's own `__main__` instead of a fresh one (cell.py). The
process is our worker's executor child (kept while it holds a session) or the published worker's
own long-lived process: either way the registry below lives exactly as long as the process (a
newer runtime takes it over: KEPT), so a session is lost with it (idle timeout, crash, restart,
a --timeout kill) and `open_session` says so before anything runs, rather than letting a cell
continue with half the state it expects.

What a session cell binds stays here. What goes home is decided per name by `send_home`: a
value small enough and free of GPU data travels as a value; anything else (a model, a 50 MB
array, an open file) stays, and the notebook gets a description of it (type, size, device), a
remote reference it can hand back to later session cells at no transfer cost.
"""

from __future__ import annotations

import gc
import io
import os
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from .contract import Definition, Description, Payload, SessionPart
from .pickling import MainNames

# The names of this module's state that a newer version of the runtime takes over (bootstrap).
KEPT = ("SESSIONS",)


class Session:
    """One session's namespace and what the notebook knows of it."""

    def __init__(self, key: str, session_id: str) -> None:
        self.key, self.id = key, session_id
        self.main = types.ModuleType("__main__")
        self.created = time.time()
        self.cells = 0
        self.definitions: dict[str, Definition] = {}  # the defs its cells made
        self.at_home: dict[str, Any] = {}  # name -> the definition the notebook already has
        self.described: dict[str, Description] = {}  # name -> as last measured
        # "<cell>.<name>" -> a value that stays here, for the notebook's remote reference to
        # it: the reference keeps meaning that object when the name is bound again
        self.kept: dict[str, Any] = {}

    def free(self) -> list[str]:
        """Drop everything the session holds, and give its memory back (GPU memory too)."""
        held = sorted(_data_names(self.main.__dict__))
        self.main.__dict__.clear()
        self.at_home.clear()
        self.kept.clear()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and _cuda_ready(torch):
            torch.cuda.empty_cache()
        return held


SESSIONS: dict[str, Session] = {}  # "<owner>:<name>" -> Session


def open_session(info: SessionPart) -> tuple[Session, bool] | tuple[None, dict[str, Any]]:
    """(session, warm) to run the cell in, or (None, why) when the notebook expects a session
    this process does not hold: it was lost with the process that held it."""
    key, session_id = info["key"], info["id"]
    found = SESSIONS.get(key)
    if info.get("new"):
        if found is not None:
            found.free()  # what a failed first cell or replay left: it starts again
        SESSIONS[key] = Session(key, session_id)
        return SESSIONS[key], False
    if found is None or found.id != session_id:
        return None, {"lost": True, "process_started": _process_started()}
    for ref in info.get("released", ()):  # the notebook no longer holds these references
        found.kept.pop(ref, None)
    return found, True


def _process_started() -> float | None:
    """When this process started (epoch seconds; None where /proc cannot tell): the session
    was lost before then."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rpartition(")")[2].split()[19])
        with open("/proc/stat") as stat:
            boot = next(int(line.split()[1]) for line in stat if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except Exception:
        return time.time() if not SESSIONS else None


def refer_to(session: Session, names: MainNames, cell_definitions: dict[str, Definition]) -> None:
    """Let the notebook's copies of the session's definitions be referred to by name (the
    notebook has them), and every definition the session's cells made travel as source."""
    session.definitions.update(cell_definitions)
    names.refer_to(session.definitions, home=session.at_home)


def home_copies(names: MainNames, info: SessionPart) -> dict[str, Any]:
    """{name: value} of the session values the notebook holds copies of (`info["homes"]`)
    among the names the cell reads: the cell may change them in place, and the notebook's copy
    must then follow, as an input's does."""
    namespace, homes = names.namespace, set(info.get("homes", ()))
    return {
        name: namespace[name]
        for name in info.get("reads", ())
        if name in homes and name in namespace
    }


def dumper(session: Session, names: MainNames, info: SessionPart) -> Callable[[str, Any], Any]:
    """The function that packs a bound value for home: its blob, or its description (a dict)
    when it stays here, kept for the reference the notebook gets. A value the notebook holds a
    copy of (`info["homes"]`: it came home, was pulled, or was sent from there) goes home
    whatever its size, unless it holds GPU data."""
    homes = set(info.get("homes", ()))
    kept_now: dict[int, tuple[Any, Description]] = {}  # one reference for one object, `b = a`

    def dump(name: str, value: Any) -> bytes | Description:
        if name and id(value) in kept_now and kept_now[id(value)][0] is value:
            session.described[name] = kept_now[id(value)][1]
            return kept_now[id(value)][1]
        limit = float("inf") if name in homes else info["value_limit"]
        blob, description = send_home(names, value, limit)
        if not name:  # the last expression's value: shown, never kept
            return blob if blob is not None else description
        session.described[name] = description
        if blob is not None:
            return blob
        description["ref"] = f"{info['cell']}.{name}"
        session.kept[description["ref"]] = value
        kept_now[id(value)] = (value, description)
        return description

    return dump


def send_home(names: MainNames, value: Any, limit: float) -> tuple[bytes | None, Description]:
    """(blob, description): the blob is None when the value stays in the session, because it
    holds GPU data, is over `limit` bytes pickled, or cannot be pickled at all (an open file, a
    lock). The description says what it is without fetching it. Pickling stops at `limit`: a
    model is never copied off its GPU, nor a large value pickled whole, only to be left here."""
    description: Description = {
        "type": _type_name(value),
        "size": _nbytes(value),
        "device": _device(value),
    }
    if description["device"] is not None or isinstance(value, io.IOBase):
        return None, description  # cloudpickle would send an open file's contents
    size = description["size"]
    if size is not None and size > limit:
        return None, description
    sink = _Capped(limit)
    try:
        header, devices = names.dump_body(value, sink, to_cpu=False)
    except _TooLarge:
        found, device = _scan(value)
        description["size"], description["device"] = found or size or int(limit), device
        description["over"] = found is None  # the size then is where pickling stopped
        return None, description
    except Exception as exc:
        description["reason"] = f"{type(exc).__name__}: {exc}"
        return None, description
    description["size"] = size or sink.size
    if devices:
        description["device"] = sorted(devices)[0]
        return None, description
    return header + b"".join(sink.parts), description


class _TooLarge(Exception):
    """Pickling went past the limit."""


class _Capped:
    """A file that keeps what is written, up to `limit` bytes."""

    def __init__(self, limit: float) -> None:
        self.limit, self.size = limit, 0
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes  # an array's data comes as a PickleBuffer, with no len()
        self.size += size
        if self.size > self.limit:
            raise _TooLarge()
        self.parts.append(bytes(data))
        return size


def _scan(value: Any, budget: int = 100_000) -> tuple[int | None, str | None]:
    """(bytes, device) of the arrays, tensors and models found inside `value` (its attributes
    and containers, up to `budget` objects); (None, None) if it holds none."""
    seen: set[int] = set()
    todo, total, device = [value], 0, None
    while todo and len(seen) < budget:
        item = todo.pop()
        if id(item) in seen or isinstance(item, (str, int, float, bool, type(None), type)):
            continue
        seen.add(id(item))
        size = _nbytes(item)
        if size is not None:
            total += size
            device = device or _device(item)
            continue
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo.extend(item)
        else:
            todo.extend(getattr(item, "__dict__", {}).values())
            todo.extend(_slot_values(item))
    return (total or None), device


def _slot_values(item: Any) -> list[Any]:
    """What an object keeps in `__slots__`, which its `__dict__` (if any) does not hold."""
    found = []
    for kind in type(item).__mro__:
        slots = kind.__dict__.get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__"):  # a private name, stored mangled
                name = f"_{kind.__name__.lstrip('_')}{name}"
            found.append(getattr(item, name, None))
    return found


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return (
        kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    )


def _nbytes(value: Any) -> int | None:
    """The size of a value's data where it says so cheaply (arrays, tensors, models, bytes);
    None where only pickling would tell."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(value, torch.Tensor):
            return int(value.nelement() * value.element_size())
        if isinstance(value, torch.nn.Module):
            tensors = [*value.parameters(), *value.buffers()]
            return sum(t.nelement() * t.element_size() for t in tensors)
    nbytes = getattr(type(value), "nbytes", None)
    if nbytes is not None and not callable(nbytes):
        try:
            return int(value.nbytes)
        except Exception:
            return None
    return None


def _device(value: Any) -> str | None:
    """The GPU a tensor or model lives on ("cuda:0"); None for everything else."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if isinstance(value, torch.Tensor):
        device = value.device
    elif isinstance(value, torch.nn.Module):
        device = next((t.device for t in [*value.parameters(), *value.buffers()]), None)
    else:
        return None
    return None if device is None or device.type == "cpu" else str(device)


def _cuda_ready(torch: Any) -> bool:
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_initialized())
    except Exception:
        return False


def _data_names(namespace: dict[str, Any]) -> list[str]:
    """The session's own values: not dunders, not the runtime's, not modules, functions or
    classes."""
    runtime = ("get_ipython", "display")
    code = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
    return [
        name
        for name, value in namespace.items()
        if not name.startswith("__") and name not in runtime and not isinstance(value, code)
    ]


def summary(session: Session, warm: bool) -> dict[str, Any]:
    """What the notebook shows of the session after a cell: whether it was warm, the names it
    holds with their sizes, the GPU memory in use."""
    namespace = session.main.__dict__
    held = {}
    for name in _data_names(namespace):
        value = namespace[name]
        described = session.described.get(name)
        if described is None or described.get("type") != _type_name(value):
            described = {
                "type": _type_name(value),
                "size": _nbytes(value),
                "device": _device(value),
            }
            if described["size"] is None:
                described["size"] = sys.getsizeof(value, None)  # type: ignore[arg-type]
        held[name] = {key: described.get(key) for key in ("type", "size", "device")}
    return {
        "warm": warm,
        "cells": session.cells,
        "created": session.created,
        "held": held,
        "gpu_memory": _gpu_memory(),
        "process_started": _process_started(),
    }


def _gpu_memory() -> dict[str, int]:
    """{device: bytes allocated} where torch has used CUDA in this process; {} otherwise."""
    torch = sys.modules.get("torch")
    if torch is None or not _cuda_ready(torch):
        return {}
    return {f"cuda:{i}": torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())}


def pull(session: Session, names: MainNames, wanted: list[str]) -> Payload:
    """The blobs of the session values the notebook asked for (by name, or by the reference
    ids of the values kept for its references), whatever their size (GPU tensors as CPU ones);
    a reason for each that cannot come."""
    values, errors = {}, {}
    for key in wanted:
        held = session.kept if key in session.kept else names.namespace
        if key not in held:
            errors[key] = "the session no longer holds it"
            continue
        try:
            values[key] = names.dumps(held[key])
        except Exception as exc:
            errors[key] = f"{type(held[key]).__name__} cannot be pickled: {exc}"
    return {"values": values, "errors": errors, "definitions": names.sent}


def end(key: str) -> dict[str, Any]:
    """Free the session `key`; the names it held (empty if it was not here)."""
    session = SESSIONS.pop(key, None)
    return {"ended": session is not None, "freed": session.free() if session else []}
