"""A remote cell's display machinery, ready for each cell: IPython.display, matplotlib figures,
and the frames that carry what they show home in order with the cell's prints (publishing.py).

Where the worker has IPython, its own display() and formatters run, with a display publisher
that writes frames. Where it has not, a stand-in (ipython_stand_in.py) provides
IPython.display's usual names: the `IPython` modules exist in sys.modules only while the real
package is absent. matplotlib gets a backend that behaves as the inline one (figures.py), and
ipywidgets comms that travel home with the frames (widgets.py).
"""

from __future__ import annotations

import functools
import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import Any

from . import figures, ipython_stand_in, publishing, widgets

# The modules IPython.display's names live in: a notebook's HTML or clear_output, sent with a
# cell, is looked up in them on the worker.
_IPYTHON_MODULES = (
    "IPython",
    "IPython.display",
    "IPython.core",
    "IPython.core.display",
    "IPython.core.display_functions",
)
# The stand-in modules' __file__: how a later cell knows them from the real package.
_STAND_IN_FILE = "<tetra IPython stand-in>"


def begin(notebook: bool = False, again: bool = False) -> None:
    """Ready the display machinery for a cell: fresh limits, IPython.display, figures, and
    widgets (shown as in a notebook's kernel when the cell's `notebook` is one). `again`: for
    the next item of a --map shard (batch.py), moments after the one before: the packages
    the worker has (IPython, comm) are as that one found them, not looked for again."""
    publishing.begin()
    if not again:
        _provide_ipython()
    figures.use_for_matplotlib()
    widgets.begin(notebook, again)


def end() -> None:
    """After the cell, failed or not: its open figures shown and closed (as the inline
    backend does), and a note of the outputs the limits dropped."""
    try:
        figures.flush()
    finally:
        widgets.end()
        publishing.note_dropped()


def display_function() -> Callable[..., Any]:
    """The display() a cell finds as a builtin, as in IPython: the real one or the stand-in."""
    import IPython.display

    return IPython.display.display


def _provide_ipython() -> None:
    """Use the worker's IPython if it has one (replacing the stand-in once it is installed);
    otherwise put the stand-in in its place."""
    standing_in = getattr(sys.modules.get("IPython"), "__file__", "") == _STAND_IN_FILE
    if importlib.machinery.PathFinder.find_spec("IPython") is None:
        if not standing_in:
            _install_stand_in()
        return
    if standing_in:
        for name in _IPYTHON_MODULES:
            sys.modules.pop(name, None)
    try:
        _capture_ipython()
    except Exception:  # an IPython that does not load, or unlike any we know: the stand-in
        _install_stand_in()


def _install_stand_in() -> None:
    api = {name: getattr(ipython_stand_in, name) for name in ipython_stand_in.API}
    modules = {name: types.ModuleType(name, "tetra's stand-in") for name in _IPYTHON_MODULES}
    for module in modules.values():
        module.__file__ = _STAND_IN_FILE
        module.__dict__.update(api)
    ipython: Any = modules["IPython"]
    ipython.get_ipython = lambda: None  # no shell: libraries fall back to what they do without
    ipython.version_info, ipython.__version__ = (0, 0, 0, "tetra stand-in"), "0+tetra.stand.in"
    ipython.display, ipython.core = modules["IPython.display"], modules["IPython.core"]
    core: Any = modules["IPython.core"]
    core.display = modules["IPython.core.display"]
    core.display_functions = modules["IPython.core.display_functions"]
    sys.modules.update(modules)


def _capture_ipython() -> None:
    """IPython's own display machinery, publishing frames: a shell (made once, without history,
    leaving __main__ alone) whose display publisher writes them, and whose image formatters show
    matplotlib figures in the kernel's formats (figures.py), as its inline backend does."""
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    if not InteractiveShell.initialized():
        from traitlets.config import Config

        class Shell(InteractiveShell):
            def init_sys_modules(self) -> None:
                """The cell runs in a namespace of its own; sys.modules stays as it is."""

        Shell.instance(config=Config({"HistoryManager": {"enabled": False}}))
    shell = InteractiveShell.instance()
    if getattr(shell.display_pub, "tetra", False):
        return

    class Publisher(DisplayPublisher):
        """IPython's display publisher, writing frames (same signatures as its own)."""

        tetra = True
        publish = staticmethod(publishing.publish_display_data)
        clear_output = staticmethod(publishing.clear_output)

    shell.display_pub = Publisher(shell=shell)
    formatters = shell.display_formatter.formatters  # type: ignore[union-attr]
    for mime in figures.figure_mimes():
        if mime in formatters:
            show_as = functools.partial(figures.figure_as, mime)
            formatters[mime].for_type_by_name("matplotlib.figure", "Figure", show_as)
