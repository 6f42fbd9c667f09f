"""The account's serverless worker quota: what holds it, and whether one more endpoint fits.

RunPod caps the sum of max workers (`workersMax`) over all of an account's endpoints (its
`serverlessWorkers` limit, REST API v2 "Get account limits"; 5 by default, more with the
account's balance: docs, serverless/workers/overview "Max worker limits"). A session's endpoint
holds one, each plain configuration `workers_max`, and RunPod refuses to create one more that
does not fit. The magic says so first, naming what holds the quota and what frees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tetra_magic.cloud.rest import QuotaFull


def max_workers(endpoint: dict[str, Any]) -> int | None:
    """An Endpoint's max workers as REST v2 reports it (`workers.max`); None when it does not."""
    value = (endpoint.get("workers") or {}).get("max")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Quota:
    """The quota (`limit`, None where it could not be read) and what uses it: our endpoints by
    name with their max workers, and how many other endpoints hold how many."""

    limit: int | None
    ours: tuple[tuple[str, int], ...]
    others: int
    others_workers: int

    @property
    def used(self) -> int:
        return sum(n for _, n in self.ours) + self.others_workers

    def line(self) -> str:
        """One line for `%tetra endpoints`."""
        held = f"ours {sum(n for _, n in self.ours)}, other endpoints {self.others_workers}"
        if self.limit is None:
            limit = "the limit could not be read"
            return f"worker quota: {self.used} max workers in use ({held}); {limit}"
        return f"worker quota: {self.used} of {self.limit} max workers in use ({held})"

    def refuse(self, action: str, wanted: int, limit: int | None = None) -> QuotaFull:
        """The error for `action` ("creating RunPod endpoint NAME") needing `wanted` max
        workers more than fit; `limit` is RunPod's own figure where it refused."""
        limit = limit if limit is not None else self.limit
        free = None if limit is None else max(limit - self.used, 0)
        lower = f", or a lower `%config TetraMagic.workers_max = {free}`" if free else ""
        quota = f"is {limit}" if limit is not None else "is full"
        return QuotaFull(
            f"{action} would pass the account's worker quota, so it was not done: it needs"
            f" {wanted} max worker{'s' * (wanted != 1)}, and the quota {quota} (RunPod's limit on"
            f" the sum of max workers over all the account's endpoints), of which {self.used}"
            f" are in use: {self._holders()}. Free some with `%tetra delete NAME` (an endpoint"
            " of ours), `%tetra end SESSION` (a session's endpoint gives its worker back)"
            f"{lower}; RunPod raises the quota as the account's balance grows, or on request",
            limit,
        )

    def _holders(self) -> str:
        """ "tetra-magic-a100-... 3, 2 other endpoints 4" (ours by name, with their max workers)."""
        held = [f"{name} {n}" for name, n in self.ours if n]
        if self.others_workers:
            others = f"{self.others} other endpoint{'s' * (self.others != 1)}"
            held.append(f"{others} {self.others_workers}")
        return ", ".join(held) or "none"


def of(endpoints: list[dict[str, Any]], limit: int | None, is_ours: Callable[[str], bool]) -> Quota:
    """The quota as `endpoints` (the account's, all of them) use it."""
    ours = tuple(
        sorted((e["name"], max_workers(e) or 0) for e in endpoints if is_ours(e.get("name") or ""))
    )
    others = [e for e in endpoints if not is_ours(e.get("name") or "")]
    return Quota(limit, ours, len(others), sum(max_workers(e) or 0 for e in others))


def check(quota: Quota, action: str, adding: int) -> None:
    """QuotaFull when `adding` max workers for `action` would pass the limit (a limit that
    could not be read passes: RunPod's own refusal says so instead)."""
    if quota.limit is not None and quota.used + adding > quota.limit:
        raise quota.refuse(action, adding)
