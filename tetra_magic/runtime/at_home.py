"""The notebook's logging, warning and display setup, carried to the worker so that a remote
cell logs, warns and shows figures as the same cell does at home.

In the kernel, `describe()` reads what a typical notebook sets up: the root logger's level, its
handlers that write into a cell's output (a StreamHandler on sys.stdout or sys.stderr: what
`logging.basicConfig(...)` makes), with their level and format, the levels given to named
loggers (`logging.getLogger("x").setLevel(...)`), and `warnings.filters`, IPython's own included,
so a DeprecationWarning a cell raises shows remotely exactly when it shows at home.

On the worker, `for_this_cell(...)` puts that setup in place of the worker's own for one cell,
and gives back what restores the worker's afterwards: the same process runs later cells (of
other notebooks too, on the published worker). A cell's own logging setup (basicConfig in the
cell, handlers on its own loggers) applies to the cell, as at home, and is taken away after it.
A handler that writes to a file or elsewhere is left out: nothing of it would reach the cell's
output at home either.

The display setup: how the kernel's inline backend shows matplotlib figures, and the rcParams
the kernel set (figures.py); and plotly's renderer in the kernel (plotly_output.py).
"""

from __future__ import annotations

import builtins
import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, cast

from . import figures, plotly_output
from .contract import (
    DisplaySetup,
    FigureSetup,
    HandlerSetup,
    HomeSetup,
    LoggingSetup,
    WarningFilter,
)

# Loggers of the magic and of the workers' own code: never carried, never shown in a cell.
_NOT_THE_CELLS = ("tetra_magic", "tetra_runtime", "runpod", "runpod_flash", "tetra_rp", "flash")
_STYLES = {logging.PercentStyle: "%", logging.StrFormatStyle: "{", logging.StringTemplateStyle: "$"}
_LEVELS_KEPT = 200  # named loggers with a level: a notebook sets a few, libraries some more


# ---- in the kernel ----


def describe() -> HomeSetup:
    """The kernel's logging, warning and display setup, as plain data."""
    return {
        "logging": _describe_logging(),
        "warnings": _describe_warnings(),
        "display": _describe_display(),
        "notebook": _in_a_notebook(),
    }


def _in_a_notebook() -> bool:
    """Whether this is a notebook's kernel, asked as tqdm.autonotebook asks it (so that a
    remote cell's tqdm.auto picks the bar it picks at home: runtime/widgets.py)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def _describe_logging() -> LoggingSetup:
    root = logging.getLogger()
    handlers: list[HandlerSetup] = []
    for handler in root.handlers:
        stream = _cell_stream(handler)
        if stream is None:
            continue
        formatter = handler.formatter
        handlers.append(
            {
                "stream": stream,
                "level": handler.level,
                "fmt": formatter._fmt if formatter else None,
                "datefmt": formatter.datefmt if formatter else None,
                "style": _STYLES.get(type(formatter._style), "%") if formatter else "%",
            }
        )
    levels = {
        name: logger.level
        for name, logger in list(root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET and not _ours(name)
    }
    kept = dict(sorted(levels.items())[:_LEVELS_KEPT])
    return {
        "level": root.level,
        "handlers": handlers,
        "levels": kept,
        "disable": root.manager.disable,
        # captureWarnings(True) puts logging's own function in warnings.showwarning
        "capture_warnings": warnings.showwarning is getattr(logging, "_showwarning", None),
    }


def _cell_stream(handler: logging.Handler) -> str | None:
    """The cell stream ("stdout", "stderr") a handler writes into, or None."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return None
    stream = getattr(handler, "stream", None)
    if stream is None:
        return None
    if stream is sys.stdout:
        return "stdout"
    if stream is sys.stderr:
        return "stderr"
    return None  # the kernel's own fds, a file, a buffer: not the cell's output


