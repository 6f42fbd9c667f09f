"""ipywidgets a remote cell makes, relayed one way to the notebook, as real widgets there.

On the worker there is no kernel and no frontend. ipywidgets 8 makes each widget's comm with
`comm.create_comm`, a function the `comm` package leaves to be replaced (ipykernel replaces it
the same way), so here it makes a `RelayComm`: each comm_open, comm_msg (a state update) and
comm_close it publishes is a display message of type "comm" (publishing.py), written into the
cell's stdout in order with its prints and displays. At home, tetra_magic/view/widget_relay.py
opens the same comm (same id, state and version) in the kernel and sends each update on it as
it arrives, so the frontend holds a real widget model that moves while the cell runs, and the
widget's display (widget-view+json naming that model) shows it.

Nothing comes back: the notebook cannot call into the remote cell. Widgets that need it
(`interact`, `interactive`, `interactive_output`, a Button's `on_click`, a Text's `on_submit`)
are refused by name, with what works instead. A widget the cell binds to a name does come home
with its values: its RelayComm unpickles there as the kernel's comm of the relayed widget.

tqdm.auto (tqdm.autonotebook) gives the notebook bar in a kernel, which it tells by
`ipykernel.zmqshell` in sys.modules (tqdm 4.67 on; before, by an `IPKernelApp` in
`get_ipython().config`), where ipywidgets imports. For a cell whose notebook is such a kernel
(home says so: at_home.py), the worker answers both questions the same for the cell's time:
without ipywidgets there, tqdm.auto warns as in such a kernel ("IProgress not found. Please
update jupyter and ipywidgets"; the hint to add `--deps ipywidgets`) and gives the terminal
bar. The `ipykernel.zmqshell` it finds is an empty marker module, there only while no real
ipykernel is imported.

What the cell binds comes home whole (`_travel_whole`): a relayed widget as the one object of
its comm id (a box's child is the very widget bound to a name), a tqdm bar, closed or not, as a
working bar on the kernel's own stream and widgets.
"""

from __future__ import annotations

import base64
import functools
import importlib.abc
import importlib.machinery
import sys
import types
import weakref
from collections.abc import Sequence
from typing import Any

from . import publishing

REFUSED = (
    "{what} needs the notebook to call back into the remote cell, which a %%tetra cell cannot"
    " take (its widgets are relayed one way, to the notebook): show and update widgets from the"
    " cell (progress bars, IntProgress, HTML, Output.append_stdout), or run {what} in a local"
    " cell"
)
_KERNEL_APP = "IPKernelApp"
_ZMQSHELL = "ipykernel.zmqshell"
_MARKER_DOC = "tetra: a remote cell of a notebook's kernel (runtime/widgets.py)"
_state = {"kernel_app_set": False, "comm": False}
# What the cell's relay replaced, put back when the cell ends: (owner, attribute, original),
# so the process outside a cell (a kernel running this runtime in a test) keeps its own.
_replaced: list[tuple[Any, str, Any]] = []


def begin(notebook: bool, again: bool = False) -> None:
    """Ready the relay for a cell whose notebook is a kernel (`notebook`) or not; `again`:
    whether `comm` is installed is as the last cell found it (display.begin)."""
    if not again:
        _state["comm"] = importlib.machinery.PathFinder.find_spec("comm") is not None
    if _state["comm"]:
        _relay_comms()
    if "ipywidgets" in sys.modules:
        _refuse_callbacks(sys.modules["ipywidgets"])
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
    if notebook:
        _answer_as_a_kernel(True)


def end() -> None:
    """After the cell: the shell no longer answers as a kernel (the process runs other cells,
    of other notebooks on the published worker), and comms and ipywidgets are as they were
    (widgets the cell made keep their relayed comms; the next cell relays again). What the
    cell bound is pickled after this: its widgets and tqdm bars are readied for it here."""
    if _state["kernel_app_set"]:
        _answer_as_a_kernel(False)
    while _replaced:
        owner, name, original = _replaced.pop()
        setattr(owner, name, original)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterImport)]
    _travel_whole()


