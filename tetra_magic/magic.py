"""The %%tetra cell magic and the %tetra line magic.

A cell flows one way: parse options -> analyse the cell -> pack the request -> send it ->
follow the job (showing it live) -> write the results back. Each step lives in its own module;
this one only wires them together and holds the configurable defaults.

`%tetra` is both the place for commands (`%tetra local [status|stop]`, `%tetra endpoints`,
`%tetra delete NAME`) and a one-line form of the cell magic: `%tetra [options] statement` runs
the statement remotely, as `%time` times one. Its options come first and take one value each
(list several with commas: `%tetra --gpu A100,H100 --deps torch,numpy
torch.cuda.get_device_name()`); the statement starts at the first word that is not an option,
or after `--`.
"""

from __future__ import annotations

import argparse
import builtins
import difflib
import io
import linecache
import re
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, validate

from tetra_magic import options as cell_options
from tetra_magic.cloud.gpus import POOLS
from tetra_magic.commands import COMMANDS

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

_REPEATABLE = {"nargs": "+", "action": "append"}
# The options of %%tetra and of %tetra's one-line form (flags, argparse's keywords).
_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--gpu",), {**_REPEATABLE, "metavar": "NAME", "help": "GPU type(s), e.g. A100"}),
    (("--cpu",), {"action": "store_true", "help": "run on a CPU worker"}),
    (("--deps",), {**_REPEATABLE, "metavar": "PKG", "help": "pip packages"}),
    (("--system-deps",), {**_REPEATABLE, "metavar": "PKG", "help": "apt packages"}),
    (("--endpoint",), {"metavar": "ID_OR_URL", "help": "use this endpoint, skip provisioning"}),
    (("--local",), {"action": "store_true", "help": "run on the embedded local endpoint"}),
    (
        ("--timeout",),
        {"type": float, "metavar": "SECONDS", "help": "cancel the cell after this long"},
    ),
    (("--name",), {"help": "a name for the job, shown in the view and the --out record"}),
    (("--out",), {"metavar": "VAR", "help": "store the job's record (id, status, timings) in VAR"}),
    (("--no-stream",), {"action": "store_true", "help": "show output only when the cell ends"}),
    (("--quiet",), {"action": "store_true", "help": "show no live view, only the cell's output"}),
    (("--verbose",), {"action": "store_true", "help": "show worker logs in the text view"}),
    (("--send",), {**_REPEATABLE, "metavar": "VAR", "help": "also send these names"}),
    (("--drop",), {**_REPEATABLE, "metavar": "VAR", "help": "do not bring these back"}),
    (("--env",), {**_REPEATABLE, "metavar": "NAME[=VALUE]", "help": "worker env vars"}),
    (("--session",), {"metavar": "NAME", "help": "run in this session, kept on the worker"}),
    (("--no-session",), {"action": "store_true", "help": "run outside TetraMagic.session"}),
    (("--files",), {**_REPEATABLE, "metavar": "PATTERN", "help": "send these files along"}),
    (("--get",), {**_REPEATABLE, "metavar": "PATTERN", "help": "bring these files back"}),
    (("--bg",), {"action": "store_true", "help": "run in the background: the kernel is free"}),
    (
        ("--detach",),
        {"action": "store_true", "help": "--bg: the job runs on after the kernel exits"},
    ),
    (("--map",), {"nargs": "+", "metavar": "NAME in EXPR", "help": "run once per item, at once"}),
    (("--workers",), {"type": int, "metavar": "N", "help": "--map: jobs running at once"}),
    (("--retries",), {"type": int, "metavar": "N", "help": "--map: retry a failed item N times"}),
    (("--batch",), {"type": int, "metavar": "K", "help": "--map: run K items per job"}),
)


def _options(one_line: bool) -> Callable[[Any], Any]:
    """magic_arguments' decorators for the options. In the one-line form each takes one value
    (`--gpu A100,H100`: a list would swallow the statement) and the statement is the rest."""

    def decorate(func: Any) -> Any:
        if one_line:
            func = argument(
                "statement", nargs=argparse.REMAINDER, help="the statement to run remotely"
            )(func)
        for flags, keywords in reversed(_OPTIONS):
            if one_line and keywords.get("nargs") == "+":
                keywords = {**keywords, "nargs": 1}  # still a list of lists, as %%tetra's
            func = argument(*flags, **keywords)(func)
        return magic_arguments(name="tetra")(func)

    return decorate