def _describe_warnings() -> list[WarningFilter]:
    found: list[WarningFilter] = []
    for action, message, category, module, lineno in warnings.filters:
        if not isinstance(category, type):
            continue  # not a class (the interpreter takes only classes here)
        name = f"{category.__module__}:{category.__qualname__}"
        if "<locals>" in category.__qualname__:
            # A category class made inside a function cannot be named on the worker: that
            # filter is left out (the warning then shows as the other filters say).
            continue
        found.append(
            {
                "action": action,
                "message": _pattern(message),
                "message_flags": _flags(message),
                "category": name,
                "module": _pattern(module),
                "module_flags": _flags(module),
                "lineno": lineno,
            }
        )
    return found


def _pattern(matcher: Any) -> str | None:
    return None if matcher is None else getattr(matcher, "pattern", matcher)


def _flags(matcher: Any) -> int | None:
    return getattr(matcher, "flags", None)


def _describe_display() -> DisplaySetup:
    """The kernel's display settings; the defaults of a fresh kernel where they cannot be read
    (an IPython or plotly unlike any known here must not stop the cell)."""
    try:
        return {"figures": _describe_figures(), "plotly_renderer": _plotly_renderer()}
    except Exception:
        return {"figures": figures.DEFAULT_SETUP, "plotly_renderer": "plotly_mimetype"}


def _describe_figures() -> FigureSetup:
    """How the kernel shows a figure: the formatters set_matplotlib_formats or InlineBackend
    registered for matplotlib's Figure (their formats and print_figure keywords); else
    InlineBackend's settings, of its instance or, before the inline backend is loaded, as
    `%config InlineBackend...` left them in the kernel's config for it; InlineBackend.rc; and
    the rcParams the kernel changed."""
    setup = figures.DEFAULT_SETUP
    module = sys.modules.get("matplotlib_inline.config")
    inline = getattr(module, "InlineBackend", None)
    if inline is not None and inline.initialized():
        backend = inline.instance()
        setup = {
            "formats": _format_names(backend.figure_formats),
            "print_kwargs": _plain_items(backend.print_figure_kwargs),
            "rc": _plain_items(backend.rc),
            "params": {},
        }
    else:
        setup = _configured(setup)
    registered = _figure_formatters()
    if registered:
        formats = _format_names(_printed_format(printer) for printer in registered)
        keywords = {k: v for k, v in registered[-1].keywords.items() if k not in ("fmt", "base64")}
        setup = {**setup, "formats": formats, "print_kwargs": _plain_items(keywords)}
    return {**setup, "params": _changed_params()}


# rcParams that choose how matplotlib runs in the kernel, not how a figure looks
_RUNNING_PARAMS = frozenset({"backend", "backend_fallback", "interactive"})


def _changed_params() -> dict[str, Any]:
    """The rcParams the kernel's matplotlib differs in from its defaults (`plt.rcParams[...] =
    ...`, a style, a matplotlibrc), those with plain values; none where it is not loaded."""
    mpl = sys.modules.get("matplotlib")
    params, defaults = getattr(mpl, "rcParams", None), getattr(mpl, "rcParamsDefault", None)
    if params is None or defaults is None:
        return {}
    changed = {
        key: value
        for key, value in params.items()
        if key not in _RUNNING_PARAMS and not _same(value, defaults.get(key))
    }
    return _plain_items(changed)


def _same(value: Any, default: Any) -> bool:
    try:
        return bool(value == default)
    except Exception:  # values that do not compare as one truth value: taken as changed
        return False


def _configured(setup: FigureSetup) -> FigureSetup:
    """`setup` with what the kernel's config holds for the InlineBackend yet to be made."""
    shell = _shell()
    config = shell.config if shell is not None else {}
    if "InlineBackend" not in config:
        return setup
    section = config["InlineBackend"]
    formats = section.get("figure_formats") or (
        [section["figure_format"]] if section.get("figure_format") else setup["formats"]
    )
    return {
        "formats": _format_names(formats),
        "print_kwargs": _plain_items(
            dict(section.get("print_figure_kwargs", setup["print_kwargs"]))
        ),
        "rc": _plain_items(dict(section.get("rc", setup["rc"]))),
        "params": {},
    }


