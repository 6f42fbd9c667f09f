"""Where uv is: the `uv` package's binary, else uv on PATH.

The worker installs a request's --deps with it, and the local endpoint makes the workers'
environment with it; both find it this one way (tetra_magic imports this, never the reverse).
"""

from __future__ import annotations

import shutil


def find_uv() -> str | None:
    """The uv executable, or None where there is none."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")
