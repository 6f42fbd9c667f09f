"""A loopback stand-in for RunPod's cloud, so the cloud tests never reach RunPod.

`FakeRunPod` serves, on one 127.0.0.1 port and for one account:

- RunPod's REST API v2 for management at /v2/serverless and /v2/account (the magic's
  RUNPOD_REST_BASE_URL). Each route follows one operation of RunPod's OpenAPI document
  (`api-reference-v2/openapi.json` in runpod/docs, Frontdoor v2.9.0, 2026-08-18; the docs page is
  docs.runpod.io/<page> as named at each route in `_ROUTES`), and validates bodies as that
  document does: 422 with `errors` for an unknown property (`unevaluatedProperties: false`), a
  missing required one or a value outside its schema; 400 for a broken rule (neither or both of
  `gpu` and `cpu`, no image, a compute family changed, excluded types outside the pools, max
  workers past the account's quota, in RunPod's own sentence). Every error is an RFC 9457
  problem object (`application/problem+json`: title, status, detail[, errors]). The key is
  accepted only as `Authorization: Bearer KEY` (401 otherwise). 429s can be forced, with
  RunPod's `RateLimit` headers. What ../shared/runpod-rest-v2.md marks ASSUMED is served as it
  assumes: GET /v2/account/limits with `serverlessWorkers: {limit, used}`, the quota refusal
  as a 400.
- RunPod's GraphQL API, retired: any request to /graphql is counted in `graphql_requests` and
  answered 410 with RunPod's retirement message (ASSUMED shape), so nothing can depend on it
  silently. RUNPOD_API_BASE_URL (the runpod SDK's GraphQL base) points here too.
- RunPod's serverless job API at /v2/{endpoint_id}/ (RUNPOD_ENDPOINT_BASE_URL): `POST /run`,
  `GET|POST /status/{id}` and `/stream/{id}`, `POST /cancel/{id}`, `GET /health`, authorised by
  `Authorization: Bearer KEY` (401 otherwise), with RunPod's documented per-endpoint rate
  limits (429 with Retry-After past them; tests may lower them or force 429s), and jobs that
  stay IN_QUEUE for `queue_seconds`, as on a cold start, before they run.

Every request is recorded in `requests` (which API, method, path, query, status, body, and
the names of the headers that carried the key; never a header's value).

An endpoint's jobs run on its workers, at most `workers.max` at once (the rest wait IN_QUEUE:
with max workers 0, as RunPod leaves an endpoint idle for 7 days, they wait for ever), and, as
on RunPod, a job goes to any worker of the endpoint: here the one idle longest, or a new one
while there are fewer than max workers, so consecutive jobs move between workers; a worker
idle past the endpoint's `workers.idleTimeout` is gone, and the next job gets a new one. A
worker's id is the job's `workerId`, and the worker id its response reports. `/health` counts
the workers so: idle, running, and initializing ones for jobs waiting while max workers allows
more.

Each job runs in a subprocess that does with a FunctionRequest what the published tetra worker
does (exec the function code, call the function with the unpickled arguments, return base64
cloudpickle) and reports in our worker's streaming shape: an "info" chunk (worker id, Python,
the GPU of the endpoint's first pool), "stdout"/"stderr" chunks as they come, then a "response"
chunk; /status's output is every chunk, as with the SDK's `return_aggregate_stream`. It stands
in for a worker on a RunPod GPU; the real worker has its own tests (tests/worker/test_worker.py).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# RunPod's documented serverless rate limits: (requests, seconds) per endpoint and operation.
RATE_LIMITS = {"run": (1000, 10.0), "status": (2000, 10.0), "cancel": (100, 10.0)}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
# RunPod's GPU pools and the GPU types in each (the pools' descriptions in runpod-flash 1.21.0,
# `GpuGroup`), written out here so that the stand-in does not agree with the magic by copying it.
POOLS = {
    "ADA_24": ["NVIDIA GeForce RTX 4090"],
    "ADA_32_PRO": ["NVIDIA GeForce RTX 5090"],
    "ADA_48_PRO": ["NVIDIA RTX 6000 Ada Generation", "NVIDIA L40", "NVIDIA L40S"],
    "ADA_80_PRO": ["NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA H100 NVL"],
    "AMPERE_16": [
        "NVIDIA RTX A4000", "NVIDIA RTX A4500", "NVIDIA RTX 4000 Ada Generation",
        "NVIDIA RTX 2000 Ada Generation",
    ],
    "AMPERE_24": ["NVIDIA RTX A5000", "NVIDIA L4", "NVIDIA GeForce RTX 3090"],
    "AMPERE_48": ["NVIDIA A40", "NVIDIA RTX A6000"],
    "AMPERE_80": ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"],
    "HOPPER_141": ["NVIDIA H200"],
    "BLACKWELL_96": [
        "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
        "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition",
    ],
    "BLACKWELL_180": ["NVIDIA B200"],
}  # fmt: skip
# createEndpoint / updateEndpoint bodies (`CreateEndpointRequest`, `UpdateEndpointRequest`).
ENDPOINT_FIELDS = {
    "name", "type", "image", "templateId", "args", "disk", "ports", "env", "registry",
    "workers", "scaling", "gpu", "cpu", "dataCenterIds", "networkVolumes", "timeout", "flashboot",
}  # fmt: skip
NESTED = {
    "workers": {"min", "max", "idleTimeout"},
    "scaling": {"type", "queueDelay", "requestCount"},
    "gpu": {"pools", "count", "excludedTypes", "allowedCudaVersions", "minCudaVersion"},
}
ENUMS = {
    "type": ("QUEUE", "LOAD_BALANCER"),
    "flashboot": ("OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT"),
}
INTEGERS = {"disk": 1, "timeout": 1}  # field -> least value
RETIRED = (
    "The GraphQL API has been retired. Use the Runpod REST API v2 (https://api.runpod.io/v2);"
    " see https://docs.runpod.io/api-reference-v2/overview"
)
QUOTA = "Max workers across all endpoints must not exceed your workers quota ({})"
TITLES = {
    400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
    410: "Gone", 422: "Unprocessable Entity", 429: "Too Many Requests",
}  # fmt: skip


def problem(status: int, detail: str, errors: list[str] | None = None) -> Answer:
    """An RFC 9457 problem object, as REST v2 answers every error (`ErrorResponse`)."""
    body: dict[str, Any] = {"title": TITLES[status], "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return status, body, {"Content-Type": "application/problem+json"}


Answer = tuple[int, Any, dict[str, str]]


def _schema_errors(body: Any, create: bool) -> list[str]:
    """What RunPod's JSON schema would say of an endpoint body (422's `errors`)."""
    if not isinstance(body, dict):
        return ["$: expected object"]
    errors = [
        f"$: additional properties '{k}' not allowed" for k in body if k not in ENDPOINT_FIELDS
    ]
    if not create and "type" in body:
        errors.append("$: additional properties 'type' not allowed")
    missing = [k for k in ("name", "type", "scaling") if create and k not in body]
    errors += [f"$: missing properties '{k}'" for k in missing]
    for key, allowed in NESTED.items():
        value = body.get(key)
        if key in body and not isinstance(value, dict):
            errors.append(f"$.{key}: expected object")
        elif isinstance(value, dict):
            errors += [
                f"$.{key}: additional properties '{k}' not allowed"
                for k in value
                if k not in allowed
            ]
    for key, values in ENUMS.items():
        if key in body and body[key] not in values:
            errors.append(f"$.{key}: value must be one of {', '.join(map(repr, values))}")
    for key, least in INTEGERS.items():
        if key in body and not (type(body[key]) is int and body[key] >= least):
            errors.append(f"$.{key}: must be an integer >= {least}")
    if "env" in body and not (
        isinstance(body["env"], dict) and all(isinstance(v, str) for v in body["env"].values())
    ):
        errors.append("$.env: expected object of strings")
    return errors + _workers_errors(body) + _hardware_errors(body)


def _workers_errors(body: dict[str, Any]) -> list[str]:
    workers, scaling = body.get("workers"), body.get("scaling")
    errors = []
    if isinstance(workers, dict):
        for key, (least, most) in {
            "min": (0, 10**4),
            "max": (0, 10**4),
            "idleTimeout": (1, 3600),
        }.items():
            value = workers.get(key, least)
            if not (type(value) is int and least <= value <= most):
                errors.append(f"$.workers.{key}: must be an integer in {least}..{most}")
    if isinstance(scaling, dict):
        kind = scaling.get("type")
        if kind == "QUEUE_DELAY" and not scaling.get("queueDelay", 0) >= 0.5:
            errors.append("$.scaling.queueDelay: must be >= 0.5")
        elif kind == "REQUEST_COUNT" and not scaling.get("requestCount", 0) >= 1:
            errors.append("$.scaling.requestCount: must be >= 1")
        elif kind not in ("QUEUE_DELAY", "REQUEST_COUNT"):
            errors.append("$.scaling.type: value must be one of 'QUEUE_DELAY', 'REQUEST_COUNT'")
    return errors


def _hardware_errors(body: dict[str, Any]) -> list[str]:
    gpu, cpu = body.get("gpu"), body.get("cpu")
    errors = []
    if isinstance(gpu, dict):
        pools = gpu.get("pools")
        if not isinstance(pools, list) or not pools:
            errors.append("$.gpu: missing properties 'pools'")
        else:
            errors += [
                f"$.gpu.pools[{n}]: value must be one of the GPU pool ids"
                for n, pool in enumerate(pools)
                if pool not in POOLS
            ]
        if not (type(gpu.get("count", 1)) is int and gpu.get("count", 1) >= 1):
            errors.append("$.gpu.count: must be an integer >= 1")
    if "cpu" in body:
        if not isinstance(cpu, list) or not cpu:
            return [*errors, "$.cpu: expected a non-empty array"]
        for n, flavor in enumerate(cpu):
            if not isinstance(flavor, dict) or set(flavor) - {"id", "vcpuCount"}:
                errors.append(f"$.cpu[{n}]: expected object with id and vcpuCount")
                continue
            count = flavor.get("vcpuCount")
            if not (type(count) is int and count >= 2 and count & (count - 1) == 0):
                errors.append(f"$.cpu[{n}].vcpuCount: must be a power of two >= 2")
    return errors


def _rule_errors(body: dict[str, Any], current: dict[str, Any] | None) -> str | None:
    """The 400 for a body that fits the schema but not RunPod's rules (None if it fits)."""
    if current is None and ("gpu" in body) == ("cpu" in body):
        return "Exactly one of gpu or cpu must be set."
    if current is None and not body.get("image") and not body.get("templateId"):
        return "image is required unless templateId is given."
    if current is not None and (
        ("gpu" in body and current.get("gpu") is None)
        or ("cpu" in body and current.get("gpu") is not None)
    ):
        return "The compute family of an endpoint cannot change (gpu/cpu)."
    gpu = body.get("gpu") or {}
    chosen = [t for pool in gpu.get("pools") or [] for t in POOLS[pool]]
    for excluded in gpu.get("excludedTypes") or []:
        if excluded not in chosen:
            return f"excludedTypes: {excluded!r} is not a GPU type of the pools {gpu['pools']}."
    if chosen and not set(chosen) - set(gpu.get("excludedTypes") or []):
        return "excludedTypes excludes every GPU type of the pools."
    workers = {**(current or {}).get("workers", {}), **(body.get("workers") or {})}
    if workers.get("min", 0) > workers.get("max", 3):
        return "workers.min must not be greater than workers.max."
    return None


