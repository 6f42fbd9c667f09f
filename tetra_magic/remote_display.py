"""A remote cell's display machinery: IPython.display, matplotlib figures, and the frames that
carry what they show home in order with the cell's prints.

Like cell_runtime, this module runs on the worker: packing.py ships its source in the request,
and run_cell makes it the module `tetra_display` there, once per process. So it is
self-contained: standard library only at import, everything else imported where it is used.

Every display message (display_data, its update, clear_output) is written into the cell's
stdout as FRAME_START + JSON + FRAME_END (worker/frames.py reads the same framing), so it sits
among the prints exactly where the cell made it, whatever carries stdout home: our worker
splits the frames out into "display" chunks as it streams; the published worker returns them
inside the response's stdout, where the notebook splits them out.

Where the worker has IPython, its own display() and formatters run, with a display publisher
that writes frames. Where it has not, a stand-in provides IPython.display's usual names (the
`IPython` modules exist in sys.modules only while the real package is absent). matplotlib gets
a backend of this module's making, which behaves as the inline one: plt.show() shows and closes
every open figure, and figures still open when the cell ends are shown then.
"""

FRAME_START = "\x00tetra-display:"
FRAME_END = "\n"
NAME = "tetra_display"
BACKEND_MODULE = "tetra_display_backend"
BACKEND = "module://" + BACKEND_MODULE
# What one cell may show: outputs on screen at once (clear_output makes room again) and bytes
# sent in all, so a cell that makes thousands of figures cannot exhaust the notebook, the
# kernel or the endpoint. Overridable with --env.
MAX_SHOWN = 100
MAX_MB = 50
_METHODS = {
    "text/html": "_repr_html_",
    "text/markdown": "_repr_markdown_",
    "image/svg+xml": "_repr_svg_",
    "image/png": "_repr_png_",
    "application/pdf": "_repr_pdf_",
    "image/jpeg": "_repr_jpeg_",
    "text/latex": "_repr_latex_",
    "application/json": "_repr_json_",
    "application/javascript": "_repr_javascript_",
}
# The modules IPython.display's names live in: a notebook's HTML or clear_output, sent with a
# cell, is looked up in them on the worker.
_IPYTHON_MODULES = (
    "IPython",
    "IPython.display",
    "IPython.core",
    "IPython.core.display",
    "IPython.core.display_functions",
)
_cell = {"shown": 0, "bytes": 0, "dropped": 0, "max_shown": MAX_SHOWN, "max_bytes": 0}


# -- one cell's beginning and end ---------------------------------------------------------------


def begin():
    """Ready the display machinery for a cell: fresh limits, IPython.display, figures."""
    import os

    _cell.update(shown=0, bytes=0, dropped=0)
    _cell["max_shown"] = int(os.environ.get("TETRA_MAX_DISPLAYS", MAX_SHOWN))
    _cell["max_bytes"] = int(float(os.environ.get("TETRA_MAX_DISPLAY_MB", MAX_MB)) * 2**20)
    _provide_ipython()
    _use_for_matplotlib()


def end():
    """After the cell, failed or not: its open figures shown and closed (as the inline
    backend does), and a note of the outputs the limits dropped."""
    import sys

    try:
        _flush_figures()
    finally:
        if _cell["dropped"]:
            print(
                f"tetra: {_cell['dropped']} display outputs were dropped: a cell shows at most"
                f" {_cell['max_shown']} at a time (clear_output() makes room) and sends at most"
                f" {_cell['max_bytes'] / 2**20:g} MB of them",
                file=sys.stderr,
            )


def display_function():
    """The display() a cell finds as a builtin, as in IPython: the real one or the stand-in."""
    import IPython.display

    return IPython.display.display


# -- sending display messages home ------------------------------------------------------------


def publish(message):
    """Write one display message into stdout, in its place among the prints, within the cell's
    limits (an output past them is counted, for the note at the end)."""
    import json
    import sys

    text = json.dumps(message, separators=(",", ":"), default=str)
    if message["type"] == "clear":
        _cell["shown"] = 0
    elif message["type"] == "display" and _cell["shown"] >= _cell["max_shown"]:
        _cell["dropped"] += 1
        return
    if _cell["bytes"] + len(text) > _cell["max_bytes"]:
        _cell["dropped"] += 1
        return
    _cell["bytes"] += len(text)
    _cell["shown"] += message["type"] == "display"
    sys.stdout.flush()
    sys.stdout.write(FRAME_START + text + FRAME_END)
    sys.stdout.flush()


