"""`%tetra local [status|stop]`, `%tetra endpoints`, `%tetra delete NAME`: where cells run.

The line magic hands its commands here; they print for the user and return nothing.
"""

from __future__ import annotations

import time
from typing import Any

from IPython.core.error import UsageError

from tetra_magic.cloud import endpoint_use, provision
from tetra_magic.cloud.credentials import ApiKey, api_key
from tetra_magic.cloud.quota import Quota
from tetra_magic.errors import TetraError
from tetra_magic.local import control
from tetra_magic.local.launcher import ensure_running

_LOCAL_USAGE = (
    "%tetra local [start|status|stop]: start (or find) the local endpoint and print its URL;"
    " status: whether it runs, its URL, pid, workers, idle time and log; stop: stop it (the"
    " next cell on it starts a new one)"
)


def run(command: str, rest: str) -> None:
    """The command `command` (local, endpoints or delete) with the rest of its line."""
    if command == "local":
        local(rest)
    elif command == "endpoints":
        print(endpoint_table(*provision.our_endpoints(*_credentials())))
    else:
        _delete(rest)


def local(rest: str) -> None:
    """`%tetra local [start|status|stop]`: the server every kernel of this Python shares."""
    if rest in ("", "start"):
        print(f"local endpoint: {ensure_running().base_url}")
    elif rest == "status":
        print(control.status_text(control.status(), stop_command="%tetra local stop"))
    elif rest == "stop":
        print(control.stop_text())
    else:
        raise UsageError(f"%tetra local {rest}: unknown; {_LOCAL_USAGE}")


def endpoint_table(endpoints: list[dict[str, Any]], quota: Quota) -> str:
    """`%tetra endpoints`: one line per endpoint of ours (max workers first: RunPod lowers it
    on idle endpoints, and the quota is their sum), then the worker quota in use."""
    if not endpoints:
        return f"no tetra-magic endpoints on this RunPod account\n{quota.line()}"
    rows = [("NAME", "ID", "HARDWARE", "MAX WORKERS", "MIN", "IDLE", "LAST USE", "IMAGE")]
    for e in endpoints:
        workers = e.get("workers") or {}
        rows.append(
            (
                e["name"],
                e["id"],
                _hardware(e),
                str(workers.get("max", "?")),
                str(workers.get("min", "?")),
                f"{workers.get('idleTimeout', '?')} s",
                _last_use(e["id"]),
                str(e.get("image") or "?"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*map(str.ljust, row[:-1], widths), row[-1]]) for row in rows]
    note = "LAST USE: this machine's last cell on it"
    return "\n".join([*lines, quota.line(), note])


def _hardware(endpoint: dict[str, Any]) -> str:
    """GPU pools (less excluded types), or CPU flavors, as REST v2 reports them."""
    gpu = endpoint.get("gpu")
    if isinstance(gpu, dict):
        excluded = "".join(f" -{t}" for t in gpu.get("excludedTypes") or [])
        return ",".join(gpu.get("pools") or []) + excluded
    flavors = [c.get("id", "?") for c in endpoint.get("cpu") or [] if isinstance(c, dict)]
    return "cpu " + ",".join(flavors)


def _last_use(endpoint_id: str) -> str:
    when = endpoint_use.last_used(endpoint_id)
    return "-" if when is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(when))


def _delete(name: str) -> None:
    if not name:
        raise UsageError("%tetra delete NAME: name the endpoint (see %tetra endpoints)")
    gone = provision.delete(name, *_credentials())
    print(f"deleted RunPod endpoint {gone['name']} ({gone['id']})")


def _credentials() -> tuple[ApiKey, str]:
    key, source = api_key()
    if key is None:
        raise TetraError(
            "no RunPod API key: set RUNPOD_API_KEY or run `runpod config` (endpoints live on"
            " RunPod; cells without a key run on the local endpoint)"
        )
    return key, source
