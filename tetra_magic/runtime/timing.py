"""`%time` and `%timeit` in a remote cell, measured on the worker and reported as IPython reports
them at home: the same lines, the same units, the same result object.

Timing GPU code is a main reason to go remote, and a notebook's timings are read by eye and
compared with earlier ones, so the shape must be IPython's exactly. The worker may have no
IPython, so this is the standard library's `timeit` and `resource`, with IPython's rules: its
loop count (the first power of ten whose loops take 0.2 s), 7 runs, 3 significant digits.
"""

from __future__ import annotations

import ast
import math
import time
import timeit
from types import CodeType
from typing import Any, cast

try:
    import resource
except ImportError:  # Windows has no getrusage: CPU time as one total, as IPython shows it there
    resource = None  # type: ignore[assignment]

_RUNS = 7  # IPython's default repeat (at least timeit's own default)
_LOOPS_TIME = 0.2  # seconds: the loop count chosen is the first power of ten that takes this long
_SLOW_STEP = 0.1  # seconds of parsing or compiling worth a line of its own, as IPython reports it
# %timeit's options: those that take a value, and flags.
_VALUED, _FLAGS = "nrpv", "tcqo"
_USAGE = "%timeit [-n<N> -r<R> [-t|-c] -q -p<P> -o] statement"


class TimeitResult:
    """What `%timeit -o` returns, as IPython's class of that name: the loops per run, the runs,
    the best and worst time per loop, every run's total (`all_runs`), the time per loop of each
    (`timings`), their `average` and `stdev`, and the statement's `compile_time`."""

    def __init__(
        self,
        loops: int,
        repeat: int,
        best: float,
        worst: float,
        all_runs: list[float],
        compile_time: float,
        precision: int,
    ) -> None:
        self.loops, self.repeat = loops, repeat
        self.best, self.worst = best, worst
        self.all_runs, self.compile_time = all_runs, compile_time
        self._precision = precision
        self.timings = [run / loops for run in all_runs]

    @property
    def average(self) -> float:
        return math.fsum(self.timings) / len(self.timings)

    @property
    def stdev(self) -> float:
        mean = self.average
        return (math.fsum((t - mean) ** 2 for t in self.timings) / len(self.timings)) ** 0.5

    def __str__(self) -> str:
        runs = f"{self.repeat} run{'' if self.repeat == 1 else 's'}"
        loops = f"{self.loops:,} loop{'' if self.loops == 1 else 's'}"
        mean = format_time(self.average, self._precision)
        spread = format_time(self.stdev, self._precision)
        return f"{mean} ± {spread} per loop (mean ± std. dev. of {runs}, {loops} each)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<TimeitResult : {self}>")

    def __reduce__(self) -> tuple[Any, ...]:
        """At home it loads as IPython's own TimeitResult (the kernel has IPython), so
        `isinstance(r, TimeitResult)` holds there as for a `%timeit -o` run at home."""
        fields = (self.loops, self.repeat, self.best, self.worst, self.all_runs)
        return timeit_result, (*fields, self.compile_time, self._precision)


def timeit_result(*fields: Any) -> Any:
    """A TimeitResult: IPython's where IPython is installed, else ours."""
    try:
        from IPython.core.magics.execution import TimeitResult as IPythons
    except ImportError:
        return TimeitResult(*fields)
    return IPythons(*fields)


