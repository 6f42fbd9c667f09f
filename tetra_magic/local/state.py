"""Where the local endpoint keeps its state, and the few files in it that hold secrets or pids.

Layout under the state dir (`$TETRA_MAGIC_HOME`, else `~/.cache/tetra-magic`, mode 0700):

    token                     the bearer token, 0600, shared by every server of this user
    local-py3.11/server.json  {url, endpoint_id, pid, python}: the running server for Python 3.11
    local-py3.11/server.log   that server's own log
    local-py3.11/workers/     one log per worker slot
    local-py3.11/work/        the workers' working directory (like a fresh container's)
    envs/py3.11-<hash>/       the workers' Python environment (see environment.py)

Servers are kept per Python minor version because cloudpickle ships notebook functions as
bytecode: a kernel must only ever reuse a server whose workers run its own Python.
Stdlib only: the launcher imports this from inside a notebook kernel.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

TOKEN_FILE = "token"
RECORD_FILE = "server.json"


def home() -> Path:
    """The state dir, created private (0700) so the token and logs are the user's alone."""
    path = Path(os.environ.get("TETRA_MAGIC_HOME") or Path.home() / ".cache" / "tetra-magic")
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def python_tag() -> str:
    """'py3.11': the key that separates servers and environments by Python minor version."""
    return f"py{sys.version_info.major}.{sys.version_info.minor}"


def server_dir(root: Path | None = None) -> Path:
    """The directory of the server that serves kernels running this Python."""
    return private_dir((root or home()) / f"local-{python_tag()}")


def record_path(root: Path | None = None) -> Path:
    return server_dir(root) / RECORD_FILE


def token(root: Path | None = None) -> str:
    """The bearer token, generated on first use and stored 0600; never printed or logged."""
    path = (root or home()) / TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        value = path.read_text().strip()
        if value:
            return value
    value = secrets.token_urlsafe(32)
    # O_EXCL: if another process wrote the file first, its token wins and we read it back.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def write_json_private(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON atomically (readers never see half a file), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def read_record(root: Path | None = None) -> dict[str, Any] | None:
    """The recorded server for this Python, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(record_path(root).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_record_if_ours(root: Path | None = None, pid: int | None = None) -> None:
    """Remove server.json only if it still names this process (a newer server may own it)."""
    record = read_record(root)
    if record is not None and record.get("pid") == (pid or os.getpid()):
        with contextlib.suppress(FileNotFoundError):
            record_path(root).unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
