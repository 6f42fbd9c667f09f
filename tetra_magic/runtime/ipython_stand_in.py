"""IPython.display's usual names for a worker without IPython: display(), HTML, Image and the rest,
publishing what they show as frames (publishing.py). display.py puts them in sys.modules as the
`IPython` modules while the real package is absent.

`format` is also how a cell's last value is rendered for home (pickling.MainNames.portable),
IPython or not: the mime bundle IPython's DisplayFormatter would make.
"""

from __future__ import annotations

import html
import json
import os
import uuid
from typing import Any
from xml.dom import minidom

from .figures import figure_bundle, is_figure
from .publishing import as_text, clear_output, publish_display_data

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


def display(
    *objs: Any,
    include: Any = None,
    exclude: Any = None,
    metadata: dict[str, Any] | None = None,
    transient: dict[str, Any] | None = None,
    display_id: Any = None,
    raw: bool = False,
    clear: bool = False,
    update: bool = False,
    **_: Any,
) -> DisplayHandle | None:
    """IPython.display.display: each object's mime bundle, shown where the cell is now."""
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


def update_display(obj: Any, *, display_id: str, **kwargs: Any) -> None:
    """IPython.display.update_display: replace what `display_id` shows."""
    display(obj, display_id=display_id, update=True, **kwargs)


class DisplayHandle:
    """What display(..., display_id=...) returns: shows and updates one display."""

    def __init__(self, display_id: str | None = None) -> None:
        self.display_id = display_id or uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"<{type(self).__name__} display_id={self.display_id}>"

    def display(self, obj: Any, **kwargs: Any) -> None:
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj: Any, **kwargs: Any) -> None:
        update_display(obj, display_id=self.display_id, **kwargs)


def format(
    obj: Any, include: Any = None, exclude: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, metadata) for `obj` as IPython's DisplayFormatter makes them: its
    _ipython_display_, _repr_mimebundle_, each _repr_*_ method, a figure's images in the
    kernel's formats, and text/plain."""
    if callable(getattr(type(obj), "_ipython_display_", None)):
        obj._ipython_display_()
        return {}, {}
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    if callable(getattr(type(obj), "_repr_mimebundle_", None)):
        bundle = obj._repr_mimebundle_(include=include, exclude=exclude)
        bundle, extra = bundle if isinstance(bundle, tuple) else (bundle, {})
        data.update(bundle or {})
        metadata.update(extra or {})
    for mime, method in _METHODS.items():
        if mime not in data and callable(getattr(type(obj), method, None)):
            _add(data, metadata, mime, getattr(obj, method)())
    if is_figure(obj):  # in the kernel's figure formats, as its inline backend shows it
        images, sizes = figure_bundle(obj) or ({}, {})
        data.update({m: image for m, image in images.items() if m not in data})
        metadata.update({m: size for m, size in sizes.items() if m not in metadata})
    data.setdefault("text/plain", _plain(obj))
    keep = [m for m in data if (not include or m in include) and m not in (exclude or ())]
    return {m: data[m] for m in keep}, {m: v for m, v in metadata.items() if m in keep}


def _add(data: dict[str, Any], metadata: dict[str, Any], mime: str, value: Any) -> None:
    """A repr method's result, which may be (data, metadata) or None (no such repr)."""
    if isinstance(value, tuple) and len(value) == 2:
        value, metadata[mime] = value
    if value is not None:
        data[mime] = value


def _plain(obj: Any) -> str:
    """text/plain: _repr_pretty_ (given a printer that collects its text), else repr(), or
    for an object without a repr of its own, IPython's `<module.Class at 0x...>`."""
    cls = type(obj)
    if cls.__repr__ is object.__repr__:  # type: ignore[comparison-overlap]
        return f"<{cls.__module__}.{cls.__qualname__} at {id(obj):#x}>"
    if not callable(getattr(cls, "_repr_pretty_", None)):
        return repr(obj)
    parts: list[str] = []

    class Printer:
        def text(self, text: Any) -> None:
            parts.append(str(text))

        def breakable(self, sep: str = " ") -> None:
            parts.append(sep)

        def pretty(self, value: Any) -> None:
            parts.append(_plain(value))

    obj._repr_pretty_(Printer(), False)
    return "".join(parts)


