"""The notebook's own modules on the worker: helper files beside the notebook, which the worker
does not have, importable under their own names while a cell runs.

The kernel sends their sources with the cell (spec["local_modules"], one entry per top-level
module or package, with a hash of its files). A finder of this module's, first on sys.meta_path
for the cell, imports them from those sources, each compiled under its file name at home and
registered with linecache under it, so a traceback through a helper reads as it does at home.

A worker process runs many cells (ours: one process per notebook; the published worker: every
notebook's), so what a cell imported is kept, by package, with the hash it was imported from,
and put back for the next cell that sends the same hash: its imports stay warm, and a session's
objects stay instances of its classes. When any package that was imported before comes with
another hash (the file changed at home), every kept one is dropped and imported again: a helper
that imported from the changed one must not keep the old objects. Between cells the worker's
own modules of those names (worker-flash has a `constants`, a `logger`) are back in place, so
a helper's name never shadows the worker's.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import linecache
import sys
import types
from collections.abc import Callable
from typing import Any

from .contract import LocalPackage

# {top-level name: (hash, {module name: module})}: what earlier cells imported from the sources
# they were sent, taken out of sys.modules between cells.
_KEPT_MODULES: dict[str, tuple[str, dict[str, types.ModuleType]]] = {}
KEPT = ("_KEPT_MODULES",)  # carried over when a new runtime version is installed


def for_this_cell(packages: dict[str, LocalPackage]) -> Callable[[], None]:
    """Make `packages` importable for the cell about to run (the modules an earlier cell
    imported from the same sources as they were); the function that puts sys.modules and
    sys.meta_path back as they were, keeping what the cell imported for the next cell."""
    if not packages:
        return lambda: None
    if any(
        top in _KEPT_MODULES and _KEPT_MODULES[top][0] != p["hash"] for top, p in packages.items()
    ):
        _KEPT_MODULES.clear()
    displaced = {name: sys.modules.pop(name) for name in _names_under(packages)}
    for top, package in packages.items():
        kept = _KEPT_MODULES.get(top)
        if kept is not None and kept[0] == package["hash"]:
            sys.modules.update(kept[1])
        for path, source in package["files"].values():
            if source:
                linecache.cache[path] = (len(source), None, source.splitlines(True), path)
    finder = _LocalFinder(packages)
    sys.meta_path.insert(0, finder)

    def restore() -> None:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        ours = {name: sys.modules.pop(name) for name in _names_under(packages)}
        for top, package in packages.items():
            imported = {n: m for n, m in ours.items() if n == top or n.startswith(f"{top}.")}
            if imported:
                _KEPT_MODULES[top] = (package["hash"], imported)
        sys.modules.update(displaced)

    return restore


def _names_under(packages: dict[str, LocalPackage]) -> list[str]:
    """The names in sys.modules of the packages' modules (and of any module under them)."""
    return [name for name in list(sys.modules) if name.partition(".")[0] in packages]


class _LocalFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the notebook's modules in the sources the cell brought, and loads them."""

    def __init__(self, packages: dict[str, LocalPackage]) -> None:
        self.files = {
            name: (path, source)
            for package in packages.values()
            for name, (path, source) in package["files"].items()
        }

    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in self.files:
            return None
        home = self.files[name][0]
        package = home.endswith("__init__.py") or any(n.startswith(f"{name}.") for n in self.files)
        spec = importlib.machinery.ModuleSpec(name, self, origin=home, is_package=package)
        spec.has_location = True  # its __file__ is its file at home, as tracebacks name it
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        home, source = self.files[module.__name__]
        linecache.cache[home] = (len(source), None, source.splitlines(True), home)
        exec(compile(source, home, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, name: str) -> str | None:
        return self.files[name][1] if name in self.files else None
