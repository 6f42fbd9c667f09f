"""A value a remote cell bound that this kernel cannot load (its class is of a package only the
worker has): the notebook keeps it as an `Unloaded` stand-in holding the blob as it came, and a
later remote cell that reads the name sends that blob unchanged (packing.py), so on the worker
the name is the real object again. Reading it here raises an error naming what to install.
"""

from __future__ import annotations

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
    indexing and iteration raise a TetraError naming the package to install here."""

    __slots__ = ("_tetra_blob", "_tetra_kind", "_tetra_missing", "_tetra_name", "_tetra_why")

    def __init__(self, name: str, blob: bytes, error: ImportError) -> None:
        set_ = object.__setattr__
        set_(self, "_tetra_name", name)
        set_(self, "_tetra_blob", blob)
        set_(self, "_tetra_kind", describe(blob, error.name))
        set_(self, "_tetra_why", str(error))
        set_(self, "_tetra_missing", (error.name or "").partition(".")[0])

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


def blob_of(value: Any) -> bytes | None:
    """The blob `value` came as, if it is a stand-in; None otherwise."""
    return value._tetra_blob if type(value) is Unloaded else None


def note(name: str, value: Any) -> str | None:
    """The one line telling that `name` is kept as a stand-in; None if it is not one."""
    if type(value) is not Unloaded:
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
                path = str(arg).replace(" ", ".")
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                path = f"{strings[-2]}.{strings[-1]}"
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
