"""The routes: RunPod's Serverless REST API for clients, and the job API its SDK workers call.

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

The routes are generic: they never look inside job inputs or stream chunks (the job store reads
one field of an input, the session that pins a job to a worker). server.py serves them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from tetra_magic.cloud.limits import RUN_PAYLOAD_LIMIT, RUNSYNC_PAYLOAD_LIMIT, STREAM_CHUNK_LIMIT
from tetra_magic.local.job_store import JobStore
from tetra_magic.local.jobs import Job, Policy, PolicyError
from tetra_magic.local.request_checks import (
    ApiError,
    SdkCredential,
    bearer_token,
    json_body,
    json_errors,
    parse_json,
    read_limited,
    same_secret,
)
from tetra_magic.local.workers import Supervisor

log = logging.getLogger("tetra_magic.local.server")

# A job-done post carries a streaming job's whole aggregated output, so it may be large; each
# job-stream post is one chunk, held to RunPod's limit so a worker's oversized chunk fails here.
WORKER_POST_LIMIT = 1_000_000_000
RUNSYNC_WAIT_MS = (1_000, 90_000, 300_000)  # min, default, max of ?wait
STREAM_HOLD_S = 1.0
TAKE_WAIT_S = 20.0
STOP_WAIT_S = 30.0


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
        given = bearer_token(request)
        if not given:
            raise ApiError(401, "missing Authorization header: send 'Authorization: Bearer TOKEN'")
        if not same_secret(given, self.token):
            raise ApiError(401, "invalid token for this local endpoint")
        self._endpoint(request)
        if activity:
            self.last_activity = time.monotonic()

    def _worker(self, request: web.Request) -> str:
        """Worker routes: the token, or the SDK's configured key; returns the worker id."""
        given = bearer_token(request)
        sdk_key = self.sdk_credential.value()
        if not (
            same_secret(given, self.token) or (sdk_key is not None and same_secret(given, sdk_key))
        ):
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
        data = parse_json(await read_limited(request, limit), "the request body")
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
        body = await json_body(request, STREAM_CHUNK_LIMIT)
        self.store.add_stream(request.match_info["job_id"], worker_id, body)
        return web.json_response({})

    async def job_done(self, request: web.Request) -> web.Response:
        worker_id = self._worker(request)
        job_id = request.match_info["job_id"]
        if not self.store.finish(job_id, worker_id, await json_body(request, WORKER_POST_LIMIT)):
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
