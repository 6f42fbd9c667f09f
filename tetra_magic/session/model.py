"""Sessions as the notebook knows them: which exist, what they hold, how they were built.

A session cell (`%%tetra --session NAME`) runs in a namespace that lives on the worker between
cells (tetra_magic/runtime/sessions.py is the worker's side). The kernel keeps one `Session`
record per name: the id the worker must still hold (so a lost session is noticed before a cell
runs), the cells that built it, with the requests they sent (so `%tetra replay` can rebuild it
with the inputs they had), and what came home from it:

- small values, as values; the notebook's copy is sent back as a reference to the session's
  own while it is unchanged (same object, same pickle), so identity inside the session holds
  and the newest value always wins: a copy changed or rebound here is shipped as today;
- everything else as a `RemoteRef`, which shows what it is without fetching it and which a
  later cell of the same session reads at no transfer cost.

Sessions belong to their kernel: the worker keys them by this kernel's id and the name.
"""

from __future__ import annotations

import secrets
import time
import types
import weakref
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tetra_magic.errors import TetraError
from tetra_magic.options import CellOptions
from tetra_magic.runtime.contract import SessionPart, Spec
from tetra_magic.runtime.picklers import markers
from tetra_magic.runtime.pickling import MainNames, digest
from tetra_magic.sizes import size_text

# The session whose cell is being packed: a reference to another session's value cannot go.
_SHIPPING: list[Session] = []


@dataclass
class CellRecord:
    """One cell that built a session: enough to send it again as it was."""

    label: str
    spec: Spec
    blobs: dict[str, bytes]
    opts: CellOptions


