"""%%tetra cells in real kernels against a local endpoint of this module's own: what goes in,
what comes back, what the user sees. The kernels use the plain-text view
(TETRA_MAGIC_DISPLAY=text, set in conftest), whose output is deterministic, so outputs are
compared exactly. Checks are grouped into few kernels, since each costs seconds to start."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from helpers.kernels import LiveKernel, private_local_endpoint, run_cells

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

LOAD = "%load_ext tetra_magic"


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home")):
        yield


NOTEBOOK = """\
import math
import xml.dom.minidom
import json as js
from os import path
base = 10
def square(v):
    return v * v
class Point:
    def __init__(self, x):
        self.x = x
class Rich:
    def _repr_html_(self):
        return '<b>rich</b>'
scale = 3
times = lambda v: v * scale
def make_adder(n):
    def add(v):
        return v + n
    return add
add5 = make_adder(5)
def helper():
    return data * 2
gone, kept = 1, 'mine'
"""

REMOTE = """\
%%tetra --local --out rec
p = Point(square(base))
total = times(p.x) + add5(0) + math.floor(2.7)
data = 4
doubled = helper()
tag = xml.dom.minidom.parseString('<a/>').documentElement.tagName
joined = js.dumps(path.join('a', 'b'))
del gone
if False:
    kept = 'remote'
