"""The request's function code: it installs the runtime package on the worker, then runs the cell.

Whatever runs a request's `function_code` runs this: our worker, and RunPod's published worker,
which only executes the code and calls `run_cell` (`run_batch` for a --map shard). So it is
self-contained, standard library only. The package's modules ride in the spec (spec["runtime"]:
their sources, compressed, and the hash of them all) and become the package `tetra_runtime`,
imported from those sources by a finder of this module's, their text registered with linecache
under names that home recognises as the runtime's (RUNTIME_SOURCE_PREFIX in contract.py), so a
cell's traceback shows none of them.

A worker process runs many cells (ours, one executor process per notebook; the published one,
every cell in its own process), so the package is installed once per process and hash: the
next cells use it as it is. A new hash (the notebook's tetra_magic changed) replaces it, and
what a module names in its KEPT (the sessions the process holds) carries over to its new
version.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import linecache
import sys
import types
import zlib
from typing import Any

PACKAGE = "tetra_runtime"
SOURCE_PREFIX = "<tetra-runtime "


def run_cell(spec: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, Any]:
    """Run the cell `spec` describes with the runtime it carries (tetra_runtime.cell)."""
    install(spec["runtime"])
    cell = importlib.import_module(f"{PACKAGE}.cell")
    return cell.run_cell(spec, blobs)


def run_batch(spec: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, Any]:
    """Run the cell once per item of a --map shard, with the runtime it carries
    (tetra_runtime.batch)."""
    install(spec["runtime"])
    batch = importlib.import_module(f"{PACKAGE}.batch")
    return batch.run_batch(spec, blobs)


def install(runtime: dict[str, Any]) -> types.ModuleType:
    """The package `runtime` describes, installed in this process unless it is already."""
    package = sys.modules.get(PACKAGE)
    if package is not None and getattr(package, "HASH", None) == runtime["hash"]:
        return package
    old = {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == PACKAGE or name.startswith(f"{PACKAGE}.")
    }
    # an older bootstrap's finder is of another class: known by its package
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "package", None) != PACKAGE]
    modules = json.loads(zlib.decompress(runtime["modules_zlib"]))
    sys.meta_path.insert(0, _RuntimeFinder(modules))
    package = importlib.import_module(PACKAGE)
    vars(package)["HASH"] = runtime["hash"]
    import cloudpickle  # every worker that loaded this request's arguments has it

    # Its classes and functions pickle by value: what a cell shows with the IPython stand-in
    # (an HTML(...) as its last value) comes home, where no tetra_runtime exists.
    cloudpickle.register_pickle_by_value(package)
    for name in sorted(modules):
        module = importlib.import_module(f"{PACKAGE}.{name}")
        before = old.get(module.__name__)
        for kept in getattr(module, "KEPT", ()):
            if hasattr(before, kept):
                setattr(module, kept, getattr(before, kept))
    return package


class _RuntimeFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the package and its modules in the sources the spec carried, and loads them."""

    package = PACKAGE

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        head, _, module = name.rpartition(".")
        if name != PACKAGE and (head != PACKAGE or module not in self.sources):
            return None
        origin = f"{SOURCE_PREFIX}{name}>"
        spec = importlib.machinery.ModuleSpec(name, self, origin=origin, is_package=not head)
        spec.has_location = True  # its __file__: what tracebacks name, and home cuts
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        source = self.get_source(module.__name__)
        filename = module.__spec__.origin if module.__spec__ else None
        if source is None or filename is None:
            return  # the package itself: its modules are found here
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)

    def get_source(self, name: str) -> str | None:
        return self.sources.get(name.rpartition(".")[2]) if name != PACKAGE else None
