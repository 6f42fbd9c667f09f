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
(home says so: at_home.py), the worker answers both questions the same for the cell's time,
but only where ipywidgets is installed: without it, tqdm.auto gives the terminal bar, as at a
terminal, with no warning. The `ipykernel.zmqshell` it finds is an empty marker module, there
only while no real ipykernel is imported.
"""

from __future__ import annotations

import base64
import importlib.abc
import importlib.machinery
import sys
import types
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
_state = {"kernel_app_set": False}
# What the cell's relay replaced, put back when the cell ends: (owner, attribute, original),
# so the process outside a cell (a kernel running this runtime in a test) keeps its own.
_replaced: list[tuple[Any, str, Any]] = []


def begin(notebook: bool) -> None:
    """Ready the relay for a cell whose notebook is a kernel (`notebook`) or not."""
    if importlib.machinery.PathFinder.find_spec("comm") is not None:
        _relay_comms()
    if "ipywidgets" in sys.modules:
        _refuse_callbacks(sys.modules["ipywidgets"])
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
    if notebook and importlib.machinery.PathFinder.find_spec("ipywidgets") is not None:
        _answer_as_a_kernel(True)


def end() -> None:
    """After the cell: the shell no longer answers as a kernel (the process runs other cells,
    of other notebooks on the published worker), and comms and ipywidgets are as they were
    (widgets the cell made keep their relayed comms; the next cell relays again)."""
    if _state["kernel_app_set"]:
        _answer_as_a_kernel(False)
    while _replaced:
        owner, name, original = _replaced.pop()
        setattr(owner, name, original)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterImport)]


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
    from comm.base_comm import BaseComm

    if getattr(comm.create_comm, "tetra", False):
        return

    class RelayComm(BaseComm):
        """A comm whose messages travel home in the cell's output (see the module's doc)."""

        def publish_msg(
            self,
            msg_type: str,
            data: dict[str, Any] | None = None,
            metadata: dict[str, Any] | None = None,
            buffers: Sequence[Any] | None = None,
            **keys: Any,
        ) -> None:
            message = {
                "type": "comm",
                "msg_type": msg_type,
                "comm_id": self.comm_id,
                "data": data or {},
                "metadata": metadata or {},
                "buffers": [_as_base64(buffer) for buffer in buffers or ()],
            }
            if msg_type == "comm_open":
                message["target_name"] = keys.get("target_name") or self.target_name
            publishing.publish(message)

        def __reduce__(self) -> tuple[Any, ...]:
            """A widget the cell binds comes home with its values: there its comm is the
            kernel's comm of the relayed widget, so setting its traits at home moves the
            widget on screen."""
            return home_comm, (self.comm_id,)

        def close(self, *args: Any, deleting: bool = False, **kwargs: Any) -> None:
            """Closed for good when the cell closes it; a comm collected as garbage (or at
            the exit of the worker's process) leaves its widget in the notebook as it is."""
            if deleting:
                self._closed = True
                return
            super().close(*args, **kwargs)

    def home_comm(comm_id: str) -> Any:
        """Run where a RelayComm is unpickled (defined here, so it travels by value)."""
        import importlib

        return importlib.import_module("tetra_magic.view.widget_relay").home_comm(comm_id)

    def create_comm(*args: Any, **kwargs: Any) -> BaseComm:
        return RelayComm(*args, **kwargs)

    create_comm.tetra = True  # type: ignore[attr-defined]
    _replace(comm, "create_comm", create_comm)


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
