"""The contract between the notebook and the runtime it ships to the worker: the markers both
sides read agree (the worker's own copies included, which never import tetra_magic), every spec
comes from one builder with every field, and the bootstrap installs the runtime from its
sources once per process and version, its frames named so that home cuts them."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zlib
from contextlib import redirect_stdout
from pathlib import Path

from tetra_magic import errors, runtime
from tetra_magic.cell import packing
from tetra_magic.cell.analysis import analyse
from tetra_magic.job import progress
from tetra_magic.runtime import bootstrap, contract, publishing
from tetra_magic.session import model as sessions
from tetra_magic.session.requests import _plain_spec
from worker import frames


def test_the_markers_are_the_workers_and_homes() -> None:
    assert (contract.FRAME_START, contract.FRAME_END) == (frames.START, frames.END)
    assert progress.KEY == contract.PROGRESS_KEY
    assert bootstrap.SOURCE_PREFIX == contract.RUNTIME_SOURCE_PREFIX


def test_a_display_frame_the_runtime_writes_is_one_the_worker_splits_out() -> None:
    publishing.begin()
    out = io.StringIO()
    with redirect_stdout(out):
        print("before")
        publishing.publish_display_data({"text/plain": "shown", "image/png": b"\x89PNG"})
        print("after")
    chunks = frames.split(out.getvalue())
    assert [c["kind"] for c in chunks] == ["stdout", "display", "stdout"]
    assert json.loads(chunks[1]["text"])["data"] == {"text/plain": "shown", "image/png": "iVBORw=="}


def test_home_cuts_the_frames_named_as_the_runtimes() -> None:
    text = (
        "Traceback (most recent call last):\n"
        f'  File "{contract.RUNTIME_SOURCE_PREFIX}tetra_runtime.cell>", line 9, in _execute\n'
        '  File "<tetra-cell-3>", line 1, in <module>\n'
        "ZeroDivisionError: division by zero\n"
    )
    shown = errors.render_traceback(text, errors.cell_labeler(None))
    assert shown == [
        "Traceback (most recent call last):",
        "  Cell In[3], line 1",
        "ZeroDivisionError: division by zero",
    ]


def test_every_spec_has_every_field_a_cell_and_a_plain_request_alike() -> None:
    assert contract.Spec.__optional_keys__ == {"session", "batch"}  # batch: a --map shard
    cell = packing.make_spec(analyse("\nx = 1", "<tetra-cell-1>"), "<tetra-cell-1>")
    assert set(cell) == contract.Spec.__required_keys__
    plain = _plain_spec(sessions.Session("s", "kernel"), {"end": True})
    assert set(plain) == contract.Spec.__required_keys__ | {"session"}
    assert plain["session"]["end"] is True
    assert plain["python"] == cell["python"] == ".".join(map(str, sys.version_info[:2]))


def test_the_shipped_sources_are_the_packages_modules() -> None:
    shipped = runtime.sources()
    modules = json.loads(zlib.decompress(shipped["modules_zlib"]))
    here = Path(runtime.__file__).parent
    assert set(modules) == {p.stem for p in here.glob("*.py")} - {"__init__", "bootstrap"}
    assert modules["cell"] == (here / "cell.py").read_text()
    assert len(shipped["hash"]) == 16


# Run in a fresh process, as a worker runs the request's function code: exec'd in a namespace
# of its own, `run_cell` called with a spec; then a cell that raises, then a newer runtime.
WORKER = """
import linecache, pickle, sys, traceback
spec, code = pickle.load(open(sys.argv[1], "rb"))
namespace = {}
exec(compile(code, "<tetra-runtime <tetra-cell-1>>", "exec"), namespace)  # as our worker does
first = namespace["run_cell"](spec, {})
package = sys.modules["tetra_runtime"]
sys.modules["tetra_runtime.sessions"].SESSIONS["k:s"] = "held"
again = namespace["run_cell"](spec, {})
same = sys.modules["tetra_runtime"] is package
failing = {**spec, "source": "\\n1 / 0", "has_last_expr": True}
try:
    namespace["run_cell"](failing, {})
except ZeroDivisionError as exc:
    files = [frame.filename for frame in traceback.extract_tb(exc.__traceback__)]
newer = {**spec, "runtime": {**spec["runtime"], "hash": "newer"}}
namespace["run_cell"](newer, {})
kept = sys.modules["tetra_runtime.sessions"].SESSIONS
replaced = sys.modules["tetra_runtime"] is not package
readable = bool(linecache.getline(files[-2], 1))
home = any(name.startswith("tetra_magic") for name in sys.modules)
print(repr((first["values"].keys() == {"x"}, same, files, readable, kept, replaced, home)))
"""


def test_the_bootstrap_installs_the_runtime_once_per_process_and_version(tmp_path: Path) -> None:
    spec = packing.make_spec(analyse("\nx = 1", "<tetra-cell-1>"), "<tetra-cell-1>")
    (tmp_path / "request").write_bytes(pickle.dumps((spec, runtime.bootstrap_source())))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WORKER), str(tmp_path / "request")],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    loaded, same, files, readable, kept, replaced, home = eval(done.stdout)
    assert loaded and same and replaced and not home
    assert kept == {"k:s": "held"}  # a newer runtime takes the sessions over
    # Between the worker's frame and the cell's, only the runtime's and those of the event
    # loop it runs the cell in, which home cuts; their lines are readable there, for the
    # worker's own log.
    assert files[0] == "<string>" and files[-1] == "<tetra-cell-1>" and readable
    loop = f"{os.sep}asyncio{os.sep}"
    assert all(
        name.startswith(contract.RUNTIME_SOURCE_PREFIX) or loop in name for name in files[1:-1]
    )
