"""Installing a request's dependencies: a notebook's Python packages into its own layer.

Python packages go in with `uv pip install` for this interpreter. A request from a notebook
kernel (its `kernel_id`) installs into that kernel's layer, a directory of its own that its
executor child finds ahead of the worker's environment, so the worker's image plus what this
notebook asked for is what its cells see: never what another notebook installed (a cell that
runs here runs on a fresh worker with the same declared deps). A request without a kernel
installs into the worker's environment, as the published worker does. Specifiers already met by
the image or the layer never reach uv: that check reads installed metadata, with no process, no
network and no resolver, which is what makes the second run of a `--deps` cell cost nothing.

System packages go in with apt-get, only where that is safe (as root, in a container), into
the one system every notebook shares; packages dpkg already has are never fetched again.

Each installer's output streams as "log" chunks; a failure raises InstallError carrying the
installer's own words, and the request then runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from worker.protocol import Emit, chunk
from worker.uv_binary import find_uv

ERROR_LINES = 40
_apt_lists_updated = False
_satisfied_at: dict[tuple[str, Path | None], tuple[int, ...]] = {}


class InstallError(Exception):
    """An installer failed, or was given something that is not a package; the message says so in
    the installer's own words where there are any."""


def _check_names(names: list[str]) -> None:
    """Refuse installer options smuggled in as package names (`--index-url=...`)."""
    for name in names:
        if not name.strip() or name.lstrip().startswith("-"):
            raise InstallError(f"{name!r} is not a package name (installer options are refused)")


def layer(kernel_id: str | None) -> Path | None:
    """Where a kernel's own packages go: $TETRA_PACKAGES_DIR/<kernel id> (default: under the
    temp dir), made on first use; None for a request without a kernel."""
    if kernel_id is None:
        return None
    default = Path(tempfile.gettempdir()) / f"tetra-packages-{os.getuid()}"
    path = Path(os.environ.get("TETRA_PACKAGES_DIR") or default) / kernel_id
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _search_path(layer: Path | None) -> list[str]:
    """Where the executor child looks for packages, in its order: the layer first."""
    return [str(layer), *sys.path] if layer is not None else sys.path


def _distribution(name: str, layer: Path | None) -> metadata.Distribution | None:
    """The distribution `name` the child would import: the first on its search path."""
    found = metadata.distributions(name=name, path=_search_path(layer))
    return next(iter(found), None)


def _met(req: Requirement, seen: set[str], layer: Path | None) -> bool:
    """Whether `req` (and the deps its extras add) is met by the distributions installed in
    the image or in `layer`."""
    if req.marker is not None and not req.marker.evaluate():
        return True  # not meant for this platform
    if req.url:
        return False  # a direct reference: only the installer can tell what it holds
    if req.name.lower() in seen:
        return True  # judged where it first came up (extras can lead back to it)
    seen.add(req.name.lower())
    dist = _distribution(req.name, layer)
    if dist is None or not req.specifier.contains(_version(dist), prereleases=True):
        return False
    return not req.extras or all(_met(dep, seen, layer) for dep in _extra_deps(dist, req.extras))


def _version(dist: metadata.Distribution) -> str:
    """The installed version, read from the metadata's header lines only: `dist.version` parses
    the whole file, long description and all, which made a warm check of three packages cost
    milliseconds instead of microseconds."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if not line:
            break  # the headers end at the first blank line
        if line.startswith("Version:"):
            return line.partition(":")[2].strip()
    return dist.version


def _extra_deps(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    """The requirements `dist` adds for `extras` (its base ones are installed with it)."""
    deps = []
    for line in dist.requires or []:
        dep = Requirement(line)
        if dep.marker is None or dep.marker.evaluate({"extra": ""}):
            continue
        if any(dep.marker.evaluate({"extra": extra}) for extra in extras):
            dep.marker = None
            deps.append(dep)
    return deps


def _fingerprint(layer: Path | None) -> tuple[int, ...]:
    """The modification times of the import path's directories: any install, upgrade or
    removal adds or deletes a *.dist-info entry in one of them, and so changes this."""
    times = []
    for entry in _search_path(layer):
        with contextlib.suppress(OSError):
            times.append(os.stat(entry or ".").st_mtime_ns)
    return tuple(times)


def satisfied(spec: str, layer: Path | None = None) -> bool:
    """Whether `spec` is already met by the image or `layer`; unparsable ones are left to the
    installer to judge.

    A spec found met is remembered until the import path's directories change, so a warm
    request's check is a handful of stat calls.
    """
    fingerprint = _fingerprint(layer)
    if _satisfied_at.get((spec, layer)) == fingerprint:
        return True
    try:
        met = _met(Requirement(spec), set(), layer)
    except InvalidRequirement:
        return False
    if met:
        _satisfied_at[spec, layer] = fingerprint
    return met


def missing(specs: list[str], layer: Path | None = None) -> list[str]:
    """The specifiers not already met by what is installed in the image or `layer`."""
    return [spec for spec in specs if not satisfied(spec, layer)]


def uv_binary() -> str:
    """TETRA_UV if set, else the `uv` package's binary, else uv on PATH."""
    if os.environ.get("TETRA_UV"):
        return os.environ["TETRA_UV"]
    found = find_uv()
    if found is None:
        raise InstallError("uv is not installed in the worker environment")
    return found


