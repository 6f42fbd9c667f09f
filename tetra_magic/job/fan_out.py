"""`%%tetra --map NAME in EXPR`: one cell run once per item, as jobs spread over the endpoint's
workers, its names brought back as lists in the order of the items.

Every item is a job of its own (a shard), packed as the cell would be with NAME bound to the
item, and all of them are submitted at once, up to --workers followed at a time: the endpoint
queues them and its workers take them up as they come free (RunPod scales up to the
endpoint's max workers; the local endpoint has its own number). Each shard's output shows as
it comes, its lines tagged with its index (`[3] ...`), as ipyparallel tags its engines'.

A failed shard does not lose the others: the cell raises one error naming the failed items,
the first one's traceback in full (as ipyparallel's CompositeError), and the notebook keeps
its variables, as after any failed cell; the shards' values stay on the job (`--out`):
`job.result()` gives each name as a list, None where its shard failed.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

from tetra_magic import targets
from tetra_magic.cell import outcome
from tetra_magic.cell.analysis import CellAnalysis
from tetra_magic.cell.packing import pack
from tetra_magic.cloud.status import JobStatus
from tetra_magic.errors import CellInterrupted, Labeler, TetraError
from tetra_magic.job.job import Job
from tetra_magic.options import CellOptions
from tetra_magic.view.text import TextView
from worker.protocol import FunctionResponse

# Shards followed at once without --workers where the endpoint's number of workers cannot be
# read (targets.workers): the endpoint queues the rest anyway, and each one followed is a
# thread polling it.
DEFAULT_FOLLOWED = 16


class MapFailed(TetraError):
    """Some items of a --map cell failed: their indices and errors, the first one in full."""

    def __init__(self, message: str, first: BaseException) -> None:
        super().__init__(message)
        self.first = first

    def _render_traceback_(self) -> list[str]:
        render = getattr(self.first, "_render_traceback_", None)
        detail = render() if render else traceback.format_exception(self.first)
        return [f"{type(self).__name__}: {self}", "", *(line.rstrip("\n") for line in detail)]


class TaggedView(TextView):
    """The text view of one shard: its stdout and stderr as whole lines tagged `[index]`, so
    the lines of shards running at once interleave readably; displays as they are."""

    def __init__(self, index: int, lock: threading.Lock, verbose: bool = False) -> None:
        super().__init__(verbose=verbose, live=True)
        self.tag = f"[{index}] "
        self.lock = lock
        self.partial = {"stdout": "", "stderr": ""}

    def chunk(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("kind")
        if kind not in self.partial:
            return super().chunk(chunk)
        self.streamed = self.streamed or kind == "stdout"
        text = self.partial[kind] + chunk.get("text", "")
        whole, _, self.partial[kind] = text.rpartition("\n")
        if whole:
            self._write(kind, whole + "\n")

    def close(self, response: FunctionResponse | None) -> None:
        super().close(response)
        for kind, rest in self.partial.items():
            if rest:
                self._write(kind, rest + "\n")
        self.partial = {"stdout": "", "stderr": ""}

    def _write(self, kind: str, text: str) -> None:
        stream = sys.stdout if kind == "stdout" else sys.stderr
        lines = "".join(self.tag + line for line in text.splitlines(keepends=True))
        with self.lock:
            stream.write(lines)
            stream.flush()


@dataclass
class MapJob:
    """A --map cell's jobs, one per item (what --out holds): `result()` gives each name the
    shards bound as a list in item order, None where its shard failed."""

    name: str
    items: list[Any]
    jobs: list[Job]
    values: list[dict[str, Any] | None] = field(default_factory=list)
    errors: dict[int, BaseException] = field(default_factory=dict)
    retried: list[Job] = field(default_factory=list)  # the failed tries --retries replaced

    def result(self) -> dict[str, list[Any]]:
        names = dict.fromkeys(n for shard in self.values if shard for n in shard)
        return {n: [shard.get(n) if shard else None for shard in self.values] for n in names}

    def cancel(self) -> None:
        """Cancel every shard still running on its endpoint."""
        for job in self.jobs:
            job.cancel()

    @property
    def status(self) -> str:
        done = sum(
            job.status is JobStatus.COMPLETED and i not in self.errors
            for i, job in enumerate(self.jobs)
        )
        return f"{done} of {len(self.jobs)} done" + (
            f", {len(self.errors)} failed" if self.errors else ""
        )

    def __repr__(self) -> str:
        return f"tetra map over {self.name}: {self.status}"


def run_map(
    shell: Any,
    opts: CellOptions,
    analysis: CellAnalysis,
    filename: str,
    label: Labeler,
    prices: dict[str, float] | None,
    started: float | None,
) -> None:
    """Run the cell once per item, write each name it binds back as a list; MapFailed (the
    notebook untouched) if any item failed, CellInterrupted (all shards cancelled) on Ctrl-C."""
    if opts.session:
        raise UsageError("--map does not run in a session yet: drop --session (or --map)")
    assert opts.map_name is not None and opts.map_items is not None
    user_ns = shell.user_ns
    items = _items(opts.map_items, user_ns)
    if not items:  # as a loop over nothing: no job, nothing bound
        print(
            f"tetra: --map over no items ({opts.map_items} is empty): nothing ran", file=sys.stderr
        )
        return
    endpoint = targets.resolve(opts)
    _say_how_many_at_once(opts, endpoint.billed, len(items))
    lock = threading.Lock()

    def new_job(index: int) -> Job:
        return Job(endpoint, opts, TaggedView(index, lock, opts.verbose), started)

    packs = [
        pack(
            analysis,
            {**user_ns, opts.map_name: item},
            opts,
            filename=filename,
            limit=endpoint.payload_limit,
            label=label,
        )
        for item in items
    ]
    jobs = [new_job(index) for index in range(len(items))]
    mapped = MapJob(opts.map_name, items, jobs, [None] * len(items))
    if opts.out:
        user_ns[opts.out] = mapped
    at_once = min(len(items), opts.workers or targets.workers(endpoint, opts) or DEFAULT_FOLLOWED)
    followed = _follow_all(mapped, packs, label, user_ns, at_once, new_job, opts.retries)
    for index, result in enumerate(followed):
        if result is not None:  # loaded apart from the notebook, which gets the lists
            result.payload["changed"] = []  # an input a shard changed: that shard's copy
            outcome.apply(result, dict(user_ns))
            mapped.values[index] = {n: v for n, v in result.values.items() if n != opts.map_name}
    _say_cost([*mapped.jobs, *mapped.retried], prices)
    if mapped.errors:
        raise _failed(mapped)
    user_ns.update(mapped.result())


def _say_how_many_at_once(opts: CellOptions, billed: bool, items: int) -> None:
    """On an endpoint the magic provisioned on RunPod, more items than it has workers at most
    run that many at a time: said once, with the setting that gives each its own worker."""
    most = opts.worker.workers_max
    if not billed or opts.endpoint or items <= most:
        return
    print(
        f"tetra: {items} items on an endpoint of at most {most} workers (TetraMagic."
        f"workers_max): they run {most} at a time; `%config TetraMagic.workers_max = {items}`"
        " gives each a worker of its own (another endpoint; its workers count against the"
        " account's worker quota: `%tetra endpoints` shows it)",
        file=sys.stderr,
    )


def _items(expression: str, user_ns: dict[str, Any]) -> list[Any]:
    """The items of --map's expression, evaluated in the notebook; UsageError naming it."""
    try:
        return list(eval(expression, user_ns))
    except Exception as exc:
        raise UsageError(
            f"--map: the items {expression!r} could not be listed: {type(exc).__name__}: {exc}"
        ) from None


