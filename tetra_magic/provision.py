"""Finding or creating the RunPod endpoint for a cell's configuration; listing and deleting ours.

An endpoint serves one configuration: worker image, GPU pools (or CPU instance types), GPUs per
worker, workers min/max, idle timeout, execution timeout and env. Its name carries a hash of all
of that (`tetra-magic-a100-3f9c2a1b7d`), so this kernel, a later one, or one on another machine
finds it again with `myself { endpoints }` instead of creating a duplicate; a kernel remembers
what it found, so only its first cell per configuration asks RunPod. The template (image, env,
disk) is named by its own hash and shared by endpoints that differ only in hardware or scaling.
A file lock in the state dir keeps two kernels of one machine from creating the same endpoint.

Settings are TetraMagic's traitlets (`%config TetraMagic.workers_max = 5`), which reach this
module in the cell's options (`CellOptions.worker`). With no image
configured, endpoints run RunPod's published standard worker: the image RunPod's own client
(the `runpod-flash` package, `get_image_name`) uses for live serverless functions, one per
Python minor version, so notebook functions load on the worker:

    runpod/flash:py3.11-latest        runpod/flash-cpu:py3.11-latest

Our own worker image (Dockerfile, Dockerfile-cpu) is the upgrade: `TetraMagic.worker_image`, or
TETRA_MAGIC_WORKER_IMAGE / TETRA_MAGIC_CPU_WORKER_IMAGE; `{python}` and `{version}` in it are
filled in for this kernel.

A session's cells must all reach the worker that holds its namespace, and RunPod routes a job
to any worker of its endpoint. So a session cell gets an endpoint of its own, one per session
name, that has one worker at most: workersMin 0, workersMax 1, and an idle timeout of its own
(`TetraMagic.session_idle_timeout`) for which the idle worker, and the session, are kept (and
billed). When that worker goes (idle timeout, RunPod replacing it) the session goes with it;
the next cell's runtime finds it missing and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError

from tetra_magic import gpus
from tetra_magic.client import Endpoint
from tetra_magic.cloud_api import Enum, RunPodGraphQL, api_base, rest_base
from tetra_magic.errors import TetraError
from tetra_magic.options import CellOptions, WorkerSettings
from tetra_magic.state_dir import home

PREFIX = "tetra-magic-"
TEMPLATE_PREFIX = PREFIX + "tpl-"
# The published standard worker, as runpod-flash 1.21.0's get_image_name("gpu"|"cpu", python)
# names it (tests/test_cloud_provision.py checks these against the installed runpod-flash).
PUBLISHED_IMAGE = "runpod/flash:py{python}-latest"
PUBLISHED_CPU_IMAGE = "runpod/flash-cpu:py{python}-latest"
PUBLISHED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
IMAGE_ENV = "TETRA_MAGIC_WORKER_IMAGE"
CPU_IMAGE_ENV = "TETRA_MAGIC_CPU_WORKER_IMAGE"
CONTAINER_DISK_GB = 20  # room for --deps such as torch on top of the image
_NAME = re.compile(rf"^{PREFIX}(?P<label>.+)-(?P<digest>[0-9a-f]{{10}})(?:-fb)?$")

# (GraphQL base, key fingerprint, endpoint name) -> endpoint id, for this kernel's later cells.
_known: dict[tuple[str, str, str], str] = {}


def python_minor() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def worker_image(worker: WorkerSettings, cpu: bool) -> str:
    """The image for a GPU or CPU endpoint: setting, else environment variable, else the
    published standard worker for this kernel's Python; {python} and {version} filled in.
    UsageError, before anything is provisioned, when no published image fits this Python."""
    configured = worker.cpu_image if cpu else worker.image
    chosen = configured or os.environ.get(CPU_IMAGE_ENV if cpu else IMAGE_ENV, "")
    if not chosen:
        _check_published_python(cpu)
        chosen = PUBLISHED_CPU_IMAGE if cpu else PUBLISHED_IMAGE
    return chosen.replace("{python}", python_minor()).replace("{version}", _our_version())


def _our_version() -> str:
    """This package's version, from its installed metadata (the package's own __init__ loads
    the magic, so importing it from here would close an import circle)."""
    return importlib.metadata.version("tetra-magic")


def _check_published_python(cpu: bool) -> None:
    if python_minor() in PUBLISHED_PYTHONS:
        return
    setting, env = ("cpu_worker_image", CPU_IMAGE_ENV) if cpu else ("worker_image", IMAGE_ENV)
    raise UsageError(
        f"this kernel runs Python {python_minor()}, and RunPod publishes its standard worker"
        f" image for Python {', '.join(PUBLISHED_PYTHONS)} only (notebook functions load only"
        " on the Python that made them). Use a kernel on one of those, or build our worker for"
        f' this Python (tools/build_worker_image.sh, Dockerfile; README "Worker images"),'
        f" push it, and set %config TetraMagic.{setting} = 'you/tetra-worker:py{{python}}'"
        f" (or ${env})."
    )


@dataclass(frozen=True)
class EndpointSpec:
    """Everything that makes one endpoint different from another."""

    label: str
    image: str
    gpu_ids: tuple[str, ...]
    instance_ids: tuple[str, ...]
    gpu_count: int
    workers_min: int
    workers_max: int
    idle_timeout: int
    execution_timeout_ms: int
    env: tuple[tuple[str, str], ...]
    container_disk_gb: int = CONTAINER_DISK_GB
    session: str = ""  # the session this endpoint is kept for; "" for plain cells

    @property
    def digest(self) -> str:
        config = dataclasses.asdict(self)
        del config["label"]
        if not self.session:
            del config["session"]  # so plain endpoints made before sessions are found again
        return _digest(config)

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.label}-{self.digest}"

    @property
    def template_name(self) -> str:
        config = {"image": self.image, "env": self.env, "disk": self.container_disk_gb}
        return f"{TEMPLATE_PREFIX}{_digest(config)}"

    def fields(self, template_id: str) -> dict[str, Any]:
        """The `saveEndpoint` input that creates this endpoint."""
        hardware: dict[str, Any] = (
            {"instanceIds": list(self.instance_ids)}
            if self.instance_ids
            else {"gpuIds": ",".join(self.gpu_ids), "gpuCount": self.gpu_count}
        )
        return {
            "name": self.name,
            "templateId": template_id,
            **hardware,
            "networkVolumeId": "",
            "locations": "",
            "idleTimeout": self.idle_timeout,
            "scalerType": "QUEUE_DELAY",
            "scalerValue": 4,
            "workersMin": self.workers_min,
            "workersMax": self.workers_max,
            "executionTimeoutMs": self.execution_timeout_ms,
            "flashBootType": Enum("FLASHBOOT"),
        }


def _digest(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def spec_for(options: CellOptions, worker: WorkerSettings) -> EndpointSpec:
    """The endpoint a cell with these options runs on; a session's own, one worker at most,
    for a session cell."""
    label = "cpu" if options.cpu else gpus.label(options.gpus)
    spec = EndpointSpec(
        label=label,
        image=worker_image(worker, options.cpu),
        gpu_ids=() if options.cpu else options.gpu_ids,
        instance_ids=gpus.CPU_INSTANCES if options.cpu else (),
        gpu_count=0 if options.cpu else worker.gpu_count,
        workers_min=worker.workers_min,
        workers_max=worker.workers_max,
        idle_timeout=worker.idle_timeout,
        execution_timeout_ms=worker.execution_timeout * 1000,
        env=worker.env,
    )
    if options.session is None:
        return spec
    return dataclasses.replace(
        spec,
        label=f"{label}-session-{options.session}",
        workers_min=0,
        workers_max=1,
        idle_timeout=options.session_idle_timeout,
        session=options.session,
    )


def provisioned(options: CellOptions, key: str, source: str) -> Endpoint:
    """The RunPod endpoint for these options: remembered, found on RunPod, or created there."""
    spec = spec_for(options, options.worker)
    endpoint_id = _known.get(_cache_key(key, spec.name)) or _find_or_create(spec, key, source)
    return Endpoint(
        rest_base(),
        endpoint_id,
        key,
        key_source=source,
        image=spec.image,
        gpus=options.gpus,
        gpu_ids=spec.gpu_ids,
        billed=True,
    )


def _cache_key(key: str, name: str) -> tuple[str, str, str]:
    return (api_base(), hashlib.sha256(key.encode()).hexdigest()[:16], name)


def _find_or_create(spec: EndpointSpec, key: str, source: str) -> str:
    with _machine_lock():
        api = RunPodGraphQL(key, source)
        found = _ours_with_digest(api.endpoints(), spec.digest)
        if found is None:
            found = api.save_endpoint(spec.fields(_template_id(api, spec)))
            _say_created(spec, found["id"])
    _known[_cache_key(key, spec.name)] = found["id"]
    return found["id"]


def _ours_with_digest(endpoints: list[dict[str, Any]], digest: str) -> dict[str, Any] | None:
    for endpoint in endpoints:
        match = _NAME.match(endpoint.get("name") or "")
        if match and match["digest"] == digest:
            return endpoint
    return None


def _template_id(api: RunPodGraphQL, spec: EndpointSpec) -> str:
    """Our template for the spec's image and env: found by name, else created."""
    for template in api.templates():
        if template.get("name") == spec.template_name:
            return template["id"]
    return api.create_template(
        spec.template_name, spec.image, dict(spec.env), spec.container_disk_gb
    )


