"""The widgets a remote cell made, as real widgets in the notebook (the home end of the relay).

The worker's ipywidgets have no kernel: their comms (tetra_magic/runtime/widgets.py) send each
comm_open, state update and comm_close home as a display message of type "comm", in order with
the cell's prints and displays. Here each one is done for real in the kernel: the comm opened
with the worker's comm id, target, state, buffers and protocol version, so the frontend makes
the same widget model, and the widget's display (widget-view+json with that model id), which
arrives after it, shows it; each update is sent on it as it arrives, so a progress bar moves
while the cell runs. The models stay in the kernel after the cell, as a local cell's widgets
do, and the frontend saves their last state with the notebook when it saves widget state.

One way only: what the frontend sends (a slider moved) does not reach the cell; the kernel
answers a frontend's request for a model's state from the state relayed so far. Without a
kernel (terminal IPython) there is no frontend: the widget shows as its display's text.

A widget the cell binds to a name comes home with the cell's values as a widget of the same
class whose comm is a `HomeComm` on the relayed one: `bar.value = 3` in a later cell moves the
bar on screen, as it would at home. It is one object however many names and boxes it comes
home under (`home_widget`), as it was in the cell. A tqdm bar comes home as a working bar on
those widgets, or on the kernel's stream (`home_bar`, `bar_state`).

A cell stopped before its end (interrupted, cancelled) cannot say so from the worker: the
views call `stopped`, which turns its tqdm bars still running red, as tqdm does at home.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass, field
from typing import Any

# The widgets relayed into this kernel, by comm id.
_relayed: dict[str, Relayed] = {}
# The widget objects that came home, by comm id: one object for each widget, however many
# names (or containers) it came home under.
_homed: dict[str, Any] = {}


@dataclass
class Relayed:
    """One relayed widget: its comm in this kernel, and its state as relayed so far."""

    comm: Any
    state: dict[str, Any] = field(default_factory=dict)
    buffers: dict[tuple[Any, ...], bytes] = field(default_factory=dict)
    tqdm: bool = False  # the box of a tqdm notebook bar: [description, progress, numbers]
    cell: str = ""  # the id of the request of the cell that made it

    def merge(self, data: dict[str, Any], buffers: list[bytes]) -> None:
        """Take in a state (whole or in part) and its binary buffers."""
        state = data.get("state")
        if not isinstance(state, dict):
            return
        self.state.update(state)
        self.buffers = {path: b for path, b in self.buffers.items() if path[0] not in state}
        for path, buffer in zip(data.get("buffer_paths") or [], buffers, strict=False):
            self.buffers[tuple(path)] = buffer

    def answer(self, message: dict[str, Any]) -> None:
        """The frontend asks for the model's state (a page reloaded while the kernel runs)."""
        if (message.get("content", {}).get("data") or {}).get("method") != "request_state":
            return
        data = {
            "method": "update",
            "state": self.state,
            "buffer_paths": [list(path) for path in self.buffers],
        }
        self.comm.send(data=data, buffers=list(self.buffers.values()))


def relay(message: dict[str, Any]) -> None:
    """Do one comm message of the remote cell in this kernel (nothing without a kernel)."""
    from IPython import get_ipython

    shell = get_ipython()
    if getattr(shell, "kernel", None) is None:
        return
    comm_id = str(message.get("comm_id"))
    data = message.get("data") or {}
    metadata = message.get("metadata") or {}
    buffers = [base64.b64decode(text) for text in message.get("buffers") or []]
    kind = message.get("msg_type")
    relayed = _relayed.get(comm_id)
    if kind == "comm_open" and relayed is None:
        target = message.get("target_name") or "jupyter.widget"
        opened = _open(comm_id, target, data, metadata, buffers)
        opened.tqdm, opened.cell = bool(message.get("tqdm")), _cell(shell)
    elif kind == "comm_msg" and relayed is not None:
        relayed.merge(data, buffers)
        relayed.comm.send(data=data, metadata=metadata, buffers=buffers)
    elif kind == "comm_close" and relayed is not None:
        del _relayed[comm_id]
        _homed.pop(comm_id, None)
        relayed.comm.close(data=data, metadata=metadata, buffers=buffers)


def _open(
    comm_id: str, target: str, data: dict[str, Any], metadata: dict[str, Any], buffers: list[bytes]
) -> Relayed:
    import comm

    opened = comm.create_comm(
        target_name=target, data=data, metadata=metadata, buffers=buffers, comm_id=comm_id
    )
    relayed = Relayed(opened)
    relayed.merge(data, buffers)
    opened.on_msg(relayed.answer)
    _relayed[comm_id] = relayed
    return relayed