def _usage() -> str:
    flags = [flag for flags, _ in _OPTIONS for flag in flags]
    return f"%%tetra options: {' '.join(flags)} (see %%tetra? for help)"


@magics_class
class TetraMagic(Magics):
    """Run notebook cells on RunPod Serverless GPU workers (or the embedded local endpoint)."""

    default_gpu = Unicode(
        "any", help="GPU(s) for cells without --gpu: a name like A100, or a comma list."
    ).tag(config=True)
    default_deps = List(Unicode(), help="Packages every cell installs.").tag(config=True)
    default_system_deps = List(Unicode(), help="apt packages every cell installs.").tag(config=True)
    endpoint = Unicode("", help="Endpoint id or URL for cells without --endpoint.").tag(config=True)
    local = Bool(False, help="Run every cell on the embedded local endpoint.").tag(config=True)
    timeout = Float(600.0, help="Seconds a cell may run before it is cancelled.").tag(config=True)
    display = Enum(
        ["auto", "widget", "text"], "auto", help="Live view: widgets, plain text, or auto."
    ).tag(config=True)
    verbose = Bool(False, help="Show worker logs (installs, phases) in the text view.").tag(
        config=True
    )
    # RunPod endpoints the magic provisions (tetra_magic/cloud/provision.py); each distinct setting
    # is its own endpoint, found again by the hash in its name.
    worker_image = Unicode(
        "",
        help="GPU worker image ({python} and {version} are filled in); default"
        " $TETRA_MAGIC_WORKER_IMAGE, else RunPod's published runpod/flash:py{python}-latest.",
    ).tag(config=True)
    cpu_worker_image = Unicode(
        "",
        help="CPU worker image for --cpu; default $TETRA_MAGIC_CPU_WORKER_IMAGE, else"
        " RunPod's published runpod/flash-cpu:py{python}-latest.",
    ).tag(config=True)
    worker_env = Dict(help="Environment variables of the workers (not secrets).").tag(config=True)
    gpu_count = Int(1, help="GPUs per worker.").tag(config=True)
    workers_min = Int(0, help="Workers kept running (billed while idle).").tag(config=True)
    workers_max = Int(3, help="Most workers an endpoint scales to.").tag(config=True)
    idle_timeout = Int(5, help="Seconds an idle worker stays up for the next job.").tag(config=True)
    endpoint_timeout = Int(600, help="Endpoint-wide execution timeout, seconds.").tag(config=True)
    queue_timeout = Float(
        1200.0, min=1.0, help="Seconds a cell may wait for a worker before its job is cancelled."
    ).tag(config=True)
    gpu_prices = Dict(
        value_trait=Float(min=0.0),
        help="USD per second by GPU (a name like A100, or a RunPod pool id like AMPERE_80),"
        " overriding the built-in table used for cost estimates.",
    ).tag(config=True)

    session = Unicode(
        "", help="Session every cell runs in (as --session NAME); empty for none."
    ).tag(config=True)
    session_value_limit = Int(
        1_000_000,
        min=0,
        help="Bytes (pickled) up to which a value a session cell binds comes to the notebook;"
        " larger ones, and GPU tensors, stay on the worker as remote references.",
    ).tag(config=True)
    session_idle_timeout = Int(
        600,
        min=5,
        help="Seconds a session's RunPod worker stays up after each cell, billed while idle;"
        " the session ends with the worker.",
    ).tag(config=True)
    session_replay = Bool(
        False, help="Replay a lost session's cells automatically before the next cell runs."
    ).tag(config=True)
    files = List(
        Unicode(),
        help="Files every cell sends (as --files): glob patterns relative to the notebook's"
        " working directory; a folder sends its files.",
    ).tag(config=True)

    @validate("session")
    def _session_named(self, proposal: Any) -> str:
        return _checked_setting(cell_options.session_name, proposal["value"], "session")

    @validate("endpoint")
    def _endpoint_checked(self, proposal: Any) -> str:
        """A malformed address is refused when it is set, not at the next cell's first request."""
        return _checked_setting(cell_options.endpoint_address, proposal["value"], "endpoint")

    @validate("gpu_prices")
    def _pools_priced(self, proposal: Any) -> dict[str, float]:
        """Prices keyed by RunPod pool ids, whichever GPU names the user keyed them by."""
        prices = {}
        for name, price in proposal["value"].items():
            pool = POOLS.get(str(name).lower(), str(name).upper())
            if pool not in POOLS.values():
                raise TraitError(
                    f"TetraMagic.gpu_prices: {name!r} is not a GPU this table prices; use a name"
                    f" such as A100 or a RunPod pool id: {', '.join(dict.fromkeys(POOLS.values()))}"
                )
            prices[pool] = price
        return prices

    @property
    def _ipython(self) -> InteractiveShell:
        """The shell this magic belongs to. IPython makes a Magics with the shell that registers
        it (load_ipython_extension) and only that shell calls it, so there is always one."""
        assert self.shell is not None
        return self.shell

    @_options(one_line=False)
    @cell_magic
    def tetra(self, line: str, cell: str) -> Any:
        """Run this cell remotely; its variables come back, its last value is displayed."""
        number = self._cell_number()
        raw = f"%%tetra {line}\n{cell}"
        # A leading newline keeps line numbers equal to the cell's: line 1 is the %%tetra line.
        return self._run(
            parse_options(line), "\n" + self._ipython.transform_cell(cell), number, raw
        )

    @_options(one_line=True)
    # IPython types line_magic(name) as returning `_F | Callable[[_F], _F]`, not as overloads.
    @line_magic("tetra")  # type: ignore[arg-type]
    def tetra_line(self, line: str) -> Any:
        """`%tetra [options] statement` runs one statement remotely. Commands: `%tetra local
        [start|status|stop]`, `%tetra endpoints`, `%tetra delete NAME` (where cells run);
        `%tetra session [NAME|off]`, `%tetra sessions`, `%tetra pull NAME ...`, `%tetra end
        NAME ...`, `%tetra replay [--force] NAME ...` (sessions); `%tetra jobs`, `%tetra wait
        [JOB ...]`, `%tetra cancel JOB ...`, `%tetra attach JOB_ID` (background cells,
        `%%tetra --bg [--detach]`)."""
        command, _, rest = line.strip().partition(" ")
        if command in COMMANDS:
            return COMMANDS[command].run(self, rest.strip())
        args, statement = split_line(line, self.tetra_line.parser)
        self._check_not_a_misspelt_command(statement)
        if not statement:
            names = ", ".join(f"%tetra {command.usage}" for command in COMMANDS.values())
            raise UsageError(
                "%tetra: give a statement to run remotely (`%tetra [options] statement`), or a"
                f" command ({names}). Whole cells: %%tetra.\n{_usage()}"
            )
        number = self._cell_number()
        raw = self._current_cell() or f"%tetra {line}\n"
        lineno = _line_of(raw, line)
        if lineno is None:
            raw, lineno = f"%tetra {line}\n", 1
        source = "\n" * (lineno - 1) + self._ipython.transform_cell(statement)
        return self._run(args, source, number, raw)

    def _check_not_a_misspelt_command(self, statement: str) -> None:
        """`%tetra endpoint` would run the name `endpoint` remotely, a NameError on a worker
        after a job's wait: a lone undefined name close to a command's is a UsageError."""
        if not statement.isidentifier() or statement in self._ipython.user_ns:
            return
        if hasattr(builtins, statement):
            return
        close = difflib.get_close_matches(statement, COMMANDS, n=1, cutoff=0.75)
        if close:
            raise UsageError(
                f"%tetra {statement}: no such command; did you mean %tetra"
                f" {COMMANDS[close[0]].usage}? (commands: {', '.join(COMMANDS)})"
            )

    def _run(self, args: argparse.Namespace, source: str, number: int, raw: str) -> Any:
        from tetra_magic.run import run_cell

        opts = cell_options.build(args, self)
        filename = f"<tetra-cell-{number}>"
        linecache.cache[filename] = (len(raw), None, raw.splitlines(True), filename)
        return run_cell(
            self.shell,
            opts,
            source,
            filename,
            display=self.display,
            started=time.time(),
            prices=dict(self.gpu_prices),
        )

    def _cell_number(self) -> int:
        """This cell's In[] number. The input history holds the cell before it runs on every
        IPython version; execution_count is bumped before or after, depending on the version."""
        cells = self._history()
        if cells:
            return len(cells) - 1
        return max(self._ipython.execution_count - 1, 1)

    def _history(self) -> list[str]:
        history = getattr(self.shell, "history_manager", None)
        return getattr(history, "input_hist_raw", None) or []

    def _current_cell(self) -> str | None:
        cells = self._history()
        return cells[-1] if cells else None


