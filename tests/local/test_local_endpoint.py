"""The local endpoint, end to end: a real server with real workers, driven by runpod's own client.

One server serves the whole module (started through the launcher, as the magic starts it), in a
temporary TETRA_MAGIC_HOME; the workers' venv is shared across runs (TETRA_MAGIC_WORKER_ENV, or
a per-user temp dir) so only the first run ever builds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import runpod
from helpers.kernels import environ, shared_worker_env

from tetra_magic.local import launcher
from tetra_magic.local.launcher import LocalEndpoint
from tetra_magic.local.state import python_tag
from worker.protocol import FunctionRequest, decode

# Starts local endpoints and their worker processes: not in the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

WORKERS = 2
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "TETRA_MAGIC_HOME": str(tmp_path_factory.mktemp("tetra-home")),
        "TETRA_MAGIC_WORKER_ENV": shared_worker_env(),
    }


@pytest.fixture(scope="module")
def endpoint(home: dict[str, str]) -> Iterator[LocalEndpoint]:
    with environ(home):
        found = launcher.ensure_running(workers=WORKERS, idle_timeout=None)
    try:
        _until(lambda: _health(found)["workers"]["idle"] == WORKERS, 300, "workers never came up")
        yield found
    finally:
        with environ(home):
            launcher.stop()


@pytest.fixture
def sdk(endpoint: LocalEndpoint) -> runpod.Endpoint:
    """runpod.Endpoint pointed at the local endpoint (the SDK reads these module globals)."""
    runpod.endpoint_url_base = endpoint.base_url
    runpod.api_key = endpoint.api_key
    return runpod.Endpoint(endpoint.endpoint_id)


# --------------------------------------------------------------------------- helpers


def _request(code: str, **extra: Any) -> dict[str, Any]:
    """A FunctionRequest calling `main()` defined in `code`."""
    source = textwrap.dedent(code)
    return FunctionRequest(function_name="main", function_code=source, **extra).model_dump()


def _headers(endpoint: LocalEndpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.api_key}"}


def _health(endpoint: LocalEndpoint) -> dict[str, Any]:
    return requests.get(f"{endpoint.url}/health", headers=_headers(endpoint), timeout=5).json()


def _status(endpoint: LocalEndpoint, job_id: str) -> dict[str, Any]:
    url = f"{endpoint.url}/status/{job_id}"
    return requests.get(url, headers=_headers(endpoint), timeout=5).json()


def _until(check: Callable[[], Any], timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            value = check()
            if value:
                return value
        time.sleep(0.05)
    raise AssertionError(f"{message} (after {timeout} s)")


def _final(endpoint: LocalEndpoint, job_id: str, timeout: float = 60) -> dict[str, Any]:
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
    return _until(
        lambda: (doc := _status(endpoint, job_id))["status"] in final and doc,
        timeout,
        f"job {job_id} did not finish",
    )


def _response(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The FunctionResponse: the last chunk of our worker's aggregated output."""
    assert output[-1]["kind"] == "response", output
    return output[-1]["response"]


PIDS = """
def main():
    import os, time
    print("pids", os.getpid(), os.getppid(), flush=True)
    time.sleep(60)
"""


def _start_and_read_pids(endpoint: LocalEndpoint, **body: Any) -> tuple[str, int, int]:
    """Run PIDS; return the job id, its executor child's pid and its worker's pid."""
    body = {"input": _request(PIDS), **body}
    job_id = requests.post(f"{endpoint.url}/run", json=body, headers=_headers(endpoint)).json()[
        "id"
    ]
    seen: list[Any] = []

    def pids_line() -> str | None:
        url = f"{endpoint.url}/stream/{job_id}"
        seen.extend(
            c["output"] for c in requests.get(url, headers=_headers(endpoint)).json()["stream"]
        )
        return next((c["text"] for c in seen if "pids" in c.get("text", "")), None)

    line = _until(pids_line, 60, "the job never printed its pids")
    child, worker = (int(part) for part in line.split()[1:3])
    return job_id, child, worker


