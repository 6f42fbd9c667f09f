"""Finding or creating the RunPod endpoint for a cell's configuration, and keeping it as
configured; listing and deleting ours.

An endpoint's spec (endpoint_spec.py; the caller makes it from a cell's options with
tetra_magic/endpoint_choice.py, so nothing here knows a notebook) is found by its name's hash
in RunPod's list of the account's endpoints, else created; a kernel remembers what it found, so
only its first cell per configuration asks RunPod. All of it goes through RunPod's REST API v2
(rest.py). A file lock in the state dir keeps two kernels of one machine from creating
the same endpoint.

Before a kernel's first cell goes to an endpoint it found, the endpoint's settings are compared
with what RunPod reports and put right (endpoint_reconcile.py); again when a cell's wait in the
queue sees no worker at all (`recheck`, from tetra_magic/job/waiting.py). `%tetra end` sets a
session endpoint's max workers to 0 (`park`), which frees its share of the quota; its next cell
raises it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import sys
from collections.abc import Iterator
from typing import Any

from tetra_magic.cloud import endpoint_use, quota
from tetra_magic.cloud.client import Endpoint
from tetra_magic.cloud.endpoint_reconcile import only_max, reconcile, within_quota
from tetra_magic.cloud.endpoint_spec import EndpointSpec, is_ours, ours_with_digest
from tetra_magic.cloud.rest import CloudError, RunPodRest, rest_base, rest_v2_base
from tetra_magic.errors import TetraError
from tetra_magic.state_dir import home

# (REST v2 base, key fingerprint, endpoint name) -> endpoint id, for this kernel's later cells.
_known: dict[tuple[str, str, str], str] = {}
# Endpoints whose settings this kernel has compared with RunPod's (once per kernel each), and
# the configuration each of ours was found or made for.
_checked: set[str] = set()
_specs: dict[str, EndpointSpec] = {}


class NoWorkers(TetraError):
    """An endpoint that is not ours has 0 max workers on RunPod: no worker will take a job."""


def provisioned(spec: EndpointSpec, gpus: tuple[str, ...], key: str, source: str) -> Endpoint:
    """The RunPod endpoint for this spec: remembered, found on RunPod, or created there;
    checked against what RunPod reports the first time this kernel uses it. `gpus` are the GPU
    names the user asked for ("A100"), which the spec holds only as RunPod's ids, for the
    endpoint's messages."""
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
        gpus=gpus,
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
        for note in reconcile(api, spec, found):
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
        found = ours_with_digest(listing, spec.digest)
        if found is not None:
            return found, False
        action = f"creating RunPod endpoint {spec.name}"
        made = within_quota(
            api, listing, action, spec.workers_max, lambda: api.create_endpoint(spec.body())
        )
    _say_created(spec, made["id"])
    return made, True


def recheck(endpoint_id: str, key: str, source: str) -> str | None:
    """After a wait in the queue with no worker at all (tetra_magic/job/waiting.py): the
    endpoint as RunPod has it now. One of ours that RunPod scaled down is raised back, and the
    note says so; one that is not ours and has 0 max workers is NoWorkers. None where all is as
    it should be."""
    with RunPodRest(key, source) as api:
        found = api.endpoint(endpoint_id)
        spec = _specs.get(endpoint_id)
        if spec is not None:
            return "".join(f"{note}\n" for note in reconcile(api, spec, found)) or None
    if quota.max_workers(found) == 0:
        raise NoWorkers(
            f"endpoint {found.get('name') or endpoint_id} has 0 max workers on RunPod, so no"
            " worker will take the job (RunPod sets an endpoint to 0 after 7 days without"
            " requests, or when its workers keep failing to start); raise its max workers in"
            " RunPod's console (Serverless, the endpoint, Edit Endpoint)"
        )
    return None


def workers_max(endpoint_id: str, key: str, source: str) -> int | None:
    """The endpoint's max workers as RunPod has it now (REST v2 `workers.max`; None where it
    does not say); CloudError where RunPod cannot be asked."""
    with RunPodRest(key, source) as api:
        return quota.max_workers(api.endpoint(endpoint_id))


def park(spec: EndpointSpec, endpoint_id: str, key: str, source: str) -> str:
    """`%tetra end`: the session's endpoint (made for `spec`) set to 0 max workers, so its
    worker goes and its share of the worker quota is free; the session's next cell raises it
    again (it is checked anew). Returns the endpoint's name."""
    with RunPodRest(key, source) as api:
        api.update_endpoint(endpoint_id, {"workers": only_max(api.endpoint(endpoint_id), 0)})
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
