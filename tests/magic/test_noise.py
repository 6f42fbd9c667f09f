"""A remote cell says that something did not come back only when the user would miss it.

Spent things and things that only mean something in the worker's process (files a `with`
closed, finished threads and subprocesses, exhausted generators, locks, a pool or executor
that was shut down and its finished futures, closed sqlite3 connections, zip files and tqdm
bars, logging handlers, event loops and finished tasks, a PIL ImageDraw) and modules
only the worker has come back without a note, as the same cells run locally print nothing
extra, nor do names the cell imported from such modules; modules the kernel has come back as
modules. What the user would reach for again (a
generator not yet consumed, a running thread, their own object holding a lock) is named.
Each remote cell is compared with the same cell run locally, in a directory of its own."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.kernels import as_local, private_local_endpoint, run_cells

# Starts kernels on a local endpoint: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

LOAD = "%load_ext tetra_magic"
NOTE = re.compile(r"tetra: (\w+) was not brought back")


@pytest.fixture(scope="module", autouse=True)
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with private_local_endpoint(tmp_path_factory.mktemp("tetra-home")):
        yield


SPENT = """%%tetra --local
import threading
from concurrent.futures import ThreadPoolExecutor
with open('data.txt', 'w') as f:
    f.write('3 1 2')
with open('data.txt') as f, open('data.txt') as g2:
    numbers = [int(x) for x in f.read().split()]
h = open('data.txt')
first = h.read(1)
h.close()
squares = (n * n for n in numbers)
total = sum(squares)
lock = threading.Lock()
ready = threading.Event()
ready.set()
results = []
threads = [threading.Thread(target=results.append, args=(n,)) for n in numbers]
for t in threads:
    t.start()
for t in threads:
    t.join()
with ThreadPoolExecutor(2) as pool:
    doubled = list(pool.map(lambda n: 2 * n, numbers))
import multiprocessing, socket
process = multiprocessing.Process(target=int)
process.start()
process.join()
connection = socket.socket()
connection.close()
"""
SPENT_CHECK = "print(numbers, first, total, sorted(results), doubled)"

FINISHED = """%%tetra --local --deps tqdm
import io, sqlite3, subprocess, sys, zipfile
from concurrent.futures import ThreadPoolExecutor
from tqdm import tqdm
proc = subprocess.Popen([sys.executable, '-c', 'pass'])
code = proc.wait()
executor = ThreadPoolExecutor(2)
squares = list(executor.map(lambda n: n * n, range(4)))
executor.shutdown()
with ThreadPoolExecutor(2) as pool:
    futs = [pool.submit(pow, 2, n) for n in range(3)]
powers = [f.result() for f in futs]
db = sqlite3.connect('data.db')
db.execute('create table t (n)')
stored = db.execute('select count(*) from t').fetchone()[0]
db.close()
archive = zipfile.ZipFile('data.zip', 'w')
archive.writestr('a.txt', 'hi')
archive.close()
bar = tqdm(range(3), file=io.StringIO())
steps = sum(1 for _ in bar)
"""
FINISHED_CHECK = "print(code, squares, powers, stored, steps)"

MODULES = """%%tetra --local
import json as js
import xml.dom.minidom
from email import mime
with open('only_here.py', 'w') as f:
    f.write('VALUE = 1\\ndef twice(n):\\n    return 2 * n\\n')
import only_here
from only_here import twice
value = twice(only_here.VALUE)
"""
MODULES_CHECK = (
    "print(js.__name__, xml.dom.minidom.parseString('<a/>').documentElement.tagName,"
    " mime.__name__, value)"
)


@pytest.mark.parametrize(
    ("cell", "check"),
    [(SPENT, SPENT_CHECK), (FINISHED, FINISHED_CHECK), (MODULES, MODULES_CHECK)],
    ids=["spent", "finished", "modules"],
)
def test_nothing_the_user_would_miss_is_reported(tmp_path: Path, cell: str, check: str) -> None:
    (tmp_path / "remote").mkdir()
    (tmp_path / "local").mkdir()
    remote = run_cells(LOAD, f"%cd {tmp_path / 'remote'}", cell, check)
    local = run_cells(f"%cd {tmp_path / 'local'}", as_local(cell), check)
    assert remote[2].error is None, remote[2]
    assert remote[2].stderr == local[1].stderr == ""
    assert remote[3].stdout == local[2].stdout and remote[3].error is None


def test_worker_only_modules_are_left_out_and_kernel_modules_come_back(tmp_path: Path) -> None:
    """The module only the worker has is not bound in the notebook (a later cell imports it
    again); the function the cell imported from it comes as a stand-in that later remote cells
    get as it came; the kernel's modules are its own objects."""
    cells = run_cells(
        LOAD,
        f"%cd {tmp_path}",
        MODULES,
        "import json, sys\nminidom = sys.modules['xml.dom.minidom']\n"
        "print('only_here' in dir(), 'twice' in dir(), js is json, xml.dom.minidom is minidom)",
        "%%tetra --local\nprint(twice(21))",
    )
    assert cells[-2].stdout == "False True True True\n", cells[-2]
    assert cells[-1].stdout == "42\n", cells[-1]


