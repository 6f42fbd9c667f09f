"""How values travel between the notebook and the worker, both ways: one blob per name, so a
value that fails to load on one side is named and the others still arrive.

How the notebook's own functions and classes travel is `MainNames`' job: by name, with the
source of their definition, never as bytecode when that can be helped (see its docstring).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import pickle
import platform
import types
from collections.abc import Callable
from typing import Any

from . import figures, ipython_stand_in
from .contract import Definition, Portable
from .picklers import PLAIN, Pickler, Unpickler, global_names

_HEADER = b"tetra-pickle"


class MainNames:
    """One side's `__main__` namespace (the notebook's, or the cell's on the worker) and how
    its objects travel to the other side.

    A function or class the notebook (or the cell) defined travels by name: the pickle holds a
    reference to it, resolved on loading against the other side's `__main__`, so a value of a
    notebook class comes back an instance of the notebook's very class, never a copy that would
    replace or patch it. Where the other side lacks the definition, its source goes along
    (`sent`) and is executed there in `__main__` on first use: source works across Python
    versions, and the functions get `__main__`'s globals as at home. What has no known source
    (a lambda, a function made inside another) goes as cloudpickle's bytecode, its globals
    still `__main__`'s; every blob's header says which Python made it and whether it holds
    bytecode, and such a blob is refused, before anything in it runs, on another minor version.

    `referable(name)` says whether the other side can have the top-level definition `name`:
    None (no), [] (it has it already), or [source, filename, line] (send that).
    """

    def __init__(
        self,
        namespace: dict[str, Any],
        definitions: dict[str, Definition] | None = None,
        blobs: dict[str, bytes] | None = None,
        modules: dict[str, list[str]] | None = None,
        referable: Callable[[str], Definition | None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.definitions = dict(definitions or {})
        self.blobs = dict(blobs or {})
        self.modules = dict(modules or {})
        self.referable = referable or (lambda name: None)
        self.sent: dict[str, Definition] = {}  # definitions the other side needs, by name
        self.bytecode: list[str] = []  # globals read by functions that went as bytecode
        # modules whose functions and classes the pickles named: the notebook's own go along
        self.modules_named: set[str] = set()
        self.bind = namespace.__setitem__
        self._known: dict[str, Definition | None] = {}
        self._ids: dict[int, str] | None = None
        self._paths: dict[int, tuple[Any, str | None]] = {}
        self._done: set[str] = set()
        self._busy: set[str] = set()
        self.kept: dict[str, Any] = {}  # a session's values kept for the notebook's references

    def refer_to(
        self, cell_definitions: dict[str, Definition], home: dict[str, Any] | None = None
    ) -> None:
        """On the worker, once the inputs are in: what the notebook already has (the inputs
        as they arrived, and `home`: {name: object} it has from before) is referred to by
        name; the cell's own top-level definitions travel as their source."""
        sent = [*self.blobs, *self.definitions]  # not the worker's own `display`, say
        home = {**(home or {})}
        home.update({name: self.namespace[name] for name in sent if name in self.namespace})

        def referable(name: str) -> Definition | None:
            if name in home and self.namespace.get(name) is home[name]:
                return []
            return cell_definitions.get(name)

        self.referable = referable
        self.refresh()

    def refresh(self) -> None:
        """Forget what was worked out about the namespace's names (the cell changed them)."""
        self._known, self._ids, self._paths, self.sent = {}, None, {}, {}

    # -- pickling -------------------------------------------------------------------------

    def dumps(self, value: Any, files: set[str] | None = None, to_cpu: bool = True) -> bytes:
        """`value`'s blob: a header naming this Python and any bytecode inside, then the
        pickle."""
        body = io.BytesIO()
        header, _ = self.dump_body(value, body, files, to_cpu)
        return header + body.getvalue()

    def dump_body(
        self, value: Any, file: Any, files: set[str] | None = None, to_cpu: bool = True
    ) -> tuple[bytes, set[str]]:
        """Pickle `value` into `file` as it goes (a file may stop it by raising); the header
        its blob starts with, and the GPU devices of the tensors met on the way."""
        pickler = Pickler(file, self, files, to_cpu)
        pickler.dump(value)
        python = ".".join(platform.python_version_tuple()[:2])
        code = pickler.code_of or "-"
        return b"%s %s %s\n" % (_HEADER, python.encode(), code.encode()), pickler.devices

    def portable(self, value: Any, dump: Callable[[Any], Any] | None = None) -> Portable:
        """A value as it can best travel: its blob (None if it has none), its repr, and its
        rich representations, so the notebook can show it even where it cannot load it. A
        figure travels as its image only: the notebook shows it, and needs no matplotlib for
        that. `dump` (a session's) gives the blob, or a description where the value stays."""
        reason = None
        blob: Any = None
        if not figures.is_figure(value):
            try:
                blob = (dump or self.dumps)(value)
            except Exception as exc:
                blob, reason = None, f"{type(value).__name__} cannot be pickled: {exc}"
            if isinstance(blob, dict):
                blob, reason = None, "it stays in the session"
        mime, metadata = safe(ipython_stand_in.format, value) or ({}, {})
        return {
            "blob": blob,
            "reason": reason,
            "repr": safe(repr, value),
            "mime": mime,
            "metadata": metadata,
            "displayed": False,
        }

    def path(self, obj: Any) -> str | None:
        """The name (or dotted path) under which the other side finds `obj`; None if it
        cannot. Worked out once per object (a class is met once per instance pickled)."""
        cached = self._paths.get(id(obj))
        if cached is not None and cached[0] is obj:
            return cached[1]
        path = self._path(obj)
        self._paths[id(obj)] = (obj, path)
        return path

    def _path(self, obj: Any) -> str | None:
        if isinstance(obj, PLAIN) or not _definition_like(obj):
            return None
        if self._ids is None:
            self._ids = {id(v): k for k, v in self.namespace.items() if _definition_like(v)}
        path = None
        qualname = getattr(obj, "__qualname__", None)
        if (
            getattr(obj, "__module__", None) == "__main__"
            and isinstance(qualname, str)
            and "<" not in qualname
            and _lookup(self.namespace, qualname) is obj
        ):
            path = qualname
        if path is None:
            path = self._ids.get(id(obj))
        if path is None:
            return None
        top = path.partition(".")[0]
        if top not in self._known:
            self._known[top] = self.referable(top)
        found = self._known[top]
        if found is None:
            return None
        if found:
            self.sent[top] = found
        return path

    # -- loading --------------------------------------------------------------------------

    def ensure(self, name: str) -> None:
        """Bind `name` in the namespace from what came for it (a module to import, a
        definition to execute, a blob to load), once; the names a definition uses first."""
        if name in self._done or name in self._busy:
            return
        self._busy.add(name)
        try:
            if name in self.modules:
                self.bind(name, _import(name, self.modules[name]))
            elif name in self.definitions:
                self._define(name)
            elif name in self.blobs:
                self.bind(name, self.load(name, self.blobs[name]))
        finally:
            self._busy.discard(name)
            self._done.add(name)

    def _define(self, name: str) -> None:
        source, filename, line = self.definitions[name]
        code = compile("\n" * (line - 1) + source, filename, "exec")
        for used in global_names(code):
            if used != name:
                self.ensure(used)
        exec(code, self.namespace)

    def load(self, label: str, blob: bytes) -> Any:
        """The value in `blob`; refused, before anything in it runs, if it holds bytecode of
        another Python minor version."""
        head, _, body = blob.partition(b"\n")
        parts = head.decode("utf-8", "replace").split(" ")
        if len(parts) != 3 or parts[0] != _HEADER.decode():
            raise ValueError(f"{label!r} is not a tetra pickle")
        made_by, code = parts[1], parts[2]
        here = ".".join(platform.python_version_tuple()[:2])
        if code != "-" and made_by != here:
            raise VersionMismatch(
                f"{label!r} holds {code}, compiled to bytecode by Python {made_by}; Python"
                f" {here} here cannot run another version's bytecode, so it was not loaded."
                " Functions and classes defined with def/class at the top level of a cell"
                " travel as source and work across versions; lambdas and functions made inside"
                " other functions do not"
            )
        unpickler = Unpickler(io.BytesIO(body), self)
        builtins = self.namespace.get("__builtins__")
        try:
            return unpickler.load()
        finally:
            if builtins is not None:  # cloudpickle sets a loaded function's globals' builtins
                self.namespace["__builtins__"] = builtins

    def kept_value(self, ref: str) -> Any:
        """The value the session keeps for the remote reference `ref`."""
        if ref not in self.kept:
            raise pickle.UnpicklingError(
                f"the session no longer holds the value of reference {ref!r} (it was rebuilt"
                " without it, or ended)"
            )
        return self.kept[ref]

    def resolve(self, path: str) -> Any:
        """The definition at `path` in the namespace, defined from its source first if that
        came along."""
        top = path.partition(".")[0]
        self.ensure(top)
        if top not in self.namespace:
            raise pickle.UnpicklingError(f"{top!r} is not defined here")
        return _lookup(self.namespace, path)