def publish_display_data(data, metadata=None, source=None, *, transient=None, update=False, **_):
    """IPython's publish_display_data: a mime bundle, shown (or updating a display id)."""
    display_id = (transient or {}).get("display_id")
    publish(
        {
            "type": "update" if update else "display",
            "data": {mime: _base64(value) for mime, value in data.items()},
            "metadata": metadata or {},
            "display_id": display_id,
        }
    )


def _base64(value):
    """Binary data as Jupyter carries it: base64 text."""
    import base64

    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return value


# -- IPython: the real one, captured, or the stand-in -------------------------------------------


def _provide_ipython():
    """Use the worker's IPython if it has one (replacing the stand-in once it is installed);
    otherwise put the stand-in in its place."""
    import importlib.machinery
    import sys

    standing_in = getattr(sys.modules.get("IPython"), "__file__", "") == NAME
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


def _install_stand_in():
    import sys
    import types

    this = sys.modules[NAME]
    api = {name: getattr(this, name) for name in STAND_IN}
    modules = {name: types.ModuleType(name, "tetra's stand-in") for name in _IPYTHON_MODULES}
    for module in modules.values():
        module.__file__ = NAME
        module.__dict__.update(api)
    ipython = modules["IPython"]
    ipython.get_ipython = lambda: None  # no shell: libraries fall back to what they do without
    ipython.version_info, ipython.__version__ = (0, 0, 0, "tetra stand-in"), "0+tetra.stand.in"
    ipython.display, ipython.core = modules["IPython.display"], modules["IPython.core"]
    modules["IPython.core"].display = modules["IPython.core.display"]
    modules["IPython.core"].display_functions = modules["IPython.core.display_functions"]
    sys.modules.update(modules)


def _capture_ipython():
    """IPython's own display machinery, publishing frames: a shell (made once, without history,
    leaving __main__ alone) whose display publisher writes them, and whose PNG formatter knows
    matplotlib figures."""
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    if not InteractiveShell.initialized():
        from traitlets.config import Config

        class Shell(InteractiveShell):
            def init_sys_modules(self):
                """The cell runs in a namespace of its own; sys.modules stays as it is."""

        Shell.instance(config=Config({"HistoryManager": {"enabled": False}}))
    shell = InteractiveShell.instance()
    if getattr(shell.display_pub, "tetra", False):
        return

    class Publisher(DisplayPublisher):
        tetra = True

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **_):
            publish_display_data(data, metadata, transient=transient, update=update)

        def clear_output(self, wait=False):
            clear_output(wait)

    shell.display_pub = Publisher(shell=shell)
    png = shell.display_formatter.formatters["image/png"]
    png.for_type_by_name("matplotlib.figure", "Figure", figure_png)


# -- the stand-in's IPython.display -------------------------------------------------------------


def display(
    *objs,
    include=None,
    exclude=None,
    metadata=None,
    transient=None,
    display_id=None,
    raw=False,
    clear=False,
    update=False,
    **_,
):
    """IPython.display.display: each object's mime bundle, shown where the cell is now."""
    import uuid

    transient = dict(transient or {})
    if display_id:
        transient["display_id"] = uuid.uuid4().hex if display_id is True else display_id
    if clear:
        clear_output(wait=True)
    if not objs and display_id and not update:
        publish_display_data({}, metadata, transient=transient)
    for obj in objs:
        data, md = (obj, {}) if raw else format(obj, include, exclude)
        if data:
            publish_display_data(
                data, {**md, **(metadata or {})}, transient=transient, update=update
            )
    return DisplayHandle(transient["display_id"]) if display_id else None


def update_display(obj, *, display_id, **kwargs):
    """IPython.display.update_display: replace what `display_id` shows."""
    display(obj, display_id=display_id, update=True, **kwargs)


def clear_output(wait=False):
    """IPython.display.clear_output: with `wait`, the cell's output is cleared when the next
    output arrives, so a plot redrawn in a loop updates in place without flicker."""
    publish({"type": "clear", "wait": bool(wait)})


class DisplayHandle:
    """What display(..., display_id=...) returns: shows and updates one display."""

    def __init__(self, display_id=None):
        import uuid

        self.display_id = display_id or uuid.uuid4().hex

    def __repr__(self):
        return f"<{type(self).__name__} display_id={self.display_id}>"

    def display(self, obj, **kwargs):
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs):
        update_display(obj, display_id=self.display_id, **kwargs)