def _replace(owner: Any, name: str, value: Any) -> None:
    """`owner.name = value` for the cell's time (end() puts the original back)."""
    _replaced.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def _answer_as_a_kernel(on: bool) -> None:
    """Say (or stop saying) that this is a kernel, where tqdm.autonotebook looks: an
    `ipykernel.zmqshell` module imported, and IPKernelApp in the IPython shell's config."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    if shell is None:
        return  # the stand-in: no shell, so the terminal bar (ipywidgets needs IPython anyway)
    marker = sys.modules.get(_ZMQSHELL)
    if on:
        shell.config[_KERNEL_APP] = type(shell.config)()
        if marker is None:
            sys.modules[_ZMQSHELL] = types.ModuleType(_ZMQSHELL, _MARKER_DOC)
    else:
        shell.config.pop(_KERNEL_APP, None)
        if marker is not None and marker.__doc__ == _MARKER_DOC:
            del sys.modules[_ZMQSHELL]
    _state["kernel_app_set"] = on


def _relay_comms() -> None:
    import comm

    if getattr(comm.create_comm, "tetra", False):
        return
    relay, tqdm_bar = _comm_classes()

    def create_comm(*args: Any, **kwargs: Any) -> Any:
        """A relayed comm; one for a tqdm bar where that is the widget opening it."""
        opening = _opening_widget()
        bar = opening.__name__ == "TqdmHBox" and opening.__module__.startswith("tqdm")
        return (tqdm_bar if bar else relay)(*args, **kwargs)

    create_comm.tetra = True  # type: ignore[attr-defined]
    _replace(comm, "create_comm", create_comm)


@functools.cache
def _comm_classes() -> tuple[type, type]:
    """The relayed comm's classes, made once per process (a --map shard relays its items'
    comms one after another): (for any widget, for a tqdm bar's)."""
    from comm.base_comm import BaseComm

    class RelayComm(BaseComm):
        """A comm whose messages travel home in the cell's output (see the module's doc)."""

        relayed = True
        tqdm = False  # the comm of a tqdm notebook bar's box (TqdmBarComm)

        def publish_msg(
            self,
            msg_type: str,
            data: dict[str, Any] | None = None,
            metadata: dict[str, Any] | None = None,
            buffers: Sequence[Any] | None = None,
            **keys: Any,
        ) -> None:
            message: dict[str, Any] = {
                "type": "comm",
                "msg_type": msg_type,
                "comm_id": self.comm_id,
                "data": data or {},
                "metadata": metadata or {},
                "buffers": [_as_base64(buffer) for buffer in buffers or ()],
            }
            if msg_type == "comm_open":
                message["target_name"] = keys.get("target_name") or self.target_name
                message["tqdm"] = self.tqdm
            publishing.publish(message)

        def __reduce__(self) -> tuple[Any, ...]:
            """A widget the cell binds comes home with its values: there its comm is the
            kernel's comm of the relayed widget, so setting its traits at home moves the
            widget on screen."""
            return _AtHome("home_comm"), (self.comm_id,)

        def close(self, *args: Any, deleting: bool = False, **kwargs: Any) -> None:
            """Closed for good when the cell closes it; a comm collected as garbage (or at
            the exit of the worker's process) leaves its widget in the notebook as it is."""
            if deleting:
                self._closed = True
                return
            super().close(*args, **kwargs)

    class TqdmBarComm(RelayComm):
        """The comm of a tqdm notebook bar: home turns the bar red if the cell is stopped
        while it runs (tqdm's sign of a loop interrupted), which the stopped worker cannot."""

        tqdm = True

    return RelayComm, TqdmBarComm


def _opening_widget() -> type:
    """The class of the widget whose comm is being made: `self` of ipywidgets' `Widget.open`,
    a few calls up (through ipywidgets' own create_comm)."""
    frame = sys._getframe(2)
    for _ in range(3):
        if frame.f_code.co_name == "open" and "self" in frame.f_locals:
            return type(frame.f_locals["self"])
        if frame.f_back is None:
            break
        frame = frame.f_back
    return type(None)


def _as_base64(buffer: Any) -> str:
    return base64.b64encode(bytes(buffer)).decode("ascii")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Readies ipywidgets as soon as the cell imports it: comms relayed, callbacks refused."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "ipywidgets":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        run_module = loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            run_module(module)
            _relay_comms()  # `comm` came with it, if the cell installed ipywidgets itself
            _refuse_callbacks(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _refuse_callbacks(ipywidgets: types.ModuleType) -> None:
    """Make the ipywidgets calls that need the notebook to call back raise, by name."""
    widgets: Any = getattr(ipywidgets, "widgets", None)
    if widgets is None or getattr(widgets.Button.on_click, "tetra", False):
        return
    interaction = widgets.interaction
    for owner, name, what in (
        (widgets.Button, "on_click", "Button.on_click"),
        (widgets.Text, "on_submit", "Text.on_submit"),
        (interaction.interactive, "__init__", "interact"),
    ):
        _replace(owner, name, _refusal(what))
    refused = _refusal("interactive_output")
    modules: tuple[Any, ...] = (ipywidgets, widgets, interaction)
    for module in modules:
        if hasattr(module, "interactive_output"):
            _replace(module, "interactive_output", refused)


def _refusal(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(REFUSED.format(what=what))

    refuse.tetra = True  # type: ignore[attr-defined]
    return refuse


def _travel_whole() -> None:
    """Make the widgets and tqdm bars of this process pickle as what they are at home (once,
    and for good: a session's values are pickled in later cells too). A relayed widget comes
    home as the one object of its comm id, so `box.children[1] is bar` holds there as here;
    a tqdm bar comes home as a bar on the kernel's own stream. Other widgets pickle as before."""
    widget_module = sys.modules.get("ipywidgets.widgets.widget")
    widget = getattr(widget_module, "Widget", None)
    if widget is not None and "__reduce_ex__" not in vars(widget):
        widget.__reduce_ex__ = _reduce_widget
    tqdm_module = sys.modules.get("tqdm.std")
    bar = getattr(tqdm_module, "tqdm", None)
    if bar is not None and "__reduce_ex__" not in vars(bar):
        bar.__reduce_ex__ = _reduce_bar


def _reduce_widget(widget: Any, protocol: int) -> Any:
    """A widget whose comm is relayed: by its comm id, unpickled at home as the one widget
    object of that id. tqdm's `pbar`, a weak proxy of its bar on the bar's widgets, is left
    to the bar (a proxy would pickle as a second bar)."""
    comm = widget._trait_values.get("comm")
    if not getattr(type(comm), "relayed", False):
        return object.__reduce_ex__(widget, protocol)
    proxies = (weakref.ProxyType, weakref.CallableProxyType)
    state = {k: v for k, v in widget.__getstate__().items() if type(v) not in proxies}
    return _AtHome("home_widget"), (comm.comm_id, type(widget)), state


def _reduce_bar(bar: Any, protocol: int) -> Any:
    """A tqdm bar with its state, but without the wrapper tqdm puts around its stream (whose
    `__getattr__` asks the wrapped stream for everything, so unpickling it, which looks up
    `__setstate__` before the stream is there, recursed without end) or the status printer
    closed over that wrapper: both are made again at home (widget_relay.bar_state). The
    process's stdout or stderr comes home as the kernel's."""
    state = dict(vars(bar))
    if "fp" in state:
        stream = getattr(state["fp"], "_wrapped", state["fp"])
        names = {"<stdout>": "stdout", "<stderr>": "stderr"}
        state["fp"] = names.get(str(getattr(stream, "name", "")), stream)
    state.pop("sp", None)
    # what tqdm sets to do nothing (`lambda: None` once closed): made again at home, where a
    # lambda would go as bytecode
    idle = [k for k, v in state.items() if getattr(v, "__name__", None) == "<lambda>"]
    for name in idle:
        del state[name]
    running = not bar.disable
    home, setter = _AtHome("home_bar"), _AtHome("bar_state")
    return home, (type(bar), running), (state, idle), None, None, setter


class _AtHome:
    """A function of tetra_magic.view.widget_relay as a pickle names it: where the value is
    unpickled, the notebook's own function of that name. Named, not sent as bytecode, so the
    blob loads under any Python version. Never called here."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any) -> Any:
        raise TypeError(f"{self.name} runs in the notebook, where the value is unpickled")

    def __reduce__(self) -> tuple[Any, ...]:
        return getattr, (_HomeModule(), self.name)


class _HomeModule:
    """tetra_magic.view.widget_relay as a pickle names it (imported where it is unpickled)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return importlib.import_module, ("tetra_magic.view.widget_relay",)
