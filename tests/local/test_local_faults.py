"""The local endpoint as an operator finds it: secrets stay in their kernel, faults heal by
themselves at the next cell, and what a closed kernel left on the workers is freed.

Every fault is injected into a real server with real workers (the runpod SDK's job loop), and
judged by what the notebook's next cell does, in a real kernel."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers.kernels import (
    LiveKernel,
    environ,
    loaded_kernels,
    private_local_endpoint,
    shared_worker_env,
)

from tetra_magic.local import launcher, state
from tetra_magic.local.marks import SERVER_MARK, marked_processes

pytestmark = pytest.mark.slow

HEALED_S = 10.0  # how soon the next cell must have worked after a fault (issue 18)
SECRET = "rpa_" + "KERNELSECRET" * 4


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _until_gone(pids: list[int], timeout: float) -> float:
    start = time.monotonic()
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() - start < timeout, f"still running after {timeout} s: {pids}"
        time.sleep(0.2)
    return time.monotonic() - start


def _server_pid() -> int:
    record = state.read_record()
    assert record is not None, "no server recorded"
    return record["pid"]


def _endpoint_pids() -> list[int]:
    """The server and every process of its workers."""
    server = _server_pid()
    return [server, *marked_processes(SERVER_MARK, str(server))]


def _workers(server: int) -> list[int]:
    """The worker processes themselves (not their ping processes or executors)."""
    workers = []
    for pid in marked_processes(SERVER_MARK, str(server)):
        with open(f"/proc/{pid}/stat") as handle:
            if int(handle.read().rpartition(")")[2].split()[1]) == server:
                workers.append(pid)
    return workers


def _health() -> dict:
    endpoint = launcher.running()
    assert endpoint is not None
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    return requests.get(f"{endpoint.url}/health", headers=headers, timeout=10).json()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A state dir of its own; the test starts (or not) the server in it; stopped at the end."""
    values = {"TETRA_MAGIC_HOME": str(tmp_path / "home")}
    values["TETRA_MAGIC_WORKER_ENV"] = shared_worker_env()
    with environ(values):
        try:
            yield tmp_path / "home"
        finally:
            launcher.stop()


@pytest.fixture
def kernel(home: Path) -> Iterator[LiveKernel]:
    with loaded_kernels(1) as (live,):
        yield live


def _timed(kernel: LiveKernel, code: str) -> tuple[float, str]:
    start = time.monotonic()
    run = kernel.run(code, timeout=120)
    assert run.error is None, run
    return time.monotonic() - start, run.stdout


def test_no_kernels_environment_reaches_any_cell(home: Path) -> None:
    """Kernel A, whose environment holds a RunPod key and a variable of its own, starts the
    server; neither reaches a cell of A or of B, nor any process of the endpoint, unless a cell
    sends it itself with --env, and then for that cell only."""
    read = (
        "%%tetra --local\nimport os\n"
        "print([os.environ.get(n) for n in ('RUNPOD_API_KEY', 'KERNEL_A_ONLY')])"
    )
    with (
        loaded_kernels(1) as (b,),  # started without them
        environ({"RUNPOD_API_KEY": SECRET, "KERNEL_A_ONLY": "from-a"}),
        loaded_kernels(1) as (a,),
    ):
        assert a.run(read).stdout == "[None, None]\n"  # this cell started the server
        assert b.run(read).stdout == "[None, None]\n"
        sent = a.run(read.replace("--local", "--local --env KERNEL_A_ONLY"))
        assert sent.stdout == "[None, 'from-a']\n"
        assert a.run(read).stdout == "[None, None]\n"
    for pid in _endpoint_pids():
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environment = handle.read()
        assert SECRET.encode() not in environment and b"KERNEL_A_ONLY" not in environment


