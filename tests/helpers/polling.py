"""Waiting for something to happen, for tests that watch processes and endpoints."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """`check()`'s first true value, polled every 50 ms; AssertionError(what) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} (after {timeout} s)")