print('total is', total)
!echo shell {base}
display(Rich())
total * 2
"""


def test_a_remote_cell_reads_like_a_local_one() -> None:
    cells = run_cells(
        LOAD,
        NOTEBOOK,
        REMOTE,
        "print(total, p.x, type(p).__name__, doubled, tag, joined, 'gone' in dir(), kept)\n"
        "print(rec.status, repr(rec.stdout), rec.shipped, rec.worker['python'][:2], rec.error)",
        "%tetra --local Rich()",
        "%tetra --local q = base * 3\nprint(q, p.x)",
        "%config TetraMagic.default_deps = ['six']\n"
        "print(get_ipython().magics_manager.registry['TetraMagic'].default_deps)",
        "%%tetra --local --no-stream --quiet\nimport sys\nprint('held')\n"
        "print('to stderr', file=sys.stderr)",
    )
    for cell in cells:
        assert cell.error is None, cell.error
    assert [cell.stderr for cell in cells] == [""] * 7 + ["to stderr\n"]
    remote, after, rich, line, config, held = cells[2:]
    assert held.stdout == "held\n"
    assert remote.stdout == "total is 307\nshell 10\n"
    kinds = [o.output_type for o in remote.outputs]
    assert kinds[-2:] == ["display_data", "execute_result"] and set(kinds[:-2]) == {"stream"}
    shown, out = remote.outputs[-2:]
    assert shown.data["text/html"] == "<b>rich</b>"
    assert out.data == {"text/plain": "614"} and out.execution_count == 3
    assert after.stdout == (
        '307 100 Point 8 a "a/b" False mine\n'
        "COMPLETED 'total is 307\\nshell 10\\n'"
        " ['Point', 'Rich', 'add5', 'base', 'gone', 'helper', 'scale', 'square', 'times'] 3. None\n"
    )
    assert rich.outputs[0].data["text/html"] == "<b>rich</b>"
    assert line.stdout == "30 100\n"
    assert config.stdout == "['six']\n"


ERRORS = [
    "x = 1\ndef inv(v):\n    return 1 / v\nimport threading\nlock = threading.Lock()\n"
    "blob = b'x' * 11_000_000",
    "%%tetra --local\nx = 2\nprint('before the error')\ny = inv(0)\n",
    "print(x, 'y' in dir())",
    "%%tetra --local\nwith lock:\n    pass",
    "%%tetra --local\nlen(blob)",
    "%%tetra --local\nimport os\nprint('bye')\nos._exit(3)",
    "%%tetra --local\nimport ctypes\nctypes.string_at(0)",
    "%%tetra --local --timeout 1\nimport time\nprint('sleeping')\ntime.sleep(30)",
    "%%tetra --local --deps no-such-package-tetra-magic-test\n1",
    "%%tetra --gpu A1000\n1",
    "%%tetra --local\nx + 1",
    "%%tetra --local\nz = (\n",
]


def test_failures_read_as_one_clear_message_and_change_nothing() -> None:
    cells = run_cells(LOAD, *ERRORS)
    raised, after, unpicklable, too_big, exited, segv, slow, install, bad, recovered = cells[2:12]
    syntax = cells[12]
    assert raised.stdout == "before the error\n"
    assert raised.error["ename"] == "ZeroDivisionError"
    markers = re.compile(r"^ *[\^~]+$")  # Python's own, under the failing part of a line
    assert [line for line in raised.error["traceback"] if not markers.match(line)] == [
        "Traceback (most recent call last):",
        "  Cell In[3], line 4",
        "    y = inv(0)",
        "  Cell In[2], line 3, in inv",
        "    return 1 / v",
        "ZeroDivisionError: division by zero",
    ]
    assert after.stdout == "1 False\n"
    assert unpicklable.stderr == (
        "UsageError: variable 'lock' (_thread.lock) cannot be sent to the worker: TypeError:"
        " cannot pickle '_thread.lock' object. Create it inside the %%tetra cell instead, or"
        " delete it if the cell does not need it.\n"
    )
    assert re.fullmatch(
        r"UsageError: the request is 14\.\d MB, over the endpoint's 10\.0 MB limit \(largest"
        r" variables: blob 11\.0 MB\)\. Load large data inside the cell instead of sending it, or"
        r" keep it on the worker between cells with --session NAME \(a session cell sends a"
        r" value once, and one that came back from the session not at all\)\.\n",
        too_big.stderr,
    )
    assert exited.stdout == "bye\n"
    assert exited.error["traceback"] == [
        "JobFailed: the worker's executor crashed while running the cell:\nthe code ended the"
        " executor process with exit status 3 before returning (os._exit, or a fatal error in"
        " C code)"
    ]
    segv_text = segv.error["traceback"][0]
    assert segv_text.startswith(
        "JobFailed: the worker's executor crashed while running the cell:\nthe code crashed the"
        " executor process: it was killed by SIGSEGV"
    )
    assert "Cell In[8], line 3 in <module>" in segv_text and "tetra-runtime" not in segv_text
    assert slow.stdout == "sleeping\n"
    assert slow.error["traceback"] == [
        "JobFailed: the cell ran past its time limit and was stopped:\nthe code ran past its 1 s"
        " timeout and was killed"
    ]
    install_text = install.error["traceback"][0]
    assert install_text.startswith(
        "JobFailed: installing the cell's dependencies failed, so the cell did not run:\n"
    )
    assert "no-such-package-tetra-magic-test" in install_text and "{" not in install_text
    assert bad.stderr.startswith("UsageError: --gpu: unknown GPU 'A1000'. Known names: any, A100")
    assert recovered.results == ["2"]
    assert syntax.error["ename"] == "SyntaxError"
    assert syntax.error["traceback"] == [
        "  Cell In[13], line 2",
        "    z = (",
        "        ^",
        "SyntaxError: '(' was never closed",
    ]


def test_deps_install_on_the_worker_only_and_values_that_cannot_come_home_are_named() -> None:
    """`fmt`, a value of a tabulate type, is named and kept as a stand-in; the module, which
    the cell imported only to use it there, is left out without a note."""
    cells = run_cells(
        LOAD,
        "import importlib.util\nprint(importlib.util.find_spec('tabulate'))",
        "%%tetra --local --deps tabulate\nimport tabulate\n"
        "table = tabulate.tabulate([[1, 2]], tablefmt='plain')\n"
        "fmt = tabulate._table_formats['plain']\nprint(table)",
        "print(table, 'fmt' in dir(), 'tabulate' in dir())",
    )
    absent, remote, after = cells[1:]
    assert absent.stdout == "None\n"
    assert remote.error is None, remote.error
    assert remote.stdout == "1  2\n"
    assert remote.stderr == (
        "tetra: fmt is kept as a stand-in (tabulate.TableFormat cannot be loaded here: No module"
        " named 'tabulate'); later %%tetra cells get it as it came\n"
    )
    assert after.stdout == "1  2 True False\n"  # fmt: a stand-in (tests/cell/test_unloadable.py)


def test_interrupting_a_cell_cancels_the_remote_job_and_the_next_cell_works() -> None:
    kernel = LiveKernel()
    try:
        assert kernel.run(LOAD).error is None
        msg_id = kernel.execute(
            "%%tetra --local --out rec\nimport time\nprint('started', flush=True)\n"
            "time.sleep(60)\nprint('never')"
        )
        kernel.outputs(msg_id, until=lambda run: "started" in run.stdout)
        kernel.interrupt()
        stopped = kernel.outputs(msg_id, timeout=30)
        after = kernel.run("print(rec.status)\n%tetra --local 'next'")
    finally:
        kernel.close()
    assert stopped.stdout == "started\n"
    assert stopped.error["ename"] == "CellInterrupted"
    assert re.fullmatch(
        r"KeyboardInterrupt: job \S+ was cancelled on the endpoint", *stopped.error["traceback"]
    )
    assert after.stdout == "CANCELLED\n"
    assert after.results == ["'next'"]


LOAD_CHECK = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "tetra_magic")
heavy = ("runpod", "httpx", "ipywidgets", "aiohttp", "cloudpickle")
heavy = sorted(name for name in heavy if name in sys.modules)
shell.run_line_magic("config", "TetraMagic.timeout = 5.0")
magics = shell.magics_manager.magics
loaded = ["tetra" in magics["cell"], "tetra" in magics["line"]]
timeout = shell.magics_manager.registry["TetraMagic"].timeout
shell.run_line_magic("unload_ext", "tetra_magic")
unloaded = ["tetra" in magics["cell"], "tetra" in magics["line"]]
shell.run_line_magic("reload_ext", "tetra_magic")
reloaded = ["tetra" in magics["cell"], "tetra" in magics["line"]]
instances = sum(type(c).__name__ == "TetraMagic" for c in shell.configurables)
print(json.dumps([heavy, loaded, timeout, unloaded, reloaded, instances]))
"""


