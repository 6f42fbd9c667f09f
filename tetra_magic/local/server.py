"""The local endpoint server process: it listens, starts the workers, records itself in the
state dir so kernels find it, and runs until SIGTERM/SIGINT or its idle timeout, cleaning up
after itself. What it answers is api.py's; how requests are checked, request_checks.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tetra_magic.local import state
from tetra_magic.local.api import Api
from tetra_magic.local.job_store import JobStore
from tetra_magic.local.worker_gpus import default_worker_count, detect_gpus
from tetra_magic.local.workers import Supervisor, WorkerUrls

log = logging.getLogger("tetra_magic.local.server")


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    workers: int | None = None
    endpoint_id: str = "local"
    idle_timeout: float | None = None


def app_runner(api: Api) -> web.AppRunner:
    """The server for `api`'s routes: a handler whose client went away is cancelled (long
    polls would otherwise hold on), and no access log (workers poll all the time)."""
    return web.AppRunner(
        api.app(),
        handler_cancellation=True,
        shutdown_timeout=1.0,
        access_log=None,
        logger=_http_log,
    )


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (bad header bytes, a bogus method, a body its
    Content-Encoding does not decode) with a traceback, though the mistake is the client's and
    it has been answered 400: keep one line for those, whole tracebacks for failures of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, web.RequestPayloadError)):
            record.msg = "refused a malformed request: %s"
            record.args = (" ".join(str(exc).split()),)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_http_log = logging.getLogger("tetra_magic.local.http")
_http_log.addFilter(_MalformedRequests())


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _local_host(host: str) -> str:
    """How processes on this machine reach the server (workers, the launcher)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def serve(options: ServerOptions, announce: Callable[[str], None] = print) -> None:
    """Run the endpoint until SIGTERM/SIGINT or the idle timeout; clean up after itself."""
    root = state.home()
    token = state.token(root)
    store = JobStore()
    sock = _listen(options.host, options.port)
    port = sock.getsockname()[1]
    base_url = f"http://{_local_host(options.host)}:{port}/v2"
    gpus = detect_gpus()
    supervisor = Supervisor(
        store,
        workers=options.workers or default_worker_count(gpus),
        gpus=gpus,
        urls=WorkerUrls(f"{base_url}/{options.endpoint_id}"),
        token=token,
        root=root,
    )
    api = Api(store, supervisor, token, options.endpoint_id, options.idle_timeout)
    runner = app_runner(api)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    record = {
        "url": base_url,
        "endpoint_id": options.endpoint_id,
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "workers": len(supervisor.slots),
        "code": state.code_fingerprint(),
    }
    state.write_json_private(state.record_path(root), record)
    announce(_announcement(options, base_url, root, len(supervisor.slots), gpus))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    supervisor.start()
    background = [asyncio.create_task(store.sweeper())]
    if options.idle_timeout:
        background.append(asyncio.create_task(_idle_watch(api, options.idle_timeout, stop)))
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for task in background:
            task.cancel()
        await supervisor.stop()
        await runner.cleanup()
        state.remove_record_if_ours(root)


def _announcement(
    options: ServerOptions, base_url: str, root: Path, workers: int, gpus: list[str]
) -> str:
    lines = [
        f"tetra-magic local endpoint: {base_url}/{options.endpoint_id}",
        f"  base URL {base_url}, endpoint id {options.endpoint_id!r}",
        f"  token: Authorization: Bearer $(cat {root / state.TOKEN_FILE})",
        f"  {workers} worker(s)" + (f" on GPU(s) {', '.join(gpus)}" if gpus else " (no GPU)"),
    ]
    if options.host not in ("127.0.0.1", "localhost", "::1"):
        lines.append(f"  listening on {options.host or 'all interfaces'}: the token is required")
    return "\n".join(lines)


async def _idle_watch(api: Api, idle_timeout: float, stop: asyncio.Event) -> None:
    """Stop the server once no client has called for `idle_timeout` s and no job is pending."""
    while not stop.is_set():
        await asyncio.sleep(min(5.0, idle_timeout / 4))
        idle = time.monotonic() - api.last_activity
        if idle >= idle_timeout and api.store.pending() == 0:
            log.info("idle for %.0f s: stopping", idle)
            stop.set()


def run_forever(options: ServerOptions, announce: Callable[[str], None] = print) -> None:
    """Blocking entry point for `python -m tetra_magic.local`."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(options, announce))
