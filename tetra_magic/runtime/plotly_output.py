"""plotly on the worker, as in the notebook's kernel: `fig.show()`, `display(fig)` and a figure
left as the cell's last value show the mime bundle the kernel's renderer makes (in Jupyter,
plotly's own `application/vnd.plotly.v1+json`), whether the worker has IPython or not.

On the worker plotly would pick a renderer of its own (a browser, or the notebook renderer that
sends plotly.js, 4.8 MB, with every cell, and then asks for nbformat to validate the bundle).
Instead, as `plotly.io` is imported (or at once, where an earlier cell imported it), its default
renderer becomes the kernel's (at_home.py reads it) and `plotly.io.show` becomes `show` below,
which publishes the bundle as a display output: no nbformat, no renderer activation. An
external renderer (a browser on the worker) shows nobody anything, so none runs.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
from typing import Any

from .figures import then_call
from .publishing import publish_display_data

RENDERERS_MODULE = "plotly.io._renderers"
_renderer: dict[str, str | None] = {"kernel's": None}


def use_kernels_renderer(renderer: str | None) -> None:
    """Make plotly render figures as the kernel's renderer `renderer` does (None: leave
    plotly's own choice), now if plotly.io is loaded, else once it is imported."""
    _renderer["kernel's"] = renderer
    # one finder, this runtime's (an earlier cell's runtime may have been another version)
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_PlotlyFinder"]
    sys.meta_path.insert(0, _PlotlyFinder())
    if RENDERERS_MODULE in sys.modules:
        _ready(sys.modules[RENDERERS_MODULE])


def show(fig: Any, renderer: str | None = None, validate: bool = True, **kwargs: Any) -> None:
    """plotly.io.show on the worker: the figure's mime bundle, as the default renderer (or
    `renderer`) makes it, shown as a display output."""
    from plotly.io._utils import validate_coerce_fig_to_dict

    renderers = sys.modules[RENDERERS_MODULE].renderers
    fig_dict = validate_coerce_fig_to_dict(fig, validate)
    bundle = renderers._build_mime_bundle(fig_dict, renderers_string=renderer, **kwargs)
    if bundle:
        publish_display_data(bundle)


def _ready(module: Any) -> None:
    """plotly.io's renderers as the kernel's, and its show() this module's."""
    renderers = module.renderers
    if _renderer["kernel's"] is not None:
        with contextlib.suppress(ValueError):  # one this plotly does not know: its own stays
            renderers.default = _renderer["kernel's"]
    # The notebook renderer's activation would send plotly.js with every cell; the page has
    # it from the kernel's own, as it does for the kernel's figures.
    if isinstance(getattr(renderers, "_to_activate", None), list):
        renderers._to_activate = []
    module.show = show
    io: Any = sys.modules.get("plotly.io")
    if io is not None and "show" in vars(io):
        io.show = show


class _PlotlyFinder:
    """A meta path finder: plotly.io's renderers module, made ready once it has run."""

    def find_spec(
        self, name: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != RENDERERS_MODULE:
            return None
        return then_call(importlib.machinery.PathFinder.find_spec(name, path), _ready)
