"""Every `%tetra` command, in one table: its name, its usage, and the function that carries it
out with the magic and the rest of its line (`%tetra NAME rest`). The commands print for the
user and return nothing.

The table is read when the magic loads (its names tell a command from a statement), so this
module stays light: a command imports what it needs when it runs.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from tetra_magic.errors import TetraError

if TYPE_CHECKING:
    from tetra_magic.cloud.credentials import ApiKey
    from tetra_magic.cloud.quota import Quota


@dataclass(frozen=True)
class Command:
    """One `%tetra` command: `usage` as the user types it, and the function that runs it,
    as "module:function" (imported on first use), called with (magic, rest of the line)."""

    usage: str
    target: str

    def run(self, magic: Any, rest: str) -> None:
        module, _, function = self.target.partition(":")
        runner: Callable[[Any, str], None] = getattr(importlib.import_module(module), function)
        runner(magic, rest)


_SESSIONS = "tetra_magic.session.commands"
_BACKGROUND = "tetra_magic.job.background"
_ATTACH = "tetra_magic.job.attach"  # `jobs` too: it adds the detached jobs on record
COMMANDS: dict[str, Command] = {
    "local": Command("local [start|status|stop]", f"{__name__}:local"),
    "endpoints": Command("endpoints", f"{__name__}:endpoints"),
    "delete": Command("delete NAME", f"{__name__}:delete"),
    "session": Command("session [NAME|off]", f"{_SESSIONS}:default"),
    "sessions": Command("sessions", f"{_SESSIONS}:table"),
    "pull": Command("pull [--session S] NAME ...", f"{_SESSIONS}:pull"),
    "end": Command("end NAME ...", f"{_SESSIONS}:end"),
    "replay": Command("replay [--force] NAME ...", f"{_SESSIONS}:replay"),
    "jobs": Command("jobs", f"{_ATTACH}:jobs_command"),
    "wait": Command("wait [JOB ...]", f"{_BACKGROUND}:wait_command"),
    "cancel": Command("cancel JOB ...", f"{_BACKGROUND}:cancel_command"),
    "attach": Command("attach JOB_ID", f"{_ATTACH}:attach_command"),
}

_LOCAL_USAGE = (
    "%tetra local [start|status|stop]: start (or find) the local endpoint and print its URL;"
    " status: whether it runs, its URL, pid, workers, idle time and log; stop: stop it (the"
    " next cell on it starts a new one)"
)


def local(magic: Any, rest: str) -> None:
    """`%tetra local [start|status|stop]`: the server every kernel of this Python shares."""
    from tetra_magic.local import control
    from tetra_magic.local.launcher import ensure_running

    if rest in ("", "start"):
        print(f"local endpoint: {ensure_running().base_url}")
    elif rest == "status":
        print(control.status_text(control.status(), stop_command="%tetra local stop"))
    elif rest == "stop":
        print(control.stop_text())
    else:
        raise UsageError(f"%tetra local {rest}: unknown; {_LOCAL_USAGE}")


def endpoints(magic: Any, rest: str) -> None:
    """`%tetra endpoints`: our endpoints on the RunPod account, and the worker quota."""
    from tetra_magic.cloud import provision

    print(endpoint_table(*provision.our_endpoints(*_credentials())))


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
    from tetra_magic.cloud import endpoint_use

    when = endpoint_use.last_used(endpoint_id)
    return "-" if when is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(when))


def delete(magic: Any, name: str) -> None:
    """`%tetra delete NAME`: delete one of our endpoints on RunPod."""
    from tetra_magic.cloud import provision

    if not name:
        raise UsageError("%tetra delete NAME: name the endpoint (see %tetra endpoints)")
    gone = provision.delete(name, *_credentials())
    print(f"deleted RunPod endpoint {gone['name']} ({gone['id']})")


def _credentials() -> tuple[ApiKey, str]:
    from tetra_magic.cloud.credentials import api_key

    key, source = api_key()
    if key is None:
        raise TetraError(
            "no RunPod API key: set RUNPOD_API_KEY or run `runpod config` (endpoints live on"
            " RunPod; cells without a key run on the local endpoint)"
        )
    return key, source
