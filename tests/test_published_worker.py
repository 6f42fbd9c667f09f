"""Cells on RunPod's published standard worker, which does not stream.

The worker is tests/published_worker.py, a stand-in that runs requests the way the published
worker's live path does, under the real runpod SDK job loop. It takes its jobs from our local
endpoint's HTTP API (real aiohttp, on loopback), served here with no workers of its own: the
same RunPod job API the SDK speaks on RunPod, progress updates included. Kernels reach it with
`--endpoint URL`, as a user reaches any RunPod-compatible endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from kernels import LiveKernel, environ, private_local_endpoint, run_cells
from test_worker_endpoint import until

from tetra_magic.local.jobs import JobStore
from tetra_magic.local.server import Api
from tetra_magic.local.workers import WorkerUrls

STAND_IN = Path(__file__).with_name("published_worker.py")
ENDPOINT_ID = "published"


class LoopbackEndpoint:
    """Our endpoint's HTTP API in a thread of this process, for workers started elsewhere."""

    def __init__(self, store: JobStore | None = None) -> None:
        self.store = store or JobStore()
        self.token = secrets.token_urlsafe(16)
        self.base = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        runner = web.AppRunner(Api(self.store, None, self.token, ENDPOINT_ID).app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}/v2"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    @property
    def url(self) -> str:
        return f"{self.base}/{ENDPOINT_ID}"

    def worker_gone(self, worker_id: str) -> None:
        """What the endpoint does when a worker's process ends: it gets no further jobs, not
        even through the job-take it left open."""

        async def gone() -> None:
            self.store.worker_gone(worker_id, "the worker process ended")

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(gone(), self._loop).result(10)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class StandIn:
    """One stand-in published worker process taking the endpoint's jobs. `restart` ends it as
    a crash does and starts a fresh one under a new worker id, as RunPod replaces a worker."""

    def __init__(self, endpoint: LoopbackEndpoint, home: Path) -> None:
        self.endpoint, self.home, self.starts = endpoint, home, 0
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        self.worker_id = f"published-{self.starts}"
        env = {
            **os.environ,
            **WorkerUrls(self.endpoint.url).env(),
            "HOME": str(self.home),  # no ~/.runpod key for the SDK to prefer
            "RUNPOD_POD_ID": self.worker_id,
            "RUNPOD_AI_API_KEY": self.endpoint.token,
            "RUNPOD_LOG_LEVEL": "ERROR",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        }
        return subprocess.Popen(
            [sys.executable, str(STAND_IN)],
            env=env,
            stdout=subprocess.DEVNULL,
            cwd=self.home,
            start_new_session=True,  # the SDK's ping process goes with it
        )

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.endpoint.worker_gone(self.worker_id)

    def restart(self) -> None:
        self.kill()
        self.process = self._start()


@contextlib.contextmanager
def published_worker(home: Path) -> Iterator[StandIn]:
    """The endpoint with one stand-in published worker taking its jobs, for a module."""
    endpoint = LoopbackEndpoint()
    worker = StandIn(endpoint, home)
    try:
        yield worker
    finally:
        worker.kill()
        endpoint.close()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackEndpoint]:
    """The endpoint, with one stand-in published worker taking its jobs."""
    with published_worker(tmp_path_factory.mktemp("published-home")) as worker:
        yield worker.endpoint


def kernel_env(endpoint: LoopbackEndpoint) -> dict[str, str]:
    return {"RUNPOD_API_KEY": endpoint.token, "TETRA_MAGIC_DISPLAY": "text"}


SLOW = "print('first', flush=True)\nimport time\ntime.sleep(3)\nprint('second')\nx = 5\nx * 2"


def test_output_appears_before_the_job_ends_and_exactly_once(
    published: LoopbackEndpoint,
) -> None:
    with environ(kernel_env(published)):
        kernel = LiveKernel()
    try:
        assert kernel.run("%load_ext tetra_magic").error is None
        cell = kernel.execute(f"%%tetra --endpoint {published.url}\n{SLOW}")
        early = kernel.outputs(cell, until=lambda run: "first" in run.stdout, timeout=60)
        assert "second" not in early.stdout and early.results == []  # the job still runs
        done = kernel.outputs(cell, timeout=60)
        assert done.error is None, done.error
        assert done.stdout == "first\nsecond\n" and done.results == ["10"]
        assert kernel.run("x").results == ["5"]
    finally:
        kernel.close()


def test_the_cells_timeout_stops_it_on_a_worker_that_does_not_know_it(
    published: LoopbackEndpoint,
) -> None:
    """The published worker's request has no timeout field; the runtime stops the cell."""
    runs = run_cells(
        "%load_ext tetra_magic",
        f"%%tetra --endpoint {published.url} --timeout 2\nimport time\n"
        "for i in range(100):\n    print(i, flush=True)\n    time.sleep(0.1)\ndone = True",
        f"%%tetra --endpoint {published.url}\nprint('next')",
        "'done' in dir()",
        env=kernel_env(published),
    )
    assert runs[1].error["ename"] == "TimeoutError"
    assert "the cell ran past its 2 s timeout and was stopped" in runs[1].error["evalue"]
    printed = runs[1].stdout.split()
    assert printed == [str(i) for i in range(len(printed))] and 5 < len(printed) < 40
    assert runs[2].stdout == "next\n" and runs[3].results == ["False"]


