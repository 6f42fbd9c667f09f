"""The runtime: the code that runs a cell on the worker, shipped to it as source in every request.

Whatever runs a request's `function_code` must be able to run a cell, RunPod's published worker
included, which knows nothing of tetra_magic. So the request's function code is
`bootstrap.py`, and the spec carries this package's modules as source (`sources()`): the
bootstrap makes them the package `tetra_runtime` on the worker, once per process and version,
and calls `cell.run_cell`. Hence the rules for every module here, checked by
tests/test_import_graph.py: the standard library and cloudpickle at module level, the package's
own modules by relative import, and the packages a cell may bring (IPython, traitlets,
matplotlib, plotly) only inside the functions that use them.

The modules, by job: `contract` (the spec, the payload, the markers both sides read); `cell`
(one cell, start to end), `batch` (a --map shard: the cell once per item), `cell_env` (what
lasts for the cell only: --env, stdin), `at_home`
(the notebook's logging, warning and display setup, for the cell), `outputs`
(what comes home), `exceptions`; `pickling` and `picklers` (how values travel, both ways);
`local_modules` (the notebook's own modules, importable while a cell runs); `files` (data
files: --files written before the cell, --get read after it);
`shell`, `timing` (IPython syntax); `live_output` (output as progress updates, on the published
worker); `display`, `publishing`, `ipython_stand_in`, `figures`, `plotly_output`,
`display_options`,
`widgets` (what a cell shows); `shared_packages`; `sessions`
(namespaces that outlive a cell). The kernel imports several of them too, so both sides share
one definition; this module itself (the package's sources) runs only in the kernel.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from pathlib import Path

from .contract import RuntimeSources

_HERE = Path(__file__).parent
_NOT_SHIPPED = ("__init__", "bootstrap")  # the package's own, and the function code


def sources() -> RuntimeSources:
    """The modules the worker installs, as they ride in every request's spec: {name in the
    package: source} as compressed JSON (a third of its size), and its hash. Read again when a
    module changed, so a kernel that reloads tetra_magic ships the new version."""
    paths = sorted(path for path in _HERE.glob("*.py") if path.stem not in _NOT_SHIPPED)
    return _packed(tuple((path, path.stat().st_mtime_ns) for path in paths))


def bootstrap_source() -> str:
    """The request's function code, which defines `run_cell(spec, blobs)`."""
    path = _HERE / "bootstrap.py"
    return _text(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _packed(files: tuple[tuple[Path, int], ...]) -> RuntimeSources:
    modules = {path.stem: path.read_text(encoding="utf-8") for path, _ in files}
    text = json.dumps(modules, sort_keys=True).encode()
    return {"hash": hashlib.sha256(text).hexdigest()[:16], "modules_zlib": zlib.compress(text, 9)}


@functools.lru_cache(maxsize=1)
def _text(path: Path, mtime: int) -> str:
    return path.read_text(encoding="utf-8")