@dataclass
class Session:
    """One session of this kernel."""

    name: str
    owner: str
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    created: float = field(default_factory=time.time)
    last_used: float | None = None
    endpoint: str = ""
    worker_id: str | None = None
    opts: CellOptions | None = None
    cells: list[CellRecord] = field(default_factory=list)
    # notebook name -> (id of its value, the value's pickle's digest, the marker that stands
    # for the session's own object): the notebook's copies of what the session holds
    homes: dict[str, tuple[int, bytes | None, SessionValue]] = field(default_factory=dict)
    # ids of the values kept for the notebook's live references, and of those it dropped
    # (freed by the next cell)
    alive: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)
    # session name -> the id of the value kept for its newest reference (None: it is bound to
    # a value that came home, or deleted)
    newest: dict[str, str | None] = field(default_factory=dict)
    # id of a value `ref.pull()` returned -> (its pickle's digest, the marker for the original)
    copies: dict[int, tuple[bytes | None, SessionValue]] = field(default_factory=dict)
    # name -> the definition object that came home (the worker has it by that name)
    definitions: dict[str, Any] = field(default_factory=dict)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpu_memory: dict[str, int] = field(default_factory=dict)
    lost: str | None = None
    cause: str = ""
    # fetch(names, user_ns) -> {name: value}, and the notebook namespace whose classes the
    # values load against: given by whoever runs the session's cells (hooks.py)
    fetch: Callable[[list[str], dict[str, Any]], dict[str, Any]] | None = None
    namespace: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return f"{self.owner}:{self.name}"

    @property
    def new(self) -> bool:
        """Whether the worker has yet to make it (no cell has built it)."""
        return not self.cells

    def spec(self, reads: Set[str], value_limit: int) -> SessionPart:
        """The `session` part of a cell's spec, for the worker's side (runtime/sessions.py)."""
        return {
            "key": self.key,
            "id": self.id,
            "new": self.new,
            "cell": len(self.cells),
            "reads": sorted(reads),
            "homes": sorted(n for n, home in self.homes.items() if type(home[2]) is SessionValue),
            "released": sorted(self.released),
            "value_limit": value_limit,
        }

    def referable(self, finder: Any) -> Any:
        """`finder`, except that a definition that came home from this session is one the
        worker has: it is referred to by name, never defined there again."""

        def referable(name: str) -> Any:
            if name in self.definitions and finder.user_ns.get(name) is self.definitions[name]:
                return []
            return finder(name)

        return referable

    def substitutes(self, values: dict[str, Any], user_ns: dict[str, Any]) -> dict[str, Any]:
        """{name: marker} for the values the cell reads that the session holds as they are:
        the notebook's unchanged copies of what came home. The marker stands for the
        session's own object on the worker."""
        found = {}
        for name, value in values.items():
            home = self.homes.get(name)
            if home is not None and home[0] == id(value) and home[1] == _digest(value, user_ns):
                found[name] = home[2]
            elif (copy := self.copies.get(id(value))) and copy[0] == _digest(value, user_ns):
                found[name] = copy[1]  # a value `ref.pull()` returned, by whatever name
        return found

    def forget(self, names: Set[str]) -> None:
        """After a failed cell: the notebook's copies of `names` go to the next cell again, so
        the session gets back what the notebook has (the failed cell may have changed its own
        objects in place, and the notebook keeps its values as they were)."""
        for name in names:
            self.homes.pop(name, None)

    def dropped(self, ref: str) -> None:
        """The notebook no longer holds a reference to the value kept as `ref`."""
        self.alive.discard(ref)
        self.released.add(ref)

    def marker_for_copy(self, ref: RemoteRef) -> SessionValue:
        """What stands for the session's object once the notebook holds a copy of `ref`'s
        value: its name, while that name still binds it there; else the value kept for the
        reference, which then stays kept (the copy has no way to say when it is dropped)."""
        if self.newest.get(ref.name) == ref.ref or ref.ref is None:
            return SessionValue(ref.name)
        if ref.release is not None:
            ref.release.detach()
        return ref.marker

    def has_copy(self, name: str, user_ns: dict[str, Any], marker: SessionValue) -> None:
        """The notebook's `name` is now a copy of the session's object `marker` stands for: it
        goes back as that marker while it stays unchanged."""
        value = user_ns[name]
        self.homes[name] = (id(value), _digest(value, user_ns), marker)

    def took(
        self,
        payload: dict[str, Any],
        user_ns: dict[str, Any],
        record: CellRecord,
        problems: dict[str, str],
    ) -> None:
        """Note what a cell of the session did: what came home (values and definitions), what
        the notebook sent that the session now holds, and what stays as references, which are
        bound in the notebook now, as are values that came but cannot be loaded here (their
        `problems` are then dropped: nothing is lost)."""
        bound = {*payload.get("values", {}), *payload.get("refs", {}), *payload.get("deleted", [])}
        sent = [n for n in record.blobs if n not in bound and _plain_value(user_ns.get(n))]
        for name in [*payload.get("values", {}), *sent]:
            if name in user_ns and name not in problems:
                self.has_copy(name, user_ns, SessionValue(name))
        for name in payload.get("definitions", {}):
            if name in user_ns:
                self.definitions[name] = user_ns[name]
        described = payload.get("described") or {}
        for name in [n for n in problems if n in described and n in payload.get("values", {})]:
            self.homes.pop(name, None)
            user_ns[name] = RemoteRef(
                self, name, {**(described[name] or {}), "reason": problems.pop(name)}
            )
        made: dict[str, RemoteRef] = {}  # one reference per object, whatever names it has
        for name, description in payload.get("refs", {}).items():
            self.homes.pop(name, None)
            if description["ref"] not in made:
                made[description["ref"]] = RemoteRef(self, name, description)
            user_ns[name] = made[description["ref"]]
            self.newest[name] = description["ref"]
        for name in payload.get("deleted", []):
            self.homes.pop(name, None)
        for name in [*payload.get("values", {}), *payload.get("deleted", [])]:
            self.newest[name] = None
        summary = payload.get("session") or {}
        self.held, self.gpu_memory = summary.get("held", {}), summary.get("gpu_memory", {})
        self.released -= set(record.spec["session"].get("released", ()))
        self.cells.append(record)
        self.last_used = time.time()
        SESSIONS[self.name] = self

    def lose(self, cause: str) -> None:
        """Note that the session is gone, and why."""
        self.lost, self.cause = f"lost after {_clock(self.last_used)}", cause

    def lost_error(
        self, answer: dict[str, Any] | None = None, worker_id: str | None = None
    ) -> SessionLost:
        """The error a cell gets when the worker (`worker_id`, as the job says) no longer
        holds the session; `answer` is the worker's (when the process it runs in started)."""
        since = _clock(self.last_used)
        if not self.lost:
            self.lose(
                "the worker process that held it ended (an idle timeout, a crash, a restart, a"
                " cancelled cell or a --timeout kill)"
            )
        started = (answer or {}).get("process_started")
        restart = f" The process that answered started at {_clock(started)}." if started else ""
        other = ""
        if worker_id and self.worker_id and worker_id != self.worker_id:
            other = (
                f" Worker {worker_id} answered, not {self.worker_id}, which held it: that one is"
                " gone, or the endpoint has several workers (a session needs an endpoint with"
                " one at most, which a session cell provisions on RunPod without --endpoint)."
            )
        built = ", ".join(cell.label for cell in self.cells) or "no cells"
        return SessionLost(
            f"session {self.name!r} is gone: {self.cause}, after {since}, when its last cell"
            f" ran.{restart}{other} Nothing ran. It had been built by {built}. Run"
            f" `%tetra replay {self.name}` to rebuild it (those cells run again, with the"
            f" inputs they had), `%tetra end {self.name}` to start it afresh, or set"
            " `%config TetraMagic.session_replay = True` to replay lost sessions"
            " automatically."
        )


class SessionError(TetraError):
    """A session request that could not be done."""


class SessionLost(SessionError):
    """The worker no longer holds the session a cell was meant to run in."""