def test_loading_is_cheap_and_unload_and_reload_work() -> None:
    """A fresh interpreter, so that nothing a test imported counts."""
    out = subprocess.run(
        [sys.executable, "-c", LOAD_CHECK], capture_output=True, text=True, check=True
    )
    heavy, loaded, timeout, unloaded, reloaded, instances = json.loads(out.stdout)
    assert heavy == []
    assert loaded == [True, True] and timeout == 5.0
    assert unloaded == [False, False]
    assert reloaded == [True, True] and instances == 1


def test_out_holds_the_job_which_shows_itself_in_one_line_and_answers_when_finished() -> None:
    """--out stores the job: a one-line summary (name, status, time, worker, GPU) as text and
    HTML, its record's fields, and status()/wait() on a finished job; a failed job's too."""
    cells = run_cells(
        LOAD,
        "%%tetra --local --out job --name probe\nprint('hi')\n6 * 7",
        "job",
        "print(job.status(), job.status, job.wait(), job.stdout.strip(), job.error)\n"
        "print(job.worker['worker_id'], ', '.join(job.worker['gpus']) or 'no GPU')\n"
        "print(*job.to_dict())",
        "%%tetra --local --out bad\n1 / 0",
        "print(bad.status(), bad.wait(), bad.error.splitlines()[-1])",
        "bad",
    )
    ran, shown, fields, _, failed, bad = cells[1:]
    assert ran.results == ["42"] and shown.error is None and fields.error is None
    status, worker = fields.stdout.splitlines()[:2]
    assert status == "COMPLETED COMPLETED True hi None"
    worker_id, gpus = worker.split(" ", 1)
    (out,) = shown.outputs
    assert re.fullmatch(
        rf"tetra probe \| COMPLETED \| \d+\.\d s \| {re.escape(worker_id)} \| {re.escape(gpus)}",
        out.data["text/plain"],
    )
    assert out.data["text/html"].count("<tr>") == 1 and "probe" in out.data["text/html"]
    assert fields.stdout.splitlines()[2].split() == RECORD_FIELDS
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as exc:
        here = str(exc)
    assert failed.error is None and failed.stdout == f"COMPLETED True {here}\n"
    assert re.match(r"tetra job \S+ \| COMPLETED \(the cell failed\) \|", bad.results[0])


RECORD_FIELDS = [
    "id",
    "status",
    "endpoint",
    "name",
    "delay_ms",
    "execution_ms",
    "wall_s",
    "stdout",
    "stderr",
    "worker",
    "shipped",
    "returned",
    "error",
    "billed_s",
    "cost_estimate_usd",
    "request_bytes",
    "result_bytes",
]


SAY = """\
def say(lines):
    return [f"print({x[4:].strip()!r})\\n" if x.startswith("say ") else x for x in lines]
get_ipython().input_transformers_post.append(say)
"""


def test_input_transformers_the_user_configured_apply_to_remote_cells() -> None:
    """A cell reads as the shell would read it here: `say hi` is the user's own syntax."""
    cells = run_cells(
        LOAD,
        SAY,
        "say hi\nsay there",
        "%%tetra --local\nsay hi\nsay there",
        "%tetra --local say hi",
    )
    local, remote, line = cells[2:]
    for cell in cells:
        assert cell.error is None, cell.error
    assert remote.stdout == local.stdout == "hi\nthere\n"
    assert line.stdout == "hi\n"


def test_xmode_minimal_at_home_shows_a_remote_error_as_minimal() -> None:
    """`%xmode Minimal` in the kernel: a remote cell's error is its last line, as at home."""
    failing = "def f():\n    raise ValueError('bad value')\nf()"
    home = run_cells("%xmode Minimal", failing)[-1].error
    remote = run_cells(LOAD, "%xmode Minimal", f"%%tetra --local\n{failing}")[-1].error
    assert home is not None and remote is not None
    plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in home["traceback"]]
    assert [line.rstrip("\n") for line in plain] == remote["traceback"] == ["ValueError: bad value"]
