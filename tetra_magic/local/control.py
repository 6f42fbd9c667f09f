"""The local endpoint seen and stopped by hand: `tetra-local status|stop`, `%tetra local ...`.

The first cell starts the server in the background and it stays up, shared by every kernel of
this Python, until two idle hours pass; these say whether one is running, where, for how much
longer, and stop it. Both read the same record the kernels use (state.py) and stop it as they
replace it (launcher.stop), so what they report is what the next cell will find. Asking does
not keep the server up: the local-status route does not count as activity. Stdlib only: the
magic imports this inside the notebook kernel.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tetra_magic.local import launcher, state


@dataclass(frozen=True)
class Status:
    """What `status` found: the recorded server of this Python, and what it says of itself."""

    python_tag: str  # "py3.11": servers are kept per Python minor version
    log: Path
    record: dict[str, Any] | None  # server.json, when a live process holds it
    answer: dict[str, Any] | None  # its local-status answer; None: it did not answer
    same_code: bool  # False: it runs other code, and the next cell replaces it

    @property
    def running(self) -> bool:
        return self.record is not None and self.answer is not None


def status() -> Status:
    """The recorded server, if its process lives, and its own answer about idle time and jobs."""
    record = state.read_record()
    log = state.server_dir() / "server.log"
    pid = record.get("pid") if record else None
    if record is None or not isinstance(pid, int) or not state.pid_alive(pid):
        return Status(state.python_tag(), log, None, None, True)
    return Status(
        python_tag=state.python_tag(),
        log=log,
        record=record,
        answer=_ask(record),
        same_code=record.get("code") == state.code_fingerprint(),
    )


def status_text(found: Status, stop_command: str) -> str:
    """What `status` found, as the lines a user reads; `stop_command`: how to stop it there."""
    if found.record is None:
        return (
            f"no local endpoint is running for Python {found.python_tag[2:]}"
            f" (the first %%tetra cell without a RunPod key starts one); log: {found.log}"
        )
    record, answer = found.record, found.answer
    head = "running" if answer is not None else "not answering (starting, or hung)"
    lines = [
        f"local endpoint: {head}",
        f"  URL      {record.get('url')}/{record.get('endpoint_id')}",
        f"  pid      {record.get('pid')}",
        f"  workers  {_workers(record, answer)}",
        f"  Python   {record.get('python', '?')}",
        f"  idle     {_idle(answer)}",
        f"  log      {found.log}",
    ]
    if not found.same_code:
        lines.append("  it runs other code than this tetra-magic: the next cell replaces it")
    lines.append(f"stop it with: {stop_command}")
    return "\n".join(lines)


def stop_text() -> str:
    """Stop the server (and any this state dir's launcher lost track of); say what stopped."""
    record = state.read_record()
    if not launcher.stop():
        return f"no local endpoint was running for Python {state.python_tag()[2:]}"
    if record is None:
        return "stopped the local endpoint"
    where = f"{record.get('url')}/{record.get('endpoint_id')}"
    return (
        f"stopped the local endpoint at {where} (pid {record.get('pid')});"
        " the next %%tetra cell starts a new one"
    )


def cli_command() -> str:
    """How to run `tetra-local` from here: its name when it is on PATH, else this Python's."""
    beside = Path(sys.executable).parent / "tetra-local"
    found = shutil.which("tetra-local")
    if found is not None and Path(found).resolve() == beside.resolve():
        return "tetra-local"
    if beside.exists():
        relative = os.path.relpath(beside)
        return relative if not relative.startswith("..") else str(beside)
    return f"{sys.executable} -m tetra_magic.local"


def _ask(record: dict[str, Any]) -> dict[str, Any] | None:
    """The server's local-status answer, or None when it does not answer with our token.

    A server of an older tetra-magic has no local-status route; its /health (which counts as
    activity there) still says that it answers, and what its workers do.
    """
    endpoint = launcher.endpoint_of(record, state.token())
    if endpoint is None:
        return None
    return launcher.ask(endpoint, "local-status") or launcher.ask(endpoint, "health")


def _workers(record: dict[str, Any], answer: dict[str, Any] | None) -> str:
    """'2 (2 ready, 1 running a job)': the count, and what /health says of them."""
    count = record.get("workers", "?")
    health = (answer or {}).get("workers")
    if not isinstance(health, dict):
        return str(count)
    parts = [f"{health.get('ready', 0)} ready"]
    for key, label in (("running", "running a job"), ("initializing", "starting")):
        if health.get(key):
            parts.append(f"{health[key]} {label}")
    if health.get("unhealthy"):
        parts.append(f"{health['unhealthy']} failing to start (see the log)")
    return f"{count} ({', '.join(parts)})"


def _idle(answer: dict[str, Any] | None) -> str:
    """How long no client has called, and how long until the server stops for it."""
    if answer is None or not isinstance(answer.get("idle_s"), (int, float)):
        return "unknown"
    idle, limit = float(answer["idle_s"]), answer.get("idle_timeout_s")
    if answer.get("pending"):
        return f"busy: {answer['pending']} job(s) not finished"
    if not isinstance(limit, (int, float)):
        return f"{_duration(idle)}; it stops only when stopped (started without an idle timeout)"
    left = max(float(limit) - idle, 0.0)
    return f"{_duration(idle)}; it stops by itself in {_duration(left)} if no cell comes"


def _duration(seconds: float) -> str:
    """1 h 59 min, 4 min 10 s, 12 s."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