MISSED = """%%tetra --local
import threading, time
class Cache:
    def __init__(self):
        self.lock = threading.Lock()
        self.data = {'k': 1}
cache = Cache()
pending = (n * n for n in range(3))
waiting = threading.Event()
worker = threading.Thread(target=waiting.wait, args=(60,), daemon=True)
worker.start()
kept = 5
"""


def test_what_the_user_would_reach_for_is_named() -> None:
    """An object of their own, a generator not yet consumed and a thread still running cannot
    travel: each is named, once; everything else the cell bound came back."""
    cells = run_cells(LOAD, MISSED, "print(kept, type(Cache).__name__, 'waiting' in dir())")
    assert sorted(NOTE.findall(cells[1].stderr)) == ["cache", "pending", "worker"], cells[1]
    assert cells[2].stdout == "5 type False\n"


LAST = """%%tetra --local
with open('plot_lib.py', 'w') as f:
    f.write('class Line:\\n    def __repr__(self):\\n        return "[<Line>]"\\n')
import plot_lib
plot_lib.Line()
"""


def test_a_last_value_the_kernel_cannot_load_is_shown_without_a_note(tmp_path: Path) -> None:
    """A cell ending in a value of a package only the worker has (the Line2D list after
    plt.plot, on a kernel without matplotlib) shows it as the same cell does locally, and
    says nothing more."""
    remote = run_cells(LOAD, LAST)[1]
    local = run_cells(f"%cd {tmp_path}", as_local(LAST))[1]
    assert remote.error is None and remote.stderr == local.stderr == ""
    assert remote.results[-1] == local.results[-1] == "[<Line>]"


def test_the_magics_own_http_requests_never_reach_the_notebooks_logging() -> None:
    """`logging.basicConfig(level=logging.DEBUG)` at home, a common first line: the remote
    cell shows what the same cell shows at home, not a line of the magic's polling (httpx logs
    each request at INFO, httpcore each step at DEBUG); the notebook's own httpx records
    still show, also while and after the magic sends its own."""
    setup = "import logging\nlogging.basicConfig(level=logging.DEBUG)"
    cell = "%%tetra --local\nprint('computed')\n6 * 7"
    mine = "import logging\nlogging.getLogger('httpx').info('my own request')"
    remote = run_cells(LOAD, setup, cell, mine)
    home = run_cells(LOAD, setup, as_local(cell), mine)
    assert (remote[2].stdout, remote[2].stderr, remote[2].results) == (
        home[2].stdout,
        home[2].stderr,
        home[2].results,
    )
    assert remote[2].stderr == "" and remote[3].stderr == "INFO:httpx:my own request\n"


PROCESS_BOUND = """%%tetra --local
import asyncio, logging, sys
log = logging.getLogger('training')
handler = logging.StreamHandler(sys.stdout)
log.addHandler(handler)
log.removeHandler(handler)
async def work():
    return 3
task = asyncio.create_task(work())
result = await task
loop = asyncio.get_running_loop()
"""


def test_handlers_loops_and_finished_tasks_come_back_without_a_note() -> None:
    """A logging handler, a logger, the cell's event loop and a task it awaited cannot travel,
    and nobody reaches for them in the next cell: the remote cell says nothing, as the same
    cell at home; its result came back."""
    remote = run_cells(LOAD, PROCESS_BOUND, "print(result)")
    local = run_cells(as_local(PROCESS_BOUND), "print(result)")
    assert remote[1].error is None, remote[1]
    assert remote[1].stderr == local[0].stderr == ""
    assert remote[2].stdout == local[1].stdout == "3\n"


DRAWING = """%%tetra --local --deps pillow
from PIL import Image, ImageDraw
image = Image.new('RGB', (8, 8))
draw = ImageDraw.Draw(image)
draw.line((0, 0, 7, 7), fill='white')
size = image.size
"""


def test_a_drawing_context_is_left_out_without_a_note() -> None:
    """PIL's ImageDraw is a pen on the image, which is what the user keeps: no note names it
    (the kernel has no PIL here, so the image itself is named as not loadable)."""
    remote = run_cells(LOAD, DRAWING, "print(size)")
    assert remote[1].error is None, remote[1]
    assert "draw" not in NOTE.findall(remote[1].stderr), remote[1].stderr
    assert remote[2].stdout == "(8, 8)\n"
