"""base64 of cloudpickle: the protocol's encoding for every argument and result.

Kept apart from the pydantic models so the executor child can decode arguments without importing
pydantic, which would add a quarter of a second to every child start.
"""

from __future__ import annotations

import base64
from typing import Any

import cloudpickle


def encode(value: Any) -> str:
    """base64(cloudpickle(value))."""
    return base64.b64encode(cloudpickle.dumps(value)).decode("ascii")


def decode(text: str) -> Any:
    """The inverse of `encode`."""
    return cloudpickle.loads(base64.b64decode(text))
