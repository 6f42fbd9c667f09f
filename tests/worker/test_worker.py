"""The worker, driven through the runpod SDK's own entry points.

Two ways in, both the SDK's: `python -m worker --test_input ...` as a subprocess (the SDK's local
test mode, one request per process; used where a real install must happen in a throwaway
environment), and, in this process, the SDK functions its production loop uses: `run_job`,
`run_job_generator` and `JobScaler`, whose stop channel is how RunPod cancels a job. The
in-process requests share one event loop and one executor, as they would in a worker.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker import deps, handler
from worker import executor as executor_module
from worker.executor import Executor
from worker.protocol import FunctionResponse, decode, encode

ROOT = Path(__file__).resolve().parents[2]
INSTALL_PACKAGE = "pyjokes==0.8.3"  # small, pure Python, not a dependency of anything here


# --- test_input mode, in a subprocess -------------------------------------------------------


@pytest.fixture(scope="session")
def worker_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway environment for the worker: requests install into its own site-packages, and
    the project's packages (runpod, cloudpickle, ...) are visible through a .pth file, so
    nothing has to be reinstalled and every test session's installs really happen."""
    env = tmp_path_factory.mktemp("worker-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    project = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "_project.pth").write_text("\n".join(project) + "\n")
    return python


def run_test_input(
    python: Path, payload: dict[str, Any], env: dict[str, str] | None = None, wrap: tuple = ()
) -> tuple[int, str]:
    """Run one request the way a runpod worker author does; exit status and the SDK's log."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_WEBHOOK")}
    argv = [*wrap, str(python), "-m", "worker", "--test_input", json.dumps({"input": payload})]
    proc = subprocess.run(
        argv, cwd=ROOT, env={**environ, **(env or {})}, capture_output=True, text=True, timeout=180
    )
    return proc.returncode, proc.stdout + proc.stderr


def job_result(log: str) -> dict[str, Any]:
    """The output in the SDK's "Job result: {...}" log line."""
    line = next(line for line in log.splitlines() if "Job result: " in line)
    return ast.literal_eval(line.split("Job result: ", 1)[1])["output"]


def function(source: str, **fields: Any) -> dict[str, Any]:
    """A function request for `def f(...)` in `source`."""
    return {"function_name": "f", "function_code": source, **fields}


JOKE = """
def f():
    from importlib.metadata import version

    import pyjokes

    print(pyjokes.get_joke())
    return version("pyjokes")
"""


def tripwire(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for uv that records that it ran and fails."""
    script, trace = tmp_path / "uv", tmp_path / "uv-ran"
    script.write_text(f"#!/bin/sh\ntouch {trace}\nexit 3\n")
    script.chmod(0o755)
    return script, trace


@pytest.mark.slow
def test_install_then_warm_path(worker_python: Path, tmp_path: Path) -> None:
    """A real package from PyPI is installed by uv; the identical second request starts no uv
    process (a tripwire stands in for it) and needs no network (no network namespace at all,
    where `unshare` allows)."""
    request = function(JOKE, dependencies=[INSTALL_PACKAGE])
    code, log = run_test_input(worker_python, request)
    assert code == 0, log
    first = job_result(log)
    assert first["success"] and decode(first["result"]) == "0.8.3"
    assert f"+ {INSTALL_PACKAGE}" in first["stdout"]  # uv's own report, streamed as log lines

    uv, trace = tripwire(tmp_path)
    offline = ("unshare", "-n") if shutil.which("unshare") and os.geteuid() == 0 else ()
    code, log = run_test_input(worker_python, request, env={"TETRA_UV": str(uv)}, wrap=offline)
    assert code == 0, log
    second = job_result(log)
    assert second["success"] and decode(second["result"]) == "0.8.3"
    assert "already satisfied" in second["stdout"]
    assert not trace.exists(), "the warm path started uv"


@pytest.mark.slow
def test_install_failure_runs_nothing(worker_python: Path, tmp_path: Path) -> None:
    """uv's own error text ends the request, and the code never runs."""
    ran = tmp_path / "ran"
    source = f"def f():\n    open({str(ran)!r}, 'w').close()\n"
    code, log = run_test_input(
        worker_python, function(source, dependencies=["tetra-no-such-pkg-zz"])
    )
    assert code == 1  # the SDK's test mode exits 1 for a failed job
    assert "tetra-no-such-pkg-zz was not found in the package registry" in log
    assert not ran.exists()


@pytest.mark.slow
def test_segfault_under_test_input(worker_python: Path) -> None:
    """The crash ends the request with the signal's name and the user's frame, and the SDK
    reports a failed job rather than a dead worker."""
    source = "def f():\n    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
    code, log = run_test_input(worker_python, function(source, source_name="<cell In[7]>"))
    assert code == 1
    assert "killed by SIGSEGV" in log
    assert 'File "<cell In[7]>", line 3 in f' in log


# --- the SDK's job functions, in this process --------------------------------------------------


class Worker:
    """Runs jobs through the SDK's job functions on one event loop, as a worker does."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.count = 0

    def job(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        return {"id": f"job-{self.count}", "input": payload}

    def stream(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """Every chunk the streaming handler yields for one request."""
        from runpod.serverless.modules.rp_job import run_job_generator

        async def collect() -> list[dict[str, Any]]:
            parts = run_job_generator(handler.stream_handler, self.job(payload))
            return [part["output"] async for part in parts]

        return self.loop.run_until_complete(collect())

    def call(self, payload: dict[str, Any]) -> FunctionResponse:
        """The FunctionResponse the streaming handler ends with."""
        last = self.stream(payload)[-1]
        assert last["kind"] == "response"
        return FunctionResponse.model_validate(last["response"])

    def plain(self, payload: dict[str, Any]) -> dict[str, Any]:
        """What the SDK makes of the plain handler's return value."""
        from runpod.serverless.modules.rp_job import run_job

        return self.loop.run_until_complete(run_job(handler.plain_handler, self.job(payload)))


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    loop = asyncio.new_event_loop()
    with pytest.MonkeyPatch.context() as patch:
        executor = Executor()
        patch.setattr(handler, "EXECUTOR", executor)
        yield Worker(loop)
        executor.close()
    loop.run_until_complete(asyncio.sleep(0.05))  # let the killed child's pipes close
    loop.close()


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie awaiting its reaper counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def pid_of(worker: Worker) -> int:
    response = worker.call(function("def f():\n    import os\n    return os.getpid()\n"))
    return decode(response.result)


def test_streams_live_and_ends_with_the_response(worker: Worker) -> None:
    source = (
        "def f():\n    import sys, time, os\n    for i in range(6):\n        print(i)\n"
        "        time.sleep(0.05)\n    os.system('echo from-a-subprocess >&2')\n    return 'ok'\n"
    )
    chunks = worker.stream(function(source))
    kinds = [c["kind"] for c in chunks]
    assert kinds[0] == "info" and kinds[-1] == "response"
    assert "running" in [c["text"] for c in chunks if c["kind"] == "phase"]
    stdout = [c["text"] for c in chunks if c["kind"] == "stdout"]
    assert "".join(stdout) == "".join(f"{i}\n" for i in range(6))
    assert 2 <= len(stdout) < 6  # batched, yet more than one batch while it ran
    assert "from-a-subprocess\n" in [c["text"] for c in chunks if c["kind"] == "stderr"]
    response = FunctionResponse.model_validate(chunks[-1]["response"])
    assert response.success and decode(response.result) == "ok"
    assert response.worker is not None and response.worker.python == ".".join(
        map(str, sys.version_info[:3])
    )


def test_child_persists_so_imports_stay_warm(worker: Worker) -> None:
    source = "def f():\n    import sys\n    sys.tetra_probe = getattr(sys, 'tetra_probe', 0) + 1\n"
    source += "    return sys.tetra_probe\n"
    first = decode(worker.call(function(source)).result)
    assert decode(worker.call(function(source)).result) == first + 1


def test_arguments_and_async_functions(worker: Worker) -> None:
    source = (
        "async def f(a, b=0):\n    import asyncio\n    await asyncio.sleep(0)\n    return a * b\n"
    )
    response = worker.call(function(source, args=[encode(6)], kwargs={"b": encode(7)}))
    assert decode(response.result) == 42


def test_traceback_shows_user_lines_without_worker_frames(worker: Worker) -> None:
    source = "def helper(x):\n    return 1 / x\n\ndef f():\n    return helper(0)\n"
    response = worker.call(function(source, source_name="<cell In[3]>"))
    assert not response.success and response.failure == "exception"
    assert response.error_type == "ZeroDivisionError"
    assert response.error.startswith("Traceback (most recent call last):\n")
    assert 'File "<cell In[3]>", line 5, in f\n    return helper(0)' in response.error
    assert 'File "<cell In[3]>", line 2, in helper\n    return 1 / x' in response.error
    assert "worker" not in response.error and response.error.endswith(
        "ZeroDivisionError: division by zero\n"
    )


def test_code_sent_again_under_another_name_tracebacks_to_that_name(worker: Worker) -> None:
    """The child compiles code it has seen before only once (every cell sends the same cell
    runtime); each request's traceback still names its own source."""
    source = "def f():\n    return 1 / 0\n"
    for name in ("<cell In[5]>", "<cell In[6]>"):
        response = worker.call(function(source, source_name=name))
        assert f'File "{name}", line 2, in f\n    return 1 / 0' in response.error


def test_segfault_then_next_request_runs(worker: Worker) -> None:
    before = pid_of(worker)
    source = "def f():\n    import os, signal\n    print('last words')\n"
    source += "    os.kill(os.getpid(), signal.SIGSEGV)\n"
    response = worker.call(function(source, source_name="<cell In[4]>"))
    assert response.failure == "crash" and "SIGSEGV" in response.error
    assert 'File "<cell In[4]>", line 4 in f' in response.error
    assert "worker/" not in response.error
    assert response.stdout == "last words\n"
    assert pid_of(worker) != before


def test_os_exit_then_next_request_runs(worker: Worker) -> None:
    response = worker.call(function("def f():\n    import os\n    os._exit(3)\n"))
    assert response.failure == "crash" and "exit status 3" in response.error
    assert worker.call(function("def f():\n    return 1\n")).success


def test_timeout_kills_the_code_and_what_it_started(worker: Worker) -> None:
    source = (
        "def f():\n    import subprocess, time\n    p = subprocess.Popen(['sleep', '60'])\n"
        "    print('started', p.pid, flush=True)\n    time.sleep(60)\n"
    )
    started = time.monotonic()
    response = worker.call(function(source, timeout=0.5))
    assert time.monotonic() - started < 5
    assert response.failure == "timeout" and response.error_type == "TimeoutError"
    sleeper = int(response.stdout.split()[1])
    deadline = time.monotonic() + 2
    while not gone(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(sleeper)
    assert worker.call(function("def f():\n    return 2\n")).success


def test_unpicklable_entries_are_named_and_the_rest_kept(worker: Worker) -> None:
    source = "def f():\n    import threading\n    return {'n': 1, 'lock': threading.Lock()}\n"
    response = worker.call(function(source))
    assert response.success and decode(response.result) == {"n": 1}
    assert set(response.unpicklable) == {"lock"}
    assert (
        "lock" in response.unpicklable["lock"] and "cannot pickle" in response.unpicklable["lock"]
    )


def test_unpicklable_result_is_an_error_naming_its_type(worker: Worker) -> None:
    response = worker.call(function("def f():\n    return (i for i in range(3))\n"))
    assert not response.success and "generator" in response.error


COUNTER = """
class Counter:
    def __init__(self, start=0):
        self.count = start

    def add(self, n=1):
        self.count += n
        return self.count
"""


def test_class_instances_kept_unless_a_new_one_is_asked_for(worker: Worker) -> None:
    def call(**fields: Any) -> FunctionResponse:
        request = {
            "execution_type": "class",
            "class_name": "Counter",
            "class_code": COUNTER,
            "method_name": "add",
            "constructor_args": [encode(10)],
            **fields,
        }
        return worker.call(request)

    first = call()
    assert decode(first.result) == 11 and first.instance_id.startswith("Counter_")
    kept = call(instance_id=first.instance_id, create_new_instance=False, args=[encode(5)])
    assert decode(kept.result) == 16 and kept.instance_id == first.instance_id
    assert kept.instance_info["method_calls"] == 2
    fresh = call(instance_id=first.instance_id, create_new_instance=True)
    assert decode(fresh.result) == 11


def test_plain_handler_gives_the_published_shape(worker: Worker) -> None:
    source = "def f():\n    import sys\n    print('out')\n    print('err', file=sys.stderr)\n"
    source += "    return 5\n"
    result = worker.plain(function(source))
    output = result["output"]
    assert "error" not in result and output["success"] and decode(output["result"]) == 5
    assert "out\n" in output["stdout"] and "err\n" in output["stdout"]


def test_plain_handler_failure_is_a_failed_job(worker: Worker) -> None:
    result = worker.plain(function("def f():\n    raise KeyError('k')\n"))
    assert "KeyError: 'k'" in result["error"]
    assert result["output"]["success"] is False


def test_invalid_requests_are_answered(worker: Worker) -> None:
    missing = worker.call(function("def g():\n    pass\n"))
    assert missing.failure == "invalid" and "'f' is not defined" in missing.error
    malformed = worker.call({"execution_type": "nonsense"})
    assert malformed.failure == "invalid"


def test_satisfied_deps_skip_the_installer(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETRA_UV", "/nonexistent/uv")
    chunks = worker.stream(function("def f():\n    return 1\n", dependencies=["pydantic>=2"]))
    assert any("already satisfied" in c["text"] for c in chunks if c["kind"] == "log")
    assert chunks[-1]["response"]["success"]


def test_installer_options_are_refused(worker: Worker) -> None:
    response = worker.call(function("def f():\n    pass\n", dependencies=["--index-url=http://x"]))
    assert response.failure == "install" and "not a package name" in response.error


def test_system_deps_without_apt_say_so(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deps.os, "geteuid", lambda: 1000)
    chunks = worker.stream(function("def f():\n    return 1\n", system_dependencies=["tetra-nope"]))
    stderr = "".join(c["text"] for c in chunks if c["kind"] == "stderr")
    assert "system dependencies not installed (tetra-nope)" in stderr
    assert "does not run as root" in stderr
    assert chunks[-1]["response"]["success"]


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg")
def test_installed_system_deps_need_no_apt(worker: Worker) -> None:
    chunks = worker.stream(function("def f():\n    return 1\n", system_dependencies=["coreutils"]))
    assert any("already installed" in c["text"] for c in chunks if c["kind"] == "log")


def test_cancel_through_the_sdk_stop_channel(worker: Worker) -> None:
    """The worker's job loop (the SDK's JobScaler, worker/loop.py), with its job source and stop
    channel fed from here (the SDK's hooks for local testing), stops the job by cancelling its
    task: the code and its subprocess die, the loop carries on and runs the next job."""
    from runpod.serverless.modules.rp_job import run_job_generator

    from worker.loop import JobLoop

    source = (
        "def f():\n    import os, subprocess, time\n    p = subprocess.Popen(['sleep', '60'])\n"
        "    print('pids', os.getpid(), p.pid, flush=True)\n    time.sleep(60)\n"
    )
    jobs = [worker.job(function(source))]
    stops: asyncio.Queue[str] = asyncio.Queue()
    outputs: dict[str, list[dict[str, Any]]] = {}

    async def fetch(session: Any, wanted: int) -> list[dict[str, Any]] | None:
        if jobs:
            return [jobs.pop()]
        await asyncio.sleep(0.05)
        return None

    async def stop_signals(session: Any) -> list[str]:
        try:
            return [await asyncio.wait_for(stops.get(), 0.1)]
        except asyncio.TimeoutError:
            return []

    async def handle(session: Any, config: dict[str, Any], job: dict[str, Any]) -> None:
        # The SDK's handle_job, with the stream posts recorded instead of sent.
        async for part in run_job_generator(config["handler"], job):
            outputs.setdefault(job["id"], []).append(part["output"])

    async def scenario() -> tuple[list[int], FunctionResponse]:
        config = {
            "handler": handler.stream_handler,
            "jobs_fetcher": fetch,
            "jobs_handler": handle,
            "stop_signals_fetcher": stop_signals,
        }
        scaler = JobLoop(config)
        loop = asyncio.create_task(scaler.run())
        first = f"job-{worker.count}"
        while not any("pids" in c["text"] for c in outputs.get(first, [])):
            await asyncio.sleep(0.02)
        line = next(c["text"] for c in outputs[first] if "pids" in c["text"])
        await stops.put(first)
        while first in scaler.jobs_tasks:
            await asyncio.sleep(0.02)
        jobs.append(worker.job(function("def f():\n    return 'next'\n")))
        second = f"job-{worker.count}"
        while not outputs.get(second) or outputs[second][-1]["kind"] != "response":
            await asyncio.sleep(0.02)
        scaler.kill_worker()
        await loop
        response = FunctionResponse.model_validate(outputs[second][-1]["response"])
        return [int(pid) for pid in line.split()[1:3]], response

    pids, response = worker.loop.run_until_complete(asyncio.wait_for(scenario(), 30))
    deadline = time.monotonic() + 2
    while not all(map(gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(map(gone, pids)), "the cancelled code is still running"
    assert response.success and decode(response.result) == "next"


def test_a_forked_process_returning_does_not_answer(worker: Worker) -> None:
    response = worker.call(function("def f():\n    import os\n    return os.fork() and 'parent'\n"))
    assert response.success and decode(response.result) == "parent"
    assert decode(worker.call(function("def f():\n    return 3\n")).result) == 3


def test_output_after_a_request_goes_to_the_next_one(worker: Worker) -> None:
    """A thread the code left behind prints once its request has answered. The next request
    releases it and waits for it (no timers, so a loaded machine cannot reorder them)."""
    source = (
        "def f():\n    import sys, threading\n    go = sys.tetra_test_go = threading.Event()\n"
        "    def late():\n        go.wait(60)\n        print('late', flush=True)\n"
        "    sys.tetra_test_late = threading.Thread(target=late, daemon=True)\n"
        "    sys.tetra_test_late.start()\n"
    )
    assert worker.call(function(source)).stdout == ""
    release = "def f():\n    import sys\n    sys.tetra_test_go.set()\n"
    release += "    sys.tetra_test_late.join(60)\n"
    later = worker.call(function(release))
    assert later.success, later.error
    assert later.stdout == "late\n"


def test_runaway_output_is_capped(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "MAX_OUTPUT_BYTES", 1000)
    source = "def f():\n    for i in range(1000):\n        print('x' * 99)\n    return 'done'\n"
    chunks = worker.stream(function(source))
    stdout = "".join(c["text"] for c in chunks if c["kind"] == "stdout")
    stderr = "".join(c["text"] for c in chunks if c["kind"] == "stderr")
    assert len(stdout) <= 1000 and "bytes of output past 1000 were dropped" in stderr
    assert decode(chunks[-1]["response"]["result"]) == "done"


def test_the_code_cannot_see_the_job_queue_key(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNPOD_AI_API_KEY", "secret")
    handler.EXECUTOR.close()  # the next request starts a child with this environment
    source = "def f():\n    import os\n    return os.environ.get('RUNPOD_AI_API_KEY', 'absent')\n"
    assert decode(worker.call(function(source)).result) == "absent"


DISPLAYS = """
def f(runtime, image):
    install(runtime)  # the bootstrap's: the runtime package, from the sources
    display = importlib.import_module('tetra_runtime.display')
    stand_in = importlib.import_module('tetra_runtime.ipython_stand_in')
    display.begin()
    print('before')
    stand_in.display(stand_in.Image(image), stand_in.HTML('<b>small</b>'))
    print('after')
"""


def test_display_outputs_come_in_order_and_in_chunks_a_stream_accepts(worker: Worker) -> None:
    """An image bigger than RunPod's 1 MB stream chunk is cut into pieces that each fit, and the
    notebook's joiner makes it whole again; the plain handler frames it in its stdout."""
    from tetra_magic import runtime
    from tetra_magic.view import rich

    image = b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 2**20)
    code = runtime.bootstrap_source() + DISPLAYS
    request = function(code, args=[encode(runtime.sources()), encode(image)])
    chunks = worker.stream(request)
    assert all(len(json.dumps(c)) < 2**20 for c in chunks)
    joiner = rich.Joiner()
    shown = []
    for item in chunks:
        if item["kind"] == "stdout":
            shown.append(item["text"])
        elif item["kind"] == "display" and (message := joiner.join(item)):
            shown.append(message["data"])
    assert [c["kind"] for c in chunks].count("display") > 3  # the image came in pieces
    assert shown[0] == "before\n" and shown[-1] == "after\n"
    assert base64.b64decode(shown[1]["image/png"]) == image
    assert shown[2]["text/html"] == "<b>small</b>" and len(shown) == 4
    plain = FunctionResponse.model_validate(worker.plain(request)["output"])
    record = rich.Record.of_stdout(plain.stdout or "")
    assert [kind for kind, _ in record.items] == ["stdout", "display", "display", "stdout"]
    assert base64.b64decode(record.items[1][1]["data"]["image/png"]) == image


def posted_size(item: dict[str, Any]) -> int:
    """Bytes of a chunk as the runpod SDK posts it to the stream (RunPod takes 1 MB at most)."""
    return len(json.dumps({"output": item}, ensure_ascii=False).encode())


WIDE = """
def f():
    print('\\x01' * 400_000)  # a control character posts as six bytes: \\u0001
    print('\\u5b57' * 400_000)  # a CJK character as three, in UTF-8
    return '\\x02' * 2_000_000
"""


def test_text_that_posts_bigger_than_it_reads_still_fits_stream_chunks(worker: Worker) -> None:
    """RunPod's 1 MB counts bytes posted, not characters: output full of control characters or
    CJK, and a response whose JSON is six times its text, still go in chunks under it, and
    come back whole."""
    chunks = worker.stream(function(WIDE))
    assert max(posted_size(c) for c in chunks) <= 1_000_000
    stdout = "".join(c["text"] for c in chunks if c["kind"] == "stdout")
    assert stdout == "\x01" * 400_000 + "\n" + "\u5b57" * 400_000 + "\n"
    pieces = [c for c in chunks if c["kind"] == "response"]
    assert chunks[-len(pieces) :] == pieces and len(pieces) > 1
    assert all(p.get("more") for p in pieces[:-1]) and not pieces[-1].get("more")
    response = FunctionResponse.model_validate_json("".join(p["text"] for p in pieces))
    assert decode(response.result) == "\x02" * 2_000_000