class VersionMismatch(Exception):
    """A blob holds bytecode of another Python minor version."""


def digest(names: MainNames, value: Any) -> bytes | None:
    """A fingerprint of `value`'s pickle (None if it cannot be pickled here)."""
    try:
        return blob_digest(names.dumps(value))
    except Exception:
        return None


def blob_digest(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=16).digest()


def safe(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, or None if it raises."""
    try:
        return function(*args)
    except Exception:
        return None


def _import(alias: str, names: list[str]) -> types.ModuleType:
    """The module `names[0]` for `alias`, with the submodules the cell uses imported too."""
    try:
        module = importlib.import_module(names[0])
        for submodule in names[1:]:
            importlib.import_module(submodule)
    except ModuleNotFoundError as exc:
        # As the cell's own `import` would fail: the notebook's hint (a package to add with
        # --deps, or a helper gone from beside the notebook) reads this line.
        raise ModuleNotFoundError(str(exc), name=exc.name) from None
    except ImportError as exc:
        raise ImportError(
            f"notebook variable {alias!r} is the module {names[0]!r}, which cannot be imported on"
            f" the worker: {exc}"
        ) from None
    return module


def _definition_like(obj: Any) -> bool:
    """Functions and classes, and wrappers of functions (functools.cache, decorators that use
    functools.wraps): what a `def` or `class` statement binds."""
    if isinstance(obj, (type, types.FunctionType)):
        return True
    try:
        return callable(obj) and "__wrapped__" in vars(obj)
    except TypeError:
        return False


def _lookup(namespace: dict[str, Any], path: str) -> Any:
    top, *rest = path.split(".")
    value = namespace.get(top)
    for attr in rest:
        value = getattr(value, attr, None)
    return value
