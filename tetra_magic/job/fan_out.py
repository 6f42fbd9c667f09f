"""`%%tetra --map NAME in EXPR`: one cell run once per item, as jobs spread over the endpoint's
workers, its names brought back as lists in the order of the items.

The items are cut into shards of consecutive items (--batch K of them; by default as
multiprocessing.Pool.map cuts its chunks, about four shards per job followed at once, so 8
items on 4 workers are 8 jobs of one, and 1,000 items 63 jobs of 16), and each shard is a job:
its request carries the values the cell reads once, with its items, and on the worker the cell
runs once per item with NAME bound to it (runtime/batch.py). All shards are submitted at
once, up to --workers followed at a time: the endpoint queues them and its workers take them
up as they come free (RunPod scales up to the endpoint's max workers; the local endpoint has
its own number). Output shows as it comes, each line tagged with its item's index (`[3] ...`),
as ipyparallel tags its engines'; a shard marks where each item's output starts
({"kind": "item", "index": i} chunks to its view).

Each item comes home on its own, through the outcome code as a job of its own would: a failed
item does not lose the others, its shard's included. The cell raises one error naming the
failed items, the first one's traceback in full (as ipyparallel's CompositeError), and the
notebook keeps its variables, as after any failed cell; the items' values stay on the job
(`--out`): `job.result()` gives each name as a list, None where its item failed. --retries
runs a shard's failed items again, together, as one new job (where it runs is the endpoint's
choice); a shard that failed as a whole (its worker lost, its inputs not loadable) runs again
whole.

Two items of one shard differ from two jobs where a loop at home would: they share the
loaded inputs (loaded once per shard), so an input one item changes in place is changed for
the shard's later items, and the worker process's state (imports, module globals, files in
the working directory) carries from one to the next. Each item still starts from the
namespace the inputs left (a name an earlier item bound is not there), in its own event loop,
with its figures shown and closed and its widgets, display limits and last value its own.
--timeout is each item's: a shard of K items may run K times as long before it is stopped.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import math
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
from tetra_magic.cell.files import bring_home
from tetra_magic.cell.packing import Packed, narrowed, pack
from tetra_magic.cloud.status import JobStatus
from tetra_magic.errors import CellInterrupted, JobFailed, Labeler, TetraError
from tetra_magic.job import background
from tetra_magic.job.job import Job
from tetra_magic.options import MAX_TIMEOUT, CellOptions
from tetra_magic.runtime.contract import ITEM_MESSAGE
from tetra_magic.view import JobView
from tetra_magic.view.shards import MapBoard, map_board
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
    """The text view of one shard: its stdout and stderr as whole lines tagged `[index]`, the
    index of the item that wrote them, so the lines of shards running at once interleave
    readably; displays as they are."""

    def __init__(self, index: int, lock: threading.Lock, verbose: bool = False) -> None:
        super().__init__(verbose=verbose, live=True)
        self.tag = f"[{index}] "
        self.lock = lock
        self.partial = {"stdout": "", "stderr": ""}

    def chunk(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("kind")
        if kind == "item":  # the shard's next item starts: its lines get its own tag
            self._end_lines()
            self.tag = f"[{chunk['index']}] "
            return None
        if kind not in self.partial:
            return super().chunk(chunk)
        self.streamed = self.streamed or kind == "stdout"
        text = self.partial[kind] + chunk.get("text", "")
        whole, _, self.partial[kind] = text.rpartition("\n")
        if whole:
            self._write(kind, whole + "\n")

    def close(self, response: FunctionResponse | None) -> None:
        super().close(response)
        self._end_lines()

    def _end_lines(self) -> None:
        """Write the lines still unfinished, ended, under the tag they were written under."""
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
    """A --map cell's jobs, one per shard of items (what --out holds): `result()` gives each
    name the items bound as a list in item order, None where its item failed. A --bg map is
    held by this notebook's background jobs as a background cell's job is (job/background.py):
    the fields from `id` on are what they read of it. `stop` is set to cancel the map: by
    `cancel()`, or the Cancel button of its board (view/shards.py), whose Event it is there."""

    over: str  # the map's NAME
    items: list[Any]
    jobs: list[Job]  # one per shard; a retry's job replaces its shard's
    shards: list[list[int]]  # the indices of the items each shard runs
    per_item: list[dict[str, Any] | None] = field(default_factory=list)
    errors: dict[int, BaseException] = field(default_factory=dict)  # by item index
    retried: list[Job] = field(default_factory=list)  # the failed tries --retries replaced
    done: set[int] = field(default_factory=set)  # the items that succeeded
    problems: dict[str, str] = field(default_factory=dict)  # values that could not come home
    at_once: int = 1  # shards followed at once: --workers, or the default
    opts: CellOptions = field(kw_only=True, repr=False)
    # What the cell binds (only these come back), and the names among them that come back as
    # the last item left them, as after a loop at home: its imports and definitions.
    binds: frozenset[str] = field(kw_only=True, repr=False)
    singles: frozenset[str] = field(kw_only=True, repr=False)
    stop: threading.Event = field(default_factory=threading.Event, repr=False)
    id: None = None  # many jobs, no one id
    worker: None = None
    values: dict[str, Any] = field(default_factory=dict)  # the lists written back
    returned: list[str] = field(default_factory=list)
    failure: BaseException | None = None
    settle: Callable[[], None] | None = field(default=None, repr=False)
    ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def result(self, timeout: float | None = None) -> dict[str, list[Any]]:
        """Each name as a list in item order, None where its item failed, once every shard
        has ended (waiting up to `timeout` seconds; TimeoutError if one still runs then); a
        --bg map's lists are written into the notebook first, where they have not been."""
        if not self.ended.wait(timeout):
            raise TimeoutError(f"the map over {self.over} still runs after {timeout:g} s")
        if self.settle is not None:
            self.settle()
        done = [item for item in self.per_item if item]
        names = dict.fromkeys(n for item in done for n in item if n in self.binds)
        return {
            n: [item[n] for item in done if n in item][-1]
            if n in self.singles
            else [item.get(n) if item else None for item in self.per_item]
            for n in names
        }

    def changed_in_place(self) -> list[str]:
        """The notebook's values the items changed in place without binding them: each item
        changed a copy of its own (the items of one job, one copy), so none comes back."""
        return sorted({n for item in self.per_item if item for n in item} - self.binds)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every shard has ended, at most `timeout` seconds; whether they have."""
        return self.ended.wait(timeout)

    def cancel(self) -> None:
        """Cancel every shard still running on its endpoint; submit no more."""
        self.stop.set()
        for job in self.jobs:
            job.cancel()

    @property
    def cancelled(self) -> bool:
        return self.stop.is_set()

    @property
    def name(self) -> str | None:
        """Its --name: how `%tetra jobs` and `%tetra wait NAME` know it."""
        return self.opts.name

    @property
    def status(self) -> JobStatus:
        """The map's state in RunPod's words: queued until a shard runs, in progress until all
        have ended, then completed, or failed where an item did (cancelled where asked)."""
        if self.cancelled:
            return JobStatus.CANCELLED
        if self.ended.is_set():
            return JobStatus.FAILED if self.errors else JobStatus.COMPLETED
        started = any(job.status is not JobStatus.IN_QUEUE for job in self.jobs)
        return JobStatus.IN_PROGRESS if started else JobStatus.IN_QUEUE

    def to_dict(self) -> dict[str, Any]:
        """The map's record: each job's (JobRecord.to_dict, the retried tries too), which
        items each ran, and each failed item's error."""
        return {
            "over": self.over,
            "items": len(self.items),
            "shards": self.shards,
            "jobs": [job.to_dict() for job in self.jobs],
            "retried": [job.to_dict() for job in self.retried],
            "errors": {index: _one_line(exc) for index, exc in sorted(self.errors.items())},
        }

    @property
    def progress(self) -> str:
        done = f"{len(self.done)} of {len(self.items)} items done"
        if self.cancelled:
            return f"cancelled, {done}"
        return done + (f", {len(self.errors)} failed" if self.errors else "")

    def __repr__(self) -> str:
        return f"tetra map over {self.over}: {self.progress}"


