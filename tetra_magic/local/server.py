"""The HTTP side: RunPod's Serverless REST API for clients, and the job API its SDK workers call.

Client routes (`/v2/{endpoint_id}/...`, bearer token): run, runsync, status, stream, cancel,
health, purge-queue, with RunPod's JSON shapes, status codes and payload limits; and one of
ours, local-status (what `tetra-local status` shows: idle time, jobs, workers).

Worker routes, called by the runpod SDK's production loop in each worker (see workers.py):

    GET  job-take/{worker}?&job_in_progress=0|1     long-poll; 204 when no job came
    GET  job-take-batch/{worker}?&batch_size=N&...  the same, a list of up to N jobs
    GET  job-stop/{worker}?                         long-poll; {"jobsToStop": [ids]} or 204
    POST job-stream/{worker}/{job}?&isStream=false  one {"output": chunk}, sent as form text
    POST job-done/{worker}/{job}?&isStream=...      {"output": ...} or {"error": ...}
    GET  ping/{worker}?job_id=...&runpod_version=...

Workers authenticate with the token in `Authorization` (no "Bearer"), as the SDK sends it. The
SDK prefers the key in ~/.runpod/config.toml over RUNPOD_AI_API_KEY, so on a machine where the
user ran `runpod config` its workers present that key instead; worker routes accept it too
(only them, and only the exact value in that file), since it proves the same user as the token.

The server is generic: it never looks inside job inputs or stream chunks (the job store reads
one field of an input, the session that pins a job to a worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tetra_magic import credentials
from tetra_magic.local import state
from tetra_magic.local.jobs import Job, JobStore, Policy, PolicyError
from tetra_magic.local.workers import Supervisor, WorkerUrls, default_worker_count, detect_gpus
from tetra_magic.runpod_limits import RUN_PAYLOAD_LIMIT, RUNSYNC_PAYLOAD_LIMIT, STREAM_CHUNK_LIMIT

log = logging.getLogger("tetra_magic.local.server")

# A job-done post carries a streaming job's whole aggregated output, so it may be large; each
# job-stream post is one chunk, held to RunPod's limit so a worker's oversized chunk fails here.
WORKER_POST_LIMIT = 1_000_000_000
# Nesting a body may have: an answer puts a kept value up to 3 levels deeper, and Python's json
# writes nothing past ~1000 (RecursionError), so a deeper one would fail every later answer.
MAX_JSON_DEPTH = 512
DRAIN_LIMIT = 64_000_000  # read (and drop) oversized bodies up to this, so clients see the 413
RUNSYNC_WAIT_MS = (1_000, 90_000, 300_000)  # min, default, max of ?wait
STREAM_HOLD_S = 1.0
TAKE_WAIT_S = 20.0
STOP_WAIT_S = 30.0


class ApiError(Exception):
    """An error answer: HTTP status and the message for RunPod's {"error": ...} body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    workers: int | None = None
    endpoint_id: str = "local"
    idle_timeout: float | None = None


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error leaves as RunPod's {"error": "..."} body, router errors included."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason}: {request.method} {request.path}"
        # Only Allow (a 405's methods) carries over: the exception's own Content-Type would
        # clash with the JSON body's.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": message}, status=exc.status, headers=allow)


def _bearer(request: web.Request) -> str:
    value = request.headers.get("Authorization", "").strip()
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else value


def _same(a: str, b: str) -> bool:
    """Constant-time equality; a header's undecodable bytes (kept as surrogates) compare too."""
    return bool(a) and hmac.compare_digest(_bytes(a), _bytes(b))


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class SdkCredential:
    """The key the runpod SDK in our workers will send: the one in ~/.runpod/config.toml,
    read again only when the file changes."""

    def __init__(self) -> None:
        self.path = credentials.config_file()
        self._mtime: float | None = None
        self._value: str | None = None

    def value(self) -> str | None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return None
        if mtime != self._mtime:
            self._mtime, self._value = mtime, self._read()
        return self._value

    def _read(self) -> str | None:
        try:
            return credentials.config_key(self.path)
        except (OSError, UnicodeDecodeError, ValueError, ImportError):
            return None