def format(obj, include=None, exclude=None):
    """(data, metadata) for `obj` as IPython's DisplayFormatter makes them: its
    _ipython_display_, _repr_mimebundle_, each _repr_*_ method, a figure's PNG, and text/plain."""
    if callable(getattr(type(obj), "_ipython_display_", None)):
        obj._ipython_display_()
        return {}, {}
    data, metadata = {}, {}
    if callable(getattr(type(obj), "_repr_mimebundle_", None)):
        bundle = obj._repr_mimebundle_(include=include, exclude=exclude)
        bundle, extra = bundle if isinstance(bundle, tuple) else (bundle, {})
        data.update(bundle or {})
        metadata.update(extra or {})
    for mime, method in _METHODS.items():
        if mime not in data and callable(getattr(type(obj), method, None)):
            _add(data, metadata, mime, getattr(obj, method)())
    if "image/png" not in data and is_figure(obj):
        _add(data, metadata, "image/png", figure_png(obj))
    data.setdefault("text/plain", _plain(obj))
    keep = [m for m in data if (not include or m in include) and m not in (exclude or ())]
    return {m: data[m] for m in keep}, {m: v for m, v in metadata.items() if m in keep}


def _add(data, metadata, mime, value):
    """A repr method's result, which may be (data, metadata) or None (no such repr)."""
    if isinstance(value, tuple) and len(value) == 2:
        value, metadata[mime] = value
    if value is not None:
        data[mime] = value


def _plain(obj):
    """text/plain: _repr_pretty_ (given a printer that collects its text), else repr(), or
    for an object without a repr of its own, IPython's `<module.Class at 0x...>`."""
    cls = type(obj)
    if cls.__repr__ is object.__repr__:
        return f"<{cls.__module__}.{cls.__qualname__} at {id(obj):#x}>"
    if not callable(getattr(cls, "_repr_pretty_", None)):
        return repr(obj)
    parts = []

    class Printer:
        def text(self, text):
            parts.append(str(text))

        def breakable(self, sep=" "):
            parts.append(sep)

        def pretty(self, value):
            parts.append(_plain(value))

    obj._repr_pretty_(Printer(), False)
    return "".join(parts)


class DisplayObject:
    """IPython.display.DisplayObject: data given directly, or read from a file path."""

    _read_flags = "r"
    metadata = None

    def __init__(self, data=None, url=None, filename=None, metadata=None):
        import os

        if isinstance(data, os.PathLike):
            data = os.fspath(data)
        if isinstance(data, str) and filename is None and url is None and _is_file(data):
            filename, data = data, None
        self.url, self.filename, self.data = url, filename, data
        if metadata is not None:
            self.metadata = metadata
        elif self.metadata is None:
            self.metadata = {}
        if filename is not None:
            encoding = None if "b" in self._read_flags else "utf-8"
            with open(filename, self._read_flags, encoding=encoding) as file:
                self.data = file.read()

    def __repr__(self):
        return f"<IPython.core.display.{type(self).__name__} object>"

    def _data_and_metadata(self):
        return (self.data, dict(self.metadata)) if self.metadata else self.data


def _is_file(text):
    import os

    try:
        return len(text) < 4096 and os.path.isfile(text)
    except (OSError, ValueError):
        return False


class TextDisplayObject(DisplayObject):
    """IPython.display.TextDisplayObject."""


class HTML(TextDisplayObject):
    def _repr_html_(self):
        return self._data_and_metadata()


class Markdown(TextDisplayObject):
    def _repr_markdown_(self):
        return self._data_and_metadata()


class Latex(TextDisplayObject):
    def _repr_latex_(self):
        return self._data_and_metadata()


class SVG(DisplayObject):
    """IPython.display.SVG: the document's <svg> element, as IPython extracts it."""

    def _repr_svg_(self):
        from xml.dom import minidom

        data = self.data.decode() if isinstance(self.data, bytes) else self.data
        found = minidom.parseString(data).getElementsByTagName("svg")
        data = found[0].toxml() if found else data
        return (data, dict(self.metadata)) if self.metadata else data


class Pretty(TextDisplayObject):
    def _repr_pretty_(self, printer, cycle):
        return printer.text(self.data)


class JSON(DisplayObject):
    """IPython.display.JSON: a dict or list (or its JSON text), shown as a tree."""

    def __init__(self, data=None, url=None, filename=None, expanded=False, metadata=None,
                 root="root", **kwargs):  # fmt: skip
        import json

        super().__init__(data, url, filename)
        if isinstance(self.data, str):
            self.data = json.loads(self.data)
        self.metadata = {"expanded": expanded, "root": root, **(metadata or {}), **kwargs}

    def _repr_json_(self):
        return self.data, self.metadata


