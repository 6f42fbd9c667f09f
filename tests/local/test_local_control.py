"""The local endpoint seen and stopped by hand: `tetra-local status|stop` in a terminal and
`%tetra local status|stop` in a notebook, against a real server in a private state dir; and the
parts of them that need no server (the fast tier runs those)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from helpers.kernels import environ, run_cells, shared_worker_env
from IPython.core.error import UsageError

from tetra_magic import commands
from tetra_magic.local import __main__ as cli
from tetra_magic.local import control, launcher, state
from tetra_magic.local.api import Api
from tetra_magic.local.job_store import JobStore

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("tetra-local")


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A state dir of this test's own, set in this process and for what it starts; any server
    started in it is stopped at the end."""
    values = {
        "TETRA_MAGIC_HOME": str(tmp_path / "state"),
        "TETRA_MAGIC_WORKER_ENV": shared_worker_env(),
    }
    with environ(values):
        try:
            yield values
        finally:
            launcher.stop()


def tetra_local(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`tetra-local ARGS` as a user runs it (the installed script; the module without one)."""
    argv = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tetra_magic.local"]
    return subprocess.run(
        [*argv, *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def idle_seconds(text: str) -> int:
    match = re.search(r"idle +(\d+) s;", text)
    assert match, text
    return int(match.group(1))


@pytest.mark.slow
def test_tetra_local_status_then_stop_from_a_terminal(home: dict[str, str]) -> None:
    endpoint = launcher.ensure_running(workers=1, idle_timeout=3600)
    pid = state.read_record()["pid"]
    first = tetra_local("status", env=home)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "local endpoint: running" in out and endpoint.url in out
    assert f"pid      {pid}\n" in out and "workers  1" in out
    assert f"Python   {sys.version.split()[0]}" in out
    assert str(Path(home["TETRA_MAGIC_HOME"]) / f"local-{state.python_tag()}" / "server.log") in out
    assert re.search(r"stops by itself in (59 min \d+ s|1 h 0 min) if no cell comes", out), out
    assert re.search(r"stop it with: \S*tetra(-local| -m tetra_magic.local) stop", out), out
    time.sleep(2.2)
    again = tetra_local("status", env=home).stdout
    assert idle_seconds(again) >= idle_seconds(out) + 2, "asking kept the server up"

    stopped = tetra_local("stop", env=home)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == f"stopped the local endpoint at {endpoint.url} (pid {pid});" + (
        " the next %%tetra cell starts a new one\n"
    )
    assert not state.pid_alive(pid)
    after = tetra_local("status", env=home)
    assert after.returncode == 1
    assert after.stdout.startswith("no local endpoint is running for Python 3.")
    assert tetra_local("stop", env=home).stdout.startswith("no local endpoint was running")


@pytest.mark.slow
def test_tetra_local_status_and_stop_in_a_notebook(home: dict[str, str]) -> None:
    load, start, status, stop, gone, unknown = run_cells(
        "%load_ext tetra_magic",
        "%tetra local",
        "%tetra local status",
        "%tetra local stop",
        "%tetra local status",
        "%tetra local restart",
        env=home,
    )
    assert load.error is None and start.error is None, start
    url = re.search(r"local endpoint: (http://127\.0\.0\.1:\d+/v2)", start.stdout)
    assert url, start.stdout
    assert "local endpoint: running" in status.stdout and url.group(1) in status.stdout
    assert re.search(r"stops by itself in 1 h 59 min|stops by itself in 2 h 0 min", status.stdout)
    assert status.stdout.rstrip().endswith("stop it with: %tetra local stop")
    assert stop.stdout.startswith(f"stopped the local endpoint at {url.group(1)}/local (pid ")
    assert gone.stdout.startswith("no local endpoint is running")
    assert unknown.stderr.startswith("UsageError: %tetra local restart: unknown;")  # IPython's
    assert "%tetra local [start|status|stop]" in unknown.stderr  # way: a line, no traceback


def test_with_no_server_status_says_so_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TETRA_MAGIC_HOME", str(tmp_path))
    assert cli.main(["status"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"no local endpoint is running for Python {state.python_tag()[2:]}")
    assert str(tmp_path / f"local-{state.python_tag()}" / "server.log") in out
    assert cli.main(["stop"]) == 0
    assert capsys.readouterr().out.startswith("no local endpoint was running")
    assert not (tmp_path / "token").exists()  # looking made no token


def test_a_recorded_server_that_does_not_answer_is_named_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live pid (this one) behind a port nobody listens on: starting, or hung."""
    monkeypatch.setenv("TETRA_MAGIC_HOME", str(tmp_path))
    record = {"url": "http://127.0.0.1:9/v2", "endpoint_id": "local", "pid": os.getpid()}
    state.write_json_private(state.record_path(), {**record, "python": "3.x", "workers": 2})
    found = control.status()
    assert not found.running and not found.same_code
    text = control.status_text(found, stop_command="tetra-local stop")
    assert text.startswith("local endpoint: not answering (starting, or hung)\n")
    assert "  idle     unknown\n" in text and "  workers  2\n" in text
    assert "the next cell replaces it" in text and text.endswith("stop it with: tetra-local stop")


def test_options_alone_still_start_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m tetra_magic.local --port 8000 --workers 4` is `start`, as it always was
    (checked here by options it refuses before starting anything)."""
    for argv in (["--workers", "0"], ["start", "--workers", "0"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert "--workers must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["status", "--port", "1"])
    assert "unrecognized arguments: --port 1" in capsys.readouterr().err


def test_an_unknown_local_command_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"%tetra local restart: unknown; %tetra local \[start"):
        commands.local(None, "restart")


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (
            {"idle_s": 125.4, "idle_timeout_s": 7200.0, "pending": 0},
            "2 min 5 s; it stops by itself in 1 h 57 min if no cell comes",
        ),
        (
            {"idle_s": 3.0, "idle_timeout_s": None, "pending": 0},
            "3 s; it stops only when stopped (started without an idle timeout)",
        ),
        ({"idle_s": 9000.0, "idle_timeout_s": 7200.0, "pending": 1}, "busy: 1 job(s) not finished"),
        ({"jobs": {}, "workers": {}}, "unknown"),  # an older server's /health
    ],
)
def test_the_idle_line(answer: dict[str, object], said: str) -> None:
    assert control._idle(answer) == said


def test_asking_for_the_status_does_not_count_as_activity() -> None:
    api = Api(JobStore(), None, "the-token", "local", idle_timeout=60.0)
    api.last_activity -= 30

    async def ask() -> tuple[int, dict[str, object]]:
        async with TestClient(TestServer(api.app())) as client:
            answer = await client.get(
                "/v2/local/local-status", headers={"Authorization": "Bearer the-token"}
            )
            refused = await client.get("/v2/local/local-status")
            assert refused.status == 401
            return answer.status, await answer.json()

    before = api.last_activity
    status, body = asyncio.run(ask())
    assert status == 200 and api.last_activity == before
    assert 30 <= body["idle_s"] < 40 and body["idle_timeout_s"] == 60.0 and body["pending"] == 0
