"""matplotlib on the worker, as the inline backend behaves at home: plt.show() shows and closes
every open figure, figures still open when the cell ends are shown then, and a figure travels
as its PNG.

matplotlib gets a backend of this module's making, chosen by an import hook as matplotlib is
imported (matplotlib may never be, and is optional on the worker: imported only where used).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import io
import sys
import types
from typing import Any

from .publishing import publish_display_data

BACKEND_MODULE = "tetra_display_backend"
BACKEND = "module://" + BACKEND_MODULE


def is_figure(obj: Any) -> bool:
    """Whether `obj` is a matplotlib Figure (checked by name: matplotlib may not be loaded)."""
    return any(
        cls.__module__ == "matplotlib.figure" and cls.__name__ == "Figure"
        for cls in type(obj).__mro__
    )


def figure_png(fig: Any) -> bytes | None:
    """The figure as PNG bytes, as the inline backend renders it (None for an empty one)."""
    if not fig.axes and not fig.lines:
        return None
    buffer = io.BytesIO()
    fig.canvas.print_figure(
        buffer,
        format="png",
        bbox_inches="tight",
        dpi=fig.dpi,
        facecolor=fig.get_facecolor(),
        edgecolor=fig.get_edgecolor(),
    )
    return buffer.getvalue()


def show(close: bool | None = None, block: bool | None = None) -> None:
    """plt.show() under this backend: every open figure shown now, then closed."""
    from matplotlib import pyplot
    from matplotlib._pylab_helpers import Gcf

    managers = Gcf.get_all_fig_managers()
    for manager in managers:
        figure = manager.canvas.figure
        png = figure_png(figure)
        if png is not None:
            publish_display_data({"image/png": png, "text/plain": repr(figure)})
    if close is not False and managers:
        pyplot.close("all")


def flush() -> None:
    """Show what is still open, if pyplot is in use with this backend."""
    if "matplotlib.pyplot" in sys.modules and _backend(sys.modules["matplotlib"]) == BACKEND:
        show()


def use_for_matplotlib() -> None:
    """Make this module matplotlib's backend once matplotlib is imported, unless a backend was
    chosen (MPLBACKEND, a matplotlibrc, matplotlib.use): an import hook rather than MPLBACKEND,
    which the cell's subprocesses would inherit without being able to import the backend."""
    if not any(type(finder).__name__ == "_Finder" for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if "matplotlib" in sys.modules:
        mpl = sys.modules["matplotlib"]
        # Styles and rcParams an earlier cell set in this process are not kept: the next cell
        # may run on another worker, where they were never set; plots look the same either way.
        mpl.rc_file_defaults()
        _choose_backend(mpl)


def _backend(mpl: Any) -> str | None:
    """The backend chosen so far (None while matplotlib would still pick one itself)."""
    chosen = getattr(mpl.rcParams, "_get_backend_or_none", None)
    return chosen() if chosen else mpl.get_backend()


def _choose_backend(mpl: Any) -> None:
    if _backend(mpl) is None:
        mpl.rcParams["backend"] = BACKEND


class _Finder:
    """A meta path finder: matplotlib, found by the path finder, chooses its backend right
    after it is imported; the backend module is made when pyplot asks for it."""

    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name == BACKEND_MODULE:
            return importlib.util.spec_from_loader(name, _BackendLoader())
        if name != "matplotlib":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ChoosingLoader(spec.loader)  # type: ignore[assignment]
        return spec


class _ChoosingLoader:
    """matplotlib's own loader, choosing the backend once the module has run."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        _choose_backend(module)


class _BackendLoader(importlib.abc.Loader):
    """The backend module: Agg's canvas, and this module's show()."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        from matplotlib.backend_bases import FigureManagerBase
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        module.FigureCanvas, module.FigureManager, module.show = (  # type: ignore[attr-defined]
            FigureCanvasAgg,
            FigureManagerBase,
            show,
        )
