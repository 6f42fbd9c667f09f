"""Test-wide settings: kernels started by tests show the deterministic plain-text view."""

from __future__ import annotations

import os

os.environ["TETRA_MAGIC_DISPLAY"] = "text"