def _gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reading an exiting process raises ESRCH
        return True


# --------------------------------------------------------------------------- tests


def test_launcher_reuses_one_server_and_keeps_the_token_private(
    endpoint: LocalEndpoint, home: dict[str, str]
) -> None:
    with environ(home):
        again = launcher.ensure_running()
    assert again == endpoint
    assert endpoint.base_url.startswith("http://127.0.0.1:") and endpoint.base_url.endswith("/v2")
    assert endpoint.api_key not in repr(endpoint)
    root = Path(home["TETRA_MAGIC_HOME"])
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "token").stat().st_mode) == 0o600


def test_run_and_status(sdk: runpod.Endpoint, endpoint: LocalEndpoint) -> None:
    job = sdk.run(_request("def main():\n    print('hello')\n    return 6 * 7\n"))
    doc = _final(endpoint, job.job_id)
    assert doc["status"] == "COMPLETED"
    assert {"delayTime", "executionTime", "workerId"} <= doc.keys()
    response = _response(job.output())
    assert response["success"] and decode(response["result"]) == 42
    assert response["stdout"] == "hello\n"


def test_stream_delivers_chunks_while_the_job_runs(
    sdk: runpod.Endpoint, endpoint: LocalEndpoint
) -> None:
    code = """
    def main():
        import time
        print("first", flush=True)
        time.sleep(3)
        print("second")
    """
    job = sdk.run(_request(code))
    seen: list[tuple[float, Any]] = []
    reader = threading.Thread(
        target=lambda: seen.extend((time.monotonic(), c) for c in job.stream()), daemon=True
    )
    reader.start()
    first = _until(
        lambda: next((t for t, c in seen if c.get("text") == "first\n"), None), 30, "no 'first'"
    )
    assert _status(endpoint, job.job_id)["status"] == "IN_PROGRESS"
    reader.join(30)
    assert not reader.is_alive()
    ended = _final(endpoint, job.job_id)
    assert ended["status"] == "COMPLETED"
    second = next(t for t, c in seen if c.get("text") == "second\n")
    assert second - first > 2, "the first print was only seen when the job ended"
    assert seen[-1][1]["kind"] == "response"
    # Everything was delivered once: /stream now has nothing new.
    again = requests.get(f"{endpoint.url}/stream/{job.job_id}", headers=_headers(endpoint)).json()
    assert again == {"status": "COMPLETED", "stream": []}


