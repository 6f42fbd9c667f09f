"""RunPod's published standard worker, run here against our endpoint's HTTP API: the harness
of the tests that run cells on it (runtime/test_published_worker.py,
session/test_published_sessions.py, magic/test_isolation.py) and of the job-loop tests that
need a loopback endpoint (worker/test_worker_loop.py).

`LoopbackEndpoint` serves the local endpoint's API (real aiohttp, on loopback) in a thread of
this process, with no workers of its own; `PublishedWorker` is one process of the published
worker taking its jobs under the runpod SDK's production loop: worker-flash's own code
(helpers/worker_flash.py) where it is here, else the stand-in (helpers/published_worker.py).
The `worker` and `published` fixtures give a test module one of each.
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

import pytest
from aiohttp import web

from helpers import worker_flash
from tetra_magic.local.api import Api
from tetra_magic.local.job_store import JobStore
from tetra_magic.local.workers import WorkerUrls

STAND_IN = Path(__file__).with_name("published_worker.py")
REAL = worker_flash.source()
ENDPOINT_ID = "published"


def which() -> str:
    if REAL is not None:
        return f"published worker: worker-flash's own code, {REAL}"
    return f"published worker: the stand-in {STAND_IN.name} ({worker_flash.folder()} is absent)"


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


class PublishedWorker:
    """One published worker process taking the endpoint's jobs: worker-flash's own code where
    it is here, else the stand-in. `restart` ends it as a crash does and starts a fresh one
    (a fresh interpreter tree too) under a new worker id, as RunPod replaces a worker. Its
    own stdout, the worker's log, goes to `log_path`."""

    def __init__(self, endpoint: LoopbackEndpoint, home: Path, sdk_level: str = "DEBUG") -> None:
        self.endpoint, self.home, self.sdk_level, self.starts = endpoint, home, sdk_level, 0
        self.process = self._start()

    def _command(self) -> tuple[list[str], dict[str, str]]:
        if REAL is None:
            return [sys.executable, str(STAND_IN)], {}
        return worker_flash.command(REAL, self.home / f"worker-{self.starts}")

    def _start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        self.worker_id = f"published-{self.starts}"
        self.log_path = self.home / f"worker-{self.starts}.log"
        argv, own = self._command()
        inherited = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env = {
            **inherited,
            **own,
            **WorkerUrls(self.endpoint.url).env(),
            "HOME": str(self.home),  # no ~/.runpod key for the SDK to prefer
            "RUNPOD_POD_ID": self.worker_id,
            "RUNPOD_ENDPOINT_ID": ENDPOINT_ID,
            "RUNPOD_AI_API_KEY": self.endpoint.token,
            "RUNPOD_LOG_LEVEL": self.sdk_level,
        }
        with open(self.log_path, "wb") as log:
            return subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,  # the SDK's ping process goes with it
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.endpoint.worker_gone(self.worker_id)

    def restart(self) -> None:
        self.kill()
        self.process = self._start()


@contextlib.contextmanager
def published_worker(home: Path, sdk_level: str = "DEBUG") -> Iterator[PublishedWorker]:
    """The endpoint with one published worker taking its jobs, for a module."""
    print(f"\n{which()}")
    endpoint = LoopbackEndpoint()
    worker = PublishedWorker(endpoint, home, sdk_level)
    try:
        yield worker
    finally:
        worker.kill()
        endpoint.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PublishedWorker]:
    """The published worker behind the endpoint, its SDK at DEBUG."""
    with published_worker(tmp_path_factory.mktemp("published-home")) as running:
        yield running


@pytest.fixture(scope="module")
def published(worker: PublishedWorker) -> LoopbackEndpoint:
    """The endpoint, with the published worker taking its jobs."""
    return worker.endpoint


def kernel_env(endpoint: LoopbackEndpoint) -> dict[str, str]:
    return {"RUNPOD_API_KEY": endpoint.token, "TETRA_MAGIC_DISPLAY": "text"}