class Image(DisplayObject):
    """IPython.display.Image for image bytes or a file: PNG, JPEG, GIF or WebP, embedded."""

    _read_flags = "rb"
    _SIGNATURES = {
        b"\x89PNG\r\n\x1a\n": "png",
        b"\xff\xd8": "jpeg",
        b"GIF87a": "gif",
        b"GIF89a": "gif",
        b"RIFF": "webp",
    }

    def __init__(self, data=None, url=None, filename=None, format=None, embed=None, width=None,
                 height=None, retina=False, unconfined=False, metadata=None, alt=None):  # fmt: skip
        import os

        if isinstance(data, str) and filename is None and _is_file(data):
            filename, data = data, None
        if filename is not None and format is None:
            format = os.path.splitext(filename)[1][1:].lower().replace("jpg", "jpeg") or None
        super().__init__(data, url, filename, metadata)
        self.embed = embed if embed is not None else self.data is not None
        self.format = format or self._sniff()
        self.width, self.height, self.unconfined, self.alt = width, height, unconfined, alt
        self.retina = retina

    def _sniff(self):
        for signature, name in self._SIGNATURES.items():
            if isinstance(self.data, bytes) and self.data.startswith(signature):
                return name
        return "png"

    def _repr_mimebundle_(self, include=None, exclude=None):
        import html

        if not self.embed:
            return {"text/html": f'<img src="{html.escape(self.url or self.filename or "")}"/>'}
        metadata = dict(self.metadata)
        for key in ("width", "height", "unconfined", "alt"):
            if getattr(self, key):
                metadata[key] = getattr(self, key)
        mime = f"image/{self.format}"
        return {mime: _base64(self.data)}, ({mime: metadata} if metadata else {})


STAND_IN = (
    "display",
    "update_display",
    "clear_output",
    "publish_display_data",
    "DisplayHandle",
    "DisplayObject",
    "TextDisplayObject",
    "HTML",
    "Markdown",
    "Latex",
    "SVG",
    "Pretty",
    "JSON",
    "Image",
)


# -- matplotlib -----------------------------------------------------------------------------


def is_figure(obj):
    """Whether `obj` is a matplotlib Figure (checked by name: matplotlib may not be loaded)."""
    return any(
        cls.__module__ == "matplotlib.figure" and cls.__name__ == "Figure"
        for cls in type(obj).__mro__
    )


def figure_png(fig):
    """The figure as PNG bytes, as the inline backend renders it (None for an empty one)."""
    import io

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


def show(close=None, block=None):
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


def _flush_figures():
    """Show what is still open, if pyplot is in use with this backend."""
    import sys

    if "matplotlib.pyplot" in sys.modules and _backend(sys.modules["matplotlib"]) == BACKEND:
        show()


def _backend(mpl):
    """The backend chosen so far (None while matplotlib would still pick one itself)."""
    chosen = getattr(mpl.rcParams, "_get_backend_or_none", None)
    return chosen() if chosen else mpl.get_backend()


def _use_for_matplotlib():
    """Make this module matplotlib's backend once matplotlib is imported, unless a backend was
    chosen (MPLBACKEND, a matplotlibrc, matplotlib.use): an import hook rather than MPLBACKEND,
    which the cell's subprocesses would inherit without being able to import the backend."""
    import sys

    if not any(type(finder).__name__ == "_Finder" for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if "matplotlib" in sys.modules:
        mpl = sys.modules["matplotlib"]
        # Styles and rcParams an earlier cell set in this process are not kept: the next cell
        # may run on another worker, where they were never set; plots look the same either way.
        mpl.rc_file_defaults()
        _choose_backend(mpl)


def _choose_backend(mpl):
    if _backend(mpl) is None:
        mpl.rcParams["backend"] = BACKEND


class _Finder:
    """A meta path finder: matplotlib, found by the path finder, chooses its backend right
    after it is imported; the backend module is made when pyplot asks for it."""

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery
        import importlib.util

        if name == BACKEND_MODULE:
            return importlib.util.spec_from_loader(name, _BackendLoader())
        if name != "matplotlib":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ChoosingLoader(spec.loader)
        return spec


class _ChoosingLoader:
    """matplotlib's own loader, choosing the backend once the module has run."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _choose_backend(module)


class _BackendLoader:
    """The backend module: Agg's canvas, and this module's show()."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from matplotlib.backend_bases import FigureManagerBase
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        module.FigureCanvas, module.FigureManager, module.show = (
            FigureCanvasAgg,
            FigureManagerBase,
            show,
        )