def test_runsync_returns_the_output_and_honours_wait(
    sdk: runpod.Endpoint, endpoint: LocalEndpoint
) -> None:
    output = sdk.run_sync(_request("def main():\n    return 'done'\n"), timeout=60)
    assert decode(_response(output)["result"]) == "done"
    slow = {"input": _request("def main():\n    import time\n    time.sleep(3)\n")}
    started = time.monotonic()
    doc = requests.post(
        f"{endpoint.url}/runsync?wait=1000", json=slow, headers=_headers(endpoint), timeout=30
    ).json()
    # It waited the second asked for, and answered while the 3 s job still ran (its status
    # says so, which no load on the machine can make true of an answer that waited it out).
    assert time.monotonic() - started >= 0.9
    assert doc["id"].startswith("sync-") and doc["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert _final(endpoint, doc["id"])["status"] == "COMPLETED"


def test_cancel_stops_a_running_job_and_its_worker_serves_again(
    sdk: runpod.Endpoint, endpoint: LocalEndpoint
) -> None:
    job_id, child, _ = _start_and_read_pids(endpoint)
    worker_id = _status(endpoint, job_id)["workerId"]
    cancelled_at = time.monotonic()
    answer = requests.post(f"{endpoint.url}/cancel/{job_id}", headers=_headers(endpoint)).json()
    assert answer == {"id": job_id, "status": "CANCELLED"}
    _until(lambda: _gone(child), 3, "the cancelled job's executor is still running")
    assert time.monotonic() - cancelled_at < 2.5
    assert _status(endpoint, job_id)["status"] == "CANCELLED"
    # Both workers take a job at once again: the cancelled job's worker is free.
    jobs = [
        sdk.run(_request("def main():\n    import time\n    time.sleep(1)\n")) for _ in range(2)
    ]
    docs = [_final(endpoint, job.job_id, 30) for job in jobs]
    assert [doc["status"] for doc in docs] == ["COMPLETED", "COMPLETED"]
    assert worker_id in {doc["workerId"] for doc in docs}


# One step of a session: counts its steps in the executor process, the way a session's
# namespace lives there between cells.
SESSION_STEP = """
def main():
    import os, sys, time, types
    box = sys.modules.setdefault("tetra_box", types.ModuleType("tetra_box"))
    box.steps = getattr(box, "steps", 0) + 1
    time.sleep(0.5)
    return os.getpid(), box.steps
"""


def test_a_sessions_jobs_all_run_on_the_worker_holding_it(endpoint: LocalEndpoint) -> None:
    """A session's jobs, queued between another kernel's plain jobs, all run on one worker, in
    one executor process that keeps the session's state. The plain jobs are quick, so the other
    worker is free for each step after the first: it takes the plain jobs instead."""
    session = _request(SESSION_STEP, kernel_id="k1", session="k1:s")
    plain = _request("def main():\n    return 1\n", kernel_id="k2")
    url, headers = f"{endpoint.url}/run", _headers(endpoint)
    ids = [
        requests.post(url, json={"input": body}, headers=headers, timeout=5).json()["id"]
        for _ in range(4)
        for body in (session, plain)
    ]
    runs = [_response(_final(endpoint, job_id)["output"]) for job_id in ids]
    assert all(run["success"] for run in runs), runs
    steps, plains = runs[::2], runs[1::2]
    holders = {run["worker"]["worker_id"] for run in steps}
    assert len(holders) == 1
    pid = decode(steps[0]["result"])[0]
    assert [decode(run["result"]) for run in steps] == [(pid, n) for n in range(1, 5)]
    assert {run["worker"]["worker_id"] for run in plains} - holders


def test_health_reports_jobs_and_workers(sdk: runpod.Endpoint, endpoint: LocalEndpoint) -> None:
    before = sdk.health()
    assert set(before["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert {"idle", "running"} <= set(before["workers"])
    sdk.run_sync(_request("def main():\n    return 1\n"), timeout=60)
    after = sdk.health()
    assert after["jobs"]["completed"] == before["jobs"]["completed"] + 1
    assert after["workers"]["ready"] == WORKERS
    # The worker that ran it is idle again once it asks for work after the job.
    _until(lambda: sdk.health()["workers"]["idle"] == WORKERS, 5, "a worker never came back")


@pytest.mark.parametrize(("route", "limit_mb"), [("run", 10), ("runsync", 20)])
def test_oversized_payload_is_413(endpoint: LocalEndpoint, route: str, limit_mb: int) -> None:
    body = json.dumps({"input": {"blob": "x" * (limit_mb * 1_000_000 + 500_000)}})
    headers = {**_headers(endpoint), "Content-Type": "application/json"}
    answer = requests.post(f"{endpoint.url}/{route}", data=body, headers=headers, timeout=30)
    assert answer.status_code == 413
    message = answer.json()["error"]
    assert f"{limit_mb + 0.5:.1f} MB" in message and f"at most {limit_mb} MB" in message


def test_bad_or_missing_token_is_401(endpoint: LocalEndpoint) -> None:
    runpod.endpoint_url_base = endpoint.base_url
    runpod.api_key = "not-the-token"
    with pytest.raises(RuntimeError, match="Unauthorized"):
        runpod.Endpoint(endpoint.endpoint_id).health()
    bare = requests.get(f"{endpoint.url}/health", timeout=5)
    assert bare.status_code == 401 and "Authorization" in bare.json()["error"]
    # RunPod also takes the key without "Bearer".
    raw = requests.get(f"{endpoint.url}/health", headers={"Authorization": endpoint.api_key})
    assert raw.status_code == 200


def test_unknown_job_id_is_404(sdk: runpod.Endpoint, endpoint: LocalEndpoint) -> None:
    job = runpod.endpoint.Job(endpoint.endpoint_id, "no-such-job", sdk.rp_client)
    with pytest.raises(requests.HTTPError) as raised:
        job.status()
    assert raised.value.response.status_code == 404
    assert "no-such-job" in raised.value.response.json()["error"]
    for route in ("stream", "cancel"):
        answer = requests.post(f"{endpoint.url}/{route}/no-such-job", headers=_headers(endpoint))
        assert answer.status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"nothing": 1}', '"input"'),
        ('{"input": {}, "policy": {"executionTimeout": 10}}', "executionTimeout"),
        ('{"input": {}, "policy": {"ttl": "soon"}}', "ttl"),
    ],
)
def test_bad_request_is_400(endpoint: LocalEndpoint, body: str, fragment: str) -> None:
    answer = requests.post(f"{endpoint.url}/run", data=body, headers=_headers(endpoint))
    assert answer.status_code == 400 and fragment in answer.json()["error"]


