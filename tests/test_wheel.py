"""The built wheel is the whole product: installed (not editable) into a new venv, with nothing
from this checkout on the path, it loads in IPython and runs a %%tetra cell on a local endpoint
that it starts itself, whose workers run the `worker` package the wheel carries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = [sys.executable, "-m", "uv"]

# Run by the venv's python, in an IPython shell (what `ipython` gives a terminal user).
SESSION = textwrap.dedent(
    """
    import sys

    import tetra_magic
    from IPython.core.interactiveshell import InteractiveShell

    print("package:", tetra_magic.__file__)
    shell = InteractiveShell.instance()
    shell.run_cell("%load_ext tetra_magic").raise_error()
    shell.user_ns["base"] = 20
    result = shell.run_cell(
        "%%tetra --local\\n"
        "import sys\\n"
        "print('worker python:', sys.executable)\\n"
        "answer = base * 2 + 2\\n"
        "answer + 1\\n"
    )
    result.raise_error()
    print("answer:", shell.user_ns["answer"], "out:", result.result)
    """
)
STOP = "from tetra_magic.local import launcher; print('stopped:', launcher.stop())"


def _run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv[:4]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env(home: Path) -> dict[str, str]:
    """This environment minus anything that would reach the checkout, a RunPod key, or the
    shared local endpoint and its worker environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETRA_", "RUNPOD_"))}
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env.update(TETRA_MAGIC_HOME=str(home), TETRA_MAGIC_DISPLAY="text", NO_COLOR="1")
    return env


@pytest.mark.slow
def test_wheel_installs_and_runs_a_cell_on_the_local_endpoint(tmp_path: Path) -> None:
    home = tmp_path / "tetra-home"
    env = _clean_env(home)
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    _run([*UV, "build", "--wheel", "--quiet", "--out-dir", str(dist), str(ROOT)], env, tmp_path)
    (wheel,) = dist.glob("tetra_magic-*.whl")
    _run([*UV, "venv", "--quiet", "--python", sys.executable, str(venv)], env, tmp_path)
    python = venv / "bin" / "python"
    _run([*UV, "pip", "install", "--quiet", "--python", str(python), str(wheel)], env, tmp_path)
    try:
        out = _run([str(python), "-c", SESSION], env, tmp_path)
    finally:
        stopped = _run([str(python), "-c", STOP], env, tmp_path)
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert Path(lines["package"]).is_relative_to(venv), "not the installed wheel"
    assert Path(lines["worker python"]).is_relative_to(home / "envs"), out
    assert lines["answer"] == "42 out: 43", out
    assert stopped.strip() == "stopped: True"
    assert (venv / "bin" / "tetra-local").exists()
