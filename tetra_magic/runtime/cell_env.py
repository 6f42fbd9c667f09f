"""What a cell changes in the worker's process for its own duration: its --env variables, and
stand-ins for stdin. The same process runs later cells (other kernels' too, on the published
worker), so everything is put back however the cell ends.

Nobody can type on a worker: what would wait for someone to (input(), getpass(), breakpoint(),
reading sys.stdin) fails at once instead, saying how to pass the value.
"""

from __future__ import annotations

import builtins
import getpass
import io
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn


def for_this_cell(env: dict[str, str]) -> Callable[[], None]:
    """Set the cell's --env variables and the stdin stand-ins; returns what puts everything
    back."""
    saved_env = {name: os.environ.get(name) for name in env}
    replaced: dict[tuple[Any, str], Any] = {
        (builtins, "input"): _no_stdin("input()"),
        (getpass, "getpass"): _no_stdin("getpass()"),
        (sys, "breakpointhook"): _no_stdin("breakpoint()"),
        (sys, "stdin"): _stdin_stand_in(sys.stdin),
    }
    saved = {key: getattr(*key) for key in replaced}
    os.environ.update(env)
    for (owner, attr), value in replaced.items():
        setattr(owner, attr, value)

    def restore() -> None:
        for (owner, attr), value in saved.items():
            setattr(owner, attr, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return restore


def _stdin_message(what: str) -> str:
    if what == "breakpoint()":
        return (
            "breakpoint() waits for debugger commands, and stdin is not available on the"
            " worker: debug the code in a cell without %%tetra"
        )
    return (
        f"{what} waits for someone to type, and stdin is not available on the worker: ask in"
        " the notebook instead (`value = input()` in a cell without %%tetra) and use `value`"
        " in this cell; for a secret, set it in the kernel's environment and pass it with"
        " --env NAME"
    )


def _no_stdin(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise EOFError(_stdin_message(what))

    return refuse


def _stdin_stand_in(stdin: Any) -> io.TextIOBase:
    """sys.stdin during a cell: reading it ends the cell with the message, rather than with a
    bare EOF from /dev/null (or a hang on a worker whose stdin is a terminal). The rest is the
    stream's (`stdin`, the process's own: its fd, its encoding), so code that looks at stdin or
    tidies it up, as multiprocessing's children do, works as it does at home."""

    class NoStdin(io.TextIOBase):
        encoding = getattr(stdin, "encoding", None) or "utf-8"

        def readable(self) -> bool:
            return True

        def fileno(self) -> int:
            if stdin is None:
                raise io.UnsupportedOperation("stdin has no file descriptor")
            return int(stdin.fileno())

        def read(self, *args: Any) -> NoReturn:
            raise EOFError(_stdin_message("reading sys.stdin"))

        readline = readlines = read

    return NoStdin()
