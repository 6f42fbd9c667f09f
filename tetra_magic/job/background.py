"""This notebook's background cells (`%%tetra --bg`): their jobs followed in threads, their
values written into the notebook between cells.

A background cell is packed and submitted as any cell, then followed in a thread of its own
that runs in the cell's context (contextvars), so ipykernel sends what it prints and shows to
the cell's own output area while the kernel runs later cells. When its job has ended, its
values land at the start of the next cell the user runs (IPython's `pre_run_cell` event), or
in `%tetra wait` / `job.result()`, never while other code of the notebook runs: a name the
user rebound at home since the cell was submitted is kept as the user left it, and named.
A cell that reads a name a running background cell will bind is told so first.

`%tetra jobs`, `%tetra wait` and `%tetra cancel` (tetra_magic/commands.py) act on the jobs
held here; a kernel that exits cancels the ones still running, but for detached ones
(job/attach.py).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from IPython.core.error import UsageError

from tetra_magic.cell import outcome
from tetra_magic.cell.analysis import analyse
from tetra_magic.cloud.client import EndpointError
from tetra_magic.cloud.status import JobStatus
from tetra_magic.errors import CellInterrupted
from tetra_magic.options import CellOptions


class HeldJob(Protocol):
    """What a background cell's job offers here: a cell's Job, or a --map cell's MapJob
    (job/fan_out.py). Read: who it is and how it runs; written: what it brought back."""

    values: dict[str, Any]
    returned: list[str]
    failure: BaseException | None
    settle: Callable[[], None] | None

    @property
    def id(self) -> str | None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def status(self) -> JobStatus: ...
    @property
    def worker(self) -> dict[str, Any] | None: ...
    @property
    def opts(self) -> CellOptions: ...
    def cancel(self) -> None: ...


# How often `%tetra wait` looks up from its wait, so Ctrl-C reaches it promptly.
WAIT_STEP_S = 0.2
_ABSENT = object()


@dataclass
class Background:
    """One background cell: its job, what it may bind, and the notebook's values of those
    names when it was submitted (how a later change at home is told from the job's own)."""

    number: int
    job: HeldJob
    cell: str
    binds: frozenset[str]
    before: dict[str, Any]
    submitted: float = field(default_factory=time.time)
    ended: float | None = None
    result: outcome.CellResult | None = None
    error: BaseException | None = None
    written: bool = False
    # Set when its thread is done with it. Not the thread's is_alive(): a Ctrl-C that
    # interrupts a Thread.join can leave that saying False while the thread still runs.
    finished: threading.Event = field(default_factory=threading.Event, repr=False)
    # A session cell's: the session it runs in, and what the session notes once the values
    # are in the notebook (its record; --get's files come home then too).
    session: str | None = None
    wrote_back: Callable[[outcome.CellResult], None] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"[{self.number}]" + (f" {self.job.name}" if self.job.name else "")

    @property
    def cancelled(self) -> bool:
        """Cancelled on its endpoint (by `%tetra cancel`, `job.cancel()` or the view's button)."""
        return self.job.status is JobStatus.CANCELLED

    @property
    def running(self) -> bool:
        return not self.finished.is_set()


class Jobs:
    """The background cells of this kernel, in the order they were submitted."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.held: list[Background] = []
        shell.events.register("pre_run_cell", self.before_cell)
        atexit.register(self.cancel_running)

    def submit(
        self,
        job: HeldJob,
        follow: Callable[[], outcome.CellResult],
        cell: str,
        binds: frozenset[str],
        session: str | None = None,
        wrote_back: Callable[[outcome.CellResult], None] | None = None,
    ) -> Background:
        """Start following `job` (`follow` finishes it and returns its unpacked result) in a
        thread that prints into the submitting cell's output; the record of it. `wrote_back`
        runs once its values are in the notebook."""
        user_ns = self.shell.user_ns
        held = Background(
            number=len(self.held) + 1,
            job=job,
            cell=cell,
            binds=binds,
            before={name: user_ns.get(name, _ABSENT) for name in binds},
            session=session,
            wrote_back=wrote_back,
        )
        job.settle = lambda: self.settle(held)
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(self._follow, held, follow), daemon=True
        )
        self.held.append(held)
        thread.start()
        return held

    def _follow(self, held: Background, follow: Callable[[], outcome.CellResult]) -> None:
        """The thread: the job to its end; a failure shown in the cell as a cell shows its
        own error, traceback and all (the notebook is told again at its next cell)."""
        try:
            held.result = follow()
        except BaseException as exc:
            held.error = held.job.failure = exc
            if held.cancelled:  # as asked: no traceback for it
                print(f"tetra: background job {held.label} cancelled", file=sys.stderr)
                return
            print(f"tetra: background job {held.label} failed", file=sys.stderr, flush=True)
            self.shell.showtraceback((type(exc), exc, exc.__traceback__))
        finally:
            held.ended = time.time()
            held.finished.set()

    def before_cell(self, info: Any = None) -> None:
        """IPython's pre_run_cell: write back what has ended; warn about names still being
        computed that the cell about to run reads."""
        for held in self.held:
            if not held.running and not held.written:
                self.settle(held)
        source = getattr(info, "raw_cell", "") or ""
        if source.lstrip().startswith("%tetra wait"):
            return  # it waits first: what it reads afterwards is the job's
        running = [held for held in self.held if held.running]
        if running:  # not the cells of its own session, which it waits for first
            session = _session_of(self.shell, source)
            running = [h for h in running if not (h.session and h.session == session)]
        reads = _reads(self.shell, source) if running else frozenset()
        for held in running:
            waiting = sorted(held.binds & reads)
            if waiting:
                print(
                    f"tetra: {', '.join(waiting)} still being computed by background job"
                    f" {held.label} ({_elapsed(held)}): until it ends, the value here is the"
                    " one from before, if any (`%tetra wait` first)",
                    file=sys.stderr,
                    flush=True,
                )

    def settle(self, held: Background) -> None:
        """Write an ended background cell's values into the notebook, once: all of them but
        the names rebound at home meanwhile; a failure is reported instead."""
        if held.written or held.running:
            return
        held.written = True
        if held.result is None:
            how = "was cancelled" if held.cancelled else f"failed ({_error_line(held.error)})"
            print(
                f"tetra: background job {held.label} {how}; nothing was written back",
                file=sys.stderr,
            )
            return
        user_ns = self.shell.user_ns
        changed = [n for n in held.binds if user_ns.get(n, _ABSENT) is not held.before[n]]
        _apply_except(held.result, user_ns, set(changed))
        if held.wrote_back is not None:  # a session's references are bound here
            refs = held.result.payload.get("refs") or {}
            held.result.payload["refs"] = {n: d for n, d in refs.items() if n not in changed}
            held.wrote_back(held.result)
        held.job.values = dict(held.result.values)
        held.job.returned = sorted(n for n in held.result.values if n not in changed)
        skipped = sorted(set(changed) & set(held.result.values))
        if skipped:
            print(
                f"tetra: background job {held.label} did not write {', '.join(skipped)}: changed"
                " in the notebook since the job started (the job's values: job.result())",
                file=sys.stderr,
            )
        outcome.report(held.result.problems, user_ns)

    def find(self, words: list[str]) -> list[Background]:
        """The jobs named by `words` (`1`, `[1]`, a --name, its --out name or a job id); all
        without words."""
        if not words:
            return list(self.held)
        found = []
        for word in words:
            match = [h for h in self.held if word.strip("[]") in _names(h)]
            if not match:
                known = ", ".join(h.label for h in self.held) or "none yet"
                raise UsageError(f"%tetra: no background job {word!r} (this notebook's: {known})")
            found += match
        return found

    def wait(self, held: list[Background]) -> None:
        """Block until each of `held` has ended, then write them back; Ctrl-C stops waiting,
        not the jobs."""
        try:
            for item in held:
                while not item.finished.wait(WAIT_STEP_S):
                    pass
        except KeyboardInterrupt:
            running = ", ".join(h.label for h in held if h.running)
            print(f"tetra: stopped waiting; still running: {running}", file=sys.stderr)
            return
        for item in held:
            self.settle(item)

    def wait_for_session(self, session: str) -> None:
        """Before a cell of `session`: its background cells still running ended and written
        back first, since a session runs its cells one at a time, in order. Ctrl-C stops the
        waiting, and the cell does not run."""
        running = [held for held in self.held if held.session == session and held.running]
        if running:
            labels = ", ".join(held.label for held in running)
            print(
                f"tetra: waiting for background job {labels} of session {session} first (a"
                " session runs its cells one at a time, in order)",
                file=sys.stderr,
                flush=True,
            )
        try:
            for held in running:
                while not held.finished.wait(WAIT_STEP_S):
                    pass
        except KeyboardInterrupt:
            raise CellInterrupted(
                f"stopped waiting for background job {labels}: this cell did not run"
            ) from None
        for held in self.held:
            if held.session == session:
                self.settle(held)

    def cancel_running(self) -> None:
        """At kernel exit: cancel what still runs (nobody is left to write it back), but for
        detached jobs (--detach), which `%tetra attach` brings into a later kernel."""
        for held in self.held:
            if held.running and not held.job.opts.detach:
                with contextlib.suppress(Exception):
                    held.job.cancel()

    def table(self) -> str:
        """`%tetra jobs`: one line per background cell."""
        rows = [("JOB", "CELL", "STATUS", "ELAPSED", "WORKER", "GPU", "ID")]
        for held in self.held:
            worker = held.job.worker or {}
            rows.append(
                (
                    held.label,
                    held.cell,
                    _status(held),
                    _elapsed(held),
                    worker.get("worker_id") or "-",
                    ", ".join(worker.get("gpus") or []) or "-",
                    held.job.id or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(map(str.ljust, row, widths)).rstrip() for row in rows)


def _names(held: Background) -> tuple[str | None, ...]:
    """What a background cell answers to in `%tetra wait` and `%tetra cancel`."""
    return (str(held.number), held.job.name, held.job.opts.out, held.job.id)


def _status(held: Background) -> str:
    if held.running:
        return held.job.status.value
    if held.error is not None:
        return "CANCELLED" if held.cancelled else "FAILED"
    return held.job.status.value + ("" if held.written else " (not yet written back)")


def _elapsed(held: Background) -> str:
    return f"{(held.ended or time.time()) - held.submitted:.1f} s"


def _apply_except(result: outcome.CellResult, user_ns: dict[str, Any], kept: set[str]) -> None:
    """outcome.apply, less the names in `kept` (the notebook keeps its own values of them,
    while `result.values` gets the job's)."""
    payload = result.payload
    payload["changed"] = [n for n in payload.get("changed", []) if n not in kept]
    scratch = dict(user_ns)  # in-place changes still reach the notebook's objects
    loaded = dict(result.values)  # a --map's lists come loaded already; a cell's, not yet
    outcome.apply(result, scratch)
    scratch.update(loaded)
    written = [name for name in result.values if name not in kept]
    for name in written:
        user_ns[name] = scratch[name]
    for name in [n for n in user_ns if n not in scratch and n not in kept]:
        del user_ns[name]  # the cell deleted it


def _error_line(exc: BaseException | None) -> str:
    if exc is None:
        return "no result"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _session_of(shell: Any, raw: str) -> str | None:
    """The session a cell about to run runs in: a %%tetra cell's --session, else the
    notebook's default session (TetraMagic.session) unless it says --no-session."""
    if not raw.startswith("%%tetra"):
        return None
    line = raw.partition("\n")[0]
    named = re.search(r"--session[= ]+(\S+)", line)
    if named:
        return named.group(1).strip("'\"")
    if "--no-session" in line:
        return None
    magic = shell.magics_manager.registry.get("TetraMagic")
    return getattr(magic, "session", None) or None


def _reads(shell: Any, raw: str) -> frozenset[str]:
    """The notebook names a cell about to run reads (cell/analysis.py's reading): for a
    %%tetra cell, its body's."""
    if raw.startswith("%%tetra"):
        raw = raw.partition("\n")[2]
    try:
        return analyse(shell.transform_cell(raw)).reads
    except (SyntaxError, ValueError):
        return frozenset()


_jobs: Jobs | None = None


def jobs(shell: Any) -> Jobs:
    """This kernel's background jobs (made, and hooked into the shell, on first use)."""
    global _jobs
    if _jobs is None or _jobs.shell is not shell:
        _jobs = Jobs(shell)
    return _jobs


def jobs_command(magic: Any, rest: str) -> None:
    """`%tetra jobs`: this notebook's background cells."""
    held = jobs(magic.shell)
    print(held.table() if held.held else "no background jobs in this notebook (%%tetra --bg)")


def wait_command(magic: Any, rest: str) -> None:
    """`%tetra wait [JOB ...]`: until they (or all) have ended; their values written back."""
    held = jobs(magic.shell)
    held.wait(held.find(rest.split()))


def cancel_command(magic: Any, rest: str) -> None:
    """`%tetra cancel JOB ...`: cancel them on their endpoint."""
    held = jobs(magic.shell)
    if not rest.split():
        raise UsageError("%tetra cancel JOB ...: name the job(s) (see %tetra jobs)")
    for item in held.find(rest.split()):
        if not item.running:
            print(f"tetra: job {item.label} had already ended ({_status(item)})")
            continue
        try:
            item.job.cancel()
        except EndpointError as exc:
            print(f"tetra: job {item.label} could not be cancelled: {exc}", file=sys.stderr)
            continue
        print(f"tetra: job {item.label} cancelled")