def _checked_setting(check: Callable[[str, str], str], value: str, trait: str) -> str:
    """`value` of TetraMagic.`trait` ("" for none), checked as its option is: a TraitError,
    what `%config` shows, with the option's own message."""
    if value:
        try:
            check(value, f"TetraMagic.{trait}")
        except UsageError as exc:
            raise TraitError(str(exc)) from None
    return value


# `--map NAME in EXPR` up to the next option: EXPR is Python, taken as written (its quotes and
# spaces are its own: `--map f in ['a.csv', 'b.csv']`), not split into words.
_MAP_CLAUSE = re.compile(
    r"(?:^|\s)--map\s+(?P<name>\S+)\s+in\s+(?P<items>.+?)(?=\s+--[A-Za-z]|\s*$)"
)


def parse_options(option_text: str) -> argparse.Namespace:
    """%%tetra's options, with the valid ones listed when one is not."""
    _check_quotes(option_text, "%%tetra: the options have")
    clause = _MAP_CLAUSE.search(option_text)
    if clause is not None:
        option_text = option_text[: clause.start()] + " " + option_text[clause.end() :]
    try:
        args = _unquoted(TetraMagic.tetra.parser.parse_argstring(option_text))
    except UsageError as exc:
        raise UsageError(f"{exc}\n{_usage()}") from None
    if clause is not None:
        args.map = [clause["name"], "in", clause["items"]]
    return args


