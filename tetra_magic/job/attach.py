"""Detached background cells (`%%tetra --bg --detach`): their records in the state dir, and
`%tetra attach JOB_ID`, which follows one of them again from another kernel.

A detached cell's job is not cancelled when its kernel exits (background.py), and the local
endpoint keeps that kernel's processes and files until the job has ended (local/kernels.py).
So that a later kernel can find the job, each detached cell leaves one small JSON file in the
state dir's `detached/` folder: the job's id, its endpoint (which one; never a key), the cell's
label and --name, the names it binds and when it was submitted. Nothing of the cell's code or
values goes there.

`%tetra attach` reads that record and hands the job to this kernel's background jobs as if its
cell had been submitted here: what it prints shows in the attach cell, and its values land
between cells as a --bg cell's do. A job that has already ended is waited for in the attach
cell itself, so its values are in the notebook when that cell ends. An endpoint keeps an ended
job's results for a while only (RunPod: 30 minutes after a /run job ends, and the local
endpoint likewise, local/retention.py); past that, attach says in one line that they are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError

from tetra_magic import state_dir, targets
from tetra_magic.cell import outcome
from tetra_magic.cell.files import bring_home
from tetra_magic.cloud.client import Endpoint, EndpointClient, JobUnknown
from tetra_magic.cloud.credentials import api_key
from tetra_magic.cloud.rest import rest_base
from tetra_magic.cloud.status import JobStatus
from tetra_magic.errors import TetraError, cell_labeler
from tetra_magic.job import background, pythons
from tetra_magic.job.job import Job
from tetra_magic.local.launcher import running
from tetra_magic.local.retention import RUN_RETENTION_S
from tetra_magic.options import CellOptions
from tetra_magic.view import make_view

# Job ids as RunPod and the local endpoint make them; anything else is no file name of ours.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# A record outlives any job it names: RunPod runs a job for at most 7 days, then keeps its
# results 30 minutes.
_RECORD_LIFE_S = 7 * 24 * 3600 + RUN_RETENTION_S
_RETENTION = f"{RUN_RETENTION_S // 60} minutes"


class ResultsGone(TetraError):
    """The endpoint no longer knows a detached job: its results were kept their time."""


@dataclass(frozen=True)
class Detached:
    """What a later kernel needs to find a detached job, and to tell it from others."""

    job_id: str
    where: str  # "runpod", "local", or "url" (an --endpoint URL)
    endpoint_id: str
    url: str | None  # the REST base, for an --endpoint URL only
    cell: str
    name: str | None
    binds: list[str]
    submitted: float
    timeout: float

    @property
    def line(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.submitted))
        what = self.name or self.cell
        binds = ", ".join(self.binds) or "nothing"
        return f"{self.job_id}  {what}  submitted {when}  binds {binds}"


def record(held: background.Background, job: Job, target: Endpoint) -> None:
    """Keep a detached background cell's record (its `job` has just been submitted)."""
    if job.id is None or not _JOB_ID.fullmatch(job.id):
        print(
            f"tetra: job {job.id!r} is not on record for `%tetra attach`: the endpoint gave it an"
            " id that is no file name",
            file=sys.stderr,
        )
        return
    where, url = _where(job, target)
    detached = Detached(
        job_id=job.id,
        where=where,
        endpoint_id=job.endpoint_id,
        url=url,
        cell=held.cell,
        name=job.name,
        binds=sorted(held.binds),
        submitted=held.submitted,
        timeout=job.opts.timeout,
    )
    _write(_folder() / f"{job.id}.json", asdict(detached))


def _where(job: Job, target: Endpoint) -> tuple[str, str | None]:
    """Which endpoint runs the job, and its address where no kernel would find it otherwise:
    RunPod, the local endpoint (found as any kernel finds it: its address changes with each
    server), or an --endpoint URL."""
    if job.billed:
        return "runpod", None
    local = running()
    if local is not None and (local.base_url, local.endpoint_id) == (
        target.base_url,
        target.endpoint_id,
    ):
        return "local", None
    return "url", target.base_url


