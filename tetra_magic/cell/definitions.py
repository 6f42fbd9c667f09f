"""Where the notebook defined its functions and classes: the `def` or `class` statement, from
the cells IPython keeps in linecache.

A definition travels to the worker as this source and is executed there in the cell's
`__main__`, so it works on any Python version and its functions see the cell's globals, as at
home. A function points at its statement (its code's file and first line); a class at the
statement around its methods, or, when it has none of its own (a dataclass, an Enum, an
exception class), at the newest cell that defines a class of that name at its top level.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import re
import tokenize
import types
from collections.abc import Callable, Iterable
from typing import Any

Definition = list  # [source, filename, first line]


class Finder:
    """The definition statements of notebook names; `cells` are the kernel's cell files,
    newest first."""

    def __init__(self, user_ns: dict[str, Any], cells: Iterable[str]) -> None:
        self.user_ns = user_ns
        self.cells = list(cells)
        self.cell_set = set(self.cells)

    def __call__(self, name: str) -> Definition | None:
        """The statement that defined `user_ns[name]`, if a cell holds it."""
        value = self.user_ns.get(name)
        if isinstance(value, type):
            return self._class(name, value)
        # typeshed types unwrap's argument as a callable; it follows __wrapped__ on any object.
        code = getattr(inspect.unwrap(value), "__code__", None)  # type: ignore[arg-type]
        if isinstance(code, types.CodeType) and code.co_filename in self.cell_set:
            return _statement(code.co_filename, code.co_firstlineno, name)
        return None

    def _class(self, name: str, cls: type) -> Definition | None:
        for filename, line in _method_lines(cls, self.cell_set):
            starts = [n for n in _class_lines(filename, name) if n <= line]
            if starts and (found := _statement(filename, starts[-1], name)):
                return found
        for filename in self.cells:
            starts = _class_lines(filename, name)
            if starts and (found := _statement(filename, starts[-1], name)):
                return found
        return None


def cells_newest_first(number: Callable[[str], int | None]) -> list[str]:
    """The cell files linecache holds, by their cell number, newest first."""
    numbered = [(n, name) for name in list(linecache.cache) if (n := number(name)) is not None]
    return [name for _, name in sorted(numbered, reverse=True)]


def _method_lines(cls: type, cells: set[str]) -> Iterable[tuple[str, int]]:
    """(file, line) of the class's own functions that a cell holds."""
    for item in vars(cls).values():
        if isinstance(item, (staticmethod, classmethod)):
            item = item.__func__
        elif isinstance(item, property):
            item = item.fget
        code = getattr(item, "__code__", None)
        qualname = getattr(item, "__qualname__", "")
        if (
            isinstance(code, types.CodeType)
            and code.co_filename in cells
            and qualname.startswith(cls.__qualname__ + ".")
        ):
            yield code.co_filename, code.co_firstlineno


def _class_lines(filename: str, name: str) -> list[int]:
    """The lines of `filename` where a top-level `class name` statement starts (decorators
    included)."""
    lines = linecache.getlines(filename)
    pattern = re.compile(rf"class\s+{re.escape(name)}\b")
    starts = []
    for index, line in enumerate(lines):
        if pattern.match(line):
            first = index
            while first > 0 and lines[first - 1].startswith("@"):
                first -= 1
            starts.append(first + 1)
    return starts


def _statement(filename: str, line: int, name: str) -> Definition | None:
    """The top-level def/class statement named `name` that starts at `line`, if it is one."""
    lines = linecache.getlines(filename)[line - 1 :]
    if not lines or lines[0][:1].isspace():
        return None
    try:
        source = "".join(inspect.getblock(lines))
        body = ast.parse(source).body
    except (SyntaxError, IndexError, tokenize.TokenError):
        return None
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    if len(body) == 1 and isinstance(body[0], kinds) and body[0].name == name:
        return [source, filename, line]
    return None