def default_batch(items: int, workers: int) -> int:
    """Items per shard without --batch: multiprocessing.Pool.map's chunksize, about four
    shards per worker, so small items share a job while many workers still share the work."""
    return max(1, math.ceil(items / (4 * workers)))


def run_map(
    shell: Any,
    opts: CellOptions,
    analysis: CellAnalysis,
    filename: str,
    label: Labeler,
    prices: dict[str, float] | None,
    started: float | None,
    display: str = "auto",
) -> None:
    """Run the cell once per item, write each name it binds back as a list; MapFailed (the
    notebook untouched) if any item failed, CellInterrupted (all shards cancelled) on Ctrl-C.
    With --bg, the shards are submitted and followed in the background, and the lists land
    between later cells (job/background.py)."""
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
    at_once = min(len(items), opts.workers or targets.workers(endpoint, opts) or DEFAULT_FOLLOWED)
    size = opts.batch or default_batch(len(items), at_once)
    shards = [list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)]
    _say_how_many_at_once(opts, endpoint.billed, len(items), len(shards))
    most = min(size, len(items))  # --timeout is each item's: a shard's is theirs summed
    shard_opts = dataclasses.replace(opts, timeout=min(opts.timeout * most, MAX_TIMEOUT))
    lock = threading.Lock()
    home = {name: value for name, value in user_ns.items() if name != opts.map_name}
    packs = [
        pack(analysis, home, shard_opts, filename=filename, limit=endpoint.payload_limit,
             label=label, items={index: items[index] for index in shard})
        for shard in shards
    ]  # fmt: skip
    board = map_board(shell, opts, display, len(items))  # once every request is made
    stop = board.cancel_requested if board is not None else threading.Event()

    def new_job(indices: list[int]) -> Job:
        view = _shard_view(indices, lock, opts, board)
        return Job(endpoint, shard_opts, ItemMarkers(view, stop), started)

    mapped = MapJob(
        opts.map_name,
        items,
        [new_job(shard) for shard in shards],
        shards,
        [None] * len(items),
        at_once=at_once,
        opts=opts,
        binds=(analysis.binds | frozenset(analysis.defines)) - {opts.map_name},
        singles=frozenset(analysis.imported) | frozenset(analysis.defines),
        stop=stop,
    )
    if opts.out:
        user_ns[opts.out] = mapped

    def follow() -> outcome.CellResult:
        """Every shard to its end: the lists, as a cell's loaded values; MapFailed."""
        try:
            _follow_all(mapped, packs, label, user_ns, min(at_once, len(shards)), new_job, board)
        finally:
            if mapped.cancelled:  # the jobs never submitted are cancelled as much as the rest
                for job in mapped.jobs:
                    job.status = JobStatus.CANCELLED if job.id is None else job.status
            mapped.ended.set()
            if board is not None:
                board.close()
        _say_cost([*mapped.jobs, *mapped.retried], prices)
        if mapped.cancelled:
            raise CellInterrupted(
                f"the map over {mapped.over} was cancelled: its jobs that ran were cancelled on"
                " the endpoint, the others never submitted; the notebook is as it was"
            )
        if mapped.errors:
            raise _failed(mapped)
        _say_what_stays(mapped, user_ns)
        return outcome.CellResult(values=mapped.result())

    if opts.background:
        binds = (analysis.binds | analysis.deletes) - set(analysis.imported) - {opts.map_name}
        held = background.jobs(shell).submit(mapped, follow, filename, frozenset(binds))
        print(
            f"tetra: background job {held.label} submitted ({len(items)} items, {len(shards)}"
            " jobs); the kernel is free (`%tetra jobs` shows it, `%tetra wait` waits for its"
            " values)",
            file=sys.stderr,
        )
        return
    user_ns.update(follow().values)


