"""What this machine remembers of the RunPod endpoints it used: when a cell last went to each,
and which ones `%tetra end` set to 0 max workers.

RunPod reports neither (its Endpoint has no last-request time), and both decide what the magic
says about an endpoint it finds scaled down: RunPod lowers an endpoint's max workers to 2 after
3 days without requests and to 0 after 7 (docs, endpoint configurations, "Idle endpoint
scale-down"), so "after 7 idle days" can be said only where this machine's last use is that
old. A JSON file in the state dir, `{endpoint id: {"used": unix time, "ended": session}}`;
it holds no key. Stdlib only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from typing import Any

from tetra_magic.local.state import write_json_private
from tetra_magic.state_dir import home

FILE = "endpoints-used.json"
DAY_S = 86400.0


def used(endpoint_id: str) -> None:
    """Note that a cell goes to the endpoint now (and that it is no longer ended)."""
    with _record() as record:
        record[endpoint_id] = {"used": time.time()}


def ended(endpoint_id: str, session: str) -> None:
    """Note that `%tetra end SESSION` set the endpoint's max workers to 0."""
    with _record() as record:
        record.setdefault(endpoint_id, {})["ended"] = session


def forget(endpoint_id: str) -> None:
    """The endpoint was deleted."""
    with _record() as record:
        record.pop(endpoint_id, None)


def last_used(endpoint_id: str) -> float | None:
    """When this machine last sent a cell to the endpoint (unix time), if it ever did."""
    value = _read().get(endpoint_id, {}).get("used")
    return float(value) if isinstance(value, int | float) else None


def idle_days(endpoint_id: str) -> float | None:
    """Days since this machine last sent a cell to the endpoint."""
    last = last_used(endpoint_id)
    return None if last is None else (time.time() - last) / DAY_S


def ended_session(endpoint_id: str) -> str | None:
    """The session whose `%tetra end` set the endpoint to 0 max workers, if one did."""
    value = _read().get(endpoint_id, {}).get("ended")
    return value if isinstance(value, str) else None


def _read() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((home() / FILE).read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: nothing is known, which is only less to say
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


@contextlib.contextmanager
def _record() -> Iterator[dict[str, dict[str, Any]]]:
    """The record, to change in place, written back whole under a lock (kernels of this
    machine share it)."""
    with open(home() / (FILE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = _read()
        yield record
        write_json_private(home() / FILE, record)
