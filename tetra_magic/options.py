"""The options of one %%tetra cell, from its magic line and the TetraMagic defaults.

Parsing itself is IPython's magic_arguments (argparse, UsageError on bad input); this module
turns the parsed namespace into validated, defaulted values, naming the option in every error.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from IPython.core.error import UsageError

from tetra_magic.gpus import gpu_ids


@dataclass(frozen=True)
class CellOptions:
    """Everything that decides where and how a cell runs."""

    gpus: tuple[str, ...]
    gpu_ids: tuple[str, ...]
    cpu: bool
    dependencies: tuple[str, ...]
    system_dependencies: tuple[str, ...]
    endpoint: str | None
    local: bool
    timeout: float
    name: str | None
    out: str | None
    stream: bool
    quiet: bool
    verbose: bool


def split_packages(groups: list[list[str]] | None) -> tuple[str, ...]:
    """`--deps a,b --deps c d` -> ("a", "b", "c", "d"); commas inside extras ("pkg[a,b]") and
    version lists ("numpy>=1.2,<2") stay where they are."""
    packages: list[str] = []
    for group in groups or []:
        for item in group:
            packages.extend(_split_commas(item))
    return tuple(dict.fromkeys(p for p in packages if p))


def _split_commas(item: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(item):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0 and not _VERSION_CONTINUES.match(item, index + 1):
            parts.append(item[start:index].strip())
            start = index + 1
    parts.append(item[start:].strip())
    return parts


# After a comma, a version operator means the comma is inside a specifier ("numpy>=1.2,<2").
_VERSION_CONTINUES = re.compile(r"\s*[<>=!~]")


def build(args: argparse.Namespace, defaults: Any) -> CellOptions:
    """Validate parsed arguments against each other and fill in configured defaults."""
    if args.cpu and args.gpu:
        raise UsageError("--cpu and --gpu cannot be used together: choose one")
    if args.local and args.endpoint:
        raise UsageError("--local and --endpoint cannot be used together: choose one")
    timeout = defaults.timeout if args.timeout is None else args.timeout
    if timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {timeout:g}")
    gpus = tuple(g for group in args.gpu or [] for g in group) or (
        () if args.cpu else _default_gpus(defaults)
    )
    deps = split_packages([list(defaults.default_deps), *(args.deps or [])])
    return CellOptions(
        gpus=gpus,
        gpu_ids=tuple(gpu_ids([g for gpu in gpus for g in gpu.split(",")])) if gpus else (),
        cpu=args.cpu,
        dependencies=deps,
        system_dependencies=split_packages(args.system_deps),
        endpoint=args.endpoint or defaults.endpoint or None,
        local=args.local or defaults.local,
        timeout=timeout,
        name=args.name,
        out=args.out,
        stream=not args.no_stream,
        quiet=args.quiet,
        verbose=args.verbose or defaults.verbose,
    )


def _default_gpus(defaults: Any) -> tuple[str, ...]:
    return tuple(g for g in defaults.default_gpu.split(",") if g.strip())
