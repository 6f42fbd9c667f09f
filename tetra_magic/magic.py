"""The %%tetra cell magic and the %tetra line magic.

A cell flows one way: parse options -> analyse the cell -> pack the request -> send it ->
follow the job (showing it live) -> write the results back. Each step lives in its own module;
this one only wires them together and holds the configurable defaults.

`%tetra` is both the place for commands (`%tetra local`, `%tetra endpoints`, `%tetra delete
NAME`) and a one-line form of the cell magic: `%tetra [options] statement` runs the statement
remotely, as `%time` times one. Its options come first and take one value each (list several
with commas: `%tetra --gpu A100,H100 --deps torch,numpy torch.cuda.get_device_name()`); the
statement starts at the first word that is not an option, or after `--`.
"""

from __future__ import annotations

import linecache
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, validate

from tetra_magic import options as cell_options
from tetra_magic.analysis import analyse, transform
from tetra_magic.errors import cell_labeler, syntax_error
from tetra_magic.gpus import POOLS

_COMMANDS = ("local", "endpoints", "delete")


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
    # RunPod endpoints the magic provisions (tetra_magic/provision.py); each distinct setting
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

    @magic_arguments()
    @argument("--gpu", nargs="+", action="append", metavar="NAME", help="GPU type(s), e.g. A100")
    @argument("--cpu", action="store_true", help="run on a CPU worker")
    @argument("--deps", nargs="+", action="append", metavar="PKG", help="pip packages")
    @argument("--system-deps", nargs="+", action="append", metavar="PKG", help="apt packages")
    @argument("--endpoint", metavar="ID_OR_URL", help="use this endpoint, skip provisioning")
    @argument("--local", action="store_true", help="run on the embedded local endpoint")
    @argument("--timeout", type=float, metavar="SECONDS", help="cancel the cell after this long")
    @argument("--name", help="a name for the job, shown in the view and the --out record")
    @argument("--out", metavar="VAR", help="store the job's record (id, status, timings) in VAR")
    @argument("--no-stream", action="store_true", help="show output only when the cell ends")
    @argument("--quiet", action="store_true", help="show no live view, only the cell's output")
    @argument("--verbose", action="store_true", help="show worker logs in the text view")
    @argument("--send", nargs="+", action="append", metavar="VAR", help="also send these names")
    @argument("--drop", nargs="+", action="append", metavar="VAR", help="do not bring these back")
    @argument("--env", nargs="+", action="append", metavar="NAME[=VALUE]", help="worker env vars")
    @cell_magic
    def tetra(self, line: str, cell: str) -> Any:
        """Run this cell remotely; its variables come back, its last value is displayed."""
        number = self._cell_number()
        raw = f"%%tetra {line}\n{cell}"
        # A leading newline keeps line numbers equal to the cell's: line 1 is the %%tetra line.
        return self._run(line, "\n" + transform(cell), number, raw)

    @line_magic("tetra")
    def tetra_line(self, line: str) -> Any:
        """`%tetra [options] statement` runs one statement remotely; `%tetra local`,
        `%tetra endpoints`, `%tetra delete NAME` manage where cells run."""
        command, _, rest = line.strip().partition(" ")
        if command in _COMMANDS:
            return self._command(command, rest.strip())
        option_text, statement = split_line(line, self.tetra.parser)
        if not statement.strip():
            raise UsageError(
                "%tetra: give a statement to run remotely (`%tetra [options] statement`), or a"
                f" command: {', '.join(_COMMANDS)}. Whole cells: %%tetra.\n{self._usage()}"
            )
        number = self._cell_number()
        raw = self._current_cell() or f"%tetra {line}\n"
        lineno = _line_of(raw, line)
        if lineno is None:
            raw, lineno = f"%tetra {line}\n", 1
        source = "\n" * (lineno - 1) + transform(statement.strip())
        return self._run(option_text, source, number, raw)

    def _run(self, option_text: str, source: str, number: int, raw: str) -> Any:
        from tetra_magic.run import run_cell

        opts = cell_options.build(self._parse(option_text), self)
        filename = f"<tetra-cell-{number}>"
        linecache.cache[filename] = (len(raw), None, raw.splitlines(True), filename)
        try:
            analysis = analyse(source, filename)
        except SyntaxError as exc:
            raise syntax_error(exc, cell_labeler(self.shell)) from None
        return run_cell(
            self.shell,
            opts,
            analysis,
            filename,
            display=self.display,
            started=time.time(),
            prices=dict(self.gpu_prices),
        )

    def _parse(self, option_text: str) -> Any:
        """magic_arguments' parse, with the valid options listed when one is not, and values
        unquoted (IPython splits the line keeping quotes: `--deps 'torch>=2'`)."""
        try:
            args = parse_argstring(self.tetra, option_text)
        except UsageError as exc:
            raise UsageError(f"{exc}\n{self._usage()}") from None
        for key, value in vars(args).items():
            setattr(args, key, _unquote(value))
        return args

    def _usage(self) -> str:
        flags = [f for action in self.tetra.parser._actions for f in action.option_strings]
        return f"%%tetra options: {' '.join(flags)} (see %%tetra? for help)"

    def _cell_number(self) -> int:
        """This cell's In[] number. The input history holds the cell before it runs on every
        IPython version; execution_count is bumped before or after, depending on the version."""
        cells = self._history()
        if cells:
            return len(cells) - 1
        return max(self.shell.execution_count - 1, 1)

    def _history(self) -> list[str]:
        history = getattr(self.shell, "history_manager", None)
        return getattr(history, "input_hist_raw", None) or []

    def _current_cell(self) -> str | None:
        cells = self._history()
        return cells[-1] if cells else None

    def _command(self, command: str, rest: str) -> Any:
        if command == "local":
            from tetra_magic.local.launcher import ensure_running

            print(f"local endpoint: {ensure_running().base_url}")
            return None
        if command == "endpoints":
            from tetra_magic.provision import show_endpoints

            return show_endpoints()
        from tetra_magic.provision import delete_named

        return delete_named(rest)


