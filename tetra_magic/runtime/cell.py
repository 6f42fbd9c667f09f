"""One cell on the worker, start to end: the notebook's values in, the cell run as `__main__`,
what it bound out. The bootstrap (the request's function code) calls `run_cell`.

Values travel as pickles inside the arguments and the result, one blob per name (pickling.py).
What the cell displays goes out with its prints, through the display machinery (display.py).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import gc
import inspect
import linecache
import logging
import platform
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, cast

from . import (
    at_home,
    display,
    display_options,
    exceptions,
    files,
    local_modules,
    sessions,
    shared_packages,
)
from .cell_env import for_this_cell
from .contract import Payload, SessionPart, Spec
from .live_output import LiveOutput
from .outputs import pack_outputs
from .pickling import MainNames, VersionMismatch, digest
from .shell import Shell


def run_cell(
    spec: Spec,
    blobs: dict[str, bytes],
    run: Callable[[Spec, dict[str, bytes]], Payload] | None = None,
) -> Payload:
    """Run the cell described by `spec` with the notebook values in `blobs`; return the blobs
    of what it bound or changed in place, the names it deleted and its last expression's value.
    What it displays goes out with its prints, through the display runtime. On the published
    worker, also the cell's output, which it sent live as progress updates, and an exception
    the cell raised, as "raised": that worker's own report of a failure puts its log records in
    front of the cell's output (stderr and logging merged into stdout) and its own frames on
    the traceback, so the cell's failure comes home in the result, as the cell showed it.

    Its --env variables, the stand-ins for stdin, and the notebook's logging and warning setup
    (at_home.py) last for this cell only, however it ends: the same process runs later cells
    (other kernels' too, on the published worker). `run` runs what the spec asks for in
    between (a --map shard's items: batch.py), the one cell by default."""
    run = run or _run_cell
    _collect_a_failed_cells_frames()
    restore = for_this_cell(spec.get("env") or {})
    restore_home = at_home.for_this_cell(spec.get("home"))
    # the notebook's own modules, importable while the cell runs (local_modules.py)
    restore_modules = local_modules.for_this_cell(spec["local_modules"])
    try:
        live = LiveOutput.on_published_worker(spec.get("timeout"))
        if live is None:
            try:
                return run(spec, blobs)
            except BaseException:
                _FAILED["cell"] = True
                raise
        with live:
            try:
                out = run(spec, blobs)
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                # sys.exit() too: raised on, it would end that worker's process (and the job)
                _FAILED["cell"] = True
                out = {"raised": exceptions.raised(exc)}
            # its packages are every notebook's there: one the cell did not declare is named
            roots = [names[0].partition(".")[0] for names in spec["modules"].values()]
            for line in shared_packages.notes(spec["source"], roots, spec.get("declared") or []):
                print(line, file=sys.stderr)
        out["output"] = live.chunks
        return out
    finally:
        restore_modules()
        restore_home()
        restore()


_FAILED = {"cell": False}


def _collect_a_failed_cells_frames() -> None:
    """A failed cell's frames stay in a reference cycle with its exception until the garbage
    collector runs, during some later cell; a coroutine among them (`asyncio.run(main())`,
    refused in the cell's running loop) then warns "never awaited" there, pointing into this
    runtime. At home the kernel keeps the last error's frames, and no such warning shows: so
    they are collected before the next cell, quietly."""
    if not _FAILED["cell"]:
        return
    _FAILED["cell"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gc.collect()


def _run_cell(spec: Spec, blobs: dict[str, bytes]) -> Payload:
    register_sources(spec.get("sources") or {})
    info: SessionPart = spec.get("session") or {}
    session = None
    if info:
        if info.get("end"):
            return {"session": sessions.end(info["key"])}
        opened = sessions.open_session(info)
        if opened[0] is None:
            return {"session": opened[1]}  # lost: nothing runs
        session, warm = opened
    # --files: the notebook's data files, in the cell's working directory before it runs
    files.write_sent(spec["files"], spec["file_contents"])
    files.delete_gone(spec.get("files_gone") or {})
    display.begin((spec.get("home") or {}).get("notebook", False))
    # The cell runs as `__main__`, as a notebook cell does at home: pickle, copy and
    # multiprocessing find the cell's functions and classes by name in sys.modules["__main__"].
    # A session's cells share their own `__main__`, which lives on between them.
    main = session.main if session is not None else types.ModuleType("__main__")
    namespace = main.__dict__
    namespace.update({"__builtins__": builtins, "get_ipython": Shell})
    namespace["display"] = display.display_function()
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        names = MainNames(namespace, spec.get("definitions"), blobs, spec["modules"])
        if session is not None:
            names.kept = session.kept
        if session is not None and info.get("pull") is not None:
            display.end()
            sessions.refer_to(session, names, {})
            return sessions.pull(session, names, info["pull"])
        held = {id(value) for value in namespace.values()} if session is not None else set()
        inputs = load_inputs(names, spec)
        cell_definitions = spec["cell_definitions"]
        dump = None
        if session is None:
            names.refer_to(cell_definitions)
        else:
            # What the session held already came as references to its own objects: only the
            # notebook's copies of them are checked for changes in place (a model is not).
            inputs = {name: value for name, value in inputs.items() if id(value) not in held}
            sessions.refer_to(session, names, cell_definitions)
            inputs.update(sessions.home_copies(names, info))
            dump = sessions.dumper(session, names, info)
        digests = {name: digest(names, value) for name, value in inputs.items()}
        before = dict(namespace)
        options = display_options.before()
        try:
            last = run_source(spec, names)
        except BaseException:
            if session is not None:  # as in the notebook: a failed cell binds nothing
                namespace.clear()
                namespace.update(before)
            raise
        finally:
            display.end()
        names.refresh()
        out = pack_outputs(names, spec, last, inputs, digests, dump)
        out["definitions"] = names.sent
        if shown := display_options.changed(options):  # pd.set_option: the kernel's too
            out["display_options"] = shown
        if spec["get"]:  # --get: the files the notebook asked for, once the cell succeeded
            out["got"], out["got_missing"] = files.collect(spec["get"])
        if session is not None:
            session.cells += 1
            session.at_home.update({name: namespace.get(name) for name in names.sent})
            out["session"] = sessions.summary(session, warm)
            out["described"] = {name: session.described.get(name) for name in out["values"]}
        return out
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def run_source(spec: Spec, names: MainNames) -> Any:
    """Run the cell's code; its last expression's value (None without one). An exception the
    cell raises is packed for the notebook, which raises it as the user's own exception: the
    pack rides as a last note on the exception, since every worker (the published one too)
    sends the exception's traceback text home, notes included."""
    filename, source, namespace = spec["filename"], spec["source"], names.namespace
    register_sources({filename: source})
    try:
        return _execute(*_compiled(filename, source, spec["has_last_expr"]), namespace)
    except Exception as exc:
        names.refresh()
        exceptions.add_note(names, exc)
        raise


@functools.lru_cache(maxsize=4)
def _compiled(
    filename: str, source: str, has_last_expr: bool
) -> tuple[types.CodeType, types.CodeType | None]:
    """The cell's statements, and its last expression apart where it has one (the kernel's
    analysis found it so); compiled once for the items of a --map shard (runtime/batch.py)."""
    tree = ast.parse(source, filename)
    last = None
    if has_last_expr:
        expr = cast(ast.Expr, tree.body.pop())
        last = _compile(ast.Expression(expr.value), filename)
    return _compile(tree, filename), last


def _compile(tree: ast.Module | ast.Expression, filename: str) -> types.CodeType:
    mode = "eval" if isinstance(tree, ast.Expression) else "exec"
    return compile(tree, filename, mode, flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _execute(body: types.CodeType, last: types.CodeType | None, namespace: dict[str, Any]) -> Any:
    """Run the cell's statements, then evaluate its last expression, in `namespace`; the
    expression's value. The whole cell runs in one running event loop, as every cell runs in
    the kernel's at home: `asyncio.create_task` and `get_running_loop()` work with or without a
    top-level `await`, a task the statements start is the one the last line awaits, and
    `asyncio.run()` is refused as there."""
    import asyncio  # workers have it loaded already: both run their own loops

    async def cell() -> Any:
        value = None
        for code in [body] if last is None else [body, last]:
            value = eval(code, namespace)
            if code.co_flags & inspect.CO_COROUTINE:
                value = await value
        return value

    return _in_own_loop(asyncio, cell())


def _in_own_loop(asyncio: types.ModuleType, cell: Any) -> Any:
    """Run the coroutine `cell` in a loop of its own, which ends with it. A worker whose own
    loop runs in this thread (the published one calls the cell from its asyncio handler) keeps
    it, but the cell does not see it: its tasks go into its own loop, not the worker's. Tasks
    the cell started and left running are cancelled at its end, with a note: at home they would
    go on in the kernel's loop, but no later cell can await them here, and waiting for them
    could hold the cell forever."""
    outer = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    loop = _shard_loop.get("loop") or _quietly_new_loop(asyncio)
    main = loop.create_task(cell)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_left_running(asyncio, loop, main)
            if loop is not _shard_loop.get("loop"):
                _close(loop)
        finally:
            asyncio._set_running_loop(outer)


# The loop the items of a --map shard run in, one after another (`one_loop`).
_shard_loop: dict[str, Any] = {}


@contextlib.contextmanager
def one_loop() -> Iterator[None]:
    """Meanwhile, cells run in one loop, made now and closed at the end, rather than in one
    each: the items of a --map shard (runtime/batch.py), where a loop per item would cost more
    than a tiny item. Each item still ends with its tasks cancelled, as a cell does."""
    import asyncio

    _shard_loop["loop"] = _quietly_new_loop(asyncio)
    try:
        yield
    finally:
        _close(_shard_loop.pop("loop"))


def _close(loop: Any) -> None:
    """Close a cell's (or a shard's) loop, which runs once more to end its async generators:
    out of the worker's own loop, where one runs in this thread (the published worker's)."""
    import asyncio

    outer = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
        asyncio._set_running_loop(outer)


def _quietly_new_loop(asyncio: types.ModuleType) -> Any:
    """A new event loop, without asyncio's "Using selector" DEBUG record: the kernel made its
    loop before the notebook set up logging, so at home no cell logs that."""
    logger = logging.getLogger("asyncio")
    disabled, logger.disabled = logger.disabled, True
    try:
        return asyncio.new_event_loop()
    finally:
        logger.disabled = disabled


def _cancel_left_running(asyncio: types.ModuleType, loop: Any, main: Any) -> None:
    """Cancel what still runs in the cell's loop (the cell itself too, where an interrupt
    stopped the loop under it), and say which of the cell's tasks that cut short."""
    left = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not left:
        return
    for task in left:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    started = sorted(_task_name(task) for task in left if task is not main)
    if started:
        print(
            f"tetra: {len(started)} asyncio task{'s' if len(started) > 1 else ''} still running"
            f" when the cell ended, cancelled ({', '.join(started)}): a remote cell's event loop"
            " ends with the cell (at home the kernel's loop runs on); await them in the cell",
            file=sys.stderr,
        )


def _task_name(task: Any) -> str:
    coro = task.get_coro()
    return f"{getattr(coro, '__qualname__', task.get_name())}()"


def register_sources(sources: dict[str, str]) -> None:
    """Make notebook cells readable by linecache, so tracebacks and `inspect.getsource` show
    the lines of functions defined in them."""
    for name, text in sources.items():
        linecache.cache[name] = (len(text), None, text.splitlines(True), name)


def load_inputs(names: MainNames, spec: Spec) -> dict[str, Any]:
    """Every value the kernel sent, bound in the namespace; {name: value} of the data among
    them (not modules, not definitions), whose changes in place the notebook must get back."""
    inputs = {}
    for name in [*spec["modules"], *names.definitions, *names.blobs]:
        try:
            names.ensure(name)
        except VersionMismatch as exc:
            message = f"notebook variable {name!r} was not loaded on the worker: {exc}"
            raise RuntimeError(message) from None
        except Exception as exc:
            if isinstance(exc, ModuleNotFoundError) and name in spec["modules"]:
                raise  # the module the variable is, missing here: as the cell's own import
            hint = ""
            here = ".".join(platform.python_version_tuple()[:2])
            if spec["python"] != here:
                notebook, worker = spec["python"], platform.python_version()
                hint = f" (the notebook runs Python {notebook}, this worker {worker})"
            raise RuntimeError(
                f"notebook variable {name!r} could not be loaded on the worker:"
                f" {type(exc).__name__}: {exc}{hint}"
            ) from None
        if name in names.blobs and name not in names.definitions and name in names.namespace:
            inputs[name] = names.namespace[name]
    for name, first in (spec.get("aliases") or {}).items():
        if first in inputs:  # `b = a` in the notebook: one object here too
            names.namespace[name] = inputs[name] = inputs[first]
    return inputs