def _say_what_stays(mapped: MapJob, user_ns: dict[str, Any]) -> None:
    """After a map: one line per name that could not come home, and one for the notebook's
    values the items changed in place, which stay as they were."""
    outcome.report({n: r for n, r in mapped.problems.items() if n in mapped.binds}, user_ns)
    if changed := mapped.changed_in_place():
        print(
            f"tetra: --map: {', '.join(changed)} changed in place by the items, each in a copy"
            " of its own (the items of one job share one): the notebook's are as they were;"
            " bind a new name in the cell to bring such results back",
            file=sys.stderr,
        )


def _shard_view(
    indices: list[int], lock: threading.Lock, opts: CellOptions, board: MapBoard | None
) -> JobView:
    """The view of one shard, running the items at `indices`, told where each of its items'
    output starts: its part of the map's board (the widget view), or its lines tagged."""
    return board.shard(indices) if board is not None else TaggedView(indices[0], lock, opts.verbose)


class ItemMarkers:
    """A shard's view, handed the runtime's marks of where each item's output starts (framed
    in its stdout: runtime/batch.py) as {"kind": "item", "index": i} chunks; a view that
    does not know the kind ignores it. Its job's follow loop stops at the map's `stop`
    (MapJob.stop), where there is one, and cancels the job."""

    def __init__(self, view: JobView, stop: threading.Event | None = None) -> None:
        self.view, self.stop = view, stop
        self.joining = False  # a display message's pieces are arriving: none is a mark

    @property
    def cancel_requested(self) -> threading.Event | None:
        return self.stop or self.view.cancel_requested

    def submitted(self, job_id: str, name: str | None) -> None:
        self.view.submitted(job_id, name)

    def status(self, status: JobStatus) -> None:
        self.view.status(status)

    def chunk(self, chunk: dict[str, Any]) -> None:
        if chunk.get("kind") == "display":
            text, joining = chunk.get("text") or "", self.joining
            self.joining = bool(chunk.get("more"))
            if not joining and text.startswith(ITEM_MESSAGE):
                chunk = {"kind": "item", "index": json.loads(text)["index"]}
        self.view.chunk(chunk)

    def close(self, response: FunctionResponse | None) -> None:
        self.view.close(response)