class Api:
    """The route handlers, over one job store and one worker supervisor."""

    def __init__(
        self,
        store: JobStore,
        supervisor: Supervisor | None,
        token: str,
        endpoint_id: str,
        idle_timeout: float | None = None,
    ) -> None:
        self.store = store
        self.supervisor = supervisor
        self.token = token
        self.endpoint_id = endpoint_id
        self.idle_timeout = idle_timeout  # only reported; _idle_watch enforces it
        self.sdk_credential = SdkCredential()
        self.last_activity = time.monotonic()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors])
        prefix = "/v2/{endpoint_id}"
        add = app.router.add_route
        add("POST", f"{prefix}/run", self.run)
        add("POST", f"{prefix}/runsync", self.runsync)
        for method in ("GET", "POST"):
            add(method, f"{prefix}/status/{{job_id}}", self.status)
            add(method, f"{prefix}/stream/{{job_id}}", self.stream)
        add("POST", f"{prefix}/cancel/{{job_id}}", self.cancel)
        add("GET", f"{prefix}/health", self.health)
        add("POST", f"{prefix}/purge-queue", self.purge_queue)
        add("GET", f"{prefix}/local-status", self.local_status)
        add("GET", f"{prefix}/job-take/{{worker_id}}", self.job_take)
        add("GET", f"{prefix}/job-take-batch/{{worker_id}}", self.job_take_batch)
        add("GET", f"{prefix}/job-stop/{{worker_id}}", self.job_stop)
        add("POST", f"{prefix}/job-stream/{{worker_id}}/{{job_id}}", self.job_stream)
        add("POST", f"{prefix}/job-done/{{worker_id}}/{{job_id}}", self.job_done)
        add("GET", f"{prefix}/ping/{{worker_id}}", self.ping)
        return app

    # ----------------------------------------------------------------- checks

    def _endpoint(self, request: web.Request) -> None:
        asked = request.match_info["endpoint_id"]
        if asked != self.endpoint_id:
            raise ApiError(
                404, f"no endpoint {asked!r} here; this local endpoint is {self.endpoint_id!r}"
            )

    def _client(self, request: web.Request, *, activity: bool = True) -> None:
        """Client routes: the endpoint id must be ours and the token must match. A call counts
        as activity (it keeps an idle server up) unless `activity` is False."""
        given = _bearer(request)
        if not given:
            raise ApiError(401, "missing Authorization header: send 'Authorization: Bearer TOKEN'")
        if not _same(given, self.token):
            raise ApiError(401, "invalid token for this local endpoint")
        self._endpoint(request)
        if activity:
            self.last_activity = time.monotonic()

    def _worker(self, request: web.Request) -> str:
        """Worker routes: the token, or the SDK's configured key; returns the worker id."""
        given = _bearer(request)
        sdk_key = self.sdk_credential.value()
        if not (_same(given, self.token) or (sdk_key is not None and _same(given, sdk_key))):
            raise ApiError(401, "invalid worker credentials for this local endpoint")
        self._endpoint(request)
        worker_id = request.match_info["worker_id"]
        if self.supervisor is not None:
            self.supervisor.seen(worker_id)
        return worker_id

    def _job(self, request: web.Request) -> Job:
        job_id = request.match_info["job_id"]
        job = self.store.get(job_id)
        if job is None:
            why = self.store.why_gone(job_id)
            detail = f"it expired: {why}" if why else "no such job on this endpoint"
            raise ApiError(404, f"job {job_id} not found: {detail}")
        return job

    async def _job_request(self, request: web.Request, limit: int) -> dict[str, Any]:
        """A /run or /runsync body: size-checked, JSON, with an "input"."""
        data = _json(await _read_limited(request, limit), "the request body")
        if not isinstance(data, dict) or data.get("input") is None:
            raise ApiError(400, 'the request body must be a JSON object with an "input" field')
        return data

    def _submit(self, data: dict[str, Any], *, sync: bool) -> Job:
        try:
            policy = Policy.parse(data.get("policy"))
        except PolicyError as exc:
            raise ApiError(400, str(exc)) from None
        if self.supervisor is not None:
            self.supervisor.wake()  # before any worker could take it (see Supervisor.wake)
        return self.store.submit(data["input"], policy, sync=sync)

    # ----------------------------------------------------------------- client routes

    async def run(self, request: web.Request) -> web.Response:
        self._client(request)
        job = self._submit(await self._job_request(request, RUN_PAYLOAD_LIMIT), sync=False)
        return web.json_response({"id": job.id, "status": job.status.value})

    async def runsync(self, request: web.Request) -> web.Response:
        self._client(request)
        wait_s = _wait_param(request) / 1000
        job = self._submit(await self._job_request(request, RUNSYNC_PAYLOAD_LIMIT), sync=True)
        await job.wait_final(wait_s, self.store.clock)
        return web.json_response(job.doc(self.store.clock()))

    async def status(self, request: web.Request) -> web.Response:
        self._client(request)
        return web.json_response(self._job(request).doc(self.store.clock()))

    async def stream(self, request: web.Request) -> web.Response:
        """New chunks only; with none yet and the job still going, hold up to a second."""
        self._client(request)
        job = self._job(request)
        if job.delivered == len(job.stream) and not job.status.final:
            await job.wait_change(STREAM_HOLD_S)
        body: dict[str, Any] = {
            "status": job.status.value,
            "stream": [{"output": chunk} for chunk in job.new_chunks()],
        }
        if job.status.final and job.error is not None:
            body["error"] = job.error
        return web.json_response(body)

    async def cancel(self, request: web.Request) -> web.Response:
        self._client(request)
        job = self._job(request)
        self.store.cancel(job.id)
        return web.json_response({"id": job.id, "status": job.status.value})

    async def health(self, request: web.Request) -> web.Response:
        self._client(request)
        workers = self.supervisor.health() if self.supervisor is not None else {}
        return web.json_response({"jobs": self.store.counts(), "workers": workers})

    async def purge_queue(self, request: web.Request) -> web.Response:
        self._client(request)
        return web.json_response({"removed": self.store.purge_queue(), "status": "completed"})

    async def local_status(self, request: web.Request) -> web.Response:
        """Not RunPod's: /health plus how long no client has called and the idle timeout. It
        does not count as activity, so looking at an idle server does not keep it up."""
        self._client(request, activity=False)
        workers = self.supervisor.health() if self.supervisor is not None else {}
        return web.json_response(
            {
                "jobs": self.store.counts(),
                "workers": workers,
                "pending": self.store.pending(),
                "idle_s": round(time.monotonic() - self.last_activity, 1),
                "idle_timeout_s": self.idle_timeout,
            }
        )

    # ----------------------------------------------------------------- worker routes

    async def job_take(self, request: web.Request) -> web.Response:
        worker_id = self._take_prologue(request)
        job = await self.store.take(worker_id, TAKE_WAIT_S)
        if job is None:
            return web.Response(status=204)
        return web.json_response({"id": job.id, "input": job.input})

    async def job_take_batch(self, request: web.Request) -> web.Response:
        worker_id = self._take_prologue(request)
        try:
            size = max(1, int(request.query.get("batch_size", "1")))
        except ValueError:
            raise ApiError(400, "batch_size must be an integer") from None
        first = await self.store.take(worker_id, TAKE_WAIT_S)
        if first is None:
            return web.Response(status=204)
        jobs = [first]
        while len(jobs) < size and (more := self.store.take_nowait(worker_id)) is not None:
            jobs.append(more)
        return web.json_response([{"id": job.id, "input": job.input} for job in jobs])

    def _take_prologue(self, request: web.Request) -> str:
        worker_id = self._worker(request)
        if request.query.get("job_in_progress", "0") != "1":
            self.store.worker_idle(worker_id)
        return worker_id

    async def job_stop(self, request: web.Request) -> web.Response:
        worker_id = self._worker(request)
        job_ids = await self.store.stop_signals(worker_id, STOP_WAIT_S)
        if not job_ids:
            return web.Response(status=204)
        return web.json_response({"jobsToStop": job_ids})

    async def job_stream(self, request: web.Request) -> web.Response:
        worker_id = self._worker(request)
        body = await _json_body(request, STREAM_CHUNK_LIMIT)
        self.store.add_stream(request.match_info["job_id"], worker_id, body)
        return web.json_response({})

    async def job_done(self, request: web.Request) -> web.Response:
        worker_id = self._worker(request)
        job_id = request.match_info["job_id"]
        if not self.store.finish(job_id, worker_id, await _json_body(request, WORKER_POST_LIMIT)):
            log.info(
                "ignored a result for job %s from %s: the job had already ended", job_id, worker_id
            )
        return web.json_response({})

    async def ping(self, request: web.Request) -> web.Response:
        """The SDK's heartbeat; `job_id` lists the jobs the worker is working on (a,b)."""
        worker_id = self._worker(request)
        self.store.taken_up(worker_id, request.query.get("job_id", "").split(","))
        return web.json_response({})