# ---------------------------------------------------------------- the account and its jobs


@dataclass
class Request:
    """One request the fake answered: `api` is "management" (REST v2), "jobs" or "graphql";
    `key_headers` names the headers whose value held a watched key (never their values)."""

    at: float
    api: str
    method: str
    path: str
    query: str
    status: int
    body: bytes
    key_headers: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Job:
    id: str
    endpoint_id: str
    input: dict[str, Any]
    timeout_s: float
    created: float
    status: str = "IN_QUEUE"
    chunks: list[dict[str, Any]] = field(default_factory=list)
    delivered: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    worker_id: str = ""
    process: subprocess.Popen | None = None


@dataclass
class EndpointWorker:
    """One worker of an endpoint, alive from its first job until it idles past the timeout."""

    id: str = field(default_factory=lambda: f"fake-{secrets.token_hex(3)}")
    busy: bool = False
    idle_since: float = 0.0


# (method, path pattern) -> (operationId, the docs page it follows); `{id}` is one segment.
_ROUTES = {
    ("GET", "v2/serverless"): ("listEndpoints", "api-reference-v2/serverless/list-endpoints"),
    ("POST", "v2/serverless"): ("createEndpoint", "api-reference-v2/serverless/create-endpoint"),
    ("GET", "v2/serverless/{id}"): ("getEndpoint", "api-reference-v2/serverless/get-endpoint"),
    ("PATCH", "v2/serverless/{id}"): (
        "updateEndpoint", "api-reference-v2/serverless/update-endpoint",
    ),
    ("DELETE", "v2/serverless/{id}"): (
        "deleteEndpoint", "api-reference-v2/serverless/delete-endpoint",
    ),
    ("GET", "v2/account"): ("getAccount", "api-reference-v2/account/get-your-account"),
    # ASSUMED path (the page exists; its method/path block could not be read)
    ("GET", "v2/account/limits"): (
        "getAccountLimits", "api-reference-v2/account/get-account-limits",
    ),
}  # fmt: skip
MANAGEMENT = ("serverless", "account", "templates")


