"""A value a remote cell bound that this kernel cannot load (its class is of a package only the
worker has): the notebook keeps it as an `Unloaded` stand-in holding the blob as it came, and a
later remote cell that reads the name sends that blob unchanged (packing.py), so on the worker
the name is the real object again. Reading it here raises an error naming what to install.

The user reads the stand-in as their own thing: `type(model)` and a TypeError's message name
the class as the user imports it (`sklearn.linear_model.LinearRegression`, not the module
`sklearn.linear_model._base` it is defined in, nor this module's class).
"""

from __future__ import annotations

import functools
import pickletools
from typing import Any, NoReturn

from tetra_magic.errors import INSTALL_NAMES, TetraError

_GLOBALS = {"GLOBAL", "STACK_GLOBAL", "INST"}
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING"}
_CONTAINERS = {"EMPTY_LIST": "list", "EMPTY_DICT": "dict", "EMPTY_SET": "set"}
_PLUMBING = ("copyreg", "builtins", "cloudpickle", "_codecs", "tetra_magic", "__main__")


class Unloaded:
    """Stands in the notebook for `name`'s value, which came as `blob` and cannot be loaded
    here because of `error` (an ImportError). Its repr says so; attribute access, calls,
    indexing and iteration raise a TetraError naming the package to install here. Made as
    an instance of a subclass named as the value's own class (`_named`)."""

    __slots__ = ("_tetra_blob", "_tetra_kind", "_tetra_missing", "_tetra_name", "_tetra_why")

    def __new__(cls, name: str, blob: bytes, error: ImportError) -> Unloaded:
        kind = describe(blob, error.name)
        self = object.__new__(_named(kind))
        set_ = object.__setattr__
        set_(self, "_tetra_name", name)
        set_(self, "_tetra_blob", blob)
        set_(self, "_tetra_kind", kind)
        set_(self, "_tetra_why", str(error))
        set_(self, "_tetra_missing", (error.name or "").partition(".")[0])
        return self

    def __repr__(self) -> str:
        return (
            f"<tetra: {self._tetra_kind}, not loadable here: {self._tetra_why}; it travels to"
            " later %%tetra cells as it came>"
        )

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):  # IPython's and libraries' probes (`_repr_html_`, `__array__`)
            raise AttributeError(attr)
        self._tetra_refuse()

    def __setattr__(self, attr: str, value: Any) -> None:
        self._tetra_refuse()

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._tetra_refuse()

    def __getitem__(self, key: Any) -> NoReturn:
        self._tetra_refuse()

    def __iter__(self) -> NoReturn:
        self._tetra_refuse()

    def __len__(self) -> NoReturn:
        self._tetra_refuse()

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{self._tetra_name} is a stand-in for a value this kernel cannot load: a %%tetra"
            " cell gets it by reading its own name, not inside another value"
        )

    def _tetra_refuse(self) -> NoReturn:
        short = self._tetra_kind.rpartition(".")[2]
        article = "an" if short[:1].lower() in "aeiou" else "a"
        missing = self._tetra_missing
        install = INSTALL_NAMES.get(missing, missing.replace("_", "-")) if missing else ""
        fix = f"pip install {install} here, or use it in %%tetra cells"
        raise TetraError(
            f"{self._tetra_name} is {article} {short} that this kernel cannot load"
            f" ({self._tetra_why}): {fix if install else 'use it in %%tetra cells'}"
        )


@functools.lru_cache(maxsize=256)
def _named(kind: str) -> type[Unloaded]:
    """The stand-ins' class for values of `kind` ("pkg.mod.Class", or "list holding ..."),
    under the name the user knows the value's class by (a list's is `list`)."""
    path = kind.partition(" holding ")[0]
    if path == kind and "." not in kind:  # nothing told: the plain stand-in
        return Unloaded
    module, _, qualname = path.rpartition(".")
    namespace = {"__slots__": (), "__module__": module or "builtins", "__qualname__": qualname}
    return type(qualname.rpartition(".")[2], (Unloaded,), namespace)


def blob_of(value: Any) -> bytes | None:
    """The blob `value` came as, if it is a stand-in; None otherwise."""
    return value._tetra_blob if isinstance(value, Unloaded) else None


def note(name: str, value: Any) -> str | None:
    """The one line telling that `name` is kept as a stand-in; None if it is not one."""
    if not isinstance(value, Unloaded):
        return None
    return (
        f"tetra: {name} is kept as a stand-in ({value._tetra_kind} cannot be loaded here:"
        f" {value._tetra_why}); later %%tetra cells get it as it came"
    )


def describe(blob: bytes, missing: str | None = None) -> str:
    """What the pickle in `blob` holds, as well as its opcodes tell without loading it: the
    class it names first (one of the `missing` module's, where it names one), held in a list,
    dict or set if the pickle starts with one."""
    body = blob.partition(b"\n")[2]
    container, first, found = None, None, None
    strings: list[str] = []
    memo: dict[int, str] = {}
    top = (missing or "").partition(".")[0]
    try:
        for opcode, arg, _ in pickletools.genops(body):
            name = opcode.name
            if container is None and name in _CONTAINERS and first is None:
                container = _CONTAINERS[name]
            if name in _STRINGS:
                strings.append(str(arg))
            elif name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif name in {"BINGET", "LONG_BINGET", "GET"} and arg in memo:
                strings.append(memo[arg])
            path = None
            if name in {"GLOBAL", "INST"}:
                module, _, qualname = str(arg).partition(" ")
                path = _public(module, qualname)
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                path = _public(strings[-2], strings[-1])
            if path is None or path.startswith(_PLUMBING):
                continue
            first = first or path
            if top and path.partition(".")[0] == top:
                found = path
                break
    except Exception:
        pass
    kind = found or first or "value"
    return f"{container} holding {kind}" if container else kind


def _public(module: str, qualname: str) -> str:
    """The dotted name of `qualname` of `module` as the user imports it: from the package
    above a private module (`sklearn.linear_model._base` -> `sklearn.linear_model`), which is
    where a package's public name for the class lives."""
    parts = module.split(".")
    private = next((i for i, p in enumerate(parts) if p.startswith("_") and i), len(parts))
    return ".".join([*parts[:private], qualname])