def test_killed_worker_fails_its_job_and_is_replaced(
    sdk: runpod.Endpoint, endpoint: LocalEndpoint
) -> None:
    job_id, child, worker = _start_and_read_pids(endpoint)
    os.kill(worker, signal.SIGKILL)
    doc = _final(endpoint, job_id, 10)
    assert doc["status"] == "FAILED"
    assert "worker exited with signal SIGKILL while running the job" in doc["error"]
    _until(lambda: _gone(child), 3, "the dead worker's executor child was left running")
    output = sdk.run_sync(_request("def main():\n    return 'alive'\n"), timeout=60)
    assert decode(_response(output)["result"]) == "alive"
    _until(lambda: _health(endpoint)["workers"]["idle"] == WORKERS, 60, "no replacement worker")


def test_execution_timeout_ends_the_job_as_timed_out(endpoint: LocalEndpoint) -> None:
    job_id, child, _ = _start_and_read_pids(endpoint, policy={"executionTimeout": 5000})
    doc = _final(endpoint, job_id, 20)
    assert doc["status"] == "TIMED_OUT"
    assert "execution timeout of 5 s" in doc["error"]
    assert 5000 <= doc["executionTime"] < 6500
    _until(lambda: _gone(child), 3, "the timed-out job's executor is still running")


def test_purge_queue_removes_waiting_jobs_only(endpoint: LocalEndpoint) -> None:
    headers = _headers(endpoint)
    running = [_start_and_read_pids(endpoint)[0] for _ in range(WORKERS)]
    waiting = [
        requests.post(f"{endpoint.url}/run", json={"input": _request(PIDS)}, headers=headers).json()
        for _ in range(2)
    ]
    answer = requests.post(f"{endpoint.url}/purge-queue", headers=headers).json()
    assert answer == {"removed": 2, "status": "completed"}
    assert {_status(endpoint, job["id"])["status"] for job in waiting} == {"CANCELLED"}
    assert {_status(endpoint, job_id)["status"] for job_id in running} == {"IN_PROGRESS"}
    for job_id in running:
        requests.post(f"{endpoint.url}/cancel/{job_id}", headers=headers)
    _until(lambda: _health(endpoint)["workers"]["idle"] == WORKERS, 30, "workers stayed busy")


