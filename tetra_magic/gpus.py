"""GPU names as users type them, mapped to RunPod's GPU pool ids; and the CPU instance types a
`--cpu` endpoint asks for."""

from __future__ import annotations

from IPython.core.error import UsageError

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
# CPU serverless instance types ({generation}{g: general, c: compute}-{vCPUs}-{GB RAM}), in the
# order RunPod should try them: 4 vCPUs is enough to install packages and run a cell briskly.
CPU_INSTANCES = ("cpu3c-4-8", "cpu5c-4-16", "cpu3g-4-8", "cpu5g-4-16")
# Exact GPU type names (e.g. "NVIDIA A100-SXM4-80GB") are RunPod gpu ids as they stand.
_EXACT_PREFIXES = ("nvidia ", "amd ")


def known_names() -> str:
    """The accepted names, for error messages."""
    return ", ".join(["any", *(k.upper() if k[0].isalpha() else k.title() for k in POOLS)])


def gpu_ids(names: list[str]) -> list[str]:
    """RunPod gpu ids for `names` (pools or exact types), in order, without repeats."""
    ids: list[str] = []
    for raw in names:
        name = " ".join(raw.replace("_", " ").split())
        key = name.lower()
        if key == "any":
            ids.extend(ALL_POOLS)
        elif key in POOLS:
            ids.append(POOLS[key])
        elif key.upper() in ALL_POOLS:
            ids.append(key.upper())
        elif key.startswith(_EXACT_PREFIXES):
            ids.append(name)
        else:
            raise UsageError(
                f"--gpu: unknown GPU {raw!r}. Known names: {known_names()};"
                ' or an exact RunPod GPU type such as "NVIDIA A100-SXM4-80GB".'
            )
    return list(dict.fromkeys(ids))


def label(names: tuple[str, ...] | list[str]) -> str:
    """A short, name-safe tag for endpoint names ("a100", "h100-h200", "any", "cpu"), so a
    listing of endpoints reads at a glance; the configuration hash keeps them apart."""
    words = [w for raw in names for w in raw.replace(",", " ").lower().split()]
    tag = "-".join("".join(c for c in w if c.isalnum()) for w in words) or "cpu"
    return tag[:24].strip("-") or "gpu"