def split_line(line: str, parser: Any) -> tuple[str, str]:
    """`--gpu A100 --local x = f(y)` -> ("--gpu A100 --local", "x = f(y)"): options (each
    taking at most one value) up to the first word that is not one, or up to `--`."""
    takes_value = {
        flag: action.nargs != 0 for action in parser._actions for flag in action.option_strings
    }
    position = 0
    while True:
        start = _skip_space(line, position)
        word, position = _word(line, start)
        if word == "--":
            return line[:start], line[position:]
        if not word.startswith("--"):
            return line[:start], line[start:]
        flag = word.partition("=")[0]
        if flag not in takes_value:
            raise UsageError(f"%tetra: unknown option {flag}; options: {', '.join(takes_value)}")
        if takes_value[flag] and "=" not in word:
            position = _word(line, _skip_space(line, position))[1]


def _unquote(value: Any) -> Any:
    """'x' or "x" -> x, through the lists of repeatable options."""
    if isinstance(value, list):
        return [_unquote(item) for item in value]
    if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _skip_space(line: str, position: int) -> int:
    return len(line) - len(line[position:].lstrip())


def _word(line: str, start: int) -> tuple[str, int]:
    """The word at `start` (a quoted one whole) and where it ends."""
    if start < len(line) and line[start] in "'\"":
        close = line.find(line[start], start + 1)
        end = len(line) if close < 0 else close + 1
        return line[start:end], end
    end = start
    while end < len(line) and not line[end].isspace():
        end += 1
    return line[start:end], end


def _line_of(cell: str, magic_line: str) -> int | None:
    """The 1-based line of the cell on which `%tetra <magic_line>` stands."""
    for number, text in enumerate(cell.splitlines(), 1):
        if text.strip().startswith("%tetra") and magic_line.strip() in text:
            return number
    return None