def format_time(seconds: float, precision: int = 3) -> str:
    """A duration as IPython writes it: `1.23 ms`, `456 ns`; from a minute on, `1min 5s`."""
    if seconds >= 60:
        parts, left = [], seconds
        for suffix, length in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
            whole = int(left / length)
            if whole > 0:
                left %= length
                parts.append(f"{whole}{suffix}")
            if left < 1:
                break
        return " ".join(parts)
    order = 3 if seconds <= 0 else min(-int(math.floor(math.log10(seconds)) // 3), 3)
    scaled = seconds * (1, 1e3, 1e6, 1e9)[order]
    return f"{scaled:.{precision}g} {('s', 'ms', 'μs', 'ns')[order]}"


def time_line(line: str, namespace: dict[str, Any], local_ns: dict[str, Any] | None) -> Any:
    """`%time statement`: run it once, print its CPU and wall time, and return its value (an
    expression's; None for a statement), as `x = %time f()` expects. An exception it raises is
    raised after the times are printed, unless `--no-raise-error` comes first."""
    raising = True
    statement = line.strip()
    if statement.startswith("--no-raise-error"):
        raising, statement = False, statement[len("--no-raise-error") :].strip()
    started = time.perf_counter()
    body, last = _compile_timed(statement)
    compiled = time.perf_counter() - started
    wall, cpu = time.time(), _cpu()
    value, raised = None, None
    try:
        if body is not None:
            exec(body, namespace, local_ns)
        if last is not None:
            value = eval(last, namespace, local_ns)
    except Exception as exc:
        raised = exc
    cpu_end, wall_end = _cpu(), time.time()
    _print_cpu(cpu, cpu_end)
    print(f"Wall time: {format_time(wall_end - wall)}")
    if compiled > _SLOW_STEP:
        print(f"Compiler : {format_time(compiled)}")
    if raised is not None and raising:
        raise raised
    return value


def _compile_timed(statement: str) -> tuple[CodeType | None, CodeType | None]:
    """(statements to execute, expression to evaluate) of a timed line, each None where it
    has none, as IPython's %time splits it: a last expression gives the value (`a = 1; a + 1`
    gives 2), and so does a lone one."""
    tree = ast.parse(statement, "<timed exec>")
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        filename = "<timed eval>" if len(tree.body) == 1 else "<timed exec>"
        expression = cast(ast.Expr, tree.body.pop())
        last = compile(ast.Expression(expression.value), filename, "eval")
    else:
        last = None
    body = compile(tree, "<timed exec>", "exec") if tree.body else None
    return body, last


def _cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    if resource is None:
        return time.process_time(), 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _print_cpu(start: tuple[float, float], end: tuple[float, float]) -> None:
    user, system = end[0] - start[0], end[1] - start[1]
    total = format_time(user + system)
    if resource is None:
        print(f"CPU times: total: {total}")
    else:
        print(f"CPU times: user {format_time(user)}, sys: {format_time(system)}, total: {total}")


def timeit_line(
    line: str, namespace: dict[str, Any], local_ns: dict[str, Any] | None
) -> TimeitResult | None:
    """`%timeit [-n N] [-r R] [-p P] [-t|-c] [-q] [-o] statement`: IPython's report of the
    statement's time per loop, and with -o the TimeitResult."""
    options, statement = parse_timeit_options(line)
    if not statement:
        return None
    clock = {"t": time.time, "c": time.process_time}.get(
        next((flag for flag in "ct" if flag in options), ""), timeit.default_timer
    )
    started = time.perf_counter()
    timer = timeit.Timer(statement, timer=clock, globals={**namespace, **(local_ns or {})})
    compile_time = time.perf_counter() - started
    loops = int(options.get("n", 0)) or _loops_for(timer)
    repeat = int(options.get("r", _RUNS))
    all_runs = timer.repeat(repeat, loops)
    result = TimeitResult(
        loops,
        repeat,
        min(all_runs) / loops,
        max(all_runs) / loops,
        all_runs,
        compile_time,
        int(options.get("p", 3)),
    )
    if "q" not in options:
        _report(result)
    return result if "o" in options else None


def _loops_for(timer: timeit.Timer) -> int:
    """IPython's loop count: the first power of ten (up to 10**9) whose loops take 0.2 s."""
    for power in range(10):
        if timer.timeit(10**power) >= _LOOPS_TIME:
            break
    return int(10**power)


def _report(result: TimeitResult) -> None:
    best, worst = result.best, result.worst
    if worst > 4 * best and best > 0 and worst > 1e-6:
        print(
            f"The slowest run took {worst / best:0.2f} times longer than the fastest. This could"
            " mean that an intermediate result is being cached."
        )
    print(result)
    if result.compile_time > _SLOW_STEP:
        print(f"Compiler time: {result.compile_time:.2f} s")


def parse_timeit_options(line: str) -> tuple[dict[str, str], str]:
    """`-n 10 -r3 -qo f(x)` -> ({"n": "10", "r": "3", "q": "", "o": ""}, "f(x)"): the options
    up to the first word that is not one (or `--`), and the statement after them, as written."""
    options: dict[str, str] = {}
    rest = line.strip()
    while rest.startswith("-") and not rest.startswith("--"):
        word, _, after = rest.partition(" ")
        letters = word[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter in _FLAGS:
                options[letter] = ""
            elif letter in _VALUED:
                if not letters:
                    letters, _, after = after.strip().partition(" ")
                options[letter], letters = _option_value(letter, letters), ""
            else:
                raise ValueError(f"%timeit: option -{letter} not recognized ({_USAGE})")
        rest = after.strip()
    if rest.startswith("--"):
        rest = rest[2:].strip()
    if "v" in options:
        name = options["v"]
        raise NotImplementedError(
            f"%timeit -v {name}: a name the magic binds does not come back from a %%tetra cell;"
            f" write `{name} = %timeit -o ...` instead"
        )
    return options, rest


def _option_value(letter: str, value: str) -> str:
    if letter != "v" and not value.isdigit():
        shown = repr(value) if value else "nothing"
        raise ValueError(f"%timeit: -{letter} takes a whole number, not {shown} ({_USAGE})")
    return value
