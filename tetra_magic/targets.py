"""Where a cell runs: RunPod (with an API key) or the embedded local endpoint (without one).

Nothing past this module knows which it is talking to: both are an `Endpoint` for the same
REST client, differing only in base URL, credentials and limits.

The key is credentials.api_key()'s; an endpoint this module does not name itself comes from
provision, for the spec endpoint_choice makes of the cell's options: provision knows no
notebook, and depends on nothing here. What RunPod changed of an endpoint a job waits on is
looked at through `rechecker` (tetra_magic/job/waiting.py calls it), and `%tetra end` hands a
session's endpoint back through `park`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from tetra_magic.cloud import provision
from tetra_magic.cloud.client import Endpoint, EndpointClient, EndpointError
from tetra_magic.cloud.credentials import KEY_ENV, api_key
from tetra_magic.cloud.rest import CloudError, QuotaFull, rest_base
from tetra_magic.endpoint_choice import spec_for
from tetra_magic.errors import TetraError
from tetra_magic.job.waiting import QueueGaveUp
from tetra_magic.options import CellOptions

_told_local = False


def local() -> Endpoint:
    """The embedded local endpoint, started on first use and shared by every kernel."""
    from tetra_magic.cell.packing import KERNEL_ID
    from tetra_magic.local.launcher import ensure_running

    running = ensure_running(kernel_id=KERNEL_ID)
    return Endpoint(
        running.base_url,
        running.endpoint_id,
        running.api_key,
        key_source="the local endpoint's token file",
    )


def explicit(endpoint: str, key: str | None, source: str) -> Endpoint:
    """`--endpoint ID` (on RunPod) or `--endpoint URL` (any RunPod-compatible .../v2/ID)."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        base, _, endpoint_id = parts.path.rstrip("/").rpartition("/")
        url = f"{parts.scheme}://{parts.netloc}{base}"
        return Endpoint(url, endpoint_id, key or "", key_source=source)
    if key is None:
        raise TetraError(
            f"--endpoint {endpoint}: no RunPod API key found; set {KEY_ENV} or run `runpod config`"
        )
    return Endpoint(rest_base(), endpoint, key, key_source=source, billed=True)


def resolve(options: CellOptions) -> Endpoint:
    """The endpoint for a cell's options: --local, --endpoint, provisioned, or local for want
    of a key."""
    if options.local:
        return local()
    key, source = api_key()
    if options.endpoint:
        return explicit(options.endpoint, key, source)
    if key is None:
        _say_local_once(source)
        return local()
    return provision.provisioned(spec_for(options, options.worker), options.gpus, key, source)


def after_not_found(options: CellOptions, gone: Endpoint) -> Endpoint | None:
    """A fresh endpoint when a provisioned one turned out not to exist (deleted in RunPod's
    console or from another machine since this kernel found it); None when the user chose the
    endpoint, so the error stands."""
    if options.local or options.endpoint or api_key()[0] is None:
        return None
    provision.forget(gone.endpoint_id)
    return resolve(options)


def workers(endpoint: Endpoint, options: CellOptions) -> int | None:
    """How many workers `endpoint` runs jobs on at once, as --map's default --workers: the
    max workers of an endpoint the magic provisions (TetraMagic.workers_max) or, for
    `--endpoint ID`, as RunPod has it; elsewhere (the local endpoint) the workers its `/health`
    counts. None where that cannot be read."""
    try:
        if endpoint.billed:
            if not options.endpoint:
                return options.worker.workers_max
            return provision.workers_max(
                endpoint.endpoint_id, endpoint.api_key, endpoint.key_source
            )
        client = EndpointClient(endpoint)
        try:
            counts = client.health().get("workers") or {}
        finally:
            client.close()
    except (CloudError, EndpointError):
        return None
    total = sum(counts.get(state, 0) for state in ("ready", "initializing", "unhealthy"))
    return total or None


def rechecker(endpoint: Endpoint) -> Callable[[], str | None] | None:
    """For a RunPod endpoint (ours or `--endpoint ID`), what a job's wait calls when no worker
    at all shows up: a note when RunPod had scaled it down and it was raised back; QueueGaveUp
    when it stays at 0 max workers; None when RunPod cannot be asked (the queue timeout still
    holds). None for endpoints that are not on RunPod."""
    if not endpoint.billed:
        return None

    def recheck() -> str | None:
        try:
            return provision.recheck(endpoint.endpoint_id, endpoint.api_key, endpoint.key_source)
        except (provision.NoWorkers, QuotaFull) as exc:
            raise QueueGaveUp(str(exc)) from None
        except CloudError:
            return None

    return recheck


def park(options: CellOptions, endpoint_id: str) -> str | None:
    """`%tetra end`: a session's own RunPod endpoint set to 0 max workers; its name. None for a
    session on the local endpoint or on an endpoint of the user's (`--endpoint`)."""
    key, source = api_key()
    if options.local or options.endpoint or key is None:
        return None
    return provision.park(spec_for(options, options.worker), endpoint_id, key, source)


def _say_local_once(problem: str) -> None:
    global _told_local
    if _told_local:
        return
    _told_local = True
    where = f"{KEY_ENV} or ~/.runpod/config.toml"
    if problem:
        where = f"{KEY_ENV} is unset and {problem}"
    print(f"tetra: no RunPod API key ({where}); running on the local endpoint.", file=sys.stderr)
