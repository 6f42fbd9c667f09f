"""Where the local endpoint keeps its state, and the few files in it that hold secrets or pids.

Layout under the state dir (`$TETRA_MAGIC_HOME`, else `~/.cache/tetra-magic`, mode 0700):

    token                     the bearer token, 0600, shared by every server of this user
    local-py3.11/server.json  {url, endpoint_id, pid, python}: the running server for Python 3.11
    local-py3.11/server.log   that server's own log
    local-py3.11/workers/     one log per worker slot
    local-py3.11/work/        the workers' working directory (like a fresh container's)
    local-py3.11/kernels/     one working directory per notebook kernel (emptied at start)
    local-py3.11/alive/       one lock file per kernel, held while it lives (see kernels.py)
    envs/py3.11-<hash>/       the workers' Python environment (see environment.py)

Servers are kept per Python minor version because cloudpickle ships notebook functions as
bytecode: a kernel must only ever reuse a server whose workers run its own Python.
Stdlib only: the launcher imports this from inside a notebook kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from tetra_magic import our_worker
from tetra_magic.state_dir import home, private_dir

TOKEN_FILE = "token"
RECORD_FILE = "server.json"
LOG_LIMIT = 5 * 1024 * 1024  # the size past which a server or worker log is cut back


def python_tag() -> str:
    """'py3.11': the key that separates servers and environments by Python minor version."""
    return f"py{sys.version_info.major}.{sys.version_info.minor}"


def server_dir(root: Path | None = None) -> Path:
    """The directory of the server that serves kernels running this Python."""
    return private_dir((root or home()) / f"local-{python_tag()}")


def record_path(root: Path | None = None) -> Path:
    return server_dir(root) / RECORD_FILE


def token(root: Path | None = None) -> str:
    """The bearer token, generated on first use and stored 0600; never printed or logged.

    A token file that is empty, not text or not a token (truncated by a full disk, edited by
    hand) is replaced, under a lock so that two kernels doing it at once agree on one token; a
    server holding the old one no longer answers this kernel, which then replaces it too.
    """
    root = root or home()
    path = root / TOKEN_FILE
    value = _read_token(path)
    if value is not None:
        return value
    with open(root / ".token.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        value = _read_token(path)
        if value is None:
            value = secrets.token_urlsafe(32)
            _write_private(path, value + "\n")
    return value


def _read_token(path: Path) -> str | None:
    try:
        value = path.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return value if _TOKEN.fullmatch(value) else None


_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,512}")


def _write_private(path: Path, text: str) -> None:
    """Write `text` atomically (readers never see half a file), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json_private(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON atomically (readers never see half a file), mode 0600."""
    _write_private(path, json.dumps(data))


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


def log_tail(path: Path, lines: int) -> str:
    """The last lines of a server or worker log, to quote in an error about it."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid is running.

    A zombie is not: a server the kernel started and that died stays a zombie of that kernel
    until reaped, and must count as gone (signal 0 alone would say it exists).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def code_fingerprint() -> str:
    """A hash of the worker package and of this package's sources.

    A server records it; a kernel whose copy differs (tetra-magic upgraded, or the worker
    edited in a checkout) replaces that server rather than sending jobs to old code. Every
    cell asks, so the hash is kept while no file changed (size and mtime).
    """
    folders = [Path(__file__).parent, our_worker.FOLDER]  # not a notebook's own worker.py
    paths = [path for folder in folders for path in sorted(folder.glob("*.py"))]
    signature = tuple((str(p), s.st_size, s.st_mtime_ns) for p in paths for s in [p.stat()])
    if signature not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for path in paths:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        _FINGERPRINTS.clear()
        _FINGERPRINTS[signature] = digest.hexdigest()[:16]
    return _FINGERPRINTS[signature]


_FINGERPRINTS: dict[tuple[tuple[str, int, int], ...], str] = {}
