"""Real kernels pointed at a FakeRunPod: a private HOME and state dir each, the fake's URLs in
the runpod SDK's variables, and a key distinctive enough to grep for."""

from __future__ import annotations

import re
from pathlib import Path

from helpers.kernels import CellRun, run_cells
from helpers.runpod_fakes import FakeRunPod

KEY = "rpa_TETRATESTKEY_7f3a9c1e5b2d4f60_DO_NOT_LEAK"
LOAD = "%load_ext tetra_magic"
# What every cell that ran on RunPod prints last on stderr: its billed time and estimated cost.
COST_LINE = re.compile(
    r"tetra: queued \d+\.\d s, ran \d+\.\d s, billed \d+ s; estimated cost \$\d+\.\d{5}"
    r" \((?P<pool>\w+) at \$\d\.\d{5}/s, (?P<source>RunPod flex price as of \d{4}-\d\d"
    r"|TetraMagic.gpu_prices); start and idle time not included\)\n"
)


def kernel_env(fake: FakeRunPod, home: Path, key: str | None = KEY) -> dict[str, str]:
    """What a kernel needs to use `fake` as RunPod, touching nothing outside `home`."""
    env = {
        **fake.env(),
        "HOME": str(home),
        "TETRA_MAGIC_HOME": str(home / "tetra-state"),
        "TETRA_MAGIC_DISPLAY": "text",
        "IPYTHONDIR": str(home / ".ipython"),
    }
    if key is not None:
        env["RUNPOD_API_KEY"] = key
    return env


def runpod_config(home: Path, key: str = KEY) -> Path:
    """The runpod CLI's ~/.runpod/config.toml under `home`, holding `key` as the default."""
    config = home / ".runpod" / "config.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(f'[default]\napi_key = "{key}"\n')
    return config


def run_cloud(
    fake: FakeRunPod, home: Path, *cells: str, key: str | None = KEY, **extra: str
) -> list[CellRun]:
    """`cells` in one new kernel, after `%load_ext tetra_magic` (not among the results)."""
    runs = run_cells(LOAD, *cells, env={**kernel_env(fake, home, key), **extra})
    assert runs[0].error is None, runs[0].error
    return runs[1:]


def ok(run: CellRun) -> CellRun:
    """The run, after checking it raised nothing (with the error in the failure message)."""
    assert run.error is None, "\n".join(run.error["traceback"]) if run.error else ""
    return run