class FakeRunPod:
    """RunPod's REST API v2 and serverless job API for one account (and its retired GraphQL),
    on loopback."""

    def __init__(self, api_key: str, queue_seconds: float = 0.0) -> None:
        self.api_key = api_key
        # Keys to look for in every request (the first stays watched when a test changes it).
        self.watched = {api_key}
        self.queue_seconds = queue_seconds
        self.worker_python: str | None = None  # report another Python than the real one
        # What /health reports of the workers, as RunPod does while a cold start is slow, no
        # GPU of the type is free, or workers crash at start; None: counted from the jobs.
        self.workers: dict[str, int] | None = None
        self.limits = dict(RATE_LIMITS)
        # The account's serverlessWorkers limit (RunPod's is 5 to 60 by balance; high enough
        # here that tests which do not test it never meet it), and what /v2/account/limits
        # answers when a test gives another shape (None: the assumed one).
        self.worker_quota = 60
        self.account_limits: Any = None
        self.requests: list[Request] = []
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self.fleets: dict[str, list[EndpointWorker]] = {}  # endpoint id -> its workers
        self.forced_429: list[float] = []  # Retry-After seconds of the next forced job 429s
        self.forced_429_management: list[float] = []  # RateLimit t= of the next REST v2 429s
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.RLock()
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-runpod-"))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """What points the magic (and the runpod SDK, were it to send GraphQL) at this fake."""
        return {
            "RUNPOD_REST_BASE_URL": f"{self.url}/v2",
            "RUNPOD_ENDPOINT_BASE_URL": f"{self.url}/v2",
            "RUNPOD_API_BASE_URL": self.url,
        }

    def close(self) -> None:
        with self._lock:
            for job in self.jobs.values():
                if job.process and job.process.poll() is None:
                    job.process.kill()
        self._server.shutdown()
        self._server.server_close()

    @property
    def graphql_requests(self) -> list[Request]:
        return [r for r in self.requests if r.api == "graphql"]

    @property
    def management(self) -> list[Request]:
        """The REST v2 requests so far."""
        return [r for r in self.requests if r.api == "management"]

    def calls(self, operation: str) -> list[Request]:
        """The REST v2 requests of one operation (e.g. "createEndpoint"), answered or not."""
        return [r for r in self.management if operation_id(r.method, r.path) == operation]

    def created(self) -> list[dict[str, Any]]:
        """The bodies of the endpoints created so far."""
        return [r.json() for r in self.calls("createEndpoint") if r.status == 201]

    def add_endpoint(
        self, name: str, pools: tuple[str, ...] = ("AMPERE_80",), workers_max: int = 3
    ) -> str:
        """An endpoint made elsewhere (RunPod's console); its id."""
        body = {
            "name": name,
            "type": "QUEUE",
            "image": "someone/else:latest",
            "gpu": {"pools": list(pools)},
            "workers": {"max": workers_max},
            "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
        }
        with self._lock:
            record = self._new_endpoint(body)
            return record["id"]

    def scale_down(self, endpoint_id: str, workers_max: int = 0) -> None:
        """What RunPod does to an endpoint without requests for 3 days (max workers 2) or 7
        (0): "it stays at its reduced max workers until you raise the value yourself"."""
        with self._lock:
            self.endpoints[endpoint_id]["workers"]["max"] = workers_max
            self._trim_fleet(endpoint_id)

    # ------------------------------------------------------------ REST API v2 (management)

    def manage(self, method: str, path: str, body: bytes) -> Answer:
        """(status, JSON answer, headers) for one REST v2 request past authorisation."""
        operation = operation_id(method, path)
        if operation is None:
            known = any(p == _pattern(path) for _, p in _ROUTES)
            return problem(405 if known else 404, f"No route for {method} {path}.")
        with self._lock:
            if self.forced_429_management:
                wait = math.ceil(self.forced_429_management.pop(0))
                status, answer, _ = problem(429, "Rate limit exceeded.")
                return status, answer, {
                    "Content-Type": "application/problem+json",
                    "RateLimit": f'"serverless";r=0;t={wait}',
                    "RateLimit-Policy": '"serverless";q=100;w=10',
                }  # fmt: skip
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                return problem(400, "The request body is not valid JSON.")
            endpoint_id = path.strip("/").split("/")[2] if "{id}" in _pattern(path) else ""
            return getattr(self, "_" + operation)(endpoint_id, parsed)

    def _listEndpoints(self, _: str, __: Any) -> Answer:
        return 200, {"endpoints": [json.loads(json.dumps(e)) for e in self.endpoints.values()]}, {}

    def _refused(self, body: Any, current: dict[str, Any] | None, adding: int) -> Answer | None:
        """RunPod's refusal of a create (`current` None) or update body: 422 for the schema,
        400 for its rules or for `adding` max workers past the quota; None to go ahead."""
        errors = _schema_errors(body, create=current is None)
        if errors:
            return problem(422, "Request validation failed.", errors)
        rule = _rule_errors(body, current)
        if rule:
            return problem(400, rule)
        if adding > 0 and self._workers_in_use() + adding > self.worker_quota:
            return problem(400, QUOTA.format(self.worker_quota))
        return None

    def _getEndpoint(self, endpoint_id: str, _: Any) -> Answer:
        if endpoint_id not in self.endpoints:
            return problem(404, f"Endpoint {endpoint_id} not found.")
        return 200, json.loads(json.dumps(self.endpoints[endpoint_id])), {}

    def _createEndpoint(self, _: str, body: Any) -> Answer:
        refused = self._refused(body, None, body.get("workers", {}).get("max", 3))
        return refused or (201, self._new_endpoint(body), {})

    def _updateEndpoint(self, endpoint_id: str, body: Any) -> Answer:
        current = self.endpoints.get(endpoint_id)
        if current is None:
            return problem(404, f"Endpoint {endpoint_id} not found.")
        raised = body.get("workers", {}).get("max", 0) - current["workers"]["max"]
        if refused := self._refused(body, current, raised):
            return refused
        for key, value in body.items():  # partial: only the fields present change
            merge = key in NESTED and isinstance(current.get(key), dict)
            current[key] = {**current[key], **value} if merge else value
        self._trim_fleet(endpoint_id)
        return 200, json.loads(json.dumps(current)), {}

    def _deleteEndpoint(self, endpoint_id: str, _: Any) -> Answer:
        if self.endpoints.pop(endpoint_id, None) is None:
            return problem(404, f"Endpoint {endpoint_id} not found.")
        for job in self.jobs.values():  # "any queued or in-progress jobs are cancelled"
            if job.endpoint_id == endpoint_id and job.status not in FINAL:
                self._finish(job, "CANCELLED")
        return 204, None, {}

    def _getAccount(self, _: str, __: Any) -> Answer:
        return 200, {"id": "user_fake", "email": "fake@example.com"}, {}

    def _getAccountLimits(self, _: str, __: Any) -> Answer:
        if self.account_limits is not None:
            return 200, self.account_limits, {}
        workers = {"limit": self.worker_quota, "used": self._workers_in_use()}
        return 200, {"spendRate": {"limit": 80.0, "used": 0.0}, "serverlessWorkers": workers}, {}

    def _workers_in_use(self) -> int:
        """The sum of max workers over the account's endpoints (RunPod's quota measure)."""
        return sum(e["workers"]["max"] for e in self.endpoints.values())

    def _new_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        """An `Endpoint` as createEndpoint answers it, from a valid body; stored."""
        endpoint_id = secrets.token_hex(7)
        jobs = f"{self.url}/v2/{endpoint_id}"
        paths = ("run", "runsync", "status", "stream", "cancel", "retry", "purge-queue", "health")
        gpu = body.get("gpu")
        record: dict[str, Any] = {
            "id": endpoint_id,
            "name": body["name"],
            "type": body["type"],
            "requestUrls": {_camel(p): f"{jobs}/{p}" for p in paths},
            "image": body.get("image"),
            "args": body.get("args", ""),
            "disk": body.get("disk", 10),
            "ports": body.get("ports", []),
            "env": body.get("env", {}),
            "registry": body.get("registry"),
            "gpu": None
            if gpu is None
            else {
                "pools": gpu["pools"],
                "count": gpu.get("count", 1),
                "excludedTypes": gpu.get("excludedTypes", []),
                "allowedCudaVersions": gpu.get("allowedCudaVersions", []),
                "minCudaVersion": gpu.get("minCudaVersion"),
            },
            "workers": {"min": 0, "max": 3, "idleTimeout": 10, **body.get("workers", {})},
            "scaling": body["scaling"],
            "dataCenterIds": body.get("dataCenterIds", []),
            "networkVolumes": body.get("networkVolumes", []),
            "timeout": body.get("timeout", 300_000),
            "flashboot": body.get("flashboot", "OFF"),
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if "cpu" in body:
            record["cpu"] = [{**c, "memory": 2 * c["vcpuCount"]} for c in body["cpu"]]
        self.endpoints[endpoint_id] = record
        return json.loads(json.dumps(record))

    def _trim_fleet(self, endpoint_id: str) -> None:
        """RunPod stops idle workers past a lowered max workers."""
        fleet = self.fleets.get(endpoint_id, [])
        most = self.endpoints[endpoint_id]["workers"]["max"]
        while len(fleet) > most and any(not w.busy for w in fleet):
            fleet.remove(next(w for w in fleet if not w.busy))

    # ------------------------------------------------------------ the serverless job API

    def jobs_api(self, method: str, path: str, body: bytes) -> Answer:
        """(status, JSON answer, extra headers) for one job API request past authorisation."""
        parts = path.strip("/").split("/")  # v2, endpoint, operation[, job]
        if len(parts) < 3 or parts[0] != "v2" or parts[1] not in self.endpoints:
            return 404, {"error": "endpoint not found"}, {}
        endpoint_id, operation = parts[1], parts[2]
        group = {"stream": "status"}.get(operation, operation)
        throttled = self._throttle(endpoint_id, group)
        if throttled is not None:
            return 429, {"error": "rate limited"}, {"Retry-After": str(throttled)}
        if operation == "run" and method == "POST" and len(parts) == 3:
            return self._run(endpoint_id, json.loads(body or b"{}"))
        if operation == "health" and method == "GET":
            return 200, self._health(endpoint_id), {}
        if len(parts) == 4 and operation in ("status", "stream", "cancel"):
            job = self.jobs.get(parts[3])
            if job is None or job.endpoint_id != endpoint_id:
                return 404, {"error": "request does not exist"}, {}
            if operation == "cancel" and method == "POST":
                return 200, self._cancel(job), {}
            if operation != "cancel":
                return 200, (self._status(job) if operation == "status" else self._stream(job)), {}
        return 405 if operation in ("run", "health", "cancel") else 404, {"error": "no route"}, {}

    def _throttle(self, endpoint_id: str, group: str) -> int | None:
        """Seconds to wait, for a forced or rate-limited request; None to go ahead."""
        with self._lock:
            if self.forced_429:
                return math.ceil(self.forced_429.pop(0))
            limit, window = self.limits.get(group, (10**9, 10.0))
            seen = self._windows.setdefault((endpoint_id, group), deque())
            now = time.monotonic()
            while seen and seen[0] <= now - window:
                seen.popleft()
            if len(seen) >= limit:
                return max(1, math.ceil(seen[0] + window - now))
            seen.append(now)
            return None

    def _run(self, endpoint_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict]:
        if not isinstance(body.get("input"), dict):
            return 400, {"error": "input is required"}, {}
        timeout_ms = (body.get("policy") or {}).get("executionTimeout")
        default_ms = self.endpoints[endpoint_id]["timeout"]
        job = Job(
            id=f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-u1",
            endpoint_id=endpoint_id,
            input=body["input"],
            timeout_s=(timeout_ms or default_ms) / 1000,
            created=time.monotonic(),
        )
        with self._lock:
            self.jobs[job.id] = job
        threading.Thread(target=self._work, args=(job,), daemon=True).start()
        return 200, {"id": job.id, "status": "IN_QUEUE"}, {}

    def _status(self, job: Job) -> dict[str, Any]:
        with self._lock:
            answer: dict[str, Any] = {"id": job.id, "status": job.status}
            if job.started is not None:
                answer["delayTime"] = int((job.started - job.created) * 1000)
                answer["workerId"] = job.worker_id
            if job.status in FINAL:
                answer["executionTime"] = int(((job.finished or 0) - (job.started or 0)) * 1000)
                if job.status == "COMPLETED":
                    answer["output"] = list(job.chunks)
                elif job.error:
                    answer["error"] = job.error
            return answer

    def _stream(self, job: Job) -> dict[str, Any]:
        with self._lock:
            new = job.chunks[job.delivered :]
            job.delivered = len(job.chunks)
            return {"status": job.status, "stream": [{"output": chunk} for chunk in new]}

    def _cancel(self, job: Job) -> dict[str, Any]:
        with self._lock:
            if job.status not in FINAL:
                self._finish(job, "CANCELLED")
            return {"id": job.id, "status": job.status}

    def _health(self, endpoint_id: str) -> dict[str, Any]:
        with self._lock:
            mine = [j for j in self.jobs.values() if j.endpoint_id == endpoint_id]
            count = lambda *s: sum(j.status in s for j in mine)  # noqa: E731
            return {
                "jobs": {
                    "completed": count("COMPLETED"),
                    "failed": count("FAILED", "TIMED_OUT"),
                    "inProgress": count("IN_PROGRESS"),
                    "inQueue": count("IN_QUEUE"),
                    "retried": 0,
                },
                "workers": self.workers or self._worker_states(endpoint_id, count("IN_QUEUE")),
            }

    def _worker_states(self, endpoint_id: str, queued: int) -> dict[str, int]:
        """Idle and running workers, and initializing ones for queued jobs while max workers
        allows more; all 0 at max workers 0."""
        fleet = self._live_fleet(endpoint_id)
        room = max(self.endpoints[endpoint_id]["workers"]["max"] - len(fleet), 0)
        busy = sum(w.busy for w in fleet)
        return {
            "idle": len(fleet) - busy,
            "running": busy,
            "initializing": min(queued, room),
            "throttled": 0,
            "unhealthy": 0,
        }

    def _live_fleet(self, endpoint_id: str) -> list[EndpointWorker]:
        """The endpoint's workers, less those idle past its idle timeout (gone)."""
        idle_timeout = self.endpoints[endpoint_id]["workers"]["idleTimeout"]
        now = time.monotonic()
        fleet = self.fleets.setdefault(endpoint_id, [])
        fleet[:] = [w for w in fleet if w.busy or now - w.idle_since < idle_timeout]
        return fleet

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        job.status, job.error, job.finished = status, error, time.monotonic()
        if job.process and job.process.poll() is None:
            job.process.kill()

    # ------------------------------------------------------------ the stand-in worker

    def _worker_for(self, endpoint_id: str) -> EndpointWorker | None:
        """A worker for a job leaving the queue (RunPod keeps none for anyone): a new one while
        the endpoint has fewer than max workers, else the one idle longest; None if all are
        busy, or the endpoint is gone."""
        if endpoint_id not in self.endpoints:
            return None
        fleet = self._live_fleet(endpoint_id)
        idle = [w for w in fleet if not w.busy]
        if len(fleet) < self.endpoints[endpoint_id]["workers"]["max"]:
            fleet.append(EndpointWorker())
            idle = fleet[-1:]
        if not idle:
            return None
        worker = min(idle, key=lambda w: w.idle_since)
        worker.busy = True
        return worker

    def _work(self, job: Job) -> None:
        worker = None
        while worker is None:
            if job.status in FINAL:
                return
            if time.monotonic() >= job.created + self.queue_seconds:
                with self._lock:
                    worker = self._worker_for(job.endpoint_id)
            if worker is None:
                time.sleep(0.02)
        try:
            self._work_on(job, worker.id)
        finally:
            with self._lock:
                worker.busy, worker.idle_since = False, time.monotonic()

    def _work_on(self, job: Job, worker_id: str) -> None:
        request = self._tmp / f"{job.id}.json"
        result = self._tmp / f"{job.id}.out.json"
        request.write_text(json.dumps(job.input))
        with self._lock:
            if job.status in FINAL:
                return
            job.status, job.started = "IN_PROGRESS", time.monotonic()
            job.worker_id = worker_id
            job.chunks.append(self._info(job))
            job.process = subprocess.Popen(
                [sys.executable, "-c", WORKER_SCRIPT, str(request), str(result)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_worker_env(),
            )
        readers = [
            threading.Thread(target=self._read, args=(job, job.process.stdout, "stdout")),
            threading.Thread(target=self._read, args=(job, job.process.stderr, "stderr")),
        ]
        for reader in readers:
            reader.start()
        try:
            job.process.wait(timeout=job.timeout_s)
        except subprocess.TimeoutExpired:
            with self._lock:
                self._finish(job, "TIMED_OUT", "job timed out")
        for reader in readers:
            reader.join()
        self._respond(job, result)

    def _info(self, job: Job) -> dict[str, Any]:
        gpu = self.endpoints[job.endpoint_id].get("gpu") or {"pools": []}
        allowed = [
            t for p in gpu["pools"][:1] for t in POOLS[p] if t not in gpu.get("excludedTypes", [])
        ]
        gpus = allowed[-1:]  # the last type of the first pool not excluded, as RunPod chose it
        return {
            "kind": "info",
            "text": "",
            "worker_id": job.worker_id,
            "python": self.worker_python or _python(),
            "gpus": gpus,
            "gpu_memory_mb": [81920] * len(gpus),
        }

    def _read(self, job: Job, pipe: Any, kind: str) -> None:
        while block := pipe.read1(65536):
            with self._lock:
                job.chunks.append({"kind": kind, "text": block.decode(errors="replace")})

    def _respond(self, job: Job, result: Path) -> None:
        with self._lock:
            if job.status in FINAL:
                return
            if not result.exists():
                self._finish(job, "FAILED", "worker exited without a result")
                return
            response = json.loads(result.read_text())
            info = job.chunks[0]
            response["stdout"] = "".join(c["text"] for c in job.chunks if c["kind"] == "stdout")
            response["worker"] = {k: info[k] for k in ("worker_id", "python", "gpus")}
            job.chunks.append({"kind": "response", "text": "", "response": response})
            self._finish(job, "COMPLETED")


def _worker_env() -> dict[str, str]:
    """A RunPod worker's environment is its own: the user's key is not in it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}


def _python() -> str:
    import platform

    return platform.python_version()


# What the published tetra worker does with a FunctionRequest, in a fresh process.
WORKER_SCRIPT = r"""
import base64, json, sys, traceback
import cloudpickle
request = json.load(open(sys.argv[1]))
try:
    namespace = {}
    code = compile(request["function_code"], request.get("source_name") or "<function>", "exec")
    exec(code, namespace)
    args = [cloudpickle.loads(base64.b64decode(a)) for a in request.get("args", [])]
    kwargs = {
        k: cloudpickle.loads(base64.b64decode(v)) for k, v in request.get("kwargs", {}).items()
    }
    value = namespace[request["function_name"]](*args, **kwargs)
    response = {"success": True, "result": base64.b64encode(cloudpickle.dumps(value)).decode()}
except Exception as exc:
    response = {
        "success": False,
        "error": traceback.format_exc(),
        "error_type": type(exc).__name__,
        "failure": "exception",
    }
sys.stdout.flush()
json.dump(response, open(sys.argv[2], "w"))
"""


def operation_id(method: str, path: str) -> str | None:
    """The REST v2 operationId a request follows, if any."""
    route = _ROUTES.get((method, _pattern(path)))
    return route[0] if route else None


def _pattern(path: str) -> str:
    """A REST v2 path with its endpoint id as `{id}` (v2/serverless/abc -> v2/serverless/{id})."""
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[1] == "serverless":
        parts[2] = "{id}"
    return "/".join(parts)


def _camel(path: str) -> str:
    """requestUrls keys: runsync -> runSync, purge-queue -> purgeQueue."""
    return {"runsync": "runSync", "purge-queue": "purgeQueue"}.get(path, path)


def _handler(fake: FakeRunPod) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path, _, query = self.path.partition("?")
            api = self._api(path)
            if api == "graphql":
                status, answer, headers = 410, {"errors": [{"message": RETIRED}]}, {}
            elif not self._authorised(api):
                status, answer, headers = 401, None, {}
                if api == "management":
                    status, answer, headers = problem(401, "Missing or invalid API key.")
            elif api == "management":
                status, answer, headers = fake.manage(method, path, body)
            else:
                status, answer, headers = fake.jobs_api(method, path, body)
            holding = [k for k, v in self.headers.items() if any(w in v for w in fake.watched)]
            record = Request(time.monotonic(), api, method, path, query, status, body, holding)
            with fake._lock:
                fake.requests.append(record)
            self._send(status, answer, headers)

        @staticmethod
        def _api(path: str) -> str:
            parts = path.strip("/").split("/")
            if parts[0] == "graphql":
                return "graphql"
            return "management" if parts[1:2] and parts[1] in MANAGEMENT else "jobs"

        def _authorised(self, api: str) -> bool:
            """REST v2 takes the key as a bearer token only; the job API also as it stands
            (the runpod SDK's worker sends it so)."""
            given = self.headers.get("Authorization", "")
            accepted = [f"Bearer {fake.api_key}"] + ([fake.api_key] if api == "jobs" else [])
            return given in accepted

        def _send(self, status: int, answer: Any, headers: dict[str, str]) -> None:
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test output stays the tests'."""

    return Handler
