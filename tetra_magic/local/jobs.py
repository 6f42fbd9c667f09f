"""One job as the local endpoint keeps it: its input, its execution policy, its status, and what
its worker sent back, with the waits that /runsync and a held /stream request make on it.

The job store (job_store.py) moves a job through RunPod's states; this module holds the record
it moves, and reads a request's `policy` into the limits RunPod accepts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tetra_magic.cloud.limits import MAX_EXECUTION_MS, MIN_EXECUTION_MS
from tetra_magic.cloud.status import JobStatus

DEFAULT_EXECUTION_TIMEOUT_MS = 600_000
DEFAULT_TTL_MS = 24 * 3600 * 1000
MIN_TTL_MS = 10_000
MAX_TTL_MS = 7 * 24 * 3600 * 1000


class PolicyError(ValueError):
    """A request's `policy` is malformed or out of RunPod's accepted range."""


def _policy_ms(raw: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"policy.{key} must be a number of milliseconds, got {value!r}")
    if not low <= value <= high:
        raise PolicyError(f"policy.{key} must be between {low} and {high} ms, got {value}")
    return int(value)


@dataclass(frozen=True)
class Policy:
    """A job's execution policy, in seconds (RunPod takes milliseconds on the wire)."""

    execution_timeout: float = DEFAULT_EXECUTION_TIMEOUT_MS / 1000
    ttl: float = DEFAULT_TTL_MS / 1000

    @classmethod
    def parse(cls, raw: Any) -> Policy:
        """Read a request's `policy` object, with RunPod's defaults and limits."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise PolicyError(f"policy must be an object, got {type(raw).__name__}")
        timeout = _policy_ms(
            raw,
            "executionTimeout",
            DEFAULT_EXECUTION_TIMEOUT_MS,
            MIN_EXECUTION_MS,
            MAX_EXECUTION_MS,
        )
        ttl = _policy_ms(raw, "ttl", DEFAULT_TTL_MS, MIN_TTL_MS, MAX_TTL_MS)
        return cls(execution_timeout=timeout / 1000, ttl=ttl / 1000)


@dataclass(eq=False)
class Job:
    """One request: its input, where it is in its life, and what its worker sent back."""

    id: str
    input: Any
    policy: Policy
    sync: bool
    submitted: float
    status: JobStatus = JobStatus.IN_QUEUE
    worker_id: str | None = None
    started: float | None = None
    finished: float | None = None
    output: Any = None
    has_output: bool = False
    error: str | None = None
    stream: list[Any] = field(default_factory=list)
    delivered: int = 0
    taken_up: bool = False  # its worker has shown it is working on it
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # The job store's timers: its execution timeout, and the wait for its worker to take it up.
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    take_up_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def touch(self) -> None:
        """Wake everyone waiting for this job to change (runsync, held /stream requests)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the next change; False if none came."""
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        return True

    async def wait_final(self, timeout: float, clock: Callable[[], float]) -> bool:
        """Wait up to `timeout` s for a final status; True if it got there."""
        deadline = clock() + timeout
        while not self.status.final:
            if not await self.wait_change(deadline - clock()):
                break
        return self.status.final

    def new_chunks(self) -> list[Any]:
        """The stream chunks not handed out before, marked as handed out now."""
        chunks = self.stream[self.delivered :]
        self.delivered = len(self.stream)
        return chunks

    def doc(self, now: float) -> dict[str, Any]:
        """The /status document: RunPod's field names, times in whole milliseconds."""
        doc: dict[str, Any] = {"id": self.id, "status": self.status.value}
        queued_until = self.started if self.started is not None else (self.finished or now)
        doc["delayTime"] = round((queued_until - self.submitted) * 1000)
        if self.started is not None:
            doc["executionTime"] = round(((self.finished or now) - self.started) * 1000)
        if self.worker_id is not None:
            doc["workerId"] = self.worker_id
        if self.has_output:
            doc["output"] = self.output
        if self.error is not None:
            doc["error"] = self.error
        return doc