async def _run(argv: list[str], env: dict[str, str], emit: Emit) -> list[str]:
    """Run an installer, streaming its combined output; its lines, or InstallError on failure.

    Cancelling this kills the installer rather than leaving it to run on unobserved.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))
            emit(chunk("log", lines[-1]))
        code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
    if code != 0:
        output = "".join(lines[-ERROR_LINES:]).strip()
        raise InstallError(output or f"{Path(argv[0]).name} failed with exit status {code}")
    return lines


async def install_python(specs: list[str], emit: Emit, layer: Path | None = None) -> bool:
    """Install what `specs` needs that is not already here, into `layer` (None: the worker's
    environment); whether uv replaced or removed an installed package (code already running
    may hold the old version).

    uv resolves a layer on its own (`--target`), so a package the image also has may land in
    it again (hard-linked from uv's cache): the layer's copy is the one the notebook imports.
    """
    _check_names(specs)
    todo = missing(specs, layer)
    if not todo:
        emit(chunk("log", f"Python dependencies already satisfied: {' '.join(specs)}\n"))
        return False
    emit(chunk("log", f"$ uv pip install {' '.join(todo)}\n"))
    into = ["--target", str(layer)] if layer is not None else []
    argv = [uv_binary(), "pip", "install", "--python", sys.executable, *into, *todo]
    lines = await _run(argv, {**os.environ, "NO_COLOR": "1"}, emit)
    return any(line.startswith(" - ") for line in lines)


def _installed_debs(packages: list[str]) -> set[str]:
    """The packages dpkg reports installed (none where there is no dpkg)."""
    if shutil.which("dpkg-query") is None:
        return set()
    query = ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages]
    out = subprocess.run(query, capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}


def apt_blocker() -> str | None:
    """Why apt-get may not be used here, or None. Only as root in a container: never on
    someone's own machine. The worker images set TETRA_ALLOW_APT=1; marker files cover other
    container runtimes."""
    if shutil.which("apt-get") is None:
        return "this worker has no apt-get"
    if os.geteuid() != 0:
        return "the worker does not run as root"
    markers = ("/.dockerenv", "/run/.containerenv")
    if os.environ.get("TETRA_ALLOW_APT") != "1" and not any(Path(p).exists() for p in markers):
        return "the worker is not in a container (set TETRA_ALLOW_APT=1 to allow apt-get)"
    return None


async def install_system(packages: list[str], emit: Emit) -> None:
    """apt-get install what dpkg does not already have, where allowed; otherwise say plainly,
    on the request's stderr, that they were not installed."""
    global _apt_lists_updated
    _check_names(packages)
    installed = _installed_debs(packages)
    todo = [name for name in packages if name not in installed]
    if not todo:
        emit(chunk("log", f"system dependencies already installed: {' '.join(packages)}\n"))
        return
    reason = apt_blocker()
    if reason is not None:
        names = " ".join(todo)
        emit(chunk("stderr", f"tetra: system dependencies not installed ({names}): {reason}\n"))
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_lists_updated:
        emit(chunk("log", "$ apt-get update\n"))
        await _run(["apt-get", "update", "-q"], env, emit)
        _apt_lists_updated = True
    emit(chunk("log", f"$ apt-get install {' '.join(todo)}\n"))
    await _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *todo], env, emit)
