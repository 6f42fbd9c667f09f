"""Packing a cell and the notebook values it reads into a tetra FunctionRequest.

Each value is pickled on its own, so an unpicklable one is named before anything is sent.
Modules are shipped by name and imported again on the worker: pickling a module is impossible,
and re-importing is what the user means by `np`. The request's function code is the runtime's
bootstrap, and its spec (`make_spec`, the one place a spec is made) carries the runtime package
itself as source (tetra_magic/runtime/), so the request is one the published tetra worker would
run as well.

Functions and classes from earlier cells travel as the source of their `def`/`class` statement
(`runtime.pickling.MainNames`, `tetra_magic.cell.definitions`), with the names those read, and with
them the text of the cells they were defined in, so their frames in a remote traceback, and
`inspect.getsource` on the worker, show their lines.
"""

from __future__ import annotations

import dataclasses
import linecache
import platform
import re
import secrets
import sys
import types
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

from tetra_magic import runtime
from tetra_magic.cell import definitions, local_modules, unloaded
from tetra_magic.cell import files as data_files
from tetra_magic.cell.analysis import CellAnalysis
from tetra_magic.errors import Labeler
from tetra_magic.options import CellOptions
from tetra_magic.runtime import at_home
from tetra_magic.runtime.contract import (
    RUNTIME_SOURCE_PREFIX,
    Definition,
    LocalPackage,
    SessionPart,
    Spec,
)
from tetra_magic.runtime.picklers import global_names
from tetra_magic.runtime.pickling import MainNames
from tetra_magic.session import model as sessions
from worker.protocol import FunctionRequest, encode

# This kernel, to the worker: its cells share an executor process and a working directory there,
# apart from other kernels' (one id per process, so a restarted kernel starts clean too).
KERNEL_ID = secrets.token_hex(8)
# Names IPython keeps in the user namespace for itself; never the cell's inputs.
_IPYTHON_NAMES = re.compile(r"^(In|Out|get_ipython|exit|quit|_+|_i+|_i\d+|_\d+|_ih|_oh|_dh)$")


@dataclass(frozen=True)
class Packed:
    """A request ready to send, with what went into it (for --out and for errors, and for a
    session's replay: `spec` and `blobs` make the request again)."""

    request: FunctionRequest
    shipped: tuple[str, ...]
    modules: tuple[str, ...]
    size: int
    spec: Spec = field(repr=False)
    blobs: dict[str, bytes] = field(repr=False)


def inputs(analysis: CellAnalysis, user_ns: dict[str, Any], send: tuple[str, ...] = ()) -> dict:
    """The notebook values the cell reads (builtins the notebook shadowed included), and those
    named by --send; never IPython's own names, nor its stand-ins for builtins."""
    missing = [name for name in send if name not in user_ns]
    if missing:
        raise UsageError(f"--send: {', '.join(missing)} not defined in the notebook")
    names = sorted(analysis.reads | analysis.builtins_read | set(send))
    return {
        n: user_ns[n]
        for n in names
        if n in user_ns and not _IPYTHON_NAMES.match(n) and not _ipython_builtin(user_ns[n])
    }


# IPython's own versions of builtins in the user namespace: its `display`, which the worker
# provides, and the `open` wrapper that only refuses fds 0-2; the worker's builtins serve.
_IPYTHON_BUILTINS = (
    ("IPython.core.display_functions", "display"),
    ("IPython.core.interactiveshell", "_modified_open"),
)


def _ipython_builtin(value: Any) -> bool:
    return callable(value) and any(
        value is getattr(sys.modules.get(module), name, None) for module, name in _IPYTHON_BUILTINS
    )


def _aliases(
    blobs: dict[str, bytes], user_ns: dict[str, Any], definitions: dict[str, Any]
) -> dict[str, str]:
    """{name: first name} for notebook names that hold the very same mutable object (`b = a`),
    which the worker binds to one object again, so a change through either name is kept."""
    first: dict[int, str] = {}
    aliases = {}
    for name in sorted(blobs):
        value = user_ns[name]
        if name in definitions or isinstance(value, (int, float, complex, str, bytes, tuple)):
            continue
        holder = first.setdefault(id(value), name)
        if holder != name:
            aliases[name] = holder
    return aliases


