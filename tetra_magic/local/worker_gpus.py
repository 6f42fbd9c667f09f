"""Which GPUs the local endpoint's workers use, and how many workers it starts by default.

With several visible GPUs (nvidia-smi, narrowed by CUDA_VISIBLE_DEVICES) each worker gets one,
round robin, and the default worker count is the GPU count; with one GPU all workers share it;
without any, the default is two workers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess


def visible_gpus(smi_listing: str | None, cuda_visible: str | None) -> list[str]:
    """The GPUs the workers may use, as CUDA_VISIBLE_DEVICES entries.

    `smi_listing` is `nvidia-smi -L` output (None: no nvidia-smi). An existing
    CUDA_VISIBLE_DEVICES wins, as it does for CUDA: entries up to the first "-1" or blank.
    """
    listed = [line for line in (smi_listing or "").splitlines() if line.startswith("GPU ")]
    if not listed:
        return []
    if cuda_visible is None:
        return [str(index) for index in range(len(listed))]
    chosen: list[str] = []
    for entry in (part.strip() for part in cuda_visible.split(",")):
        if not entry or entry == "-1":
            break
        chosen.append(entry)
    return chosen


def detect_gpus() -> list[str]:
    """GPUs on this machine (see `visible_gpus`); none without a working nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    listing = None
    if smi is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listing = subprocess.run(
                [smi, "-L"], capture_output=True, text=True, timeout=15, check=True
            ).stdout
    return visible_gpus(listing, os.environ.get("CUDA_VISIBLE_DEVICES"))


def gpu_plan(gpus: list[str], workers: int) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each worker; None leaves the inherited value alone."""
    if len(gpus) <= 1:
        return [None] * workers
    return [gpus[index % len(gpus)] for index in range(workers)]


def default_worker_count(gpus: list[str]) -> int:
    return len(gpus) if gpus else 2
