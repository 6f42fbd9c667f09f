"""What a cell sends home once it has run: the blobs of what it bound, of the inputs it changed in
place, and of its last expression's value; the modules it bound, by name; the names it
deleted; and, for what cannot travel, a reason, where the user would miss it.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from . import publishing
from .contract import Description, Payload, Portable, Spec
from .pickling import MainNames, blob_digest, safe

Dump = Callable[[str, Any], "bytes | Description"]
# What shutdown() sets on a ThreadPoolExecutor, and on a ProcessPoolExecutor
_SHUT_DOWN = ("_shutdown", "_shutdown_thread")


def pack_outputs(
    names: MainNames,
    spec: Spec,
    last: Any,
    inputs: dict[str, Any],
    digests: dict[str, bytes | None],
    dump: Dump | None = None,
) -> Payload:
    """The blobs of what the cell bound, and of the inputs it changed in place: those are
    pickled again and compared with their pickle as they arrived, so an unchanged input does not
    travel back. In a session, `dump(name, value)` gives a value's blob, or the description
    of a value that stays on the worker (a remote reference, in `refs`).

    Names bound to one mutable object (`b = a`, `c = arr` of an input) come home as one object:
    it travels once, under the first name, and `aliases` maps each other name to that one (an
    input's first name is the notebook's own object). In a session the alias's blob travels
    too: `dump` notes what came home by name, and so does the notebook's session."""
    values: dict[str, bytes] = {}
    modules: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    deleted: list[str] = []
    changed: list[str] = []
    refs: dict[str, Description] = {}
    aliases: dict[str, str] = {}
    namespace = names.namespace
    first = {  # id of a mutable object -> the name it comes home under
        id(value): name
        for name, value in reversed(inputs.items())
        if namespace.get(name, values) is value and _one_object(value)
    }

    def send(name: str, value: Any, blob: bytes | None = None) -> None:
        holder = first.get(id(value), name)
        if holder != name and not dump:
            aliases[name] = holder
            return
        try:
            sent = dump(name, value) if dump else blob or names.dumps(value)
        except Exception as exc:
            errors[name] = f"{type(value).__name__} cannot be pickled: {exc}"
            return
        if isinstance(sent, dict):
            refs[name] = sent
            return
        values[name] = sent
        if holder != name:
            aliases[name] = holder
        elif _one_object(value):
            first.setdefault(id(value), name)

    for name in spec["binds"]:
        if name not in namespace:
            if name in spec["deletes"]:
                deleted.append(name)
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            modules[name] = [value.__name__, *spec["submodules"].get(name, [])]
            continue
        if inputs.get(name, values) is value:
            continue  # `arr *= 2`: the input itself, changed in place or not (below)
        send(name, value)
    for name, value in inputs.items():
        if name in values or name in errors or name in refs or name in aliases:
            continue
        if name not in namespace:
            continue
        if namespace[name] is not value:  # rebound by a function's `global name`
            send(name, namespace[name])
            continue
        try:
            blob = names.dumps(value)
        except Exception:
            continue
        if blob_digest(blob) != digests[name]:
            send(name, value, blob)
            changed.append(name)
    has_last = spec["has_last_expr"] and last is not None
    portable_dump = (
        None if dump is None else functools.partial(dump, "")
    )  # the last value: never kept
    return {
        "values": values,
        "modules": modules,
        "errors": _worth_a_note(errors, namespace, spec["with_targets"]),
        "deleted": deleted,
        "changed": changed,
        "aliases": aliases,
        "refs": refs,
        "imported": spec["imported"],
        "drawn": [name for name in values if _drawn(namespace.get(name))],
        "last": _last_value(names, last, portable_dump) if has_last else None,
    }


def _last_value(names: MainNames, last: Any, dump: Callable[[Any], Any] | None) -> Portable:
    """The last value as it travels home, where the notebook shows it as its Out. A value that
    displays itself (`_ipython_display_`: a plotly figure) is shown at home, not here: what
    it would show here is kept back, and becomes what the notebook shows, as a display output
    as the value itself would, where the value cannot load."""
    with publishing.held_back() as shown:
        portable = names.portable(last, dump)
    if not portable["mime"] and shown:
        portable["mime"], portable["metadata"] = shown[0]["data"], shown[0]["metadata"]
        portable["displayed"] = True
    return portable