def _shell() -> Any:
    """The kernel's IPython shell, if IPython is loaded (it is not imported here)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def _figure_formatters() -> list[functools.partial[Any]]:
    """The printers IPython's select_figure_formats registered for matplotlib's Figure, in the
    order of the kernel's formatters (none where matplotlib was never loaded here)."""
    figure = getattr(sys.modules.get("matplotlib.figure"), "Figure", None)
    shell = _shell() if figure is not None else None
    if shell is None:
        return []
    formatters = shell.display_formatter.formatters.values()
    printers = (getattr(f, "type_printers", {}).get(figure) for f in formatters)
    return [p for p in printers if isinstance(p, functools.partial)]


def _printed_format(printer: functools.partial[Any]) -> str:
    if printer.func.__name__ == "retina_figure":
        return "retina"
    return str(printer.keywords.get("fmt", "png"))


def _format_names(names: Any) -> list[str]:
    """Figure formats by the names figures.py knows (IPython's synonyms: jpg, png2x)."""
    synonyms = {"jpg": "jpeg", "png2x": "retina"}
    return sorted({synonyms.get(str(name), str(name)) for name in names})


def _plain_items(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings whose values are plain data (a Bbox object, say, stays at home)."""
    return {key: value for key, value in settings.items() if _plain(value)}


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def _plotly_renderer() -> str | None:
    """plotly's default renderer in this kernel: its own setting where plotly.io is loaded;
    otherwise what plotly picks in a Jupyter kernel (PLOTLY_RENDERER, else its mime type)."""
    renderers = getattr(sys.modules.get(plotly_output.RENDERERS_MODULE), "renderers", None)
    if renderers is not None:
        return str(renderers.default) if renderers.default else None
    return os.environ.get("PLOTLY_RENDERER") or "plotly_mimetype"


# ---- on the worker ----


def for_this_cell(home: HomeSetup | None) -> Callable[[], None]:
    """Put the notebook's setup (or, without one, a fresh kernel's: the root logger at
    WARNING with no handlers, the interpreter's default warning filters... as the worker has
    them) in place for one cell; returns what puts the worker's own back."""
    restore_logging = _logging_for_the_cell(home["logging"] if home else None)
    shown = home.get("display") if home else None
    figures.configure(shown["figures"] if shown else None)
    plotly_output.use_kernels_renderer(shown["plotly_renderer"] if shown else None)
    caught = warnings.catch_warnings()
    caught.__enter__()
    if home is not None:
        filters = cast(list[Any], warnings.filters)
        filters[:] = [_filter(entry) for entry in home["warnings"]]
        warnings._filters_mutated()  # type: ignore[attr-defined]
    captured = bool(home and home["logging"].get("capture_warnings"))
    if captured:
        logging.captureWarnings(True)

    def restore() -> None:
        if captured:
            logging.captureWarnings(False)  # before catch_warnings puts showwarning back
        caught.__exit__(None, None, None)
        restore_logging()
        figures.configure(None)

    return restore


