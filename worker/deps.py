"""Installing a request's dependencies into the worker's own environment.

Python packages go in with `uv pip install` against this interpreter, so the executor child sees
them on its next import. A request whose packages are already installed at acceptable versions
never starts uv: that check is made from installed metadata, with no network and no resolver,
which is what makes the second run of a `--deps` cell cost nothing.
System packages go in with apt-get, only where that is safe: as root inside a container.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement


class InstallError(Exception):
    """An installer failed; the message is the installer's own error output."""


def _satisfied(spec: str) -> bool:
    try:
        req = Requirement(spec)
    except InvalidRequirement:
        return False  # let the installer judge (and explain) it
    if req.marker is not None and not req.marker.evaluate():
        return True  # not meant for this platform
    if req.url:
        return False
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return False
    return req.specifier.contains(installed, prereleases=True)


def missing(specs: list[str]) -> list[str]:
    """The specifiers not already met by what is installed here."""
    return [spec for spec in specs if not _satisfied(spec)]


def uv_binary() -> str:
    """The uv executable: the one from the `uv` package if present, else one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise InstallError("uv is not installed in the worker environment") from None
        return found


async def _stream_command(argv: list[str], env: dict[str, str]) -> AsyncIterator[str]:
    """Yield a command's combined output line by line; raise InstallError if it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = raw.decode(errors="replace")
        lines.append(line)
        yield line
    if await proc.wait() != 0:
        raise InstallError("".join(lines[-40:]).strip() or f"{argv[0]} failed")


async def install_python(specs: list[str]) -> AsyncIterator[str]:
    """Install what `specs` needs that is not already here, streaming uv's output."""
    todo = missing(specs)
    if not todo:
        yield f"dependencies already satisfied: {', '.join(specs)}\n"
        return
    argv = [uv_binary(), "pip", "install", "--python", sys.executable, *todo]
    yield f"$ uv pip install {' '.join(todo)}\n"
    async for line in _stream_command(argv, {**os.environ, "NO_COLOR": "1"}):
        yield line


def can_apt() -> bool:
    """apt-get is used only as root in a container, never on someone's own machine.

    The worker images set TETRA_ALLOW_APT=1; the marker files cover other container runtimes.
    """
    in_container = os.environ.get("TETRA_ALLOW_APT") == "1"
    in_container = in_container or any(Path(p).exists() for p in ("/.dockerenv", "/run/.containerenv"))
    return os.geteuid() == 0 and in_container and shutil.which("apt-get") is not None


async def install_system(packages: list[str]) -> AsyncIterator[str]:
    """apt-get install `packages` where allowed; otherwise say plainly they were not installed."""
    if not can_apt():
        yield (
            f"system dependencies not installed ({', '.join(packages)}): apt-get runs only as"
            " root inside a container\n"
        )
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    async for line in _stream_command(["apt-get", "update", "-q"], env):
        yield line
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    async for line in _stream_command(argv, env):
        yield line
