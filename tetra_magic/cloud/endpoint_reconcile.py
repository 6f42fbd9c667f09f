"""Putting right what RunPod changed of one of our endpoints, within the worker quota.

RunPod changes endpoints behind our back: one without requests for 3 days gets max workers 2,
for 7 days 0, and "it stays at its reduced max workers until you raise the value yourself"
(docs, serverless/endpoints/endpoint-configurations, "Idle endpoint scale-down"); a cell sent
there would wait its whole queue timeout. So an endpoint found for a spec is compared with what
RunPod reports: a lowered max workers is raised back, in one line to the user that says why it
was low as far as can be known, and other differences are told and left. Creating an endpoint,
or raising one back, first checks the account's worker quota (quota.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tetra_magic.cloud import endpoint_use, quota
from tetra_magic.cloud.endpoint_spec import EndpointSpec, is_ours
from tetra_magic.cloud.rest import QuotaFull, RunPodRest

# RunPod's idle scale-down (docs, endpoint configurations): max workers -> 2 after 3 days
# without requests, -> 0 after 7.
IDLE_DAYS_TO = {2: 3, 0: 7}


def within_quota(
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


def reconcile(
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
        body = {"workers": only_max(found, spec.workers_max)}
        within_quota(
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


def only_max(found: dict[str, Any], most: int) -> dict[str, Any]:
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
