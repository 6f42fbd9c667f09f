"""A package another notebook installed, imported by a cell on a worker that shares them.

Our worker gives each notebook a package layer of its own (worker/deps.py). RunPod's published
worker installs every request's dependencies into its one environment, which every notebook
whose cells land on that worker shares: a cell could import a package only another notebook
asked for, work on this warm worker and fail on a fresh one. There, the distributions the
worker had when this process ran its first cell (less what that cell's notebook had asked for)
count as the worker's own; a cell that imports a module of a distribution installed since,
which neither its own nor its notebook's earlier `--deps` require, is told so in one line.

Standard library only: requirement names are read with a pattern, markers and extras ignored
(a requirement counts whatever its marker, so the check errs towards silence).
"""

from __future__ import annotations

import ast
import os
import re
import sys
from importlib import metadata
from typing import Any

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# The worker's own distributions (normalized names), from this process's first cell.
_BASE: set[str] = set()
_SEEN = {"first cell": False}
_OWNERS: dict[str, Any] = {}
KEPT = ("_BASE", "_SEEN")  # carried over when a new runtime version is installed


def notes(source: str, modules: list[str], declared: list[str]) -> list[str]:
    """The lines for a cell (`source`, and the notebook's `modules` it reads) whose notebook
    declared `declared` (requirement specifiers, this cell's included)."""
    allowed = _closure(declared)
    if not _SEEN["first cell"]:
        _SEEN["first cell"] = True
        _BASE.update(_installed() - allowed)
        return []
    owners = _owners()
    lines = []
    for module in sorted(_imported(source) | set(modules)):
        for dist in owners.get(module, ()):
            name = _normal(dist)
            if name not in _BASE and name not in allowed:
                lines.append(
                    f"tetra: {module} comes from {dist}, which another notebook installed on this"
                    f" worker (RunPod's published worker shares its packages between notebooks);"
                    f" add --deps {dist}: a fresh worker does not have it"
                )
    return lines


def _owners() -> dict[str, list[str]]:
    """{top-level module: its distributions}, read again only once an install has changed a
    directory of the import path (a scan costs tens of milliseconds; a cell, here, one)."""
    fingerprint = tuple(_mtime(entry) for entry in sys.path)
    if _OWNERS.get("at") != fingerprint:
        _OWNERS.update(at=fingerprint, owners=metadata.packages_distributions())
    return _OWNERS["owners"]


def _mtime(entry: str) -> int:
    try:
        return os.stat(entry or ".").st_mtime_ns
    except OSError:
        return 0


def _installed() -> set[str]:
    return {_normal(dist.metadata["Name"] or "") for dist in metadata.distributions()}


def _closure(specs: list[str]) -> set[str]:
    """The normalized names of `specs` and of everything they require, as installed here."""
    found: set[str] = set()
    todo = [match[1] for spec in specs if (match := _NAME.match(spec))]
    while todo:
        name = _normal(todo.pop())
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [m[1] for line in requires if "extra ==" not in line and (m := _NAME.match(line))]
    return found


def _imported(source: str) -> set[str]:
    """The top-level modules the cell's import statements name (relative ones left out)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.partition(".")[0])
    return names


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
