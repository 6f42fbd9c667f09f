"""The workers' own Python environment, apart from the kernel's.

A cell's `--deps` are installed by the worker into the interpreter it runs on; if that were the
kernel's, a local cell could upgrade numpy under the user's notebook. So the workers run in a
venv of their own, made with uv on the kernel's interpreter (notebook functions made without a
`def` of their own travel as bytecode, which only loads on the same Python minor version), or on
the one `TETRA_MAGIC_WORKER_PYTHON` names, holding the pinned runpod SDK, the kernel's exact
cloudpickle version, and a copy of our `worker` package.

The venv is made once and reused. A stamp file holds a hash of everything that went into it
(worker sources, requirements, interpreter); when that changes the venv is refreshed in place,
keeping the packages cells installed. `TETRA_MAGIC_WORKER_ENV` names another location (tests
share one across runs). Building holds a file lock, so two servers never build one venv at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tetra_magic import our_worker
from tetra_magic.local import state
from worker.uv_binary import find_uv

ENV_FORMAT = 1
RUNPOD_PIN = "runpod==1.12.0"
STAMP = "tetra-env.json"
LOG_TAIL = 40


class WorkerEnvError(RuntimeError):
    """The workers' environment could not be made; the message says what failed and why."""


def requirements() -> list[str]:
    """What the workers need, with cloudpickle pinned to the kernel's own version."""
    try:
        cloudpickle = importlib.metadata.version("cloudpickle")
    except importlib.metadata.PackageNotFoundError as exc:
        raise WorkerEnvError("cloudpickle is not installed in this Python environment") from exc
    return [RUNPOD_PIN, f"cloudpickle=={cloudpickle}", "pydantic>=2.6", "packaging>=23", "uv>=0.4"]


def worker_package() -> Path:
    """The directory of our `worker` package, wherever it is installed (wheel or checkout):
    beside tetra_magic, whatever `worker` the current directory holds."""
    path = our_worker.FOLDER
    if not path.is_dir():
        raise WorkerEnvError(f"the `worker` package (shipped with tetra-magic) is not in {path}")
    if not (path / "handler.py").exists() or not (path / "protocol.py").exists():
        raise WorkerEnvError(f"{path} is a `worker` package, but not tetra-magic's")
    return path


def interpreter() -> str:
    """The Python the workers run: `TETRA_MAGIC_WORKER_PYTHON` (a path, to try a worker of
    another Python version against this kernel), else the kernel's own."""
    chosen = os.environ.get("TETRA_MAGIC_WORKER_PYTHON")
    return chosen or os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]


def location(root: Path | None = None) -> Path:
    """Where the venv lives: $TETRA_MAGIC_WORKER_ENV, else per Python in the state dir."""
    override = os.environ.get("TETRA_MAGIC_WORKER_ENV")
    if override:
        return Path(override).expanduser().absolute()
    tag = hashlib.sha256(interpreter().encode()).hexdigest()[:8]
    return (root or state.home()) / "envs" / f"{state.python_tag()}-{tag}"


def venv_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def fingerprint(package: Path, reqs: list[str]) -> str:
    """A hash of everything the venv is made from; a change means a refresh."""
    digest = hashlib.sha256()
    header = [ENV_FORMAT, sys.version, interpreter(), reqs]
    digest.update(json.dumps(header).encode())
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(str(path.relative_to(package)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def ensure(root: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The workers' python, making or refreshing their venv first if needed."""
    env = location(root)
    package, reqs = worker_package(), requirements()
    want = fingerprint(package, reqs)
    try:
        env.parent.mkdir(parents=True, exist_ok=True)
        with open(env.parent / f".{env.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return _make(env, package, reqs, want, log)
    except OSError as exc:
        raise WorkerEnvError(f"cannot make the worker environment at {env}: {exc}") from exc


def _make(env: Path, package: Path, reqs: list[str], want: str, log: Callable[[str], None]) -> Path:
    """Under the lock: reuse the venv if its stamp matches, else make or refresh it."""
    python = venv_python(env)
    if python.exists() and _stamp(env) == want:
        log(f"worker environment {env} is up to date")
        return python
    log(f"preparing the worker environment in {env}")
    if not _usable(python):
        _create(env, log)
    _run([_uv(), "pip", "install", "--quiet", "--python", str(python), *reqs], log)
    _copy_worker(package, python)
    state.write_json_private(env / STAMP, {"fingerprint": want, "requirements": reqs})
    log("worker environment ready")
    return python


def _stamp(env: Path) -> str | None:
    try:
        return json.loads((env / STAMP).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _usable(python: Path) -> bool:
    """Whether the venv's python runs and is the workers' Python version."""
    if not python.exists():
        return False
    want = python_version(interpreter())
    return want is not None and python_version(str(python)) == want


def python_version(python: str) -> str | None:
    """`python`'s sys.version; None if it does not run."""
    probe = [python, "-c", "import sys; print(sys.version)"]
    try:
        out = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _uv() -> str:
    found = find_uv()
    if found is None:
        raise WorkerEnvError("uv is needed to make the worker environment")
    return found


def _create(env: Path, log: Callable[[str], None]) -> None:
    if env.exists():
        shutil.rmtree(env)
    _run([_uv(), "venv", "--quiet", "--python", interpreter(), str(env)], log)


def _copy_worker(package: Path, python: Path) -> None:
    """Put our worker package in the venv's site-packages, replacing any older copy."""
    query = [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    site = Path(subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip())
    target = site / "worker"
    if target.resolve() == package.resolve():
        return
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _run(argv: list[str], log: Callable[[str], None]) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("VIRTUAL_ENV", None)  # uv must act on --python, never on the kernel's venv
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WorkerEnvError(f"could not run {Path(argv[0]).name} {argv[1]}: {exc}") from exc
    output = (done.stdout + done.stderr).strip()
    if output:
        log(output)
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-LOG_TAIL:])
        command = " ".join([Path(argv[0]).name, *argv[1:3]])
        raise WorkerEnvError(f"`{command} ...` failed (exit {done.returncode}):\n{tail}")
