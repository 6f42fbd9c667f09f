"""Loopback stand-ins for RunPod's two APIs, so the cloud tests never reach RunPod.

`FakeRunPod` serves both on one 127.0.0.1 port, sharing one account's state:

- RunPod's GraphQL API at /graphql (the runpod SDK goes there when RUNPOD_API_BASE_URL points
  at the fake). It answers what the runpod SDK 1.12.0 sends and RunPod's GraphQL docs show
  ("Manage Endpoints", "Manage Templates"): `saveTemplate`, `saveEndpoint` (create; update when
  the input has an `id`), `deleteEndpoint(id:)` (refused unless scaled to zero workers, as the
  docs say), `deleteTemplate(templateName:)`, and `myself { endpoints {...} podTemplates {...} }`.
  Template names must be unique, as on RunPod. Unknown input fields are errors, as RunPod's
  schema makes them. Answers carry only the fields asked for. Every operation is recorded in
  `operations`; a wrong key is a 401, as the SDK expects.
- RunPod's serverless REST API at /v2/{endpoint_id}/ (RUNPOD_ENDPOINT_BASE_URL): `POST /run`,
  `GET|POST /status/{id}` and `/stream/{id}`, `POST /cancel/{id}`, `GET /health`, authorised by
  `Authorization: Bearer KEY` (401 otherwise), with RunPod's documented per-endpoint rate
  limits (429 with Retry-After past them; tests may lower them or force 429s), and jobs that
  stay IN_QUEUE for `queue_seconds`, as on a cold start, before they run. Every request is
  recorded in `requests` (method, path, status, body; never the Authorization header).

An endpoint's jobs run on its workers, at most `workersMax` at once (the rest wait IN_QUEUE),
and, as on RunPod, a job goes to any worker of the endpoint: here the one idle longest, or a new
one while there are fewer than `workersMax`, so consecutive jobs move between workers; a worker
idle past the endpoint's `idleTimeout` is gone, and the next job gets a new one. A worker's id
is the job's `workerId`, and the worker id its response reports.

Each job runs in a subprocess that does with a FunctionRequest what the published tetra worker
does (exec the function code, call the function with the unpickled arguments, return base64
cloudpickle) and reports in our worker's streaming shape: an "info" chunk (worker id, Python,
the GPU of the endpoint's first pool), "stdout"/"stderr" chunks as they come, then a "response"
chunk; /status's output is every chunk, as with the SDK's `return_aggregate_stream`. It stands
in for a worker on a RunPod GPU; the real worker has its own tests (tests/test_worker.py).
"""

from __future__ import annotations

import json
import math
import os
import re
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
GPU_NAMES = {
    "AMPERE_80": "NVIDIA A100 80GB PCIe",
    "ADA_80_PRO": "NVIDIA H100 80GB HBM3",
    "HOPPER_141": "NVIDIA H200",
    "ADA_24": "NVIDIA GeForce RTX 4090",
    "AMPERE_16": "NVIDIA RTX A4000",
}
TEMPLATE_INPUT = {
    "id", "name", "imageName", "dockerArgs", "containerDiskInGb", "volumeInGb",
    "volumeMountPath", "ports", "env", "isServerless", "containerRegistryAuthId", "startSsh",
    "isPublic", "readme",
}  # fmt: skip
ENDPOINT_INPUT = {
    "id", "name", "templateId", "gpuIds", "networkVolumeId", "locations", "idleTimeout",
    "scalerType", "scalerValue", "workersMin", "workersMax", "allowedCudaVersions", "gpuCount",
    "flashBootType", "executionTimeoutMs", "instanceIds",
}  # fmt: skip


# ---------------------------------------------------------------- GraphQL: parsing a document


class GraphQLError(Exception):
    """A request RunPod's GraphQL server would refuse; the message is what it answers."""


class EnumValue(str):
    """A bare GraphQL enum literal, such as FLASHBOOT."""


@dataclass
class Field:
    name: str
    args: dict[str, Any]
    selection: list[Field]


_TOKEN = re.compile(
    r"""(?P<skip>[\s,]+|\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
      | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
      | (?P<punct>[{}()\[\]:])""",
    re.VERBOSE,
)


