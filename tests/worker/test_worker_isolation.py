"""What one request leaves behind in the worker, and where it may go: requests of one kernel
share an executor child and a working directory; another kernel's request gets a fresh child
in a directory of its own. Driven through the SDK's job functions in this process, as in
test_worker.py (whose `worker` fixture and request helpers these tests use)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import test_worker
from test_worker import Worker, function

from worker import executor, handler
from worker.protocol import decode, encode

# A thread that outlives its request: once GO exists it prints, then creates DONE.
LATE_PRINTER = """
def f(go, done):
    import os, threading, time
    def late():
        while not os.path.exists(go):
            time.sleep(0.01)
        print('late output', flush=True)
        open(done, 'w').close()
    threading.Thread(target=late, daemon=True).start()
"""
CWD = "def f():\n    import os\n    return os.getcwd()\n"

worker = test_worker.worker  # its in-process worker fixture, one for this module


@pytest.fixture(autouse=True)
def work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Kernels' working directories under this test's tmp_path (read when a child starts)."""
    monkeypatch.setenv("TETRA_WORK_DIR", str(tmp_path / "kernels"))
    handler.EXECUTOR.close()
    return tmp_path / "kernels"


def as_kernel(kernel: str | None, request: dict) -> dict:
    return {**request, "kernel_id": kernel}


def leave_late_output(worker: Worker, kernel: str, tmp_path: Path) -> None:
    """A request of `kernel` whose thread prints after the request has answered; returns once
    it has printed, so the output waits in the worker for whichever request comes next."""
    go, done = tmp_path / "go", tmp_path / "done"
    request = function(LATE_PRINTER, args=[encode(str(go)), encode(str(done))])
    response = worker.call(as_kernel(kernel, request))
    assert response.success and response.stdout == "", response.error
    go.touch()
    deadline = time.monotonic() + 60
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done.exists(), "the thread never printed"


def test_late_output_goes_to_the_same_kernels_next_request(worker: Worker, tmp_path: Path) -> None:
    leave_late_output(worker, "kernel-a", tmp_path)
    later = worker.call(as_kernel("kernel-a", function("def f():\n    return 1\n")))
    assert later.success and later.stdout == "late output\n"


def test_late_output_never_reaches_another_kernel(worker: Worker, tmp_path: Path) -> None:
    leave_late_output(worker, "kernel-a", tmp_path)
    other = worker.call(as_kernel("kernel-b", function("def f():\n    return 1\n")))
    assert other.success and other.stdout == ""
    back = worker.call(as_kernel("kernel-a", function("def f():\n    return 1\n")))
    assert back.success and back.stdout == ""  # its process was replaced: the output is dropped


def test_another_kernel_gets_a_fresh_process(worker: Worker) -> None:
    """What a kernel's code changed in its process (a module attribute, an environment
    variable) stays with that kernel; its own later requests still see it."""
    mark = "def f():\n    import os, json\n    json.tetra_mark = 'a'\n"
    mark += "    os.environ['TETRA_MARK'] = 'a'\n"
    probe = "def f():\n    import os, json\n"
    probe += "    return getattr(json, 'tetra_mark', None), os.environ.get('TETRA_MARK')\n"
    assert worker.call(as_kernel("kernel-a", function(mark))).success
    assert decode(worker.call(as_kernel("kernel-a", function(probe))).result) == ("a", "a")
    assert decode(worker.call(as_kernel("kernel-b", function(probe))).result) == (None, None)


def test_each_kernel_runs_in_a_directory_of_its_own(worker: Worker, work_dir: Path) -> None:
    cwd = {k: decode(worker.call(as_kernel(k, function(CWD))).result) for k in ("a", "b", None)}
    assert cwd == {"a": str(work_dir / "a"), "b": str(work_dir / "b"), None: cwd[None]}
    assert Path(cwd[None]).parent == work_dir and len(set(cwd.values())) == 3


