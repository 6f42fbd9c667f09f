"""Our `worker` package in the kernel, beside a notebook's own `worker.py` (or `worker/`).

tetra_magic reads the request protocol from the `worker` package installed beside it (the
top-level folder the product card fixes). A kernel puts the notebook's folder on sys.path ahead
of the installed packages, so a notebook's own helper named `worker` would be imported in its
place, and every %%tetra cell would fail on our own imports; and once ours is imported, the
notebook's `import worker` would get ours.

So, when the package is imported and a `worker` other than ours is the one the kernel would
import, ours and the modules of it the kernel uses are imported now, from their folder, and
kept in sys.modules under their own names (`worker.protocol`, ...), where Python finds a
submodule without looking at its parent; the name `worker` itself is left to the notebook's
module, which `import worker` in the notebook (and in a remote cell: cell/local_modules.py
sends it) gets. Without such a file nothing happens here, and ours is imported when a cell
first needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent / "worker"
# The modules of ours the kernel imports (the local endpoint's server runs elsewhere).
_USED = ("codec", "protocol", "frames")


def is_ours(where: str | Path | None) -> bool:
    """Whether `where` (a module's file or folder) is our worker package."""
    if where is None:
        return False
    path = Path(where).resolve()
    return path == FOLDER or FOLDER in path.parents


def claim() -> None:
    """Import our worker's modules the kernel uses while a notebook's own `worker` is the
    one `import worker` would find; nothing otherwise."""
    theirs = sys.modules.get("worker")
    if theirs is not None and is_ours(getattr(theirs, "__file__", None)):
        return
    if theirs is None and not _another_found():
        return
    _import_ours()
    if theirs is not None:
        sys.modules["worker"] = theirs
    else:
        del sys.modules["worker"]  # the notebook's own is imported when it asks for it


def _another_found() -> bool:
    """Whether `import worker` would import a module other than ours."""
    try:
        spec = importlib.util.find_spec("worker")
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    folders = list(spec.submodule_search_locations or [])
    return not is_ours(spec.origin if spec.has_location else next(iter(folders), None))


def _import_ours() -> None:
    spec = importlib.util.spec_from_file_location(
        "worker", FOLDER / "__init__.py", submodule_search_locations=[str(FOLDER)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["worker"] = package
    spec.loader.exec_module(package)
    for name in _USED:
        importlib.import_module(f"worker.{name}")