def _logging_for_the_cell(setup: LoggingSetup | None) -> Callable[[], None]:
    root = logging.getLogger()
    manager = root.manager
    saved = {name: _state(logger) for name, logger in _loggers(manager)}
    disabled = manager.disable
    root.handlers = []
    root.setLevel(setup["level"] if setup else logging.WARNING)
    if setup:
        for entry in setup["handlers"]:
            root.addHandler(_handler(entry))
        for name, level in setup["levels"].items():
            if not _ours(name):
                logging.getLogger(name).setLevel(level)
        logging.disable(setup.get("disable", logging.NOTSET))

    def restore() -> None:
        for name, logger in _loggers(manager):
            if name in saved:
                logger.handlers, level, logger.propagate, logger.disabled = saved[name]
            else:
                # A logger made during the cell: its handlers were the cell's, or its library
                # has a NullHandler (kept: it keeps that library's records off lastResort).
                kept: list[logging.Handler] = [
                    h for h in logger.handlers if isinstance(h, logging.NullHandler)
                ]
                logger.handlers, level, logger.propagate, logger.disabled = kept, 0, True, False
            logger.level = level
        manager.disable = disabled
        manager._clear_cache()  # type: ignore[attr-defined]

    return restore


def _loggers(manager: logging.Manager) -> list[tuple[str, logging.Logger]]:
    found = [(name, logger) for name, logger in list(manager.loggerDict.items())]
    return [("", logging.getLogger()), *((n, x) for n, x in found if isinstance(x, logging.Logger))]


def _state(logger: logging.Logger) -> tuple[list[logging.Handler], int, bool, bool]:
    return logger.handlers[:], logger.level, logger.propagate, logger.disabled


def _ours(name: str) -> bool:
    return name.partition(".")[0] in _NOT_THE_CELLS


class _CellStreamHandler(logging.StreamHandler):
    """A StreamHandler on the cell's sys.stdout or sys.stderr as they are when it writes (the
    worker's capture of the cell's output), as the kernel's handler writes to the cell's."""

    def __init__(self, target: str) -> None:
        logging.Handler.__init__(self)
        self.target = target
        self.addFilter(lambda record: not _ours(record.name))

    @property
    def stream(self) -> Any:
        return getattr(sys, self.target)

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the cell's stream of that name


def _handler(entry: HandlerSetup) -> logging.Handler:
    handler = _CellStreamHandler(entry["stream"])
    handler.setLevel(entry["level"])
    if entry["fmt"] is not None or entry["datefmt"] is not None:
        style = {"{": "{", "$": "$"}.get(entry["style"], "%")
        handler.setFormatter(logging.Formatter(entry["fmt"], entry["datefmt"], style))  # type: ignore[arg-type]
    return handler


def _filter(entry: WarningFilter) -> tuple[str, Any, type[Warning], Any, int]:
    return (
        entry["action"],
        _matcher(entry["message"], entry["message_flags"]),
        _category(entry["category"]),
        _matcher(entry["module"], entry["module_flags"]),
        entry["lineno"],
    )


def _matcher(pattern: str | None, flags: int | None) -> Any:
    if pattern is None or flags is None:
        return pattern  # None, or a plain string the interpreter compares whole
    return re.compile(pattern, flags)


def _category(name: str) -> type[Warning]:
    """The warning class `name` ("module:qualname") names: a builtin one itself; any other
    a stand-in that matches the class of that name whenever a warning is checked, so a filter
    for a package's warning needs the package imported no sooner than the cell imports it
    (the notebook's own classes, in `__main__`, match the cell's of that name)."""
    module, _, qualname = name.partition(":")
    if module == "builtins":
        found = getattr(builtins, qualname, None)
        if isinstance(found, type) and issubclass(found, Warning):
            return found
    return _named_category(module, qualname)


class _ByName(type):
    """The metaclass of a category stand-in: `issubclass(cls, stand_in)` holds when a class in
    cls's MRO has the stand-in's module and qualified name."""

    module: str
    qualname: str

    def __subclasscheck__(cls, other: Any) -> bool:
        return any(
            getattr(c, "__module__", None) == cls.module
            and getattr(c, "__qualname__", None) == cls.qualname
            for c in getattr(other, "__mro__", ())
        )


def _named_category(module: str, qualname: str) -> type[Warning]:
    stand_in = _ByName(qualname.rpartition(".")[2], (Warning,), {})
    stand_in.module, stand_in.qualname = module, qualname
    return cast(type[Warning], stand_in)