CELLS = [
    "y = 21\ndef double(v):\n    return 2 * v",
    "%%tetra {target}\nimport sys\nprint('out')\nprint('err', file=sys.stderr)\nz = double(y)"
    "\nz + 1",
    "z",
    "%%tetra {target}\nw = 1\nraise ValueError(f'bad value {{y}}')",
    "'w' in dir()",
    "%%tetra {target}\nfor i in range(3):\n    print(i)",
    "%%tetra {target}\na = [1, 2]\nb = a",
    "a.append(3)\n(a is b, b)",
]


def test_values_and_errors_come_back_as_on_our_worker(
    published: LoopbackEndpoint, tmp_path: Path
) -> None:
    on_published = run_cells(
        "%load_ext tetra_magic",
        *(c.format(target=f"--endpoint {published.url}") for c in CELLS),
        env=kernel_env(published),
    )[1:]
    with private_local_endpoint(tmp_path / "home", workers=1):
        ours = run_cells(
            "%load_ext tetra_magic",
            *(c.format(target="--local") for c in CELLS),
            env={"TETRA_MAGIC_HOME": str(tmp_path / "home"), "TETRA_MAGIC_DISPLAY": "text"},
        )[1:]
    for theirs, mine in zip(on_published, ours, strict=True):
        assert (theirs.results, theirs.stdout) == (mine.results, mine.stdout)
        assert (theirs.error or {}).get("ename") == (mine.error or {}).get("ename")
    assert on_published[1].results == ["43"] and on_published[2].results == ["42"]
    assert "err" in on_published[1].stderr
    assert "bad value 21" in on_published[3].error["evalue"]
    assert on_published[4].results == ["False"]  # a failed cell leaves nothing behind
    assert on_published[7].results == ["(True, [1, 2, 3])"]  # `b = a` is one object at home


def test_a_progress_update_is_the_status_output_while_the_job_runs(
    published: LoopbackEndpoint,
) -> None:
    """What RunPod documents for progress_update, on our endpoint: /status of the running job
    shows the latest update as its output, and the final output replaces it."""
    http = httpx.Client(
        base_url=published.url, headers={"Authorization": f"Bearer {published.token}"}
    )
    source = (
        "def f():\n    import runpod, time\n"
        "    from runpod.serverless.modules.worker_state import JobsProgress\n"
        "    job = {'id': next(iter(JobsProgress())).id}\n"
        "    runpod.serverless.progress_update(job, {'step': 1})\n    time.sleep(2)\n"
        "    return 'done'\n"
    )
    job = http.post("/run", json={"input": {"function_name": "f", "function_code": source}}).json()[
        "id"
    ]
    update = until(
        lambda: (doc := http.get(f"/status/{job}").json()).get("output") and doc, 30, "no update"
    )
    assert update["status"] == "IN_PROGRESS" and update["output"] == {"step": 1}
    final = until(
        lambda: (doc := http.get(f"/status/{job}").json())["status"] == "COMPLETED" and doc,
        30,
        "never completed",
    )
    assert final["output"]["success"] is True and "step" not in final["output"]
    http.close()


DISPLAYS = (
    "%%tetra {target}\nfrom IPython.display import HTML, Image, display\nimport base64\n"
    "print('before')\ndisplay(HTML('<b>table</b>'))\nprint('between')\n"
    "display(Image(base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')))\nprint('after')\n"
)


def test_display_outputs_arrive_in_order_as_on_our_worker(
    published: LoopbackEndpoint, tmp_path: Path
) -> None:
    """The published worker returns displays inside its stdout (live, through progress
    updates): they come out as display outputs among the prints, as from our worker."""
    theirs = run_cells(
        "%load_ext tetra_magic",
        DISPLAYS.format(target=f"--endpoint {published.url}"),
        env=kernel_env(published),
    )[1]
    with private_local_endpoint(tmp_path / "home", workers=1):
        mine = run_cells(
            "%load_ext tetra_magic",
            DISPLAYS.format(target="--local"),
            env={"TETRA_MAGIC_HOME": str(tmp_path / "home"), "TETRA_MAGIC_DISPLAY": "text"},
        )[1]

    def shape(outputs: list) -> list:
        return [(o.output_type, o.get("text"), o.get("data")) for o in outputs]

    assert shape(theirs.outputs) == shape(mine.outputs)
    assert [o.output_type for o in mine.outputs] == ["stream", "display_data"] * 2 + ["stream"]


RAISES = "class ValidationError(ValueError):\n    pass"
RAISING = (
    "err = ValidationError('row 3 is invalid\\ncolumn age is empty')\n"
    "err.add_note('in data.csv')\nraise err"
)
CAUGHT = (
    "import sys\nerror = sys.last_value\n"
    "print(type(error) is ValidationError, isinstance(error, ValueError), repr(str(error)),"
    " error.__notes__)"
)


def test_the_users_own_exception_comes_home_from_the_published_worker(
    published: LoopbackEndpoint,
) -> None:
    """It carries no protocol field of ours: the exception travels as a note in the traceback
    text the worker returns, which the notebook takes off again."""
    remote = run_cells(
        "%load_ext tetra_magic",
        RAISES,
        f"%%tetra --endpoint {published.url}\n{RAISING}",
        CAUGHT,
        env=kernel_env(published),
    )[1:]
    local = run_cells(RAISES, RAISING, CAUGHT)
    assert remote[2].stdout == local[2].stdout and local[2].stdout.startswith("True True")
    error, expected = remote[1].error, local[1].error
    assert (error["ename"], error["evalue"]) == (expected["ename"], expected["evalue"])
    traceback = "\n".join(error["traceback"])
    assert "in data.csv" in traceback and "tetra-exception" not in traceback
