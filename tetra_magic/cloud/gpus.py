"""GPU names as users type them, mapped to RunPod's GPU pools; the exact GPU types in each pool;
and the CPU instance types a `--cpu` endpoint asks for.

RunPod's REST API v2 takes pools, not types (`gpu.pools`, createEndpoint in
https://api.runpod.io/v2/openapi.json): an exact type is its pool with the pool's other types
in `gpu.excludedTypes`. Which types make up which pool is RunPod's `GpuGroup` table as its own
client publishes it (runpod-flash 1.21.0, `runpod_flash/core/resources/gpu.py`: the pools'
docstrings, which list every type, where its `POOLS_TO_TYPES` omits some).
"""

from __future__ import annotations

from tetra_magic.errors import TetraError

# RunPod pools by the names people say (DESIGN.md). Keys are lower-case.
POOLS: dict[str, str] = {
    "a100": "AMPERE_80",
    "h100": "ADA_80_PRO",
    "h200": "HOPPER_141",
    "b200": "BLACKWELL_180",
    "l40s": "ADA_48_PRO",
    "l40": "ADA_48_PRO",
    "6000 ada": "ADA_48_PRO",
    "4090": "ADA_24",
    "5090": "ADA_32_PRO",
    "a40": "AMPERE_48",
    "a6000": "AMPERE_48",
    "l4": "AMPERE_24",
    "a5000": "AMPERE_24",
    "3090": "AMPERE_24",
    "a4000": "AMPERE_16",
    "a4500": "AMPERE_16",
}
ALL_POOLS = tuple(dict.fromkeys(POOLS.values()))
# The GPU type ids in each pool (runpod-flash 1.21.0, GpuGroup; see the module's docstring).
POOL_TYPES: dict[str, tuple[str, ...]] = {
    "ADA_24": ("NVIDIA GeForce RTX 4090",),
    "ADA_32_PRO": ("NVIDIA GeForce RTX 5090",),
    "ADA_48_PRO": ("NVIDIA RTX 6000 Ada Generation", "NVIDIA L40", "NVIDIA L40S"),
    "ADA_80_PRO": ("NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA H100 NVL"),
    "AMPERE_16": (
        "NVIDIA RTX A4000",
        "NVIDIA RTX A4500",
        "NVIDIA RTX 4000 Ada Generation",
        "NVIDIA RTX 2000 Ada Generation",
    ),
    "AMPERE_24": ("NVIDIA RTX A5000", "NVIDIA L4", "NVIDIA GeForce RTX 3090"),
    "AMPERE_48": ("NVIDIA A40", "NVIDIA RTX A6000"),
    "AMPERE_80": ("NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"),
    "HOPPER_141": ("NVIDIA H200",),
    "BLACKWELL_180": ("NVIDIA B200",),
}
# Exact type id, lower-case -> (its pool, the id as RunPod spells it).
_TYPES = {t.lower(): (pool, t) for pool, types in POOL_TYPES.items() for t in types}
# CPU serverless instance types ({flavor}-{vCPUs}-{GB RAM}), in the order RunPod should try
# them: 4 vCPUs is enough to install packages and run a cell briskly. REST v2 asks for the
# flavor and the vCPU count (`cpu: [{id, vcpuCount}]`); RunPod sizes the memory.
CPU_INSTANCES = ("cpu3c-4-8", "cpu5c-4-16", "cpu3g-4-8", "cpu5g-4-16")
_EXACT_PREFIXES = ("nvidia ", "amd ")


class UnknownGpu(TetraError):
    """A GPU name that is neither a pool nor an exact RunPod type. Its own class, not
    IPython's UsageError, so this module knows no notebook; the option parser shows it as a
    UsageError."""


def known_names() -> str:
    """The accepted names, for error messages."""
    return ", ".join(["any", *(k.upper() if k[0].isalpha() else k.title() for k in POOLS)])


def gpu_ids(names: list[str]) -> list[str]:
    """RunPod ids for `names` (pools, or exact types as RunPod spells them), in order, without
    repeats. UnknownGpu for a name that is neither."""
    ids: list[str] = []
    for raw in names:
        name = " ".join(raw.replace("_", " ").split())
        key = name.lower()
        if key == "any":
            ids.extend(ALL_POOLS)
        elif key in POOLS:
            ids.append(POOLS[key])
        elif raw.strip().upper() in POOL_TYPES:  # a pool id, whose "_" is part of it
            ids.append(raw.strip().upper())
        elif key in _TYPES:
            ids.append(_TYPES[key][1])
        else:
            raise UnknownGpu(_unknown(raw, key))
    return list(dict.fromkeys(ids))


def _unknown(raw: str, key: str) -> str:
    if key.startswith(_EXACT_PREFIXES):
        return (
            f"--gpu: {raw!r} is not a GPU type of RunPod's serverless pools. Exact types:"
            f" {', '.join(_TYPES[t][1] for t in _TYPES)}; or a name such as A100."
        )
    return (
        f"--gpu: unknown GPU {raw!r}. Known names: {known_names()};"
        ' or an exact RunPod GPU type such as "NVIDIA A100-SXM4-80GB".'
    )


def pools_and_exclusions(ids: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """(`gpu.pools`, `gpu.excludedTypes`) for gpu ids from `gpu_ids`: a pool asked for whole
    gives all its types; one reached only through exact types excludes its other types."""
    whole = [i for i in ids if i in POOL_TYPES]
    chosen = {i for i in ids if i not in POOL_TYPES}
    pools = list(dict.fromkeys(i if i in POOL_TYPES else _TYPES[i.lower()][0] for i in ids))
    excluded = [
        t for pool in pools if pool not in whole for t in POOL_TYPES[pool] if t not in chosen
    ]
    return pools, excluded


def cpu_flavors(instances: tuple[str, ...]) -> list[dict[str, object]]:
    """REST v2's `cpu` list for instance types such as "cpu3c-4-8": [{id, vcpuCount}]."""
    flavors = []
    for instance in instances:
        flavor, vcpus, _memory = instance.split("-")
        flavors.append({"id": flavor, "vcpuCount": int(vcpus)})
    return flavors


def label(names: tuple[str, ...] | list[str]) -> str:
    """A short, name-safe tag for endpoint names ("a100", "h100-h200", "any", "cpu"), so a
    listing of endpoints reads at a glance; the configuration hash keeps them apart."""
    words = [w for raw in names for w in raw.replace(",", " ").lower().split()]
    tag = "-".join("".join(c for c in w if c.isalnum()) for w in words) or "cpu"
    return tag[:24].strip("-") or "gpu"