def test_deps_go_into_the_worker_environment_not_the_kernel(
    sdk: runpod.Endpoint, home: dict[str, str]
) -> None:
    code = "def main():\n    import tomli_w\n    return tomli_w.__file__\n"
    output = sdk.run_sync(_request(code, dependencies=["tomli-w"]), timeout=180)
    response = _response(output)
    assert response["success"], response
    assert decode(response["result"]).startswith(home["TETRA_MAGIC_WORKER_ENV"])
    with pytest.raises(ImportError):
        import tomli_w  # noqa: F401


def test_cli_prints_the_url_not_the_token_and_stops_when_idle(
    tmp_path: Path, home: dict[str, str]
) -> None:
    env = {**os.environ, **home, "TETRA_MAGIC_HOME": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "tetra_magic.local", "--workers", "1", "--idle-timeout", "2"]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "http://127.0.0.1:" in done.stdout and "/v2/local" in done.stdout
    token = (tmp_path / "state" / "token").read_text().strip()
    assert token not in done.stdout + done.stderr
    assert str(tmp_path / "state" / "token") in done.stdout  # where to find it instead
    assert not (tmp_path / "state" / f"local-{python_tag()}" / "server.json").exists()


def test_two_kernels_starting_at_once_share_one_server(
    tmp_path: Path, home: dict[str, str]
) -> None:
    """Also: a user's ~/.runpod/config.toml (which the SDK prefers to our token) works."""
    user = tmp_path / "user"
    (user / ".runpod").mkdir(parents=True)
    (user / ".runpod" / "config.toml").write_text('[default]\napi_key = "rp-key-of-the-user"\n')
    state = {**home, "TETRA_MAGIC_HOME": str(tmp_path / "state")}
    env = {**os.environ, **state, "HOME": str(user)}
    script = (
        "from tetra_magic.local.launcher import ensure_running\n"
        "print(ensure_running(workers=1, idle_timeout=None).base_url)\n"
    )
    kernels = [
        subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        urls = {kernel.communicate(timeout=60)[0].decode().strip() for kernel in kernels}
        assert len(urls) == 1 and all(kernel.returncode == 0 for kernel in kernels)
        with environ(state):
            endpoint = launcher.running()
        assert endpoint is not None and endpoint.base_url in urls
        body = {"input": _request("def main():\n    return 'ok'\n")}
        doc = requests.post(
            f"{endpoint.url}/runsync", json=body, headers=_headers(endpoint), timeout=90
        ).json()
        assert doc["status"] == "COMPLETED" and decode(_response(doc["output"])["result"]) == "ok"
    finally:
        with environ(state):
            launcher.stop()


def test_a_worker_environment_that_cannot_be_made_fails_jobs_clearly(tmp_path: Path) -> None:
    state = {
        "TETRA_MAGIC_HOME": str(tmp_path / "state"),
        "TETRA_MAGIC_WORKER_ENV": "/dev/null/worker-env",  # cannot be a directory
    }
    with environ(state):
        endpoint = launcher.ensure_running(workers=1, idle_timeout=None)
    try:
        body = {"input": _request("def main():\n    return 1\n")}
        answer = requests.post(f"{endpoint.url}/run", json=body, headers=_headers(endpoint))
        doc = _final(endpoint, answer.json()["id"], 30)
        assert doc["status"] == "FAILED"
        assert "could not prepare its worker environment" in doc["error"]
        assert "/dev/null/worker-env" in doc["error"]
        assert _health(endpoint)["workers"]["unhealthy"] == 1
    finally:
        with environ(state):
            launcher.stop()


def test_no_file_but_the_token_file_holds_the_token(
    endpoint: LocalEndpoint, home: dict[str, str]
) -> None:
    """Run last: by now the server and worker logs hold every kind of line they write."""
    for path in Path(home["TETRA_MAGIC_HOME"]).rglob("*"):
        if path.is_file() and path.name != "token":
            assert endpoint.api_key not in path.read_text(errors="replace"), path
