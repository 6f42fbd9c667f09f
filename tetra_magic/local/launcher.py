"""Start the local endpoint on first use, and reuse it from every kernel after that.

`ensure_running()` returns the endpoint recorded in the state dir if it answers /health with
our token; otherwise it starts `python -m tetra_magic.local` detached (its own session, output
to server.log) and waits for it to record itself. The server records itself as soon as it
listens and only then prepares the worker environment, so a first cell waits IN_QUEUE during
a cold start instead of the kernel blocking here. A file lock makes two kernels starting at
once share one server. Stdlib only: this is imported inside the notebook kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import site
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tetra_magic.local import kernels, state
from tetra_magic.local.marks import HOME_MARK, marked_processes
from tetra_magic.local.passed_env import passed

DEFAULT_IDLE_TIMEOUT = 2 * 3600.0
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}
# Loopback never goes through an HTTP proxy, whatever HTTP_PROXY says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# The record of the server last found answering here, and its endpoint (see `running`).
_confirmed: tuple[dict[str, Any], LocalEndpoint] | None = None


class LocalEndpointError(RuntimeError):
    """The local endpoint could not be started; the message carries its log's last lines."""


@dataclass(frozen=True)
class LocalEndpoint:
    """Where the local endpoint is: RunPod's base URL, endpoint id and API key for it."""

    base_url: str  # e.g. http://127.0.0.1:PORT/v2
    endpoint_id: str  # e.g. "local"
    api_key: str = field(repr=False)

    @property
    def url(self) -> str:
        """The endpoint's own URL: base_url/endpoint_id."""
        return f"{self.base_url}/{self.endpoint_id}"


def running() -> LocalEndpoint | None:
    """The recorded server for this Python, if it is up, accepts our token and runs our code.

    Every cell asks. Once a server has answered /health with our token, its record (pid, URL)
    identifies it: while the record stays the same and its process is alive, the answer is
    known without the round trip.
    """
    global _confirmed
    record = state.read_record()
    if record is None or record.get("code") != state.code_fingerprint():
        return None
    pid = record.get("pid")
    if (
        _confirmed is not None
        and _confirmed[0] == record
        and isinstance(pid, int)
        and state.pid_alive(pid)
    ):
        return _confirmed[1]
    endpoint = endpoint_of(record, state.token())
    if endpoint is None or not _answers(endpoint):
        return None
    _confirmed = (record, endpoint)
    return endpoint


def ensure_running(
    *,
    workers: int | None = None,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    timeout: float = 60.0,
    kernel_id: str | None = None,
) -> LocalEndpoint:
    """The local endpoint, started if no live one is recorded.

    `workers` and `idle_timeout` (seconds; None: never) apply only when a server is started
    here; a running server is reused as it is, unless it runs other code than this kernel
    has (tetra-magic upgraded, worker edited): that one is stopped and replaced. With
    `kernel_id` (the one cells send), this process holds that kernel's lock from now on, so
    the server frees what the kernel's cells left on the workers once the kernel is gone.
    """
    if kernel_id is not None:
        kernels.hold(kernel_id)
    endpoint = running()
    if endpoint is not None:
        return endpoint
    folder = state.server_dir()
    with open(folder / "launch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        endpoint = running()  # another kernel may have started it while we waited
        if endpoint is not None:
            return endpoint
        stop()  # a stale server (other code, or not answering), if any
        process = _spawn(folder, workers, idle_timeout)
        return _wait_for(process, folder / "server.log", timeout)


def stop(timeout: float = 15.0) -> bool:
    """Stop the recorded server, and any other this state dir's launcher started whose record
    was lost (server.json deleted or corrupt): SIGTERM, then SIGKILL. False if none ran."""
    record = state.read_record()
    pid = record.get("pid") if record else None
    pids = set(marked_processes(HOME_MARK, str(state.server_dir())))
    if isinstance(pid, int) and state.pid_alive(pid) and _is_server(pid):
        pids.add(pid)
    for each in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGTERM)
    for each in pids:
        if not _wait_exit(each, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGKILL)
            _wait_exit(each, 5.0)
        state.remove_record_if_ours(pid=each)
    return bool(pids)


def endpoint_of(record: dict[str, Any], token: str) -> LocalEndpoint | None:
    """The endpoint a server record names, reached with `token`; None for a malformed one."""
    url, endpoint_id = record.get("url"), record.get("endpoint_id")
    if not isinstance(url, str) or not isinstance(endpoint_id, str):
        return None
    return LocalEndpoint(base_url=url, endpoint_id=endpoint_id, api_key=token)


def _answers(endpoint: LocalEndpoint) -> bool:
    return ask(endpoint, "health") is not None


def ask(endpoint: LocalEndpoint, route: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """The JSON object a client route of the server answers with our token; None when it does
    not answer (not running, another token, a route it does not have)."""
    request = urllib.request.Request(
        f"{endpoint.url}/{route}", headers={"Authorization": f"Bearer {endpoint.api_key}"}
    )
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            answer = json.load(response)
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors
        return None
    return answer if isinstance(answer, dict) else None


def _spawn(
    folder: Path, workers: int | None, idle_timeout: float | None
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "tetra_magic.local", "--port", "0"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if idle_timeout:
        argv += ["--idle-timeout", str(idle_timeout)]
    log_path = folder / "server.log"
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > state.LOG_LIMIT:
            log_path.unlink()
    env = {
        **passed(os.environ),  # nothing of this kernel's own: the server serves every kernel
        "TETRA_MAGIC_HOME": str(state.home()),
        "PYTHONUNBUFFERED": "1",
        HOME_MARK: str(folder),
    }
    env.update(_import_path(os.environ.get("PYTHONPATH")))
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=env,
            start_new_session=True,
        )
    _SPAWNED[process.pid] = process
    return process


def _import_path(current: str | None) -> dict[str, str]:
    """PYTHONPATH for the server, when tetra_magic is imported from a checkout, not installed.

    The server runs in the state dir, where a source checkout is not on the path. An installed
    package (site-packages) needs nothing, and putting site-packages ahead of the standard
    library on PYTHONPATH could shadow it, so that case is left alone.
    """
    parent = str(Path(__file__).resolve().parents[2])
    installed = {
        str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]
    }
    if parent in installed:
        return {}
    return {"PYTHONPATH": os.pathsep.join([parent, *([current] if current else [])])}


def _wait_for(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> LocalEndpoint:
    """Wait until the new server has recorded itself and answers; raise if it dies first."""
    deadline = time.monotonic() + timeout
    token = state.token()
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise LocalEndpointError(
                f"the local endpoint server exited with status {code} as it started; "
                f"the end of {log_path}:\n{state.log_tail(log_path, 25)}"
            )
        record = state.read_record()
        if record is not None and record.get("pid") == process.pid:
            endpoint = endpoint_of(record, token)
            if endpoint is not None and _answers(endpoint):
                return endpoint
        time.sleep(0.05)
    raise LocalEndpointError(
        f"the local endpoint server did not come up within {timeout:g} s; "
        f"the end of {log_path}:\n{state.log_tail(log_path, 25)}"
    )


def _is_server(pid: int) -> bool:
    """Whether `pid` is a tetra_magic.local server (guards against a recycled pid)."""
    try:
        return b"tetra_magic.local" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return sys.platform != "linux"  # no /proc: trust the record


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    process = _SPAWNED.get(pid)
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                _SPAWNED.pop(pid, None)
                return True
        elif not state.pid_alive(pid):
            return True
        time.sleep(0.05)
    return False