def test_files_a_request_writes_cannot_break_the_next_start(worker: Worker) -> None:
    """A json.py (and a cloudpickle.py) in the working directory: every later child still
    starts, with the real modules; a module the code wrote can still be imported, as at home."""
    write = (
        "def f():\n    for name in ('json', 'cloudpickle'):\n"
        "        open(name + '.py', 'w').write('raise SystemExit(7)\\n')\n"
        "    open('helper_mod.py', 'w').write('VALUE = 42\\n')\n"
    )
    assert worker.call(as_kernel("a", function(write))).success
    handler.EXECUTOR.close()  # the next request starts a child in that directory
    use = "def f():\n    import json, helper_mod\n    return json.dumps([helper_mod.VALUE])\n"
    response = worker.call(as_kernel("a", function(use)))
    assert response.success, response.error
    assert decode(response.result) == "[42]"


def test_a_child_that_cannot_start_says_so(
    worker: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's own import fails (a broken package shadows cloudpickle): the request fails
    as a start failure quoting the import error, without blaming the code; once the package is
    fixed the next request runs."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cloudpickle.py").write_text("raise ImportError('cloudpickle is broken here')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken))
    response = worker.call(function("def f():\n    return 1\n"))
    assert not response.success and response.failure == "start"
    assert "before it was ready" in response.error
    assert "ImportError: cloudpickle is broken here" in response.error
    assert "crashed" not in response.error and "exit status" not in response.error
    monkeypatch.delenv("PYTHONPATH")
    assert decode(worker.call(function("def f():\n    return 1\n")).result) == 1


@pytest.mark.parametrize("kernel", ["../elsewhere", "", "a/b", "x" * 65])
def test_a_kernel_id_that_is_not_a_plain_name_is_refused(worker: Worker, kernel: str) -> None:
    response = worker.call(as_kernel(kernel, function("def f():\n    return 1\n")))
    assert response.failure == "invalid" and "kernel_id" in response.error


def test_a_child_that_never_gets_ready_says_so(worker: Worker) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(executor, "_START", "import time; time.sleep(60)")
        patch.setattr(executor, "START_TIMEOUT_S", 0.5)
        response = worker.call(function("def f():\n    return 1\n"))
    assert response.failure == "start"
    assert response.error == "the process that runs the code was not ready after 0.5 s"
    assert decode(worker.call(function("def f():\n    return 1\n")).result) == 1


ENVIRON = "def f():\n    import os\n    return {n: os.environ.get(n) for n in NAMES}\n"


def test_code_sees_the_workers_environment_but_not_runpods_keys(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a RunPod worker the environment holds the endpoint template's variables (the
    user's worker_env), which cells read, and RunPod's own keys, which stay with the worker."""
    values = {
        "RUNPOD_API_KEY": "rpa_account_key",
        "RUNPOD_AI_API_KEY": "job_queue_key",
        "RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/x/job-take/$ID",
        "RUNPOD_ENDPOINT_ID": "abc123",
        "FROM_TEMPLATE": "template-value",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    handler.EXECUTOR.close()  # a child started now, in this environment
    code = ENVIRON.replace("NAMES", repr(tuple(values)))
    response = worker.call(as_kernel("k1", function(code)))
    assert response.success, response.error
    assert decode(response.result) == {
        "RUNPOD_API_KEY": None,
        "RUNPOD_AI_API_KEY": None,
        "RUNPOD_WEBHOOK_GET_JOB": None,
        "RUNPOD_ENDPOINT_ID": "abc123",
        "FROM_TEMPLATE": "template-value",
    }


PID = "def f():\n    import os\n    print('ran')\n    return os.getpid()\n"


def test_a_stopped_executor_is_replaced_and_the_request_runs(worker: Worker) -> None:
    """The kernel's kept executor process stops (SIGSTOP: alive, never answering): the next
    request runs in a fresh one within seconds, saying so, instead of waiting for its timeout."""
    first = worker.call(as_kernel("k1", function(PID)))
    stopped = decode(first.result)
    os.kill(stopped, signal.SIGSTOP)
    start = time.monotonic()
    chunks = worker.stream(as_kernel("k1", function(PID, timeout=60)))
    took = time.monotonic() - start
    response = chunks[-1]["response"]
    assert response["success"] and decode(response["result"]) != stopped
    assert took < executor.TAKE_UP_S + 5, took
    logs = "".join(c["text"] for c in chunks if c["kind"] == "log")
    assert "did not take the cell up (stopped or hung): it was replaced by a fresh one" in logs
    assert "".join(c["text"] for c in chunks if c["kind"] == "stdout") == "ran\n"