def _follow_all(
    mapped: MapJob,
    packs: list[Any],
    label: Labeler,
    user_ns: dict[str, Any],
    at_once: int,
    new_job: Callable[[int], Job],
    retries: int,
) -> list[outcome.CellResult | None]:
    """Submit and follow every shard, `at_once` at a time, each in a thread that prints into
    this cell; their results in item order (None for the failed, whose errors land in
    `mapped.errors`). A failed shard runs again, as a new job, up to `retries` times (where it
    runs is the endpoint's choice). Ctrl-C cancels what still runs."""
    results: list[outcome.CellResult | None] = [None] * len(packs)

    def shard(index: int) -> None:
        for tries_left in range(retries, -1, -1):
            job = mapped.jobs[index]
            try:
                job.run(packs[index])
                results[index] = outcome.unpack(job.check(label, user_ns))
                mapped.errors.pop(index, None)
                return
            except BaseException as exc:
                mapped.errors[index] = job.failure = exc
                if tries_left == 0 or isinstance(exc, KeyboardInterrupt):
                    return
            why = _one_line(mapped.errors[index])
            print(f"[{index}] failed ({why}); running it again", file=sys.stderr)
            mapped.retried.append(job)
            mapped.jobs[index] = new_job(index)

    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="tetra-map") as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, shard, index) for index in range(len(packs))
        ]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            mapped.cancel()
            raise CellInterrupted(
                f"the map over {mapped.name} was interrupted: its running jobs were cancelled"
            ) from None
    return results


def _failed(mapped: MapJob) -> MapFailed:
    failed = sorted(mapped.errors)
    listed = "; ".join(f"[{i}] {_one_line(mapped.errors[i])}" for i in failed)
    first = mapped.errors[failed[0]]
    return MapFailed(
        f"{len(failed)} of {len(mapped.jobs)} items failed: {listed}. The notebook's variables"
        " are as they were; the items that succeeded are in the job's result() (with --out).",
        first,
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")


def _say_cost(jobs: list[Job], prices: dict[str, float] | None) -> None:
    """On RunPod, the shards' billed time and estimated price, summed, in one line."""
    costs = [cost for job in jobs if (cost := job.cost(prices)) is not None]
    if not costs:
        return
    billed = sum(cost.billed_s for cost in costs)
    priced = [cost.usd for cost in costs if cost.usd is not None]
    estimate = f"; estimated cost ${sum(priced):.5f}" if len(priced) == len(costs) else ""
    note = " (start and idle time not included)" if estimate else ""
    print(f"tetra: {len(costs)} jobs, billed {billed} s in all{estimate}{note}", file=sys.stderr)
