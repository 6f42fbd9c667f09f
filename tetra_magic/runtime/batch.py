"""A --map shard on the worker: the cell run once per item of a batch, in one request.

The notebook sends a shard's inputs (the values the cell reads) once, with its items
(spec["batch"]), so a large shared input travels once per shard, not once per item. They are
loaded once per shard, into one `__main__`: the items of a shard share the loaded objects, as
the iterations of a loop at home do (an input one item changes in place is changed for the
items after it in the shard). What a cell binds is its item's own: before each item the
namespace is put back as the inputs left it, then the item bound to its name, so a name an
item leaves unbound is not the previous item's value.

What the cell's process needs once (the runtime, the notebook's logging and warning setup,
--env, its --files, its modules) is set up once for the shard (cell.run_cell); what a cell
relies on per run is per item: its own event loop, figures shown and closed at its end,
widgets, display limits, its last value, --get's files. Each item comes home on its own:
its payload, or {"raised": ...} for an item that raised, so one failing item fails no other.
Before each item's output (in a shard of several) a framed message names the item's index
among all of the map's (contract.ITEM_MESSAGE), so home tags its lines with it (`_marked`).
"""

from __future__ import annotations

import builtins
import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from . import display, display_options, exceptions, files, live_output
from .cell import load_inputs, one_loop, register_sources, run_cell, run_source
from .contract import FRAME_END, FRAME_START, ITEM_MESSAGE, Payload, Spec
from .outputs import pack_outputs
from .pickling import MainNames, digest
from .shell import Shell


def run_batch(spec: Spec, blobs: dict[str, bytes]) -> Payload:
    """Run the cell once per item of spec["batch"], with the notebook values in `blobs`
    loaded once; {"items": [each item's payload]} (cell.run_cell sets the cell up around it,
    as for one cell)."""
    return run_cell(spec, blobs, _run_items)


def _run_items(spec: Spec, blobs: dict[str, bytes]) -> Payload:
    register_sources(spec.get("sources") or {})
    files.write_sent(spec["files"], spec["file_contents"])
    files.delete_gone(spec.get("files_gone") or {})
    notebook = (spec.get("home") or {}).get("notebook", False)
    main = types.ModuleType("__main__")  # as a cell's: pickle finds its definitions there
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        display.begin(notebook)  # IPython's display names (or the stand-in) before loading
        try:
            names, inputs, digests = _load_once(spec, blobs, main.__dict__)
        except BaseException:
            display.end()
            raise
        loaded = dict(main.__dict__)
        batch = spec["batch"]
        several = len(batch["indices"]) > 1
        out: list[Payload] = []
        with one_loop():
            for index, blob in zip(batch["indices"], batch["items"], strict=True):
                if out:
                    display.begin(notebook, again=True)
                main.__dict__.clear()
                main.__dict__.update(loaded)
                with _marked(index) if several else contextlib.nullcontext():
                    out.append(_run_item(spec, names, (index, blob), inputs, digests))
        return {"items": out}
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _load_once(
    spec: Spec, blobs: dict[str, bytes], namespace: dict[str, Any]
) -> tuple[MainNames, dict[str, Any], dict[str, bytes | None]]:
    """The shard's inputs loaded into `namespace`, as for one cell (cell.load_inputs); the
    names that load them, the inputs, and their fingerprints as they arrived (an input an
    item changes in place goes home with that item's values)."""
    namespace.update({"__builtins__": builtins, "get_ipython": Shell})
    namespace["display"] = display.display_function()
    names = MainNames(namespace, spec.get("definitions"), blobs, spec["modules"])
    inputs = load_inputs(names, spec)
    names.refer_to(spec["cell_definitions"])
    return names, inputs, {name: digest(names, value) for name, value in inputs.items()}


def _run_item(
    spec: Spec,
    names: MainNames,
    item: tuple[int, bytes],
    inputs: dict[str, Any],
    digests: dict[str, bytes | None],
) -> Payload:
    """One item's run, the display machinery begun for it: its payload, as one cell's, or
    {"raised": ...} for the exception it raised (or its item could not be loaded with)."""
    index, blob = item
    name = spec["batch"]["name"]
    names.refresh()
    try:
        try:
            names.namespace[name] = names.load(f"{name} (item {index})", blob)
            options = display_options.before()
            last = run_source(spec, names)
        finally:
            display.end()
    except (Exception, SystemExit) as exc:  # sys.exit() too: it ends the item, not the shard
        return {"raised": exceptions.raised(exc)}
    names.refresh()
    out = pack_outputs(names, spec, last, inputs, digests)
    out["definitions"] = names.sent
    if shown := display_options.changed(options):
        out["display_options"] = shown
    if spec["get"]:
        out["got"], out["got_missing"] = files.collect(spec["get"])
    return out


@contextlib.contextmanager
def _marked(index: int) -> Iterator[None]:
    """While the item at `index` runs: its mark (contract.ITEM_MESSAGE, framed as a display
    message on stdout) goes out before the first thing it writes to sys.stdout or sys.stderr,
    so an item that prints nothing costs no mark (on our worker each is a stream post of its
    own). Where the output is recorded here (the published worker), marks are cheap and the
    streams are the recorder's: each item is marked as it starts. Output written straight to
    the process's file descriptors (a subprocess), before the item wrote anything itself,
    goes under the previous item's tag."""
    saved = sys.stdout, sys.stderr
    if live_output.recording():
        _mark(index, saved)
        yield
        return
    pending = [lambda: _mark(index, saved)]
    sys.stdout, sys.stderr = _MarksFirst(saved[0], pending), _MarksFirst(saved[1], pending)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _mark(index: int, streams: tuple[TextIO, TextIO]) -> None:
    """The item at `index` starts here: after what the one before wrote to either stream."""
    stdout, stderr = streams
    stderr.flush()
    stdout.flush()
    stdout.write(f"{FRAME_START}{ITEM_MESSAGE}{index}}}{FRAME_END}")
    stdout.flush()


class _MarksFirst:
    """sys.stdout or sys.stderr while an item runs: the first write to either writes the
    item's mark first (`pending` holds it until then)."""

    def __init__(self, stream: TextIO, pending: list[Callable[[], None]]) -> None:
        self.stream, self.pending = stream, pending

    def write(self, text: str) -> int:
        if text and self.pending:
            self.pending.pop()()
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
