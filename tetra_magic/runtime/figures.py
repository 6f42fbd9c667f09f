"""matplotlib on the worker, as the inline backend behaves at home: plt.show() shows and closes
every open figure, figures still open when the cell ends are shown then, and a figure travels
as its image, in the formats the kernel's inline backend uses (InlineBackend's figure_formats,
print_figure_kwargs and rc, or set_matplotlib_formats: `configure` takes them, at_home.py reads
them at home), and drawn with the rcParams the kernel set (`plt.rcParams[...] = ...`, a style).

matplotlib gets a backend of this module's making, chosen by an import hook as matplotlib is
imported (matplotlib may never be, and is optional on the worker: imported only where used).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import struct
import sys
import types
from collections.abc import Callable
from typing import Any

from .contract import FigureSetup
from .publishing import publish_display_data

BACKEND_MODULE = "tetra_display_backend"
BACKEND = "module://" + BACKEND_MODULE
# The inline backend's own defaults: a kernel that never loaded it shows figures so.
DEFAULT_SETUP: FigureSetup = {
    "formats": ["png"],
    "print_kwargs": {"bbox_inches": "tight"},
    "rc": {},
    "params": {},
}
_setup: dict[str, FigureSetup] = {"now": DEFAULT_SETUP}
# The mime type of each figure format, and the format matplotlib writes for it.
_FORMATS = {
    "png": ("image/png", "png"),
    "retina": ("image/png", "png"),
    "jpeg": ("image/jpeg", "jpeg"),
    "svg": ("image/svg+xml", "svg"),
    "pdf": ("application/pdf", "pdf"),
}


def configure(setup: FigureSetup | None) -> None:
    """Show figures as the kernel's inline backend would (its defaults without `setup`)."""
    _setup["now"] = setup or DEFAULT_SETUP


def is_figure(obj: Any) -> bool:
    """Whether `obj` is a matplotlib Figure (checked by name: matplotlib may not be loaded)."""
    return any(
        cls.__module__ == "matplotlib.figure" and cls.__name__ == "Figure"
        for cls in type(obj).__mro__
    )


def figure_bundle(fig: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(data, metadata) of the figure in each of the kernel's figure formats, as IPython's
    formatters make them (a retina PNG at twice the dpi, its size in the metadata); None for
    an empty figure, which the inline backend does not show."""
    if not fig.axes and not fig.lines:
        return None
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for name in _setup["now"]["formats"]:
        mime, image, size = _render(fig, name)
        data[mime] = image
        if size:
            metadata[mime] = size
    return data, metadata


def figure_as(mime: str, fig: Any) -> Any:
    """The figure as IPython's `mime` formatter gives it under the kernel's settings: its
    image, or (image, metadata) for a retina PNG; None where the kernel shows figures in no
    format of that mime type, or the figure is empty."""
    names = [n for n in _setup["now"]["formats"] if _FORMATS.get(n, _FORMATS["png"])[0] == mime]
    if not names or (not fig.axes and not fig.lines):
        return None
    _, image, size = _render(fig, names[-1])
    return (image, size) if size else image


def figure_mimes() -> list[str]:
    """Every mime type a figure may be shown as, whatever the kernel's formats."""
    return sorted({mime for mime, _ in _FORMATS.values()})


def _render(fig: Any, name: str) -> tuple[str, Any, dict[str, int]]:
    """(mime type, image, metadata) of the figure in one of the kernel's formats: an SVG as
    text, a retina PNG at twice the dpi with its size as metadata."""
    mime, written = _FORMATS.get(name, _FORMATS["png"])
    image = _print(fig, written, 2 if name == "retina" else 1)
    if name != "retina":
        return mime, image.decode() if written == "svg" else image, {}
    width, height = struct.unpack(">II", image[16:24])  # the PNG's IHDR
    return mime, image, {"width": width // 2, "height": height // 2}


def _print(fig: Any, written: str, scale: int = 1) -> bytes:
    """The figure written in one format, with the kernel's print_figure_kwargs."""
    options = {
        "format": written,
        "dpi": fig.dpi * scale,
        "facecolor": fig.get_facecolor(),
        "edgecolor": fig.get_edgecolor(),
        "bbox_inches": "tight",
        **_setup["now"]["print_kwargs"],
    }
    buffer = io.BytesIO()
    fig.canvas.print_figure(buffer, **options)
    return buffer.getvalue()


def show(close: bool | None = None, block: bool | None = None, *, at_end: bool = False) -> None:
    """plt.show() under this backend: every open figure shown now, then closed."""
    from matplotlib import pyplot
    from matplotlib._pylab_helpers import Gcf

    managers = Gcf.get_all_fig_managers()
    for manager in managers:
        figure = manager.canvas.figure
        bundle = figure_bundle(figure)
        if bundle is not None:
            data = {**bundle[0], "text/plain": repr(figure)}
            publish_display_data(data, bundle[1], after_result=at_end)
    if close is not False and managers:
        pyplot.close("all")


def flush() -> None:
    """Show what is still open, if pyplot is in use with this backend: after the cell's
    result, as the inline backend shows them once the cell has run (its post_execute)."""
    if "matplotlib.pyplot" in sys.modules and _backend(sys.modules["matplotlib"]) == BACKEND:
        show(at_end=True)


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
        _ready(mpl)


def _backend(mpl: Any) -> str | None:
    """The backend chosen so far (None while matplotlib would still pick one itself)."""
    chosen = getattr(mpl.rcParams, "_get_backend_or_none", None)
    return chosen() if chosen else mpl.get_backend()


def _ready(mpl: Any) -> None:
    """matplotlib as the kernel has it: InlineBackend.rc set, as the inline backend does, then
    the rcParams the kernel changed itself; and this module's backend chosen if none was."""
    for key, value in {**_setup["now"]["rc"], **_setup["now"]["params"]}.items():
        # a setting this matplotlib does not know, or takes in another form: its own stays
        with contextlib.suppress(KeyError, ValueError, TypeError):
            mpl.rcParams[key] = value
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
        return then_call(spec, _ready)


def then_call(
    spec: importlib.machinery.ModuleSpec | None, after: Callable[[Any], None]
) -> importlib.machinery.ModuleSpec | None:
    """`spec` with its loader calling `after(module)` once the module has run."""
    if spec is not None and spec.loader is not None:
        spec.loader = _ThenCalling(spec.loader, after)  # type: ignore[assignment]
    return spec


class _ThenCalling:
    """A module's own loader, calling `after` with the module once it has run."""

    def __init__(self, loader: Any, after: Callable[[Any], None]) -> None:
        self.loader = loader
        self.after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.loader.exec_module(module)
        self.after(module)


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
