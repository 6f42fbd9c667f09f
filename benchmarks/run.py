"""Run every benchmark the project has and print one table of figures.

    python benchmarks/run.py                  # every benchmarks/bench_*.py
    python benchmarks/run.py local_endpoint   # only the modules whose names contain a word
    python benchmarks/run.py --json out.json  # also write the rows as JSON

Each module `benchmarks/bench_*.py` has `run() -> list[dict]`, rows of
`{name, value_s, baseline_name, baseline_s}`: a figure and the baseline it is measured against,
in the same run on the same machine, so the ratio means something wherever it is run. The table
shows the ratio and both absolute numbers.

Every module runs in a child process of its own: a module that fails (an exception, a crash, a
hang past --timeout) gets an error row and the others still run; the exit status is then 1.
A fresh process per module also keeps one module's servers and threads out of the next one's
timings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROW_KEYS = ("name", "value_s", "baseline_name", "baseline_s")


@dataclass
class Row:
    """One line of the table: a figure against its baseline, or a module's failure."""

    module: str
    name: str
    value_s: float | None = None
    baseline_name: str = ""
    baseline_s: float | None = None
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.value_s is None or not self.baseline_s:
            return None
        return self.value_s / self.baseline_s


def discover(words: list[str], folder: Path = HERE) -> list[Path]:
    """The benchmark modules, by name; only those containing one of `words`, if any given."""
    found = sorted(folder.glob("bench_*.py"))
    return [p for p in found if not words or any(w in p.stem for w in words)]


def run_child(module: Path, out: Path) -> None:
    """In the child process: import `module`, call its run(), write the rows to `out`."""
    spec = importlib.util.spec_from_file_location(module.stem, module)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {module}")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module.stem] = loaded
    spec.loader.exec_module(loaded)
    rows = loaded.run()
    missing = [key for row in rows for key in ROW_KEYS if key not in row]
    if missing:
        raise KeyError(f"run() rows lack {sorted(set(missing))}")
    out.write_text(json.dumps([{key: row[key] for key in ROW_KEYS} for row in rows]))


def measure(module: Path, timeout: float) -> list[Row]:
    """Run one module in a child process; its rows, or one error row saying why there are none."""
    with tempfile.TemporaryDirectory(prefix="tetra-bench-") as folder:
        out = Path(folder) / "rows.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(module), str(out)]
        started = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [_failed(module, f"no result within {timeout:g} s")]
        took = time.monotonic() - started
        print(f"  {module.stem}: {took:.1f} s", file=sys.stderr, flush=True)
        if done.returncode != 0 or not out.exists():
            return [_failed(module, _last_line(done.stderr) or f"exit status {done.returncode}")]
        return _rows(module, out)


def _rows(module: Path, out: Path) -> list[Row]:
    try:
        rows = [
            Row(
                module.stem,
                str(r["name"]),
                float(r["value_s"]),
                str(r["baseline_name"]),
                float(r["baseline_s"]),
            )
            for r in json.loads(out.read_text())
        ]
    except (ValueError, TypeError, KeyError) as exc:
        return [_failed(module, f"run() returned rows this runner cannot read: {exc}")]
    return rows or [_failed(module, "run() returned no rows")]


def _failed(module: Path, error: str) -> Row:
    return Row(module.stem, "(module failed)", error=error)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _seconds(value: float | None) -> str:
    """A duration in the unit that keeps it readable: s, ms or µs."""
    if value is None or not math.isfinite(value):
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"


def table(rows: list[Row]) -> str:
    """The rows as one aligned text table: figure, value, ratio, baseline, baseline value."""
    header = ("module", "figure", "value", "ratio", "baseline", "baseline value")
    lines = [header]
    for row in rows:
        if row.error is not None:
            lines.append((row.module, row.name, "-", "-", f"ERROR: {row.error}", ""))
            continue
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        value, base = _seconds(row.value_s), _seconds(row.baseline_s)
        lines.append((row.module, row.name, value, ratio, row.baseline_name, base))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 3, 5}  # numbers line up on the right
    out = []
    for index, line in enumerate(lines):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="*", help="run only modules whose names contain these")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows here")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds one module may take (default 900)"
    )
    parser.add_argument("--child", nargs=2, metavar=("MODULE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(Path(args.child[0]), Path(args.child[1]))
        return 0
    modules = discover(args.words)
    if not modules:
        print(f"no benchmark modules in {HERE} match {args.words}", file=sys.stderr)
        return 1
    print(f"running {len(modules)} benchmark modules:", file=sys.stderr, flush=True)
    rows = [row for module in modules for row in measure(module, args.timeout)]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    failed = sorted({row.module for row in rows if row.error is not None})
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