class SessionValue:
    """Stands, in a cell's request, for a value the session already holds under `name`: it
    pickles as a reference that the worker resolves in the session's namespace."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return markers().main, (self.name,)


class KeptValue(SessionValue):
    """Stands for a value the session keeps for a remote reference (`ref`, "<cell>.<name>"):
    the object the reference was made for, even after its name was bound again."""

    def __init__(self, ref: str) -> None:
        self.name = self.ref = ref

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return markers().kept, (self.ref,)


class RemoteRef:
    """A value that stays in a session on the worker: shows what it is, and is read by later
    cells of that session at no transfer cost. `pull()` fetches it. It stands for the object
    it was made for: `old = model` keeps the old model after a cell binds `model` again."""

    def __init__(self, session: Session, name: str, description: dict[str, Any]) -> None:
        self.name = name
        self.ref = description.get("ref")  # None: the value is the session's `name`
        self.marker = KeptValue(self.ref) if self.ref else SessionValue(name)
        self.release = None
        if self.ref:  # dropped here, freed there
            session.alive.add(self.ref)
            self.release = weakref.finalize(self, session.dropped, self.ref)
        self.session = session
        self.session_id = session.id
        self.type = description.get("type") or "object"
        self.size = description.get("size")
        self.device = description.get("device")
        self.reason = description.get("reason")
        self.over = bool(description.get("over"))  # the size is a lower bound

    def __repr__(self) -> str:
        parts = [self.type.rpartition(".")[2]]
        if self.size is not None:
            parts.append(("over " if self.over else "") + size_text(self.size))
        if self.device:
            parts.append(self.device)
        earlier = " (earlier)" if self.session.newest.get(self.name, self.ref) != self.ref else ""
        return f"<remote {self.session.name}.{self.name}{earlier}: {', '.join(parts)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _check_live(self) -> None:
        if SESSIONS.get(self.session.name) is not self.session:
            raise SessionError(
                f"it is a remote reference to {self.name!r} in session {self.session.name!r},"
                " which has ended: run the cell that made it again"
            )

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        shipping = _SHIPPING[-1] if _SHIPPING else None
        self._check_live()
        if shipping is None or shipping.id != self.session_id:
            where = f"session {shipping.name!r}" if shipping else "no session"
            raise SessionError(
                f"it is a remote reference to {self.name!r} in session {self.session.name!r},"
                f" and this cell runs in {where}: run it with --session {self.session.name},"
                f" or fetch the value with `%tetra pull {self.name}`"
            )
        return self.marker.__reduce__()

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):  # what IPython's display and pickle look for
            raise AttributeError(attribute)
        raise AttributeError(
            f"{attribute!r}: {self!r} is a remote reference; use it in a `%%tetra --session"
            f" {self.session.name}` cell, or fetch the value with `.pull()`"
        )

    def pull(self) -> Any:
        """The value itself, fetched from the worker (GPU tensors come as CPU ones)."""
        self._check_live()
        user_ns = self.session.namespace
        if self.session.fetch is None:
            raise SessionError(f"session {self.session.name!r} has no cell to fetch from")
        value = self.session.fetch([self.marker.name], user_ns)[self.marker.name]
        self.session.copies[id(value)] = (
            _digest(value, user_ns),
            self.session.marker_for_copy(self),
        )
        return value


@contextmanager
def shipping(session: Session | None) -> Iterator[None]:
    """While a cell is packed: the session its references may go to."""
    _SHIPPING.append(session)  # type: ignore[arg-type]
    try:
        yield
    finally:
        _SHIPPING.pop()


SESSIONS: dict[str, Session] = {}


def for_cell(name: str, owner: str) -> Session:
    """The kernel's session `name`; a new one (listed once a cell of it has run) if none."""
    return SESSIONS.get(name) or Session(name, owner)


def _plain_value(value: Any) -> bool:
    """A value the notebook sent as itself: not a module, definition, or remote reference."""
    kinds = (type, types.ModuleType, types.FunctionType, RemoteRef, type(None))
    return not isinstance(value, kinds)


def _digest(value: Any, user_ns: dict[str, Any]) -> bytes | None:
    """A fingerprint of the notebook value's pickle, as the worker takes an input's."""
    return digest(MainNames(user_ns), value)


def _clock(moment: float | None) -> str:
    if moment is None:
        return "its start"
    ago = time.time() - moment
    when = time.strftime("%H:%M:%S", time.localtime(moment))
    return f"{when} ({_duration(ago)} ago)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table(now: float | None = None) -> str:
    """`%tetra sessions`: one block per session of this kernel."""
    if not SESSIONS:
        return "no sessions in this kernel (start one with %%tetra --session NAME)"
    now = now or time.time()
    blocks = []
    for session in SESSIONS.values():
        idle = _duration(now - session.last_used) if session.last_used else "-"
        count = len(session.cells)
        cells = f"{count} cell{'s' if count != 1 else ''}"
        state = f"LOST ({session.lost})" if session.lost else cells
        head = (
            f"{session.name}: {state} · endpoint {session.endpoint or '-'} · worker"
            f" {session.worker_id or '-'} · age {_duration(now - session.created)} · idle {idle}"
        )
        held = ", ".join(
            f"{name} ({info.get('type', '?').rpartition('.')[2]}, {size_text(info['size'])})"
            if info.get("size") is not None
            else name
            for name, info in session.held.items()
        )
        lines = [head, f"  holds: {held or 'nothing'}"]
        if session.gpu_memory:
            gpu = ", ".join(f"{dev} {size_text(n)}" for dev, n in session.gpu_memory.items())
            lines.append(f"  GPU memory in use: {gpu}")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
