"""The user's tetra-magic state dir: `$TETRA_MAGIC_HOME`, else `~/.cache/tetra-magic`.

The kernel keeps its provisioning lock there and the local endpoint its token, servers and
worker environments (local/state.py lays those out). Stdlib only: both import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The state dir, created private (0700) so the token and logs are the user's alone."""
    path = Path(os.environ.get("TETRA_MAGIC_HOME") or Path.home() / ".cache" / "tetra-magic")
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed, readable by its owner only.

    A directory that already exists is left as it is: TETRA_MAGIC_HOME may name a directory
    the user shares on purpose, and the token file is 0600 on its own.
    """
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    return path
