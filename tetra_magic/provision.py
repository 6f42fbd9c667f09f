"""Finding or creating the RunPod endpoint for a cell's configuration."""

from __future__ import annotations

from tetra_magic.client import Endpoint
from tetra_magic.errors import TetraError
from tetra_magic.options import CellOptions


def provisioned(options: CellOptions, key: str, source: str) -> Endpoint:
    """The RunPod endpoint for these options."""
    raise TetraError(
        "automatic endpoint provisioning is not available yet: pass --endpoint ID, or --local"
    )