def _pickle_needed(
    values: dict[str, Any],
    user_ns: dict[str, Any],
    names: MainNames,
    files: set[str],
    items: dict[str, Any] | None = None,
) -> tuple[dict[str, bytes], dict[str, Any], list[bytes]]:
    """The blobs of the values the cell reads and of the names their definitions and functions
    read in turn (a helper's helper, the constant a method uses), which the cell itself does
    not name; the modules among them, by name; and the blobs of a --map shard's `items`
    ({label: item}), whose definitions' names are followed the same way."""
    blobs: dict[str, bytes] = {}
    modules: dict[str, Any] = {}
    needed_by: dict[str, str] = {}
    reads: dict[str, list[str]] = {}
    todo = list(values)

    def follow(name: str) -> None:
        """Queue the names that what was just pickled (for `name`) reads in turn."""
        for top, (source, filename, _) in names.sent.items():
            if top not in reads:
                code = compile(source, filename, "exec")
                reads[top] = global_names(code)
        for used in [*names.bytecode, *(n for r in reads.values() for n in r)]:
            if used not in needed_by and _sendable(used, user_ns) and used not in values:
                needed_by[used] = name
                todo.append(used)

    item_blobs = []
    for label, item in (items or {}).items():
        item_blobs.append(_pickle(label, item, names, files, None))
        follow(label)
    while todo:
        name = todo.pop(0)
        if name in blobs or name in modules:
            continue
        value = user_ns[name]
        if isinstance(value, types.ModuleType):
            modules[name] = value
            continue
        blobs[name] = _pickle(name, value, names, files, needed_by.get(name))
        follow(name)
    return blobs, modules, item_blobs


def _sendable(name: str, user_ns: dict[str, Any]) -> bool:
    dunder = name.startswith("__") and name.endswith("__")  # `__name__` in a class body
    return (
        name in user_ns
        and not dunder
        and not _IPYTHON_NAMES.match(name)
        and not _ipython_builtin(user_ns[name])
    )


def _pickle(
    name: str, value: Any, names: MainNames, files: set[str], needed_by: str | None
) -> bytes:
    if (blob := unloaded.blob_of(value)) is not None:  # goes as it came from the worker
        return blob
    try:
        return names.dumps(value, files, to_cpu=False)
    except sessions.SessionError as exc:  # a reference to another session's value
        why = f" (read by {needed_by!r})" if needed_by else ""
        raise UsageError(f"variable {name!r}{why} cannot be sent to the worker: {exc}") from None
    except Exception as exc:
        why = f" (read by {needed_by!r})" if needed_by else ""
        raise UsageError(
            f"variable {name!r}{why} ({type(value).__module__}.{type(value).__qualname__}) cannot"
            f" be sent to the worker: {type(exc).__name__}: {exc}. Create it inside the"
            " %%tetra cell instead, or delete it if the cell does not need it."
        ) from None


def _modules(values: dict[str, Any], source: str) -> dict[str, list[str]]:
    """{alias: [module, submodules the cell names through it]}: `import xml` then
    `xml.dom.minidom` in the cell needs `xml.dom.minidom` imported on the worker too."""
    found = {}
    for alias, module in values.items():
        if not isinstance(module, types.ModuleType):
            continue
        prefix = module.__name__ + "."
        subs = [
            name
            for name in sorted(sys.modules)
            if name.startswith(prefix)
            and re.search(rf"\b{re.escape(alias)}\.{re.escape(name[len(prefix) :])}\b", source)
        ]
        found[alias] = [module.__name__, *subs]
    return found


def _sources(files: set[str], label: Labeler) -> dict[str, str]:
    """The text of the notebook cells among `files`, as the kernel's linecache holds it."""
    texts = {}
    for name in sorted(name for name in files if label(name) is not None):
        if lines := linecache.getlines(name):
            texts[name] = "".join(lines)
    return texts


def _cell_number(label: str | None) -> int | None:
    """N of "Cell In[N]"."""
    found = re.search(r"In\[(\d+)\]", label or "")
    return int(found[1]) if found else None


