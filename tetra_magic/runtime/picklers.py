"""cloudpickle's Pickler and pickle's Unpickler, adapted to how the notebook's own definitions
travel (pickling.MainNames decides which travel how; see its docstring).

In a pickle, markers stand for what the other side has in its own `__main__`: a notebook
definition, by its path; `__main__`'s globals; a value a session keeps for a remote reference.
The loader puts that side's objects in their place. Both sides import this module: the kernel
to pack a cell's inputs and load its results, the worker the other way round.
"""

from __future__ import annotations

import dis
import pickle
import sys
import types
from typing import Any, Protocol

import cloudpickle

# Types that are never a notebook definition: pickling skips the name lookup for them.
PLAIN = (int, float, str, bytes, bool, complex, type(None), list, tuple, dict, set)
_MARKERS = "_tetra_main"


class Names(Protocol):
    """What the picklers need of a MainNames."""

    namespace: dict[str, Any]
    bytecode: list[str]
    modules_named: set[str]

    def path(self, obj: Any) -> str | None: ...

    def resolve(self, path: str) -> Any: ...

    def kept_value(self, ref: str) -> Any: ...


def global_names(code: types.CodeType) -> list[str]:
    """The global names `code` (and the code nested in it) reads: what a definition needs
    from `__main__` when it is executed and when its functions run."""
    found: list[str] = []
    for instruction in dis.get_instructions(code):
        loads = instruction.opname in ("LOAD_NAME", "LOAD_GLOBAL", "LOAD_FROM_DICT_OR_GLOBALS")
        if loads and instruction.argval not in found:
            found.append(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found += [name for name in global_names(const) if name not in found]
    return found


def markers() -> types.ModuleType:
    """A module of markers, registered in sys.modules so that pickle can name them: in a
    pickle, `main(path)` stands for a notebook definition, `namespace()` for `__main__`'s
    globals and `kept(ref)` for a value a session keeps for a remote reference; the loader
    (`Unpickler`) puts this side's in their place."""
    module = sys.modules.get(_MARKERS)
    if module is None:
        module = types.ModuleType(_MARKERS)

        def main(path: str) -> Any:
            raise RuntimeError("a tetra pickle is loaded with MainNames.load")

        def namespace() -> Any:
            raise RuntimeError("a tetra pickle is loaded with MainNames.load")

        def kept(ref: str) -> Any:
            raise RuntimeError("a tetra pickle is loaded with MainNames.load")

        for marker in (main, namespace, kept):
            marker.__module__, marker.__qualname__ = _MARKERS, marker.__name__
            setattr(module, marker.__name__, marker)
        sys.modules[_MARKERS] = module
    return module


class Unpickler(pickle.Unpickler):
    """pickle's Unpickler, except that a class cloudpickle shipped by value and finds it has
    already (it was pickled in this process: one the notebook made inside a function, say) is
    taken as it is, not overwritten with the shipped copy's attributes: loading never alters
    an existing class."""

    def __init__(self, file: Any, names: Names) -> None:
        super().__init__(file)
        self.names = names
        module = sys.modules.get("cloudpickle.cloudpickle")
        tracked = getattr(module, "_DYNAMIC_CLASS_TRACKER_BY_CLASS", {})
        self.existing = {id(cls) for cls in list(tracked.keys())}

    def find_class(self, module: str, name: str) -> Any:
        if module == _MARKERS:
            return {
                "main": self.names.resolve,
                "namespace": lambda: self.names.namespace,
                "kept": self.names.kept_value,
            }[name]
        found = super().find_class(module, name)
        if module != "cloudpickle.cloudpickle" or name != "_class_setstate":
            return found
        return lambda cls, state: cls if id(cls) in self.existing else found(cls, state)


# Stands for `__main__`'s globals in a function's reduction: pickle never offers a dict to
# reducer_override, so the namespace itself could not be replaced by the marker.
_NAMESPACE = type("Namespace", (), {})()
_PLAIN_TYPES = frozenset(PLAIN)


class Pickler(cloudpickle.Pickler):
    """cloudpickle's Pickler, with notebook definitions referred to by name (`markers`) and
    functions shipped as bytecode given `__main__`'s globals instead of a private copy."""

    def __init__(self, file: Any, names: Names, files: set[str] | None, to_cpu: bool) -> None:
        super().__init__(file)
        self.names, self.files, self.to_cpu = names, files, to_cpu
        self.marks = markers()
        self.code_of: str | None = None
        self.devices: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:  # not for builtin containers
        if type(obj) in _PLAIN_TYPES:  # common cases first
            return NotImplemented
        if obj is _NAMESPACE:
            return self.marks.namespace, ()
        if isinstance(obj, (type, types.FunctionType)):  # by reference, unless by value below
            self.names.modules_named.add(getattr(obj, "__module__", None) or "")
        path = self.names.path(obj) if callable(obj) else None  # definitions are callable
        if path is not None:
            return self.marks.main, (path,)
        if isinstance(obj, types.FunctionType) and obj.__globals__ is self.names.namespace:
            return self._main_function(obj)
        if isinstance(obj, types.CodeType):
            self.code_of = self.code_of or getattr(obj, "co_qualname", obj.co_name)
            if self.files is not None:
                self.files.add(obj.co_filename)
            constructor, args = self.dispatch_table[types.CodeType](obj)
            named = (obj.co_filename if arg == "<dynamic-code>" else arg for arg in args)
            return constructor, tuple(named)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor) and obj.device.type != "cpu":
            self.devices.add(str(obj.device))
            if self.to_cpu:
                return obj.detach().cpu().__reduce_ex__(self.proto)
        return super().reducer_override(obj)

    def _main_function(self, func: types.FunctionType) -> Any:
        """cloudpickle's by-value reduction, but with `__main__` itself as the globals (a
        reference, resolved on loading) instead of a copy of the globals it reads; the names
        it reads travel as names of their own (`MainNames.bytecode`)."""
        self.names.bytecode += global_names(func.__code__)
        make, args, state, items, pairs, setstate = self._dynamic_function_reduce(func)
        state[1]["__globals__"] = {}
        return make, (args[0], _NAMESPACE, *args[2:]), state, items, pairs, setstate