class DisplayObject:
    """IPython.display.DisplayObject: data given directly, or read from a file path."""

    _read_flags = "r"
    metadata: dict[str, Any] | None = None

    def __init__(
        self,
        data: Any = None,
        url: str | None = None,
        filename: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
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

    def __repr__(self) -> str:
        return f"<IPython.core.display.{type(self).__name__} object>"

    def _data_and_metadata(self) -> Any:
        return (self.data, dict(self.metadata)) if self.metadata else self.data


def _is_file(text: str) -> bool:
    try:
        return len(text) < 4096 and os.path.isfile(text)
    except (OSError, ValueError):
        return False


class TextDisplayObject(DisplayObject):
    """IPython.display.TextDisplayObject."""


class HTML(TextDisplayObject):
    def _repr_html_(self) -> Any:
        return self._data_and_metadata()


class Markdown(TextDisplayObject):
    def _repr_markdown_(self) -> Any:
        return self._data_and_metadata()


class Latex(TextDisplayObject):
    def _repr_latex_(self) -> Any:
        return self._data_and_metadata()


class SVG(DisplayObject):
    """IPython.display.SVG: the document's <svg> element, as IPython extracts it."""

    def _repr_svg_(self) -> Any:
        data = self.data.decode() if isinstance(self.data, bytes) else self.data
        found = minidom.parseString(data).getElementsByTagName("svg")
        data = found[0].toxml() if found else data
        return (data, dict(self.metadata)) if self.metadata else data


class Pretty(TextDisplayObject):
    def _repr_pretty_(self, printer: Any, cycle: bool) -> Any:
        return printer.text(self.data)


class JSON(DisplayObject):
    """IPython.display.JSON: a dict or list (or its JSON text), shown as a tree."""

    def __init__(
        self,
        data: Any = None,
        url: str | None = None,
        filename: str | None = None,
        expanded: bool = False,
        metadata: dict[str, Any] | None = None,
        root: str = "root",
        **kwargs: Any,
    ) -> None:
        super().__init__(data, url, filename)
        if isinstance(self.data, str):
            self.data = json.loads(self.data)
        self.metadata = {"expanded": expanded, "root": root, **(metadata or {}), **kwargs}

    def _repr_json_(self) -> Any:
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

    def __init__(
        self,
        data: Any = None,
        url: str | None = None,
        filename: str | None = None,
        format: str | None = None,
        embed: bool | None = None,
        width: Any = None,
        height: Any = None,
        retina: bool = False,
        unconfined: bool = False,
        metadata: dict[str, Any] | None = None,
        alt: str | None = None,
    ) -> None:
        if isinstance(data, str) and filename is None and _is_file(data):
            filename, data = data, None
        if filename is not None and format is None:
            format = os.path.splitext(filename)[1][1:].lower().replace("jpg", "jpeg") or None
        super().__init__(data, url, filename, metadata)
        self.embed = embed if embed is not None else self.data is not None
        self.format = format or self._sniff()
        self.width, self.height, self.unconfined, self.alt = width, height, unconfined, alt
        self.retina = retina

    def _sniff(self) -> str:
        for signature, name in self._SIGNATURES.items():
            if isinstance(self.data, bytes) and self.data.startswith(signature):
                return name
        return "png"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        if not self.embed:
            return {"text/html": f'<img src="{html.escape(self.url or self.filename or "")}"/>'}
        metadata = dict(self.metadata or {})
        for key in ("width", "height", "unconfined", "alt"):
            if getattr(self, key):
                metadata[key] = getattr(self, key)
        mime = f"image/{self.format}"
        return {mime: as_text(self.data)}, ({mime: metadata} if metadata else {})


# What the stand-in `IPython` modules hold.
API = (
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
