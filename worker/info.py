"""Where this worker runs: its id, Python version and GPUs, reported with every response."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import socket
import subprocess

from worker.protocol import WorkerInfo


@functools.cache
def _gpus() -> tuple[tuple[str, int], ...]:
    """(name, memory MiB) per visible GPU, from nvidia-smi; none where there is no NVIDIA GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    query = [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        name, _, memory = line.rpartition(",")
        if name:
            gpus.append((name.strip(), int(float(memory))))
    return tuple(gpus)


def worker_info() -> WorkerInfo:
    """This worker's identity card."""
    gpus = _gpus()
    return WorkerInfo(
        worker_id=os.environ.get("RUNPOD_POD_ID") or socket.gethostname(),
        python=platform.python_version(),
        gpus=[name for name, _ in gpus],
        gpu_memory_mb=[memory for _, memory in gpus],
    )