def _check_size(
    blobs: dict[str, bytes],
    size: int,
    limit: int,
    local: dict[str, LocalPackage],
    contents: dict[str, bytes] | None = None,
    items: list[bytes] | None = None,
) -> None:
    if size <= limit:
        return
    largest = sorted(blobs.items(), key=lambda item: -len(item[1]))[:5]
    parts, advice = [], []
    if items:  # a --map shard's (runtime/batch.py)
        items_size = sum(map(len, items))
        parts.append(f"its {len(items)} --map items: {_mb(items_size)}")
        if len(items) > 1 and 2 * items_size > size:  # the items are most of it
            advice.append("A smaller --batch sends fewer items per job.")
    if largest:
        parts.append("largest variables: " + ", ".join(f"{n} {_mb(len(b))}" for n, b in largest))
        advice.append(
            "Load large data inside the cell instead of sending it, or keep it on the worker"
            " between cells with --session NAME (a session cell sends a value once, and one"
            " that came back from the session not at all)."
        )
    if local:  # the notebook's own modules, sent as source (local_modules.py)
        sources = _mb(local_modules.size(local))
        parts.append(f"sources of the notebook's modules {', '.join(local)}: {sources}")
    if contents:  # --files (cell/files.py)
        parts.append(f"files sent with --files: {_mb(sum(map(len, contents.values())))}")
        advice.append(
            "Large files are better read on the worker from where they live (a URL, cloud"
            " storage, a RunPod network volume) than sent with every cell."
        )
    raise UsageError(
        f"the request is {_mb(size)}, over the endpoint's {_mb(limit)} limit"
        f" ({'; '.join(parts)}). {' '.join(advice)}".rstrip()
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def pack(
    analysis: CellAnalysis,
    user_ns: dict[str, Any],
    opts: CellOptions,
    *,
    filename: str,
    limit: int,
    label: Labeler = lambda name: None,
    session: sessions.Session | None = None,
    items: dict[int, Any] | None = None,
) -> Packed:
    """Build the FunctionRequest for one cell; UsageError for unpicklable or oversized inputs.
    In a `session`, what it holds already goes as references to its own objects. With `items`
    ({index among the map's: item}), the request of a --map shard: the cell runs once per
    item, bound to --map's name, the values it reads sent once for all of them
    (runtime/batch.py)."""
    values = inputs(analysis, user_ns, opts.send)
    cells = definitions.cells_newest_first(lambda name: _cell_number(label(name)))
    referable: Any = definitions.Finder(user_ns, cells)
    if session is not None:
        referable = session.referable(referable)
        user_ns = {**user_ns, **session.substitutes(values, user_ns)}
    names = MainNames(user_ns, referable=referable)
    files: set[str] = set()
    labels = {f"{opts.map_name} (item {i})": item for i, item in (items or {}).items()}
    with sessions.shipping(session):
        blobs, module_values, item_blobs = _pickle_needed(values, user_ns, names, files, labels)
    sent = "".join(source for source, _, _ in names.sent.values())
    modules = _modules(module_values, analysis.source + sent)
    files |= {filename for _, filename, _ in names.sent.values()}
    session_part = None
    if session is not None:
        reads = {*analysis.reads, *opts.send}
        session_part = session.spec(reads, opts.session_value_limit)
    spec = make_spec(
        analysis,
        filename,
        drop=opts.drop,
        modules=modules,
        sources=_sources(files, label),
        definitions=names.sent,
        env=dict(opts.env),
        timeout=opts.timeout,  # for workers that do not read the request's own field
        aliases=_aliases(blobs, user_ns, names.sent),
        session=session_part,
        local_packages=local_modules.needed(
            [analysis.source, *(source for source, _, _ in names.sent.values())],
            [*(module for module, *_ in modules.values()), *names.modules_named],
        ),
        sent_files=data_files.read(opts.files),
        get=opts.get,
        declared=declare(opts.dependencies),
    )
    if items is not None:
        spec["batch"] = {"name": opts.map_name or "", "indices": list(items), "items": item_blobs}
    request = request_for(spec, blobs, opts)
    size = _size(request)
    _check_size(blobs, size, limit, spec["local_modules"], spec["file_contents"], item_blobs)
    return Packed(request, tuple(sorted(blobs)), tuple(sorted(modules)), size, spec, blobs)


def narrowed(packed: Packed, indices: list[int], opts: CellOptions) -> Packed:
    """A --map shard's request for only the items at `indices` (those that failed, to run
    again), its inputs as they were packed."""
    batch = packed.spec["batch"]
    blob_of = dict(zip(batch["indices"], batch["items"], strict=True))
    spec: Spec = {
        **packed.spec,
        "batch": {**batch, "indices": indices, "items": [blob_of[i] for i in indices]},
    }
    request = request_for(spec, packed.blobs, opts)
    return dataclasses.replace(packed, request=request, spec=spec, size=_size(request))


def _size(request: FunctionRequest) -> int:
    """The request's size as sent: its JSON, wrapped as RunPod's job input."""
    return len(request.model_dump_json()) + len('{"input": }')


# Every --deps (and default_deps) this kernel's cells declared, in order.
_DECLARED: dict[str, None] = {}


def declare(dependencies: Collection[str]) -> list[str]:
    """Add a cell's --deps to what this notebook declared; all of it so far."""
    _DECLARED.update(dict.fromkeys(dependencies))
    return list(_DECLARED)


def make_spec(
    analysis: CellAnalysis,
    filename: str,
    *,
    drop: Collection[str] = (),
    modules: dict[str, list[str]] | None = None,
    sources: dict[str, str] | None = None,
    definitions: dict[str, Definition] | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    aliases: dict[str, str] | None = None,
    session: SessionPart | None = None,
    local_packages: dict[str, LocalPackage] | None = None,
    sent_files: data_files.SentFiles | None = None,
    get: Collection[str] = (),
    declared: Collection[str] = (),
) -> Spec:
    """The spec of one request: the cell as `analysis` found it (a request that runs no cell,
    a session's pull or end, has an empty one), what travels with it, and the runtime that
    runs it on the worker."""
    sent = sent_files or data_files.SentFiles({}, {}, {})
    spec: Spec = {
        "filename": filename,
        "source": analysis.source,
        "binds": sorted(analysis.binds - set(drop)),
        "deletes": sorted(analysis.deletes),
        "has_last_expr": analysis.has_last_expr,
        "modules": modules or {},
        "python": ".".join(platform.python_version_tuple()[:2]),
        "sources": sources or {},
        "definitions": definitions or {},
        "env": env or {},
        "timeout": timeout,
        "aliases": aliases or {},
        "cell_definitions": {
            name: [text, filename, line] for name, (text, line) in analysis.defines.items()
        },
        "with_targets": sorted(analysis.with_targets),
        "imported": list(analysis.imported),
        "submodules": {name: list(found) for name, found in analysis.submodules.items()},
        "runtime": runtime.sources(),
        # the notebook's logging and warning setup, which the cell runs under on the worker
        "home": at_home.describe(),
        "local_modules": local_packages or {},  # the notebook's own modules, as source
        # --files: {path: sha256}, each content once by its sha256, the sent files deleted
        # here since; --get's patterns
        "files": sent.files,
        "file_contents": sent.contents,
        "files_gone": sent.gone,
        "get": list(get),
        # every --deps this notebook declared so far, for a worker whose packages are shared
        "declared": list(declared),
    }
    if session is not None:
        spec["session"] = session
    return spec


def request_for(spec: Spec, blobs: dict[str, bytes], opts: CellOptions) -> FunctionRequest:
    """The request that runs the cell `spec` describes with the values in `blobs`."""
    session = spec.get("session")
    return FunctionRequest(
        function_name="run_batch" if "batch" in spec else "run_cell",
        function_code=runtime.bootstrap_source(),
        kwargs={"spec": encode(spec), "blobs": encode(blobs)},
        dependencies=list(opts.dependencies) or None,
        system_dependencies=list(opts.system_dependencies) or None,
        timeout=opts.timeout,
        source_name=f"{RUNTIME_SOURCE_PREFIX}{spec['filename']}>",
        kernel_id=KERNEL_ID,
        session=session["key"] if session else None,
        detached=opts.detach or None,
    )