@pytest.mark.parametrize("content", [b"", b"  \n", b"\xff\xfe not text"], ids=repr)
def test_a_bad_token_file_is_replaced(home: Path, kernel: LiveKernel, content: bytes) -> None:
    assert kernel.run("%%tetra --local\nprint('before')").stdout == "before\n"
    old = _server_pid()
    (home / state.TOKEN_FILE).write_bytes(content)
    with loaded_kernels(1) as (other,):  # a kernel that has not seen the old token
        took, out = _timed(other, "%%tetra --local\nprint('after')")
        assert out == "after\n" and took < HEALED_S, took
    assert _gone(old), "the server with the old token was left running"
    token = (home / state.TOKEN_FILE).read_text().strip()
    assert len(token) >= 32 and (home / state.TOKEN_FILE).stat().st_mode & 0o777 == 0o600
    # The kernel that knew the old server moves to the new one too.
    assert kernel.run("%%tetra --local\nprint('again')").stdout == "again\n"


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_a_lost_server_record_does_not_orphan_its_server(
    home: Path, kernel: LiveKernel, damage: str
) -> None:
    assert kernel.run("%%tetra --local\nprint('before')").stdout == "before\n"
    old = _endpoint_pids()
    record = state.record_path()
    if damage == "deleted":
        record.unlink()
    else:
        record.write_text('{"url": ')
    took, out = _timed(kernel, "%%tetra --local\nprint('after')")
    assert out == "after\n" and took < HEALED_S, took
    _until_gone(old, 10)  # the old server and its workers, not left to idle for two hours


def test_a_deleted_worker_environment_is_rebuilt(tmp_path: Path) -> None:
    """README's advice (delete envs/ to free its space) while the server runs."""
    env = tmp_path / "worker-env"
    shutil.copytree(shared_worker_env(), env, symlinks=True)
    with (
        private_local_endpoint(tmp_path / "home", worker_env=str(env)),
        loaded_kernels(1) as (kernel,),
    ):
        assert kernel.run("%%tetra --local\nprint('before')").stdout == "before\n"
        shutil.rmtree(env)
        took, out = _timed(kernel, "%%tetra --local\nprint('after')")
        assert out == "after\n" and took < HEALED_S, took  # the rebuild included
        assert (env / "bin" / "python").exists()


def test_a_hung_worker_loses_its_job_to_another_and_is_restarted(tmp_path: Path) -> None:
    """One of two idle workers stops (SIGSTOP: alive, holding its job-take, never answering).
    Two cells start at once: the one handed to it goes to the other worker within seconds."""
    with (
        private_local_endpoint(tmp_path / "home", workers=2),
        loaded_kernels(2) as (a, b),
    ):
        for each in (a, b):
            assert each.run("%%tetra --local\nprint('warm')").stdout == "warm\n"
        hung = _workers(_server_pid())[0]
        time.sleep(1.0)  # both back in job-take
        os.kill(hung, signal.SIGSTOP)
        start = time.monotonic()
        cells = [
            k.execute("%%tetra --local\nimport time\ntime.sleep(1)\nprint('done')") for k in (a, b)
        ]
        for each, cell in zip((a, b), cells, strict=True):
            assert each.outputs(cell, timeout=60).stdout == "done\n"
        took = time.monotonic() - start
        assert took < HEALED_S, took
        _until_gone([hung], 10)
        assert _health()["jobs"]["retried"] == 1  # the job it was handed, given to the other
        assert a.run("%%tetra --local\nprint('next')").stdout == "next\n"


def test_a_closed_kernels_processes_and_files_are_freed(home: Path) -> None:
    with loaded_kernels(1) as (stayer,):
        with loaded_kernels(1) as (leaver,):
            run = leaver.run(
                "%%tetra --local\nimport os, subprocess\n"
                "open('left-behind.txt', 'w').write('x')\n"
                "sleeper = subprocess.Popen(['sleep', '600']).pid\n"
                "print(os.getpid(), sleeper, os.getcwd())"
            )
            executor, sleeper, workdir = run.stdout.split()
            assert (Path(workdir) / "left-behind.txt").exists()
        took = _until_gone([int(executor), int(sleeper)], 60)
        assert not Path(workdir).exists()
        print(f"freed {took:.1f} s after the kernel ended")
        assert stayer.run("%%tetra --local\nprint('still here')").stdout == "still here\n"


def test_a_quiet_long_job_is_not_taken_from_its_worker(tmp_path: Path) -> None:
    """A worker that streams nothing (the published worker's shape) shows it took its job up
    by the SDK's heartbeat alone: a cell longer than the take-up window runs once, where it
    started."""
    with (
        environ({"TETRA_WORKER_STREAM": "0"}),
        private_local_endpoint(tmp_path / "home", workers=2),
        loaded_kernels(1) as (kernel,),
    ):
        took, out = _timed(
            kernel, "%%tetra --local\nimport os, time\ntime.sleep(7)\nprint(os.getpid())"
        )
        assert out.strip().isdigit() and took >= 7
        assert _health()["jobs"]["retried"] == 0