def _say_created(spec: EndpointSpec, endpoint_id: str) -> None:
    hardware = ", ".join(spec.instance_ids or spec.gpu_ids)
    kept = (
        f" for session {spec.session}: one worker, kept (and billed) {spec.idle_timeout} s"
        " after its last cell, which is how long the session lives idle;"
        if spec.session
        else ""
    )
    print(
        f"tetra: created RunPod endpoint {spec.name} ({endpoint_id}) on {hardware},"
        f" image {spec.image};{kept} `%tetra endpoints` lists it, `%tetra delete {spec.name}`"
        " removes it.",
        file=sys.stderr,
    )


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Only one kernel of this machine provisions at a time (the others then find its work)."""
    with open(home() / "provision.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def our_endpoints(key: str, source: str) -> list[dict[str, Any]]:
    """The account's tetra-magic endpoints, each with its template's image as "image"."""
    api = RunPodGraphQL(key, source)
    ours = [e for e in api.endpoints() if _NAME.match(e.get("name") or "")]
    if ours:
        images = {t["id"]: t.get("imageName") for t in api.templates()}
        for endpoint in ours:
            endpoint["image"] = images.get(endpoint.get("templateId"), "?")
    return sorted(ours, key=lambda e: e["name"])


def endpoint_table(endpoints: list[dict[str, Any]]) -> str:
    """`%tetra endpoints`: one line per endpoint."""
    if not endpoints:
        return "no tetra-magic endpoints on this RunPod account"
    rows = [("NAME", "ID", "HARDWARE", "WORKERS", "IDLE", "IMAGE")]
    for e in endpoints:
        hardware = e.get("gpuIds") or "cpu"
        workers = f"{e.get('workersMin', 0)}-{e.get('workersMax', 0)}"
        idle = f"{e.get('idleTimeout')} s"
        rows.append((e["name"], e["id"], hardware, workers, idle, e["image"]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*map(str.ljust, map(str, row[:-1]), widths), str(row[-1])]) for row in rows]
    return "\n".join(lines)


def delete(name: str, key: str, source: str) -> dict[str, Any]:
    """Scale one of our endpoints (by name or id) to zero and delete it; return it."""
    api = RunPodGraphQL(key, source)
    ours = [e for e in api.endpoints() if _NAME.match(e.get("name") or "")]
    target = next((e for e in ours if name in (e["name"], e["id"])), None)
    if target is None:
        known = ", ".join(e["name"] for e in ours) or "none"
        raise TetraError(f"no tetra-magic endpoint named {name!r} (ours: {known})")
    scale = {"id": target["id"], "name": target["name"], "templateId": target["templateId"]}
    if target.get("gpuIds"):
        scale["gpuIds"] = target["gpuIds"]
    api.save_endpoint({**scale, "workersMin": 0, "workersMax": 0})
    api.delete_endpoint(target["id"])
    forget(target["id"])
    return target


def forget(endpoint_id: str) -> None:
    """Drop what this kernel remembers of an endpoint (deleted here or elsewhere)."""
    for cached in [k for k, v in _known.items() if v == endpoint_id]:
        del _known[cached]
