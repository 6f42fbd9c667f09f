"""The endpoint a cell asks for: its spec, from the cell's options and the magic's settings,
and the worker image it runs.

Settings are TetraMagic's traitlets (`%config TetraMagic.workers_max = 5`), which reach this
module in the cell's options (`CellOptions.worker`). With no image
configured, endpoints run RunPod's published standard worker: the image RunPod's own client
(the `runpod-flash` package, `get_image_name`) uses for live serverless functions, one per
Python minor version, so notebook functions load on the worker:

    runpod/flash:py3.11-latest        runpod/flash-cpu:py3.11-latest

Our own worker image (Dockerfile, Dockerfile-cpu) is the upgrade: `TetraMagic.worker_image`, or
TETRA_MAGIC_WORKER_IMAGE / TETRA_MAGIC_CPU_WORKER_IMAGE; `{python}` and `{version}` in it are
filled in for this kernel.

A session's cells must all reach the worker that holds its namespace, and RunPod routes a job
to any worker of its endpoint. So a session cell gets an endpoint of its own, one per session
name, that has one worker at most: workersMin 0, workersMax 1, and an idle timeout of its own
(`TetraMagic.session_idle_timeout`) for which the idle worker, and the session, are kept (and
billed). When that worker goes (idle timeout, RunPod replacing it) the session goes with it;
the next cell's runtime finds it missing and says so.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
import sys

from IPython.core.error import UsageError

from tetra_magic.cloud import gpus
from tetra_magic.cloud.endpoint_spec import EndpointSpec
from tetra_magic.options import CellOptions, WorkerSettings

# The published standard worker, as runpod-flash 1.21.0's get_image_name("gpu"|"cpu", python)
# names it (tests/cloud/test_cloud_waiting.py checks these against the installed runpod-flash).
PUBLISHED_IMAGE = "runpod/flash:py{python}-latest"
PUBLISHED_CPU_IMAGE = "runpod/flash-cpu:py{python}-latest"
PUBLISHED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
IMAGE_ENV = "TETRA_MAGIC_WORKER_IMAGE"
CPU_IMAGE_ENV = "TETRA_MAGIC_CPU_WORKER_IMAGE"
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][\w.\-/:@]*$")


def python_minor() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def worker_image(worker: WorkerSettings, cpu: bool) -> str:
    """The image for a GPU or CPU endpoint: setting, else environment variable, else the
    published standard worker for this kernel's Python; {python} and {version} filled in.
    UsageError, before anything is provisioned, when no published image fits this Python or
    the image is no image reference."""
    configured = worker.cpu_image if cpu else worker.image
    chosen = configured or os.environ.get(CPU_IMAGE_ENV if cpu else IMAGE_ENV, "")
    if not chosen:
        _check_published_python(cpu)
        chosen = PUBLISHED_CPU_IMAGE if cpu else PUBLISHED_IMAGE
    image = chosen.replace("{python}", python_minor()).replace("{version}", _our_version())
    if not _IMAGE_NAME.match(image):
        raise UsageError(f"worker image {image!r} is not a valid image reference")
    return image


def _our_version() -> str:
    """This package's version, from its installed metadata (the package's own __init__ loads
    the magic, so importing it from here would close an import circle)."""
    return importlib.metadata.version("tetra-magic")


def _check_published_python(cpu: bool) -> None:
    if python_minor() in PUBLISHED_PYTHONS:
        return
    setting, env = ("cpu_worker_image", CPU_IMAGE_ENV) if cpu else ("worker_image", IMAGE_ENV)
    raise UsageError(
        f"this kernel runs Python {python_minor()}, and RunPod publishes its standard worker"
        f" image for Python {', '.join(PUBLISHED_PYTHONS)} only (notebook functions load only"
        " on the Python that made them). Use a kernel on one of those, or build our worker for"
        f' this Python (tools/build_worker_image.sh, Dockerfile; README "Worker images"),'
        f" push it, and set %config TetraMagic.{setting} = 'you/tetra-worker:py{{python}}'"
        f" (or ${env})."
    )


def spec_for(options: CellOptions, worker: WorkerSettings) -> EndpointSpec:
    """The endpoint a cell with these options runs on; a session's own, one worker at most,
    for a session cell."""
    label = "cpu" if options.cpu else gpus.label(options.gpus)
    spec = EndpointSpec(
        label=label,
        image=worker_image(worker, options.cpu),
        gpu_ids=() if options.cpu else options.gpu_ids,
        instance_ids=gpus.CPU_INSTANCES if options.cpu else (),
        gpu_count=0 if options.cpu else worker.gpu_count,
        workers_min=worker.workers_min,
        workers_max=worker.workers_max,
        idle_timeout=worker.idle_timeout,
        execution_timeout_ms=worker.execution_timeout * 1000,
        env=worker.env,
    )
    if options.session is None:
        return spec
    return dataclasses.replace(
        spec,
        label=f"{label}-session-{options.session}",
        workers_min=0,
        workers_max=1,
        idle_timeout=options.session_idle_timeout,
        session=options.session,
    )
