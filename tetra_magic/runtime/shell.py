"""IPython syntax in a remote cell: the `get_ipython()` its transformed lines call.

IPython rewrites `!cmd`, `x = !cmd`, `%pip`, `%time` and `%matplotlib inline` into calls on the
shell before the cell is shipped; on the worker, `Shell` runs them as IPython would at home.
`{expr}` and `$name` in a shell command are expanded from the cell's namespace, as IPython's
var_expand does; the kernel's analysis reads the same fields (`expansion_fields`) as the names
such a line reads.
"""

from __future__ import annotations

import re
import string
import subprocess
import sys
import time
from typing import Any


def expansion_fields(command: str) -> list[str]:
    """The Python expressions IPython substitutes into a shell command: `{expr}` and `$name`
    (`$$` is a literal `$`; `$name` inside single quotes stays as it is)."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(command))
    except ValueError:
        return fields
    for literal, field, _, _ in parsed:
        unquoted = "".join(literal.split("'")[::2])
        fields += re.findall(r"(?<!\$)\$([A-Za-z_][\w.]*)", unquoted)
        if field:
            fields.append(field)
    return fields


def expand(command: str, namespace: dict[str, Any]) -> str:
    """`command` with its fields replaced by their values in `namespace`, as IPython's
    var_expand does it; unchanged if any of them fails to evaluate, as there."""
    try:
        values = {field: str(eval(field, namespace)) for field in expansion_fields(command)}
    except Exception:
        return command
    parts = re.split(r"(\{\{|\}\}|\{[^{}]*\})", command)
    for index, part in enumerate(parts):
        if part in ("{{", "}}"):
            parts[index] = part[0]
        elif part.startswith("{") and part.endswith("}"):
            parts[index] = values.get(part[1:-1], part)
        else:
            parts[index] = _expand_dollars(part, values)
    return "".join(parts)


def _expand_dollars(text: str, values: dict[str, str]) -> str:
    pieces = text.split("'")
    for index in range(0, len(pieces), 2):
        pieces[index] = re.sub(
            r"\$(\$?)([A-Za-z_][\w.]*)",
            lambda m: "$" + m[2] if m[1] else values.get(m[2], m[0]),
            pieces[index],
        )
    return "'".join(pieces)


class Shell:
    """Enough of `get_ipython()` for the IPython syntax a cell may hold (`!cmd`, `x = !cmd`,
    `%pip`, `%time`, `%matplotlib inline`): it runs on the worker as IPython would run it at
    home."""

    def __new__(cls) -> Any:
        return cls

    @staticmethod
    def system(cmd: str) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        subprocess.run(expand(cmd, sys._getframe(1).f_globals), shell=True, check=False)

    @staticmethod
    def getoutput(cmd: str, split: bool = True, depth: int = 0) -> list[str] | str:
        command = expand(cmd, sys._getframe(depth + 1).f_globals)
        done = subprocess.run(command, shell=True, capture_output=True, text=True)
        out = done.stdout + done.stderr
        return out.splitlines() if split else out

    @staticmethod
    def run_line_magic(name: str, line: str, _stack_depth: int = 1) -> Any:
        if name == "pip":
            return Shell.system(f"{sys.executable} -m uv pip {line} --python {sys.executable}")
        if name == "time":
            return _time(line, sys._getframe(_stack_depth).f_globals)
        if name == "matplotlib":
            if line.strip() not in ("", "inline"):
                raise NotImplementedError(
                    f"%matplotlib {line}: figures come back from a %%tetra cell as images"
                    " (inline) only"
                )
            return None
        raise NotImplementedError(f"%{name} is not available in a %%tetra cell")

    @staticmethod
    def run_cell_magic(name: str, line: str, cell: str) -> Any:
        raise NotImplementedError(f"%%{name} is not available in a %%tetra cell")


def _time(statement: str, namespace: dict[str, Any]) -> Any:
    start = time.perf_counter()
    try:
        value = eval(statement, namespace)
    except SyntaxError:
        exec(statement, namespace)
        value = None
    print(f"Wall time: {time.perf_counter() - start:.3f} s")
    return value