def parse_document(text: str) -> tuple[str, list[Field]]:
    """(operation type, top-level fields) of a one-operation GraphQL document."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise GraphQLError(f"Syntax Error: Unexpected character {text[position]!r}")
        position = match.end()
        if match.lastgroup != "skip":
            tokens.append((match.lastgroup or "", match.group()))
    return _Parser(tokens).document()


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> str:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else "<EOF>"

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        if self.at >= len(self.tokens):
            raise GraphQLError("Syntax Error: Unexpected <EOF>")
        got_kind, got = self.tokens[self.at]
        if (kind and got_kind != kind) or (value and got != value):
            raise GraphQLError(f"Syntax Error: Expected {value or kind}, found {got!r}")
        self.at += 1
        return got

    def document(self) -> tuple[str, list[Field]]:
        operation = "query"
        if self.peek() in ("query", "mutation"):
            operation = self.take()
            if self.peek() != "{":
                self.take("name")
        fields = self.selection()
        if self.at != len(self.tokens):
            raise GraphQLError(f"Syntax Error: Unexpected {self.peek()!r}")
        return operation, fields

    def selection(self) -> list[Field]:
        self.take("punct", "{")
        fields = []
        while self.peek() != "}":
            fields.append(self.field())
        self.take("punct", "}")
        return fields

    def field(self) -> Field:
        name = self.take("name")
        args: dict[str, Any] = {}
        if self.peek() == "(":
            self.take("punct", "(")
            while self.peek() != ")":
                key = self.take("name")
                self.take("punct", ":")
                args[key] = self.value()
            self.take("punct", ")")
        return Field(name, args, self.selection() if self.peek() == "{" else [])

    def value(self) -> Any:
        kind, token = self.tokens[self.at] if self.at < len(self.tokens) else ("", "<EOF>")
        if token == "[":
            self.take()
            items = []
            while self.peek() != "]":
                items.append(self.value())
            self.take("punct", "]")
            return items
        if token == "{":
            self.take()
            fields = {}
            while self.peek() != "}":
                key = self.take("name")
                self.take("punct", ":")
                fields[key] = self.value()
            self.take("punct", "}")
            return fields
        self.take()
        if kind == "string":
            return json.loads(token)
        if kind == "number":
            return float(token) if any(c in token for c in ".eE") else int(token)
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(token, EnumValue(token))
        raise GraphQLError(f"Syntax Error: Unexpected {token!r}")


def project(value: Any, selection: list[Field], type_name: str) -> Any:
    """Only the fields a query asked for, as a GraphQL server answers."""
    if not selection or value is None:
        return value
    if isinstance(value, list):
        return [project(item, selection, type_name) for item in value]
    answer = {}
    for wanted in selection:
        if wanted.name not in value:
            raise GraphQLError(f'Cannot query field "{wanted.name}" on type "{type_name}".')
        answer[wanted.name] = project(value[wanted.name], wanted.selection, wanted.name)
    return answer


# ---------------------------------------------------------------- the account and its jobs


@dataclass
class Operation:
    """One GraphQL field the fake resolved: e.g. ("mutation", "saveEndpoint", {input...})."""

    kind: str
    name: str
    args: dict[str, Any]


@dataclass
class Request:
    """One REST request the fake answered."""

    at: float
    method: str
    path: str
    status: int
    body: bytes


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


def _endpoint_record(fields: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """An endpoint as RunPod stores it: every field its queries may ask for."""
    return {
        "id": secrets.token_hex(7),
        "aiKey": None,
        "name": fields["name"],
        "templateId": fields["templateId"],
        "gpuIds": fields.get("gpuIds", ""),
        "gpuCount": fields.get("gpuCount", 1),
        "instanceIds": fields.get("instanceIds"),
        "networkVolumeId": fields.get("networkVolumeId") or None,
        "networkVolume": None,
        "locations": fields.get("locations") or None,
        "idleTimeout": fields.get("idleTimeout", 5),
        "scalerType": fields.get("scalerType", "QUEUE_DELAY"),
        "scalerValue": fields.get("scalerValue", 4),
        "workersMin": fields.get("workersMin", 0),
        "workersMax": fields.get("workersMax", 3),
        "workersStandby": 0,
        "executionTimeoutMs": fields.get("executionTimeoutMs", 600_000),
        "flashBootType": fields.get("flashBootType", "OFF"),
        "allowedCudaVersions": fields.get("allowedCudaVersions", ""),
        "type": "QB",
        "userId": "user_fake",
        "version": 0,
        "env": template.get("env", []),
        "createdAt": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


class FakeRunPod:
    """RunPod's GraphQL and serverless REST APIs for one account, on loopback."""

    def __init__(self, api_key: str, queue_seconds: float = 0.0) -> None:
        self.api_key = api_key
        self.queue_seconds = queue_seconds
        self.worker_python: str | None = None  # report another Python than the real one
        # What /health reports of the workers, as RunPod does while a cold start is slow, no
        # GPU of the type is free, or workers crash at start; None: counted from the jobs.
        self.workers: dict[str, int] | None = None
        self.limits = dict(RATE_LIMITS)
        self.operations: list[Operation] = []
        self.requests: list[Request] = []
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self.fleets: dict[str, list[EndpointWorker]] = {}  # endpoint id -> its workers
        self.forced_429: list[float] = []  # Retry-After seconds of the next forced 429s
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
        """What points the runpod SDK and the magic at this fake."""
        return {"RUNPOD_API_BASE_URL": self.url, "RUNPOD_ENDPOINT_BASE_URL": f"{self.url}/v2"}

    def close(self) -> None:
        with self._lock:
            for job in self.jobs.values():
                if job.process and job.process.poll() is None:
                    job.process.kill()
        self._server.shutdown()
        self._server.server_close()

    def mutations(self, name: str | None = None) -> list[Operation]:
        return [o for o in self.operations if o.kind == "mutation" and name in (None, o.name)]

    def add_endpoint(self, name: str, gpu_ids: str = "AMPERE_80") -> str:
        """An endpoint made elsewhere (RunPod's console); its id."""
        with self._lock:
            template = {
                "id": secrets.token_hex(5),
                "name": f"{name}-tpl",
                "imageName": "someone/else:latest",
                "isServerless": True,
                "env": [],
            }
            self.templates[template["id"]] = template
            record = _endpoint_record({"name": name, "templateId": template["id"]}, template)
            record["gpuIds"] = gpu_ids
            self.endpoints[record["id"]] = record
            return record["id"]

    # ------------------------------------------------------------ GraphQL

    def graphql(self, query: str) -> dict[str, Any]:
        try:
            kind, fields = parse_document(query)
            with self._lock:
                data = {f.name: self._resolve(kind, f) for f in fields}
        except GraphQLError as exc:
            return {"errors": [{"message": str(exc)}], "data": None}
        return {"data": data}

    def _resolve(self, kind: str, top: Field) -> Any:
        self.operations.append(Operation(kind, top.name, top.args))
        if kind == "query" and top.name == "myself":
            account = {"endpoints": list(self.endpoints.values()), "podTemplates": self._tpls()}
            return project(account, top.selection, "User")
        resolvers = {
            "saveTemplate": self._save_template,
            "saveEndpoint": self._save_endpoint,
            "deleteEndpoint": self._delete_endpoint,
            "deleteTemplate": self._delete_template,
        }
        if kind != "mutation" or top.name not in resolvers:
            raise GraphQLError(f'Cannot query field "{top.name}" on type "{kind.title()}".')
        return project(resolvers[top.name](top.args), top.selection, top.name)

    def _tpls(self) -> list[dict[str, Any]]:
        return list(self.templates.values())

    @staticmethod
    def _input(args: dict[str, Any], allowed: set[str], type_name: str) -> dict[str, Any]:
        given = args.get("input")
        if not isinstance(given, dict):
            raise GraphQLError(f'Argument "input" of type "{type_name}!" is required.')
        for name in given:
            if name not in allowed:
                raise GraphQLError(f'Field "{name}" is not defined by type "{type_name}".')
        return given

    def _save_template(self, args: dict[str, Any]) -> dict[str, Any]:
        fields = self._input(args, TEMPLATE_INPUT, "SaveTemplateInput")
        for required in ("name", "imageName", "containerDiskInGb", "dockerArgs", "env"):
            if required not in fields:
                raise GraphQLError(f'Field "SaveTemplateInput.{required}" is required.')
        if any(t["name"] == fields["name"] for t in self.templates.values()):
            raise GraphQLError("Template name must be unique")
        template = {
            "id": secrets.token_hex(5),
            "volumeMountPath": None,
            "readme": "",
            "isServerless": False,
            **fields,
        }
        self.templates[template["id"]] = template
        return template

    def _save_endpoint(self, args: dict[str, Any]) -> dict[str, Any]:
        fields = self._input(args, ENDPOINT_INPUT, "EndpointInput")
        if "id" in fields:
            if fields["id"] not in self.endpoints:
                raise GraphQLError("Endpoint not found")
            self.endpoints[fields["id"]].update(fields)
            return self.endpoints[fields["id"]]
        for required in ("name", "templateId"):
            if required not in fields:
                raise GraphQLError(f'Field "EndpointInput.{required}" is required.')
        if not fields.get("gpuIds") and not fields.get("instanceIds"):
            raise GraphQLError("gpuIds or instanceIds is required")
        template = self.templates.get(fields["templateId"])
        if template is None:
            raise GraphQLError("Template not found")
        record = _endpoint_record(fields, template)
        self.endpoints[record["id"]] = record
        return record

    def _delete_endpoint(self, args: dict[str, Any]) -> None:
        endpoint = self.endpoints.get(args.get("id", ""))
        if endpoint is None:
            raise GraphQLError("Endpoint not found")
        if endpoint["workersMin"] or endpoint["workersMax"]:
            raise GraphQLError("Endpoint must be scaled to 0 min and max workers to be deleted")
        del self.endpoints[endpoint["id"]]

    def _delete_template(self, args: dict[str, Any]) -> None:
        name = args.get("templateName")
        found = [t for t in self.templates.values() if t["name"] == name]
        if not found:
            raise GraphQLError("Template not found")
        if any(e["templateId"] == found[0]["id"] for e in self.endpoints.values()):
            raise GraphQLError("Template is in use by a serverless endpoint")
        del self.templates[found[0]["id"]]

    # ------------------------------------------------------------ REST

    def rest(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any], dict]:
        """(status, JSON answer, extra headers) for one request past authorisation."""
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
        default_ms = self.endpoints[endpoint_id]["executionTimeoutMs"]
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
                "workers": self.workers or {"idle": 0, "running": count("IN_PROGRESS")},
            }

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        job.status, job.error, job.finished = status, error, time.monotonic()
        if job.process and job.process.poll() is None:
            job.process.kill()

    # ------------------------------------------------------------ the stand-in worker

    def _worker_for(self, endpoint_id: str) -> EndpointWorker | None:
        """A worker for a job leaving the queue (RunPod keeps none for anyone): a new one while
        the endpoint has fewer than workersMax, else the one idle longest; None if all are busy."""
        limits = self.endpoints.get(endpoint_id) or {"workersMax": 1, "idleTimeout": 5}
        now = time.monotonic()
        fleet = self.fleets.setdefault(endpoint_id, [])
        fleet[:] = [w for w in fleet if w.busy or now - w.idle_since < limits["idleTimeout"]]
        idle = [w for w in fleet if not w.busy]
        if len(fleet) < limits["workersMax"]:
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
        pools = (self.endpoints[job.endpoint_id].get("gpuIds") or "").split(",")
        gpus = [GPU_NAMES.get(pools[0], pools[0])] if pools[0] else []
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


def _handler(fake: FakeRunPod) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?")[0]
            if not self._authorised():
                status, answer, headers = 401, None, {}
            elif path == "/graphql" and method == "POST":
                query = json.loads(body or b"{}").get("query", "")
                status, answer, headers = 200, fake.graphql(query), {}
            else:
                status, answer, headers = fake.rest(method, path, body)
            with fake._lock:
                fake.requests.append(Request(time.monotonic(), method, path, status, body))
            self._send(status, answer, headers)

        def _authorised(self) -> bool:
            given = self.headers.get("Authorization", "")
            return given in (f"Bearer {fake.api_key}", fake.api_key)

        def _send(self, status: int, answer: Any, headers: dict[str, str]) -> None:
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test output stays the tests'."""

    return Handler