def _wait_param(request: web.Request) -> int:
    """runsync's ?wait=MS, clamped to RunPod's range."""
    low, default, high = RUNSYNC_WAIT_MS
    raw = request.query.get("wait")
    if raw is None:
        return default
    try:
        return min(high, max(low, int(raw)))
    except ValueError:
        raise ApiError(400, f"wait must be a whole number of milliseconds, got {raw!r}") from None


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, or a 413 naming its size and the route's limit."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    route = path.split("/")[3] if path.count("/") >= 3 else path  # /v2/{endpoint_id}/ROUTE/...

    def too_large(size: int) -> ApiError:
        return ApiError(
            413,
            f"request body is {size / 1e6:.1f} MB; /{route} accepts at most {limit / 1e6:g} MB",
        )

    drain = max(limit, DRAIN_LIMIT)
    if request.content_length is not None and request.content_length > drain:
        raise too_large(request.content_length)
    data = bytearray()
    size = 0
    try:
        async for block in request.content.iter_chunked(1 << 16):
            size += len(block)
            if size <= limit:
                data += block
            elif size > drain:
                raise too_large(size)
    except web.RequestPayloadError as exc:  # a Content-Encoding its bytes do not follow
        raise ApiError(400, f"the request body could not be read: {exc}") from None
    if size > limit:
        raise too_large(size)
    return bytes(data)


async def _json_body(request: web.Request, limit: int) -> Any:
    """A worker post: JSON text, though the SDK labels it form-urlencoded."""
    return _json(await _read_limited(request, limit), "the worker's body")


def _json(body: bytes, what: str) -> Any:
    """`body` parsed, or a 400: invalid UTF-8 or JSON, or nested deeper than MAX_JSON_DEPTH
    (past ~1000 levels json raises RecursionError, not ValueError; short of that, a value we
    keep must still fit inside the answers that carry it back)."""
    too_deep = ApiError(400, f"{what} is JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise too_deep from None
    if _deeper(value, MAX_JSON_DEPTH):
        raise too_deep
    return value


def _deeper(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` deep (walked without
    recursion, which is what runs out)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (list, dict)):
            continue
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return False


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
