"""RunPod's published standard worker as its image runs it: worker-flash's own code, for tests.

The code is worker-flash 1.0.0 (`../shared/peers/worker-flash-1.0.0`, third-party and kept
unchanged: run here, never copied). Its image installs the requirements its `uv.lock` pins into
the image's own interpreter and runs `python handler.py`; RunPod then sets the `RUNPOD_WEBHOOK_*`
variables, so the runpod SDK runs its production job loop. Here:

- the pinned requirements (and uv, which the image has on PATH) go into a venv of the tests'
  own in a per-user temp dir, made once and reused while the lock file is the same;
- each worker process gets a fresh venv layered over that one (a `.pth` line adds its
  site-packages), and is told to treat that fresh venv as "the system": the worker installs a
  request's `dependencies` with `uv pip install --system`, which skips virtual environments
  and would otherwise land in the first real interpreter on PATH (the machine's own Python);
  `UV_PYTHON` names the interpreter uv acts on, `--system` included. So a cell's `--deps` go
  into a throwaway tree, never into the machine's Python, the project's venv or the shared one.

Where the folder is absent, `source()` is None and the tests use tests/helpers/published_worker.py,
a stand-in that does what that worker's live path does.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from worker.uv_binary import find_uv

PEER = Path(__file__).resolve().parents[3] / "shared" / "peers" / "worker-flash-1.0.0"
FORMAT = "1"  # bump to rebuild every cached environment


_ELSEWHERE = ("VIRTUAL_ENV", "UV_PYTHON", "UV_SYSTEM_PYTHON", "UV_PROJECT_ENVIRONMENT")


class Unavailable(RuntimeError):
    """The worker's environment could not be made; the message says what stopped it."""


def folder() -> Path:
    """Where worker-flash's code is looked for: $TETRA_MAGIC_WORKER_FLASH, else the shared
    peers' copy."""
    return Path(os.environ.get("TETRA_MAGIC_WORKER_FLASH") or PEER)


def source() -> Path | None:
    """worker-flash's folder, when it has what its image is built from."""
    where = folder()
    needed = ("src/handler.py", "uv.lock", "pyproject.toml")
    return where if all((where / name).is_file() for name in needed) else None


def base_python() -> str:
    """The interpreter the worker runs on: this machine's Python of the kernels' version (the
    image has 3.12; its requirements allow 3.10 to 3.14, and a kernel of another minor version
    than the worker's is a separate concern of its own)."""
    return os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]


def _uv() -> str:
    found = find_uv()
    if found is None:
        raise Unavailable("uv is not installed, so worker-flash's requirements cannot be")
    return found


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 900) -> str:
    """Run a uv command on the paths it names: what would point uv at another environment is
    left out (the user's index and cache settings stay)."""
    env = {k: v for k, v in os.environ.items() if k not in _ELSEWHERE}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"`{' '.join(argv[1:3])}` did not finish: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise Unavailable(f"`uv {' '.join(argv[1:3])}` failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _tests_root() -> Path:
    """The per-user temp dir the tests keep what they reuse in (helpers/kernels.py's too)."""
    return Path(tempfile.gettempdir()) / f"tetra-magic-tests-{os.getuid()}"


def shared_env(folder: Path) -> Path:
    """The venv with worker-flash's pinned requirements, shared by every test run (built by
    the first, under a file lock); its path. Unavailable, with uv's own words, if they
    cannot be installed."""
    digest = hashlib.sha256()
    for part in (FORMAT, base_python(), (folder / "uv.lock").read_text()):
        digest.update(part.encode() + b"\0")
    root = _tests_root()
    env = root / f"worker-flash-{digest.hexdigest()[:12]}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (env / "ready").exists():
            _build(folder, env)
    return env


def _build(folder: Path, env: Path) -> None:
    """The image's install step: the lock file's requirements without dev dependencies."""
    uv = _uv()
    reqs = _run([uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project",
                 "--python", base_python()], cwd=folder)  # fmt: skip
    _run([uv, "venv", "--quiet", "--clear", "--python", base_python(), str(env)])
    (env / "requirements.txt").write_text(reqs)
    uv_pin = f"uv=={_run([uv, '--version']).split()[1]}"  # the image has uv on PATH
    python = str(env / "bin" / "python")
    _run([uv, "pip", "install", "--quiet", "--python", python, "-r", str(env / "requirements.txt"),
          uv_pin])  # fmt: skip
    (env / "ready").write_text("")


def site_packages(python: Path) -> Path:
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run([str(python), "-c", query], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def worker_python(folder: Path, home: Path) -> tuple[Path, dict[str, str]]:
    """A fresh interpreter tree in `home` over the shared venv, and the environment that makes
    it the worker's "system" Python for uv; (its python, those variables)."""
    shared = shared_env(folder)
    own = home / "python"
    _run([_uv(), "venv", "--quiet", "--clear", "--python", base_python(), str(own)])
    python = own / "bin" / "python"
    layer = f"import site; site.addsitedir({str(site_packages(shared / 'bin' / 'python'))!r})\n"
    (site_packages(python) / "worker_flash_base.pth").write_text(layer)
    path = os.pathsep.join([str(own / "bin"), str(shared / "bin"), os.environ.get("PATH", "")])
    # The user's uv cache, not one under the worker's own HOME: packages download once.
    cache = os.environ.get("UV_CACHE_DIR") or _run([_uv(), "cache", "dir"]).strip()
    return python, {
        "PATH": path,
        "UV_PYTHON": str(python),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_CACHE_DIR": cache,
        # Bytecode of worker-flash's files goes here, never beside them in the shared folder.
        "PYTHONPYCACHEPREFIX": str(_tests_root() / "pycache"),
    }


def command(folder: Path, home: Path) -> tuple[list[str], dict[str, str]]:
    """How the image starts the worker (`python handler.py`), with the variables it needs."""
    python, env = worker_python(folder, home)
    return [str(python), str(folder / "src" / "handler.py")], env