def _cell(shell: Any) -> str:
    """The id of the request of the cell running in the kernel now."""
    return str((getattr(shell, "parent_header", None) or {}).get("header", {}).get("msg_id"))


def stopped() -> None:
    """The running cell was stopped before its end (interrupted, cancelled, past its time,
    its worker lost): its tqdm bars still running turn red, as tqdm turns a bar whose loop is
    interrupted at home. The stopped worker cannot say so itself."""
    from IPython import get_ipython

    cell = _cell(get_ipython())
    for box in list(_relayed.values()):
        children = box.state.get("children") if box.tqdm and box.cell == cell else None
        if not isinstance(children, list) or len(children) != 3:
            continue
        progress = _relayed.get(str(children[1]).removeprefix("IPY_MODEL_"))
        if progress is not None and _running(progress.state):
            update = {"method": "update", "state": {"bar_style": "danger"}, "buffer_paths": []}
            progress.merge(update, [])
            progress.comm.send(data=update)


def _running(progress: dict[str, Any]) -> bool:
    """Whether a tqdm bar's progress widget shows it running: neither ended (green, red) nor
    full."""
    value, most = progress.get("value", 0), progress.get("max", 0)
    return progress.get("bar_style") in ("", "info") and value < most


def home_widget(comm_id: str, cls: Any) -> Any:
    """The object of a relayed widget that comes home: made (its state is set on it next)
    the first time, the same one each later time, as the cell had one object."""
    if comm_id not in _homed:
        _homed[comm_id] = cls.__new__(cls)
    return _homed[comm_id]


def home_comm(comm_id: str) -> HomeComm | None:
    """The comm of a relayed widget whose object came home (None where none was relayed)."""
    relayed = _relayed.get(comm_id)
    return HomeComm(comm_id, relayed) if relayed is not None else None


class HomeComm:
    """What a relayed widget's object uses as its comm at home: its state changes go to the
    frontend on the relayed comm (and into the state the relay answers with)."""

    def __init__(self, comm_id: str, relayed: Relayed) -> None:
        self.comm_id = comm_id
        self.relayed = relayed
        self.kernel = relayed.comm.kernel

    def send(
        self,
        data: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[Any] | None = None,
    ) -> None:
        blobs = [bytes(buffer) for buffer in buffers or []]
        self.relayed.merge(data or {}, blobs)
        self.relayed.comm.send(data=data, metadata=metadata, buffers=blobs)

    def on_msg(self, callback: Any) -> None:
        """The frontend's messages stay with the relay, which answers them."""

    def close(self, *args: Any, **kwargs: Any) -> None:
        """Closes the widget, unless the object is being collected: the widget on screen is
        not the object's alone (a local cell's widgets are never collected either)."""
        if _collecting():
            return
        if _relayed.pop(self.comm_id, None) is not None:
            self.relayed.comm.close()


def _collecting() -> bool:
    """Whether a `__del__` (a widget's, as it is collected) is what called close()."""
    frame = sys._getframe(1)
    for _ in range(3):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return False
        if frame.f_code.co_name == "__del__":
            return True
    return False


def home_bar(cls: Any, running: bool) -> Any:
    """A tqdm bar the remote cell bound, as it is unpickled here (its state is set on it next,
    by `bar_state`): a bar still running joins tqdm's own, as a new one does (for the places
    of text bars); a closed one does not, as a closed one leaves them."""
    return cls.__new__(cls) if running else object.__new__(cls)


def bar_state(bar: Any, sent: tuple[dict[str, Any], list[str]]) -> None:
    """Set an unpickled tqdm bar's state, with what the worker left out made again here: its
    stream (the kernel's stdout or stderr, where it was the worker's) in tqdm's wrapper, the
    printer of a text bar, the proxy of the bar on a notebook bar's box, and the attributes
    tqdm had set to do nothing (`idle`)."""
    import weakref

    from tqdm.utils import DisableOnWriteError

    state, idle = sent
    vars(bar).update(state)
    for name in idle:
        setattr(bar, name, _do_nothing)
    if "fp" not in state:
        return  # made disabled: tqdm set up nothing more
    stream = getattr(sys, bar.fp) if isinstance(bar.fp, str) else bar.fp
    bar.fp = DisableOnWriteError(stream, tqdm_instance=bar)
    if "container" in state:
        state["container"].pbar = weakref.proxy(bar)
    elif not bar.gui:
        bar.sp = bar.status_printer(bar.fp)


def _do_nothing(*args: Any, **kwargs: Any) -> None:
    """What tqdm sets a bar's display (or rate) to once it is done with it."""
