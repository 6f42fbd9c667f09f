"""Which notebook kernels using the local endpoint are still alive, told by file locks.

A kernel that sends a cell here holds an exclusive lock on `alive/<kernel id>` in the server's
state dir for as long as it lives. The operating system lets go of a lock when its process
ends, however it ends (shutdown, crash, SIGKILL), so the server, trying each lock now and then,
learns which kernels are gone without the kernels having to say goodbye, and frees what they
held on the workers: their executor processes (marked `KERNEL_MARK`, with everything those
started), their working directories and their package layers. A gone kernel's detached job
(`%%tetra --bg --detach`) runs on in those processes and files: the server names the kernels
that have one still running, and their lock files stay until a later sweep finds none. Stdlib
only: the kernel side runs in the notebook.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import IO

from tetra_magic.local import state
from tetra_magic.local.marks import kill_marked

KERNEL_MARK = "TETRA_KERNEL"  # set by the worker on each executor process (worker/executor.py)
_held: dict[Path, IO[str]] = {}  # the kernel's lock files, open and locked (kernel side)


def alive_dir(root: Path | None = None) -> Path:
    return state.private_dir(state.server_dir(root) / "alive")


def hold(kernel_id: str, root: Path | None = None) -> None:
    """Kernel side: hold this kernel's lock until the process ends (idempotent).

    The lock is taken on the file at the path, checked to still be there afterwards: the
    server may remove an unlocked file in between, and a lock on a removed file tells nobody.
    """
    path = alive_dir(root) / kernel_id
    if path in _held:
        return
    for _ in range(5):
        handle = open(path, "a")  # noqa: SIM115 (kept open: the lock lives as long as it)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held already: by this process under another handle, or a reused id
            handle.close()
            return
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                _held[path] = handle
                return
        handle.close()


def free_gone(
    kernel_dirs: list[Path], root: Path | None = None, running: Collection[str] = ()
) -> list[str]:
    """Server side: for each kernel whose lock is free, kill its processes on the workers and
    remove its directories (`<each of kernel_dirs>/<id>`: its working directory, its package
    layer); the ids of the kernels freed. Kernels in `running` (a detached job of theirs has
    not ended) are left for a later sweep, gone or not."""
    freed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(alive_dir(root)):
            if entry.name not in running and _gone(Path(entry.path)):
                kill_marked(KERNEL_MARK, entry.name)
                for parent in kernel_dirs:
                    shutil.rmtree(parent / entry.name, ignore_errors=True)
                freed.append(entry.name)
    return freed


def _gone(path: Path) -> bool:
    """Whether no process holds the lock; the file is removed then (under the lock)."""
    try:
        handle = open(path)  # noqa: SIM115
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        path.unlink(missing_ok=True)
        return True
