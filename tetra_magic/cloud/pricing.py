"""What a cloud cell cost: RunPod's billed time for the job, and an estimate in dollars.

RunPod bills a serverless worker per second, rounded up, for its start, the jobs it runs and
the idle time it waits for the next one (`idleTimeout`). A job's `/status` gives `delayTime`
(ms from submission until a worker took it: queue wait and cold start) and `executionTime`
(ms running). The estimate prices the execution at the flex rate of the GPU pool the job ran on
(the worker's reported GPU, else the dearest pool the endpoint allows), and says so: it is an
estimate, not RunPod's invoice, and leaves out the start and idle time it cannot see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Serverless flex prices in US dollars per second, by RunPod GPU pool, from RunPod's pricing
# page (https://www.runpod.io/pricing, "Serverless", flex workers) as of 2026-11.
# TetraMagic.gpu_prices overrides or adds pools.
PRICES_AS_OF = "2026-11"
FLEX_PRICES: dict[str, float] = {
    "AMPERE_16": 0.00016,  # A4000, A4500
    "AMPERE_24": 0.00019,  # L4, A5000, 3090
    "ADA_24": 0.00031,  # 4090
    "AMPERE_48": 0.00034,  # A6000, A40
    "ADA_48_PRO": 0.00053,  # L40, L40S, 6000 Ada
    "AMPERE_80": 0.00076,  # A100 80 GB
    "ADA_80_PRO": 0.00116,  # H100
    "HOPPER_141": 0.00155,  # H200
    "BLACKWELL_180": 0.00240,  # B200
}
# Words in a GPU's name (as the worker reports it, or an exact RunPod GPU type) -> its pool;
# the first that matches wins, so "a4000" is tried before "a40" and "l40" before "l4".
_NAME_POOLS = (
    ("b200", "BLACKWELL_180"),
    ("h200", "HOPPER_141"),
    ("h100", "ADA_80_PRO"),
    ("a100", "AMPERE_80"),
    ("l40", "ADA_48_PRO"),
    ("6000 ada", "ADA_48_PRO"),
    ("4090", "ADA_24"),
    ("a6000", "AMPERE_48"),
    ("a4000", "AMPERE_16"),
    ("a4500", "AMPERE_16"),
    ("a5000", "AMPERE_24"),
    ("a40", "AMPERE_48"),
    ("l4", "AMPERE_24"),
    ("3090", "AMPERE_24"),
)


@dataclass(frozen=True)
class Cost:
    """A finished job's billed time (seconds, RunPod's rounding) and its estimated price."""

    queued_s: float
    execution_s: float
    billed_s: int
    pool: str | None
    price_per_s: float | None
    usd: float | None
    source: str = f"RunPod flex price as of {PRICES_AS_OF}"
    upper_bound: bool = False  # the worker did not say its GPU: the dearest one allowed

    def line(self) -> str:
        """One line for the cell's summary, marked as an estimate."""
        times = (
            f"queued {self.queued_s:.1f} s, ran {self.execution_s:.1f} s, billed {self.billed_s} s"
        )
        if self.usd is None:
            what = self.pool or "CPU workers"
            return f"tetra: {times}; no price known for {what} (TetraMagic.gpu_prices sets one)"
        cost = "at most" if self.upper_bound else "estimated cost"
        return (
            f"tetra: {times}; {cost} ${self.usd:.5f} ({self.pool} at"
            f" ${self.price_per_s:.5f}/s, {self.source}; start and idle time not included)"
        )


def pool_named(name: str) -> str | None:
    """The pool of a GPU by its name ("NVIDIA A100 80GB PCIe" -> "AMPERE_80"), if known."""
    name = name.lower()
    return next((pool for word, pool in _NAME_POOLS if word in name), None)


def pool_of(
    gpu_name: str | None, gpu_ids: tuple[str, ...], prices: dict[str, float]
) -> tuple[str | None, bool]:
    """The pool a job ran on, and whether that is a guess: the worker's GPU when it named one,
    else the endpoint's one pool, else the dearest of those it allows (an upper bound)."""
    if gpu_name and (pool := pool_named(gpu_name)):
        return pool, False
    pools = list(dict.fromkeys(pool_named(g) or g for g in gpu_ids))
    if len(pools) == 1:
        return pools[0], False
    known = [p for p in pools if p in prices]
    if known:
        return max(known, key=prices.__getitem__), True
    return (pools[0] if pools else None), False


def estimate(
    document: dict,
    gpu_name: str | None,
    gpu_ids: tuple[str, ...],
    overrides: dict[str, float] | None = None,
) -> Cost | None:
    """The cost of the job whose final `/status` document this is; None if it never ran.
    `overrides` (pool id -> USD per second) replace or add to FLEX_PRICES."""
    execution_ms = document.get("executionTime")
    if execution_ms is None:
        return None
    prices = {**FLEX_PRICES, **(overrides or {})}
    pool, upper_bound = pool_of(gpu_name, gpu_ids, prices)
    billed = math.ceil(execution_ms / 1000)
    price = prices.get(pool) if pool else None
    return Cost(
        queued_s=(document.get("delayTime") or 0) / 1000,
        execution_s=execution_ms / 1000,
        billed_s=billed,
        pool=pool,
        price_per_s=price,
        usd=None if price is None else round(billed * price, 6),
        upper_bound=upper_bound,
        **({"source": "TetraMagic.gpu_prices"} if pool in (overrides or {}) else {}),
    )
