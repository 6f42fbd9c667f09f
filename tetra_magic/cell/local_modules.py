"""The notebook's own modules a cell needs: helper files beside the notebook (or on a path the
user added to sys.path), which no worker has, found here and sent with the cell as source.

A cell needs a module when it imports it (anywhere in the cell), when a notebook definition
that travels as source imports it, when a notebook value it reads is that module, or when a
value's pickle names it (a function or class of it, say `clean` after `from helpers import
clean` at home); and, in turn, when a module sent imports it. Only top-level names are looked
up, without importing anything here, and one is the notebook's own when its file lies outside
the installed packages and the standard library; a package goes whole (all its .py files),
since its modules import each other in ways no scan sees. The files are read as they are on
disk when the cell is sent, so a helper edited at home is what the next cell gets
(runtime/local_modules.py replaces what the worker imported from an older text).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import site
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from tetra_magic import our_worker
from tetra_magic.runtime.contract import LocalPackage

# The magic's own package, and the notebook itself; the worker has the runtime of its own. Our
# `worker` package is told by its folder, not its name: a notebook's own worker.py travels
# (tetra_magic/our_worker.py keeps the two apart here).
_OURS = frozenset({"tetra_magic", "__main__"})
_INSTALLED_PARTS = frozenset({"site-packages", "dist-packages"})
# {top-level name: its file or folder here} of each module of the notebook's own that a cell
# of this kernel sent: a later ModuleNotFoundError for one whose file is gone is a helper
# missing from beside the notebook, not a package to install (errors.import_hint).
_SENT: dict[str, str] = {}


def needed(sources: Iterable[str], names: Iterable[str]) -> dict[str, LocalPackage]:
    """{top-level name: its package} of the notebook's own modules that the code in
    `sources` imports or that `names` (module names) name, and of those these import."""
    todo = [name.partition(".")[0] for name in names]
    todo += [name for source in sources for name in _imports(source)]
    found: dict[str, LocalPackage] = {}
    seen: set[str] = set()
    while todo:
        top = todo.pop()
        if top in seen:
            continue
        seen.add(top)
        package = _package(top)
        if package is not None:
            found[top] = package
            _SENT[top] = package["files"][top][0]
            todo += [n for _, text in package["files"].values() for n in _imports(text)]
    return dict(sorted(found.items()))


def sent() -> dict[str, str]:
    """{top-level name: its file or folder here} of the notebook's modules this kernel's
    cells sent."""
    return dict(_SENT)


def size(packages: dict[str, LocalPackage]) -> int:
    """The bytes their sources add to the request."""
    return sum(len(text.encode()) for p in packages.values() for _, text in p["files"].values())


@functools.lru_cache(maxsize=512)
def _imports(source: str) -> tuple[str, ...]:
    """The top-level names of the modules `source` imports absolutely, anywhere in it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return tuple(sorted(found))


def _package(top: str) -> LocalPackage | None:
    """The files of the module or package `top` as sent, if it is the notebook's own."""
    if top in _OURS or top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return None
    root = _home(top)
    if root is None:
        return None
    found = {top: (str(root), _read(root))} if root.is_file() else _package_files(top, root)
    files = {name: list(entry) for name, entry in sorted(found.items())}
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    return {"hash": digest, "files": files}


def _package_files(top: str, root: Path) -> dict[str, tuple[str, str]]:
    """{module name: (file, source)} of every .py file under a package's folder; the folders
    on the way, with or without an __init__.py, are packages (a folder's source is empty)."""
    files: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if not all(part.isidentifier() for part in parts):
            continue  # `.ipynb_checkpoints`, `helpers-checkpoint.py`: not importable
        folders = parts[:-1]
        for depth in range(len(folders) + 1):
            name = ".".join((top, *folders[:depth]))
            files.setdefault(name, (str(root.joinpath(*folders[:depth])), ""))
        name = ".".join((top, *(folders if parts[-1] == "__init__" else parts)))
        files[name] = (str(path), _read(path))
    return files


def _home(top: str) -> Path | None:
    """The file (a module) or folder (a package) the kernel imports `top` from, if that is
    one of the notebook's own: a source file outside the installed packages."""
    module = sys.modules.get(top)
    try:
        spec = module.__spec__ if module is not None else importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = list(dict.fromkeys(map(os.path.realpath, spec.submodule_search_locations or [])))
    if spec.origin and spec.origin.endswith(".py") and spec.has_location:
        path = Path(spec.origin)
        where = path.parent if path.name == "__init__.py" else path
    elif spec.origin in (None, "namespace") and len(folders) == 1:
        where = Path(folders[0])
    else:
        return None  # an extension module, a zip, a namespace package spread over folders
    if not where.exists():
        return None  # imported here, then deleted or moved: nothing to send
    if _installed(str(where)) or top in _distributed(tuple(sys.path)) or our_worker.is_ours(where):
        return None
    if where.is_dir() and any(p.suffix in (".so", ".pyd") for p in where.rglob("*")):
        return None  # compiled parts cannot travel as source
    return where


@functools.lru_cache(maxsize=4)
def _distributed(path: tuple[str, ...]) -> frozenset[str]:
    """Top-level names an installed distribution provides anywhere on `path` (sys.path), as
    its metadata says: a package `pip install --target DIR` put on a folder the user added is
    installed, not the notebook's own; on the worker, --deps brings it."""
    return frozenset(importlib.metadata.packages_distributions())


def _installed(path: str) -> bool:
    """Whether `path` lies in the standard library, the installed packages, or the Python
    environment itself."""
    real = os.path.realpath(path)
    if _INSTALLED_PARTS & set(Path(real).parts):
        return True
    return any(real == root or real.startswith(root + os.sep) for root in _installed_roots())


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    roots += [*site.getsitepackages(), site.getusersitepackages(), sys.prefix, sys.exec_prefix]
    # a prefix of "/" (a Python installed at the root) would hold every file
    return tuple(real for root in roots if len(Path(real := os.path.realpath(root)).parts) > 1)


@functools.lru_cache(maxsize=256)
def _text(path: str, mtime_ns: int, length: int) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


def _read(path: Path) -> str:
    """The file's text as it is on disk now (read again only when it changed)."""
    stat = path.stat()
    return _text(str(path), stat.st_mtime_ns, stat.st_size)