def _drawn(value: Any) -> bool:
    """Whether `value` is what a cell draws with: a matplotlib figure, axes or other object, or
    an array, list or tuple of only such (`fig, axes = plt.subplots(1, 2)`). It came home as
    images; where the kernel cannot load it, nobody misses the object itself."""
    cls = type(value)
    if cls.__module__ == "numpy" and cls.__name__ == "ndarray" and value.dtype == object:
        value = list(value.flat)
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_drawn(item) for item in value)
    return cls.__module__.partition(".")[0] == "matplotlib"


def _one_object(value: Any) -> bool:
    """Whether names bound to `value` must stay bound to one object at home: not for values
    that cannot change (a number, a string, a tuple), nor for functions and classes, which come
    home by name."""
    immutable = (int, float, complex, str, bytes, tuple, frozenset, range, type(None))
    return not isinstance(value, (*immutable, type, types.FunctionType))


def _worth_a_note(
    errors: dict[str, str], namespace: dict[str, Any], with_bound: list[str]
) -> dict[str, str]:
    """The values that could not travel which the user would miss. Left out without a note:
    what is spent or only means something in the worker's process (see `_spent`), and names a
    `with` statement bound, whose block has already closed them (files, pools, sessions)."""
    return {
        name: reason
        for name, reason in errors.items()
        if name not in with_bound and not _spent(namespace[name])
    }


def _spent(value: Any) -> bool:
    """Whether a value is over or bound to this process, so nobody misses it at home: a closed
    file, socket, sqlite3 connection or zip file, a finished thread, process or subprocess, an
    executor shut down, a finished Future, a closed tqdm bar, an exhausted generator, a lock
    or other thread synchronisation, a logging handler or logger, an event loop or a finished
    asyncio task, a drawing context on an image (PIL's ImageDraw: the image itself travels),
    or a non-empty list, tuple, set or dict of only such things."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return bool(value) and all(_spent(item) for item in value)
    if inspect.isgenerator(value):
        return inspect.getgeneratorstate(value) == inspect.GEN_CLOSED
    socket, process = sys.modules.get("socket"), sys.modules.get("multiprocessing.process")
    if socket is not None and isinstance(value, socket.socket):
        return bool(value.fileno() == -1)
    runs = (threading.Thread, process.BaseProcess) if process else threading.Thread
    if isinstance(value, runs):
        return not value.is_alive()
    sync = (threading.Condition, threading.Semaphore, threading.Event, threading.Barrier)
    locks = (type(threading.Lock()), type(threading.RLock()))
    if isinstance(value, (*sync, *locks)) or _of_this_process(value):
        return True
    return safe(getattr, value, "closed") is True or _finished(value)


def _finished(value: Any) -> bool:
    """A subprocess that has exited, an executor shut down, a finished concurrent.futures
    Future, a closed sqlite3 connection or zip file, a closed or disabled tqdm bar (closing
    one disables it). Their modules are looked up, not imported, as in `_of_this_process`."""
    subprocess, futures = sys.modules.get("subprocess"), sys.modules.get("concurrent.futures")
    sqlite3, zipfile = sys.modules.get("sqlite3"), sys.modules.get("zipfile")
    if subprocess is not None and isinstance(value, subprocess.Popen):
        return safe(value.poll) is not None
    if futures is not None and isinstance(value, futures.Future):
        return bool(value.done())
    if futures is not None and isinstance(value, futures.Executor):
        return any(getattr(value, flag, False) is True for flag in _SHUT_DOWN)
    if sqlite3 is not None and isinstance(value, sqlite3.Connection):
        return safe(getattr, value, "total_changes") is None  # a closed one refuses it
    if zipfile is not None and isinstance(value, zipfile.ZipFile):
        return value.fp is None
    is_bar = any(c.__module__ == "tqdm.std" and c.__name__ == "tqdm" for c in type(value).__mro__)
    return is_bar and getattr(value, "disable", False) is True


def _of_this_process(value: Any) -> bool:
    """A logging handler or logger, an event loop, a finished asyncio task or future, or a PIL
    ImageDraw (the modules are looked up, not imported: a value of one means it is loaded)."""
    logging, asyncio = sys.modules.get("logging"), sys.modules.get("asyncio")
    if logging is not None and isinstance(value, (logging.Handler, logging.Logger)):
        return True
    if asyncio is not None and isinstance(value, asyncio.AbstractEventLoop):
        return True
    if asyncio is not None and isinstance(value, asyncio.Future):
        return value.done()
    return any(
        cls.__module__ == "PIL.ImageDraw" and cls.__name__ == "ImageDraw"
        for cls in type(value).__mro__
    )