def _say_how_many_at_once(opts: CellOptions, billed: bool, items: int, jobs: int) -> None:
    """On an endpoint the magic provisioned on RunPod, more jobs than it has workers at most
    run that many at a time: said once, with the setting that gives each job a worker of its
    own (items a job each) or that raises the ceiling (batched items)."""
    most = opts.worker.workers_max
    if not billed or opts.endpoint or jobs <= most:
        return
    what = f"{items} items" if jobs == items else f"{items} items in {jobs} jobs"
    more = (
        f"`%config TetraMagic.workers_max = {items}` gives each a worker of its own"
        if jobs == items
        else "a higher `%config TetraMagic.workers_max` runs more at once"
    )
    print(
        f"tetra: {what} on an endpoint of at most {most} workers (TetraMagic.workers_max):"
        f" they run {most} at a time; {more} (another endpoint; its workers count against the"
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
    packs: list[Packed],
    label: Labeler,
    user_ns: dict[str, Any],
    at_once: int,
    new_job: Callable[[list[int]], Job],
    board: MapBoard | None,
) -> None:
    """Submit and follow every shard, `at_once` at a time, each in a thread that prints into
    this cell; each item's values into `mapped.per_item` as it ends (its error into
    `mapped.errors`), and onto the board. A shard's failed items run again, as one new job,
    up to --retries times. Ctrl-C cancels what still runs."""

    def shard(number: int) -> None:
        packed, todo = packs[number], mapped.shards[number]
        opts = mapped.jobs[number].opts
        for tries_left in range(opts.retries, -1, -1):
            job = mapped.jobs[number]
            if mapped.cancelled:  # before this job was submitted
                mapped.errors.update(dict.fromkeys(todo, JobFailed("cancelled before it ran")))
                return
            interrupted = _run_shard(job, packed, todo, mapped, label, user_ns)
            if board is not None:
                for index in todo:
                    board.item_ended(index, index in mapped.errors, mapped.errors.get(index))
            failed = [index for index in todo if index in mapped.errors]
            if not failed or tries_left == 0 or interrupted:
                return
            for index in failed:
                why = _one_line(mapped.errors[index])
                print(f"[{index}] failed ({why}); running it again", file=sys.stderr)
            mapped.retried.append(job)
            packed, todo = narrowed(packed, failed, opts), failed
            mapped.jobs[number] = new_job(failed)

    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="tetra-map") as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, shard, number)
            for number in range(len(packs))
        ]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            mapped.cancel()
            raise CellInterrupted(
                f"the map over {mapped.over} was interrupted: its running jobs were cancelled"
            ) from None


def _run_shard(
    job: Job,
    packed: Packed,
    todo: list[int],
    mapped: MapJob,
    label: Labeler,
    user_ns: dict[str, Any],
) -> bool:
    """Run one shard's job for the items at `todo`: each item's values into
    `mapped.per_item` (loaded apart from the notebook, which gets the lists; its --get files
    written here), or its error into `mapped.errors` (every item's, where the job failed as a
    whole); whether Ctrl-C stopped it."""
    try:
        job.run(packed)
        entries = outcome.unpack(job.check(label, user_ns)).payload.get("items")
        if not isinstance(entries, list) or len(entries) != len(todo):
            raise JobFailed("the worker sent no result for each item of the batch")
    except BaseException as exc:
        job.failure = exc
        mapped.errors.update(dict.fromkeys(todo, exc))
        return isinstance(exc, KeyboardInterrupt)
    for index, entry in zip(todo, entries, strict=True):
        try:
            response = outcome.check(outcome.item_response(entry), label, user_ns)
            result = outcome.unpack(response, entry)
            result.payload["changed"] = []  # an input an item changed: its shard's copy
            # as the loop at home has it when this item's run ends: NAME is its item
            scratch = {**user_ns, mapped.over: mapped.items[index]}
            outcome.apply(result, scratch)
            bring_home(result.payload)
            values = {n: v for n, v in result.values.items() if n != mapped.over}
            mapped.problems.update(result.problems)
            # its definitions, made here from their source
            values.update({n: scratch[n] for n in mapped.singles - values.keys() if n in scratch})
            mapped.per_item[index] = values
        except Exception as exc:
            mapped.errors[index] = exc
        else:
            mapped.errors.pop(index, None)
            mapped.done.add(index)
    failed = [index for index in todo if index in mapped.errors]
    if failed:  # the job's record says so, though the job itself completed
        job.error = f"{len(failed)} of its {len(todo)} items failed: {failed}"
    return False


def _failed(mapped: MapJob) -> MapFailed:
    failed = sorted(mapped.errors)
    listed = "; ".join(f"[{i}] {_one_line(mapped.errors[i])}" for i in failed)
    first = mapped.errors[failed[0]]
    return MapFailed(
        f"{len(failed)} of {len(mapped.items)} items failed: {listed}. The notebook's variables"
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