def on_record() -> list[Detached]:
    """The detached jobs on record, oldest first; records older than any job's life are
    removed, and unreadable ones left out."""
    found = []
    for path in _folder().glob("*.json"):
        try:
            detached = Detached(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if time.time() - detached.submitted > _RECORD_LIFE_S:
            path.unlink(missing_ok=True)
            continue
        found.append(detached)
    return sorted(found, key=lambda d: d.submitted)


def attach_command(magic: Any, rest: str) -> None:
    """`%tetra attach JOB_ID`: follow a detached job from this kernel, its values landing here."""
    words = rest.split()
    if len(words) != 1:
        raise UsageError(f"%tetra attach JOB_ID: name one detached job. {_known()}")
    detached = _find(words[0])
    jobs = background.jobs(magic.shell)
    following = [h for h in jobs.held if h.job.id == detached.job_id and not h.written]
    if following:
        raise UsageError(
            f"%tetra attach {detached.job_id}: this kernel follows it already, as background job"
            f" {following[0].label} (`%tetra wait {following[0].number}` waits for it)"
        )
    target = _endpoint(detached)
    client = _Reattached(target)
    try:
        ended = JobStatus(client.status(detached.job_id)["status"]).final
    except JobUnknown:
        _forget(detached.job_id)
        raise ResultsGone(
            f"job {detached.job_id}'s results are gone: {target!r} no longer knows it (an"
            f" endpoint keeps an ended job's results {_RETENTION}, RunPod and the local one alike)"
        ) from None
    held = _follow(magic, detached, target, client)
    print(
        f"tetra: attached to detached job {detached.job_id} as background job {held.label}"
        + (": it had ended" if ended else "; the kernel is free (`%tetra wait` waits for it)"),
        file=sys.stderr,
    )
    if ended:
        jobs.wait([held])  # its values are in when this cell ends


def jobs_command(magic: Any, rest: str) -> None:
    """`%tetra jobs`: this notebook's background cells, then the detached jobs on record that
    it does not hold (those of kernels gone, `%tetra attach` brings their values here)."""
    background.jobs_command(magic, rest)
    held = {h.job.id for h in background.jobs(magic.shell).held}
    others = [d for d in on_record() if d.job_id not in held]
    if others:
        print("detached jobs on record (%tetra attach JOB_ID):")
        print("\n".join(f"  {d.line}" for d in others))


def _follow(
    magic: Any, detached: Detached, target: Endpoint, client: EndpointClient
) -> background.Background:
    """Hand the job to this kernel's background jobs, as a --bg --detach cell's job."""
    shell = magic.shell
    opts = CellOptions(
        gpus=(),
        gpu_ids=(),
        cpu=False,
        dependencies=(),
        system_dependencies=(),
        endpoint=None,
        local=detached.where == "local",
        timeout=detached.timeout,
        name=detached.name,
        out=None,
        stream=True,
        quiet=False,
        verbose=bool(magic.verbose),
        background=True,
        detach=True,  # still: this kernel's exit does not cancel it either
    )
    view = make_view(shell, opts, magic.display)
    view.submitted(detached.job_id, detached.name)
    job = Job(target, opts, view, started=detached.submitted)
    job.id = detached.job_id
    label = cell_labeler(shell)
    prices = dict(magic.gpu_prices)

    def follow() -> outcome.CellResult:
        job.finish(client)
        pythons.warn(job.chunks, job.response)
        cost = job.cost(prices)
        if cost is not None:
            print(cost.line(), file=sys.stderr)
        return outcome.unpack(job.check(label, shell.user_ns))

    def wrote_back(result: outcome.CellResult) -> None:
        bring_home(result.payload)  # its --get files, into this kernel's folder

    return background.jobs(shell).submit(
        job, follow, detached.cell, frozenset(detached.binds), wrote_back=wrote_back
    )


class _Reattached(EndpointClient):
    """A client for a job whose first kernel had already fetched part of its stream: /stream
    hands out only what nobody fetched, while an ended job's /status holds every chunk (the
    worker's aggregated stream). For a job that had ended, the whole output comes from
    /status, in order; for one still running, what /stream brings from now on, and the
    final /status adds nothing of what the first kernel had shown."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self.streamed: int | None = None  # chunks /stream handed us; None before its first page

    def stream(self, job_id: str) -> dict[str, Any]:
        page = super().stream(job_id)
        items = page.get("stream")
        if self.streamed is None and JobStatus(page.get("status", "IN_QUEUE")).final:
            self.streamed = 0
            return page if items is None else {**page, "stream": []}
        self.streamed = (self.streamed or 0) + len(items or [])
        return page

    def status(self, job_id: str) -> dict[str, Any]:
        document = super().status(job_id)
        output = document.get("output")
        if self.streamed and isinstance(output, list) and JobStatus(document["status"]).final:
            document["output"] = output[max(len(output) - self.streamed, 0) :]
        return document


def _endpoint(detached: Detached) -> Endpoint:
    """The endpoint the job runs on, reached as a cell of this kernel would reach it."""
    if detached.where == "local":
        return targets.local()
    key, source = api_key()
    if detached.where == "runpod":
        if key is None:
            raise TetraError(
                f"job {detached.job_id} runs on RunPod: set RUNPOD_API_KEY or run `runpod config`"
                " to reach it"
            )
        return Endpoint(rest_base(), detached.endpoint_id, key, key_source=source, billed=True)
    return Endpoint(detached.url or "", detached.endpoint_id, key or "", key_source=source)


def _find(job_id: str) -> Detached:
    if _JOB_ID.fullmatch(job_id):
        for detached in on_record():
            if detached.job_id == job_id:
                return detached
    raise UsageError(f"%tetra attach {job_id}: no detached job of that id on record. {_known()}")


def _known() -> str:
    records = on_record()
    if not records:
        return "No detached jobs are on record (`%%tetra --bg --detach` makes one)."
    lines = "\n".join(f"  {d.line}" for d in records)
    return f"The detached jobs on record (in {_folder()}):\n{lines}"


def _forget(job_id: str) -> None:
    (_folder() / f"{job_id}.json").unlink(missing_ok=True)


def _folder() -> Path:
    return state_dir.private_dir(state_dir.home() / "detached")


def _write(path: Path, content: dict[str, Any]) -> None:
    """Write whole or not at all: a kernel reading the folder meanwhile sees no half record."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(content, handle)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