def split_line(line: str, parser: Any) -> tuple[argparse.Namespace, str]:
    """`--gpu A100 --local x = f(y)` -> (the options, "x = f(y)"), by the line form's parser
    (`tetra_line.parser`): its options take one value each, and the statement is the rest of
    the line from the first word that is not an option, or after `--`, as written."""
    _check_quotes(line, "%tetra: the line has")
    try:
        args, unknown = parser.parse_argstring(line, partial=True)
    except UsageError as exc:
        raise UsageError(f"%tetra: {exc}\n{_usage()}") from None
    if unknown:
        flags = ", ".join(flag for flags, _ in _OPTIONS for flag in flags)
        raise UsageError(f"%tetra: unknown option {unknown[0].partition('=')[0]}; options: {flags}")
    words = args.statement
    del args.statement
    ends = len(arg_split(line, strict=False)) - len(words) + (words[:1] == ["--"])
    return _unquoted(args), _after_words(line, ends)


def _check_quotes(text: str, where: str) -> None:
    """IPython splits a magic's line as a shell would, and an unclosed quote stops it with a
    bare ValueError from shlex; say what is wrong instead, before argparse sees the line."""
    try:
        arg_split(text)
    except ValueError:
        raise UsageError(
            f"{where} an unclosed quote: {text.strip()!r}; close it (--deps 'torch>=2.3')"
            " or leave the quotes out"
        ) from None


def _after_words(line: str, count: int) -> str:
    """The line after its first `count` words, split as IPython splits a magic's arguments."""
    stream = io.StringIO(line)  # what shlex makes of a str, kept to read the position
    lexer = shlex.shlex(stream, posix=False)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        for _ in range(count):
            lexer.get_token()
    except ValueError:  # an unclosed quote runs to the end of the line
        return ""
    return line[stream.tell() :].strip()


def _unquoted(args: argparse.Namespace) -> argparse.Namespace:
    """Values unquoted (IPython splits the line keeping quotes: `--deps 'torch>=2'`)."""
    for key, value in vars(args).items():
        setattr(args, key, _unquote(value))
    return args


def _unquote(value: Any) -> Any:
    """'x' or "x" -> x, through the lists of repeatable options."""
    if isinstance(value, list):
        return [_unquote(item) for item in value]
    if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _line_of(cell: str, magic_line: str) -> int | None:
    """The 1-based line of the cell on which `%tetra <magic_line>` stands."""
    for number, text in enumerate(cell.splitlines(), 1):
        if text.strip().startswith("%tetra") and magic_line.strip() in text:
            return number
    return None
