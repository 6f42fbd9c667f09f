"""Executor processes that hold a session: a kernel's child that has run a request of a session
keeps its state while other kernels' requests come and go, and is lost only with its process
(a crash, a timeout, replaced packages). Driven through the SDK's job functions in this
process, as in test_worker.py (whose `worker` fixture and request helpers these tests use)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import test_worker
from test_worker import Worker, function, gone

from worker import executor, handler
from worker.protocol import decode, encode

# What a session's namespace stands for here: a value kept in a module of the child process.
STORE = """
def f(value):
    import os, sys, types
    box = sys.modules.setdefault('tetra_box', types.ModuleType('tetra_box'))
    box.value = value
    return os.getpid()
"""
PROBE = """
def f():
    import os, sys
    return getattr(sys.modules.get('tetra_box'), 'value', None), os.getpid()
"""

worker = test_worker.worker  # its in-process worker fixture, one for this module


@pytest.fixture(autouse=True)
def work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETRA_WORK_DIR", str(tmp_path / "kernels"))
    handler.EXECUTOR.close()


def request(kernel: str, source: str, session: str | None = None, **fields: object) -> dict:
    session_id = f"{kernel}:{session}" if session else None
    return {**function(source, **fields), "kernel_id": kernel, "session": session_id}


def store(worker: Worker, kernel: str, value: str, session: str | None = "s") -> int:
    """Keep `value` in the kernel's child (in a session, or not); the child's pid."""
    response = worker.call(request(kernel, STORE, session, args=[encode(value)]))
    assert response.success, response.error
    return decode(response.result)


def probe(worker: Worker, kernel: str, session: str | None = "s") -> tuple[str | None, int]:
    """The value the kernel's child holds, and its pid."""
    response = worker.call(request(kernel, PROBE, session))
    assert response.success, response.error
    return decode(response.result)


def ended(*pids: int) -> bool:
    """Whether the processes have ended, given the moment a SIGKILL takes to land."""
    deadline = time.monotonic() + 5
    while not all(map(gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(map(gone, pids))


@pytest.mark.parametrize("session", ["s", None])
def test_another_kernels_request_leaves_a_session_process_alone(
    worker: Worker, session: str | None
) -> None:
    """With a session, kernel A's process and what it holds outlive kernel B's request, which
    runs in a process of its own; without one, B's request replaces A's process, as before."""
    pid = store(worker, "kernel-a", "a's value", session)
    assert probe(worker, "kernel-b", None)[0] is None
    if session:
        assert probe(worker, "kernel-a", session) == ("a's value", pid)
    else:
        value, new_pid = probe(worker, "kernel-a", session)
        assert value is None and new_pid != pid and ended(pid)


def test_sessions_of_several_kernels_are_all_kept(worker: Worker) -> None:
    pids = {kernel: store(worker, kernel, f"{kernel}'s value") for kernel in ("a", "b")}
    assert probe(worker, "c", None)[0] is None
    assert {k: probe(worker, k) for k in pids} == {k: (f"{k}'s value", pids[k]) for k in pids}


def test_past_the_cap_the_least_recently_used_session_process_goes(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notebooks closed with their sessions open do not hold a worker's memory for good."""
    monkeypatch.setattr(executor, "KEPT_SESSION_PROCESSES", 2)
    pids = {kernel: store(worker, kernel, f"{kernel}'s value") for kernel in ("a", "b")}
    assert probe(worker, "a") == ("a's value", pids["a"])  # a used last: b is the oldest
    store(worker, "c", "c's value")
    assert ended(pids["b"]) and not gone(pids["a"])
    assert probe(worker, "a") == ("a's value", pids["a"])


@pytest.mark.parametrize(
    "ending",
    [
        {"function_code": "def f():\n    import os\n    os._exit(3)\n"},
        {"function_code": "def f():\n    import time\n    time.sleep(30)\n", "timeout": 0.5},
    ],
    ids=["crash", "timeout"],
)
def test_a_request_that_ends_its_process_loses_only_that_kernels_session(
    worker: Worker, ending: dict
) -> None:
    pid_a, pid_b = store(worker, "a", "a's value"), store(worker, "b", "b's value")
    response = worker.call({**request("a", "", "s"), **ending})
    assert not response.success and response.failure in ("crash", "timeout")
    assert ended(pid_a)
    value, new_pid = probe(worker, "a")
    assert value is None and new_pid != pid_a  # lost: a fresh process, for the runtime to see
    assert probe(worker, "b") == ("b's value", pid_b)


def test_closing_the_executor_ends_every_session_process(worker: Worker) -> None:
    """What replaced packages do (handler._install): no process keeps the old imports."""
    pids = [store(worker, kernel, "value") for kernel in ("a", "b")]
    handler.EXECUTOR.close()
    assert ended(*pids)
    assert probe(worker, "a")[0] is None and probe(worker, "b")[0] is None
