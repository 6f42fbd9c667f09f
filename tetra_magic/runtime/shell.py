"""IPython syntax in a remote cell: the `get_ipython()` its transformed lines call.

IPython rewrites `!cmd`, `x = !cmd` and `%magic line` (`%pip`, `%time`, `%timeit`...) into calls on
the shell before the cell is shipped; on the worker, `Shell` runs them as IPython would at home.
`{expr}` and `$name` in a shell command are expanded from the cell's namespace, as IPython's
var_expand does; the kernel's analysis reads the same fields (`expansion_fields`) as the names
such a line reads.
"""

from __future__ import annotations

import os
import re
import shlex
import string
import subprocess
import sys
from typing import Any

from . import timing


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


def _pip_command(line: str) -> str:
    """`%pip LINE` as uv runs it for this interpreter; installs and uninstalls go into the
    notebook's own package layer where our worker gives it one (TETRA_PACKAGES, see
    worker/deps.py), so another notebook on the worker never sees them."""
    layer = os.environ.get("TETRA_PACKAGES")
    into = ""
    if layer and line.split()[:1] in (["install"], ["uninstall"]):
        into = f" --target {shlex.quote(layer)}"
    return f"{sys.executable} -m uv pip {line} --python {sys.executable}{into}"


class Shell:
    """Enough of `get_ipython()` for the IPython syntax a cell may hold (`!cmd`, `x = !cmd`,
    `%pip`, `%time`, `%timeit`, `%env`, `%matplotlib inline`): it runs on the worker as IPython
    would run it at home. Magics that act on the kernel itself are refused by name, with why."""

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
        """`%name line`, run in the namespace of the code that wrote it (the cell's, or a
        function's of the cell, whose locals %time and %timeit see as at home)."""
        caller = sys._getframe(_stack_depth)
        namespace = caller.f_globals
        local_ns = caller.f_locals if caller.f_locals is not namespace else None
        if name == "pip":  # {expr} and $name expanded, as IPython expands most magics' lines
            sys.stdout.flush()
            subprocess.run(_pip_command(expand(line, namespace)), shell=True, check=False)
            return None
        if name in ("env", "set_env"):
            return _env(name, expand(line, namespace))
        if name == "time":
            return timing.time_line(line, namespace, local_ns)
        if name == "timeit":
            return timing.timeit_line(line, namespace, local_ns)
        if name == "matplotlib":
            if line.strip() not in ("", "inline"):
                raise NotImplementedError(
                    f"%matplotlib {line}: figures come back from a %%tetra cell as images"
                    " (inline) only"
                )
            return None
        if name.startswith("%"):  # `%%name` below a cell's first line: IPython passes it on
            raise NotImplementedError(_cell_magic_refusal(name[1:]))
        raise NotImplementedError(_refusal(name))

    @staticmethod
    def run_cell_magic(name: str, line: str, cell: str) -> Any:
        raise NotImplementedError(_cell_magic_refusal(name))


# Line magics that act on the kernel itself, which a remote cell has not, and why.
_AT_HOME = {
    **dict.fromkeys(
        ("cd", "pushd", "popd", "dirs", "bookmark"),
        "it moves the kernel's working directory; a remote cell works in its own on the"
        " worker (os.chdir() there, or --files to send files to it)",
    ),
    **dict.fromkeys(
        ("who", "whos", "who_ls", "reset", "reset_selective", "xdel", "store"),
        "it works on the notebook's variables, which live in the kernel",
    ),
    **dict.fromkeys(
        ("load_ext", "unload_ext", "reload_ext", "config", "autoreload", "aimport"),
        "it sets up the kernel's IPython, which a remote cell does not run in",
    ),
    **dict.fromkeys(
        ("history", "hist", "recall", "rerun", "macro", "save", "load", "edit", "run"),
        "it works on the kernel's history and files",
    ),
    **dict.fromkeys(
        ("conda", "mamba", "micromamba"),
        "conda does not manage the worker's packages: use --deps or %pip",
    ),
}


def _refusal(name: str) -> str:
    """Why `%name` does not run in a remote cell, and what to do instead."""
    reason = _AT_HOME.get(name, "a remote cell has no IPython shell to run it")
    return (
        f"%{name} is not available in a %%tetra cell: {reason}. Run it in a cell without"
        " %%tetra. A remote cell runs %time, %timeit, %pip, %env NAME=VALUE, !cmd and"
        " %matplotlib inline."
    )


def _cell_magic_refusal(name: str) -> str:
    """Why `%%name` does not run in a remote cell: a cell has one cell magic, and a remote
    cell's is %%tetra."""
    instead = {
        "time": "time its statements with `%time statement`",
        "timeit": "time a statement with `%timeit statement` (or `r = %timeit -o statement`)",
    }.get(name, f"run %%{name} in a cell without %%tetra")
    return f"%%{name} in a %%tetra cell: a cell has one cell magic, here %%tetra; {instead}"


def _env(name: str, line: str) -> Any:
    """`%env NAME=VALUE` (or `NAME VALUE`, or `%set_env`) sets a variable in the worker's
    process, as the cell's os.environ[...] would; `%env NAME` gives its value there. The whole
    environment is not listed: the worker's holds its own credentials."""
    text = line.strip()
    if not text and name == "set_env":
        raise ValueError("%set_env: usage is `%set_env NAME=VALUE`")
    if not text:
        raise NotImplementedError(
            "%env without a name would list the worker's whole environment, which holds its"
            " own credentials: name the variable (`%env NAME`, `%env NAME=VALUE`)"
        )
    variable, sep, value = text.partition("=") if "=" in text else text.partition(" ")
    variable, value = variable.strip(), value.strip()
    if not sep:
        if variable not in os.environ:
            raise KeyError(f"Environment does not have key: {variable}")
        return os.environ[variable]
    if re.search(r"\s", variable):
        raise ValueError(f"%{name}: refusing to set env var with whitespace: '{value}'")
    os.environ[variable] = value
    print(f"env: {variable}={value}")
    return None
