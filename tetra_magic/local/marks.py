"""Processes of the local endpoint, found by a marker variable in their environment.

The server, its workers and everything they start carry markers (`SERVER_MARK` = the server's
pid, `WORKER_MARK` = the worker's id, `HOME_MARK` = the server's state dir on the server
itself), inherited by every process below them. A marker outlives the records that might name
a process (a pid in a deleted server.json, a worker that died without its children), so what a
dead or forgotten process left behind can always be found and stopped. Stdlib only: the
launcher imports this inside the notebook kernel.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

SERVER_MARK = "TETRA_LOCAL_SERVER"
WORKER_MARK = "TETRA_LOCAL_WORKER"
HOME_MARK = "TETRA_LOCAL_SERVER_DIR"
Accept = str | Callable[[str], bool] | None


def marked_processes(key: str, accept: Accept = None) -> list[int]:
    """Pids of this user's processes whose environment has `key` (=`accept`, if given).

    Linux only (reads /proc/PID/environ); elsewhere nothing is found.
    """
    found = []
    prefix = f"{key}=".encode()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as handle:
                    items = handle.read().split(b"\0")
            except OSError:
                continue
            for item in items:
                if item.startswith(prefix):
                    value = item[len(prefix) :].decode(errors="replace")
                    if accept is None or (accept(value) if callable(accept) else value == accept):
                        found.append(int(entry.name))
                    break
    return found


def kill_marked(key: str, accept: Accept = None) -> int:
    """SIGKILL every process marked `key` (see `marked_processes`); returns how many."""
    pids = marked_processes(key, accept)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
