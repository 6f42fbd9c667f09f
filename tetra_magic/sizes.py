"""Sizes in words, one way wherever the magic names one: a session's values, the files
--get brought back."""

from __future__ import annotations


def size_text(size: float) -> str:
    """548 MB, 50.0 MB, 312 KB, 80 bytes (decimal units, as RunPod's limits are given)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{size:.0f} bytes"
