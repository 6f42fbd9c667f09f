"""Finding or creating the RunPod endpoint for a cell's configuration, and keeping it as
configured; listing and deleting ours.

An endpoint serves one configuration: worker image, GPU pools (or CPU instance types), GPUs per
worker, workers min/max, idle timeout, execution timeout and env. Its name carries a hash of all
of that (`tetra-magic-a100-3f9c2a1b7d`), so this kernel, a later one, or one on another machine
finds it again in RunPod's list of the account's endpoints instead of creating a duplicate; a
kernel remembers what it found, so only its first cell per configuration asks RunPod. All of it
goes through RunPod's REST API v2 (cloud_api.py); an endpoint carries its own image and env, so
no template of ours is needed. A file lock in the state dir keeps two kernels of one machine
from creating the same endpoint.

RunPod changes endpoints behind our back: one without requests for 3 days gets max workers 2,
for 7 days 0, and "it stays at its reduced max workers until you raise the value yourself"
(docs, serverless/endpoints/endpoint-configurations, "Idle endpoint scale-down"); a cell sent
there would wait its whole queue timeout. So before a kernel's first cell goes to an endpoint it
found, the endpoint's settings are compared with what RunPod reports, and a lowered max workers
is raised back, in one line to the user; again when a cell's wait in the queue sees no worker
at all (`recheck`, from waiting.py). Creating an endpoint, or raising one back, first checks
the account's worker quota (quota.py).

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
the next cell's runtime finds it missing and says so. `%tetra end` sets the session endpoint's
max workers to 0 (`park`), which frees its share of the quota; its next cell raises it again.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError

from tetra_magic import endpoint_use, gpus, quota
from tetra_magic.client import Endpoint
from tetra_magic.cloud_api import CloudError, QuotaFull, RunPodRest, rest_base, rest_v2_base
from tetra_magic.errors import TetraError
from tetra_magic.options import CellOptions, WorkerSettings
from tetra_magic.state_dir import home

PREFIX = "tetra-magic-"
# The published standard worker, as runpod-flash 1.21.0's get_image_name("gpu"|"cpu", python)
# names it (tests/test_cloud_waiting.py checks these against the installed runpod-flash).
PUBLISHED_IMAGE = "runpod/flash:py{python}-latest"
PUBLISHED_CPU_IMAGE = "runpod/flash-cpu:py{python}-latest"
PUBLISHED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
IMAGE_ENV = "TETRA_MAGIC_WORKER_IMAGE"
CPU_IMAGE_ENV = "TETRA_MAGIC_CPU_WORKER_IMAGE"
CONTAINER_DISK_GB = 20  # room for --deps such as torch on top of the image
# RunPod's idle scale-down (docs, endpoint configurations): max workers -> 2 after 3 days
# without requests, -> 0 after 7.
IDLE_DAYS_TO = {2: 3, 0: 7}
_NAME = re.compile(rf"^{PREFIX}(?P<label>.+)-(?P<digest>[0-9a-f]{{10}})(?:-fb)?$")
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][\w.\-/:@]*$")

# (REST v2 base, key fingerprint, endpoint name) -> endpoint id, for this kernel's later cells.
_known: dict[tuple[str, str, str], str] = {}
# Endpoints whose settings this kernel has compared with RunPod's (once per kernel each), and
# the configuration each of ours was found or made for.
_checked: set[str] = set()
_specs: dict[str, EndpointSpec] = {}


class NoWorkers(TetraError):
    """An endpoint that is not ours has 0 max workers on RunPod: no worker will take a job."""


def python_minor() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def worker_image(worker: WorkerSettings, cpu: bool) -> str:
    """The image for a GPU or CPU endpoint: setting, else environment variable, else the
    published standard worker for this kernel's Python; {python} and {version} filled in.
    UsageError, before anything is provisioned, when no published image fits this Python or
    the image is no image reference."""
    configured = worker.cpu_image if cpu else worker.image
    chosen = configured or os.environ.get(CPU_IMAGE_ENV if cpu else IMAGE_ENV, "")
    if not chosen:
        _check_published_python(cpu)
        chosen = PUBLISHED_CPU_IMAGE if cpu else PUBLISHED_IMAGE
    image = chosen.replace("{python}", python_minor()).replace("{version}", _our_version())
    if not _IMAGE_NAME.match(image):
        raise UsageError(f"worker image {image!r} is not a valid image reference")
    return image


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

    def workers(self) -> dict[str, int]:
        """REST v2's `workers` object: {min, max, idleTimeout}."""
        return {"min": self.workers_min, "max": self.workers_max, "idleTimeout": self.idle_timeout}

    def hardware(self) -> dict[str, Any]:
        """REST v2's `gpu` (pools, count, excludedTypes) or `cpu` (flavors): one of the two."""
        if self.instance_ids:
            return {"cpu": gpus.cpu_flavors(self.instance_ids)}
        pools, excluded = gpus.pools_and_exclusions(self.gpu_ids)
        gpu: dict[str, Any] = {"pools": pools, "count": self.gpu_count}
        if excluded:
            gpu["excludedTypes"] = excluded
        return {"gpu": gpu}

    def body(self) -> dict[str, Any]:
        """The createEndpoint request (api-reference-v2/serverless/create-endpoint): a queue
        endpoint (`type` must be chosen on every create) scaled by queue delay, with the image
        and env on the endpoint itself."""
        return {
            "name": self.name,
            "type": "QUEUE",
            "image": self.image,
            "env": dict(self.env),
            "disk": self.container_disk_gb,
            **self.hardware(),
            "workers": self.workers(),
            "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
            "timeout": self.execution_timeout_ms,
            "flashboot": "FLASHBOOT",
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
    """The RunPod endpoint for these options: remembered, found on RunPod, or created there;
    checked against what RunPod reports the first time this kernel uses it."""
    spec = spec_for(options, options.worker)
    endpoint_id = _known.get(_cache_key(key, spec.name))
    if endpoint_id is None or endpoint_id not in _checked:
        with RunPodRest(key, source) as api:
            endpoint_id = _ready(api, spec, endpoint_id)
        _known[_cache_key(key, spec.name)] = endpoint_id
    endpoint_use.used(endpoint_id)
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
    return (rest_v2_base(), hashlib.sha256(key.encode()).hexdigest()[:16], name)


def _ready(api: RunPodRest, spec: EndpointSpec, known: str | None) -> str:
    """The id of the spec's endpoint, found (and put right) or created."""
    found, created = (_current(api, known) if known else None), False
    if found is None:
        found, created = _find_or_create(api, spec)
    if not created:
        for note in _reconcile(api, spec, found):
            print(note, file=sys.stderr)
    endpoint_id = found["id"]
    _checked.add(endpoint_id)
    _specs[endpoint_id] = spec
    return endpoint_id


def _current(api: RunPodRest, endpoint_id: str) -> dict[str, Any] | None:
    """The endpoint as RunPod has it now; None if it is gone (deleted in RunPod's console or
    from another machine since this kernel found it)."""
    try:
        return api.endpoint(endpoint_id)
    except CloudError as exc:
        if exc.status == 404:
            forget(endpoint_id)
            return None
        raise


def _find_or_create(api: RunPodRest, spec: EndpointSpec) -> tuple[dict[str, Any], bool]:
    """(the spec's endpoint, whether it was made now): found by its name's hash among the
    account's endpoints, else created, if the worker quota allows."""
    with _machine_lock():
        listing = api.endpoints()
        found = _ours_with_digest(listing, spec.digest)
        if found is not None:
            return found, False
        action = f"creating RunPod endpoint {spec.name}"
        made = _within_quota(
            api, listing, action, spec.workers_max, lambda: api.create_endpoint(spec.body())
        )
    _say_created(spec, made["id"])
    return made, True


def _ours_with_digest(endpoints: list[dict[str, Any]], digest: str) -> dict[str, Any] | None:
    for endpoint in endpoints:
        match = _NAME.match(endpoint.get("name") or "")
        if match and match["digest"] == digest:
            return endpoint
    return None


def is_ours(name: str) -> bool:
    """Whether an endpoint name is one the magic gives."""
    return _NAME.match(name) is not None


def _within_quota(
    api: RunPodRest,
    listing: list[dict[str, Any]],
    action: str,
    adding: int,
    change: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """`change()` (a create, or a raise of max workers by `adding`), unless the account's
    worker quota would be passed: then QuotaFull, before anything is changed, naming what holds
    the quota; the same where RunPod refuses with its own quota sentence."""
    usage = quota.of(listing, api.worker_limit(), is_ours)
    quota.check(usage, action, adding)
    try:
        return change()
    except QuotaFull as refused:
        raise usage.refuse(action, adding, refused.limit) from None


def _reconcile(
    api: RunPodRest,
    spec: EndpointSpec,
    found: dict[str, Any],
    listing: list[dict[str, Any]] | None = None,
) -> list[str]:
    """What RunPod changed of an endpoint made for `spec`, one line each for the cell: max
    workers it lowered are raised back; other differences are told, and left."""
    notes = []
    before = quota.max_workers(found)
    if before is not None and before < spec.workers_max:
        listing = listing if listing is not None else api.endpoints()
        action = f"raising {spec.name} back to {spec.workers_max} max workers"
        body = {"workers": _only_max(found, spec.workers_max)}
        _within_quota(
            api,
            listing,
            action,
            spec.workers_max - before,
            lambda: api.update_endpoint(found["id"], body),
        )
        notes.append(_raised(spec, found["id"], before))
    if differences := _differences(spec, found):
        notes.append(
            f"tetra: {spec.name} differs on RunPod from its settings ({differences}); its cells"
            f" run on it as it is (`%tetra delete {spec.name}`, and the next cell makes it anew)"
        )
    return notes


def _only_max(found: dict[str, Any], most: int) -> dict[str, Any]:
    """The endpoint's `workers` as RunPod has them with only max changed: PATCH replaces the
    object, and what else the user changed in the console (idle timeout, min workers) stays,
    min kept at most max."""
    workers = found.get("workers") or {}
    least = workers.get("min")
    return {
        **workers,
        "max": most,
        **({"min": most} if isinstance(least, int) and least > most else {}),
    }


def _raised(spec: EndpointSpec, endpoint_id: str, before: int) -> str:
    """The line for a max workers raised back: why it was low, as far as can be known."""
    session = endpoint_use.ended_session(endpoint_id)
    back = f"raised back to {spec.workers_max}"
    if session is not None and before == 0:
        return f"tetra: {spec.name} had 0 max workers since `%tetra end {session}`; {back}"
    days, rule = endpoint_use.idle_days(endpoint_id), IDLE_DAYS_TO.get(before)
    if rule is not None and days is not None and days >= rule:
        return (
            f"tetra: RunPod had scaled {spec.name} down to {before} workers after {rule} idle"
            f" days; {back}"
        )
    return (
        f"tetra: RunPod had lowered the max workers of {spec.name} to {before} (it does so to"
        f" endpoints idle for 3 or 7 days, and to ones whose workers keep failing); {back}"
    )


def _differences(spec: EndpointSpec, found: dict[str, Any]) -> str:
    """The settings RunPod reports otherwise than the spec made them ("" for none); fields it
    does not report are not compared."""
    workers = found.get("workers") or {}
    pairs = (
        ("image", found.get("image"), spec.image),
        ("min workers", workers.get("min"), spec.workers_min),
        ("idle timeout", workers.get("idleTimeout"), spec.idle_timeout),
        ("execution timeout (ms)", found.get("timeout"), spec.execution_timeout_ms),
    )
    return "; ".join(
        f"{what} {have}, not {want}" for what, have, want in pairs if have not in (None, want)
    )


def recheck(endpoint_id: str, key: str, source: str) -> str | None:
    """After a wait in the queue with no worker at all (waiting.py): the endpoint as RunPod
    has it now. One of ours that RunPod scaled down is raised back, and the note says so; one
    that is not ours and has 0 max workers is NoWorkers. None where all is as it should be."""
    with RunPodRest(key, source) as api:
        found = api.endpoint(endpoint_id)
        spec = _specs.get(endpoint_id)
        if spec is not None:
            return "".join(f"{note}\n" for note in _reconcile(api, spec, found)) or None
    if quota.max_workers(found) == 0:
        raise NoWorkers(
            f"endpoint {found.get('name') or endpoint_id} has 0 max workers on RunPod, so no"
            " worker will take the job (RunPod sets an endpoint to 0 after 7 days without"
            " requests, or when its workers keep failing to start); raise its max workers in"
            " RunPod's console (Serverless, the endpoint, Edit Endpoint)"
        )
    return None


def park(options: CellOptions, endpoint_id: str, key: str, source: str) -> str:
    """`%tetra end`: the session's endpoint set to 0 max workers, so its worker goes and its
    share of the worker quota is free; the session's next cell raises it again (it is checked
    anew). Returns the endpoint's name."""
    spec = spec_for(options, options.worker)
    with RunPodRest(key, source) as api:
        api.update_endpoint(endpoint_id, {"workers": _only_max(api.endpoint(endpoint_id), 0)})
    _checked.discard(endpoint_id)
    endpoint_use.ended(endpoint_id, spec.session)
    return spec.name


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


def our_endpoints(key: str, source: str) -> tuple[list[dict[str, Any]], quota.Quota]:
    """The account's tetra-magic endpoints (as REST v2 reports them), and the worker quota as
    all its endpoints use it."""
    with RunPodRest(key, source) as api:
        listing = api.endpoints()
        limit = api.worker_limit()
    ours = [e for e in listing if is_ours(e.get("name") or "")]
    return sorted(ours, key=lambda e: e["name"]), quota.of(listing, limit, is_ours)


def delete(name: str, key: str, source: str) -> dict[str, Any]:
    """Delete one of our endpoints (by name or id); return it. REST v2 deletes an endpoint with
    its workers and queued jobs, no scale-down first."""
    with RunPodRest(key, source) as api:
        ours = [e for e in api.endpoints() if is_ours(e.get("name") or "")]
        target = next((e for e in ours if name in (e["name"], e["id"])), None)
        if target is None:
            known = ", ".join(e["name"] for e in ours) or "none"
            raise TetraError(f"no tetra-magic endpoint named {name!r} (ours: {known})")
        api.delete_endpoint(target["id"])
    forget(target["id"])
    endpoint_use.forget(target["id"])
    return target


def forget(endpoint_id: str) -> None:
    """Drop what this kernel remembers of an endpoint (deleted here or elsewhere)."""
    for cached in [k for k, v in _known.items() if v == endpoint_id]:
        del _known[cached]
    _checked.discard(endpoint_id)
    _specs.pop(endpoint_id, None)
