"""Jobs on RunPod, against the loopback fake: a wrong key is one clear error that says where the
key was read from; 429 makes the client wait as told; a job that waits IN_QUEUE (a cold start)
is shown as queued, polled gently and not timed out for waiting; a worker on another Python is
explained once."""

from __future__ import annotations

import io
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.cloud_kernels import COST_LINE, KEY, ok, run_cloud, runpod_config
from helpers.following import followed
from helpers.runpod_fakes import FakeRunPod

from tetra_magic.cloud.client import Endpoint, EndpointClient
from tetra_magic.view.text import TextView
from worker.protocol import FunctionRequest


def rest(fake: FakeRunPod) -> list[Any]:
    """The job API requests (provisioning's REST v2 ones left out)."""
    return [r for r in fake.requests if r.api == "jobs"]


@pytest.mark.slow
def test_a_wrong_key_says_where_it_was_read(fake: FakeRunPod, tmp_path: Path) -> None:
    mine = fake.add_endpoint("console-made")
    wrong = "rpa_WRONGKEY_0000"
    runs = run_cloud(
        fake, tmp_path, "%%tetra --gpu A100\n1", f"%%tetra --endpoint {mine}\n1", key=wrong
    )
    provisioning, direct = (run.error for run in runs)
    assert provisioning["ename"] == "CloudError"
    assert provisioning["evalue"] == (
        "could not list endpoints on RunPod: RunPod rejected the API key (401); it was read"
        " from the RUNPOD_API_KEY environment variable"
    )
    assert provisioning["traceback"] == [f"CloudError: {provisioning['evalue']}"]
    assert direct["ename"] == "EndpointError"
    assert "(401)" in direct["evalue"] and "RUNPOD_API_KEY environment variable" in direct["evalue"]
    for run in runs:
        assert wrong not in str(run.outputs)
    assert fake.jobs == {}


@pytest.mark.slow
def test_key_from_the_runpod_config_file(
    fake: FakeRunPod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    config = runpod_config(tmp_path)
    mine = fake.add_endpoint("console-made")
    runs = run_cloud(
        fake,
        tmp_path,
        "%%tetra --gpu 4090\n'ok'",
        "import pathlib\n"
        "p = pathlib.Path.home() / '.runpod' / 'config.toml'\n"
        "p.write_text('[default]\\napi_key = \"rpa_WRONG\"\\n')",
        "%%tetra --gpu 4090\n'again'",
        f"%%tetra --endpoint {mine}\n'direct'",
        key=None,
    )
    assert ok(runs[0]).results == ["'ok'"]
    ok(runs[1])
    for failed in runs[2:]:
        assert "(401)" in failed.error["evalue"], failed.error
        assert str(config) in failed.error["evalue"]


@pytest.mark.slow
def test_429_waits_as_retry_after_says(fake: FakeRunPod, tmp_path: Path) -> None:
    fake.forced_429 = [1, 2]  # /run refused twice
    fake.limits["status"] = (4, 2.0)  # and /stream + /status held to 4 per 2 s
    fake.queue_seconds = 2.5
    (run,) = run_cloud(fake, tmp_path, "%%tetra --gpu A100\nprint('made it')\n6 * 7")
    assert ok(run).stdout == "made it\n" and run.results == ["42"]
    calls = rest(fake)
    assert [c.status for c in calls[:3]] == [429, 429, 200]
    assert calls[1].at - calls[0].at >= 0.95 and calls[2].at - calls[1].at >= 1.95
    limited = [n for n, c in enumerate(calls) if c.status == 429 and n > 2]
    assert limited, "the /stream rate limit was never reached"
    for n in limited:
        assert calls[n + 1].at - calls[n].at >= 0.9  # waited as Retry-After said
    assert len(fake.jobs) == 1  # a refused /run was sent again, not twice


@pytest.mark.slow
def test_a_job_queued_for_a_while_then_runs(fake: FakeRunPod, tmp_path: Path) -> None:
    fake.queue_seconds = 4.0
    runs = run_cloud(
        fake,
        tmp_path,
        "%%tetra --gpu H100 --out rec --timeout 5\nprint('ran')\n'done'",
        "rec.status, rec.delay_ms >= 4000",
    )
    assert ok(runs[0]).stdout == "ran\n" and runs[0].results == ["'done'"]
    assert ok(runs[1]).results == ["('COMPLETED', True)"]
    (job,) = fake.jobs.values()
    waiting = [c for c in rest(fake) if "/stream/" in c.path and c.at < job.started]
    assert 3 <= len(waiting) <= 9, f"{len(waiting)} polls in a 4 s queue"


@pytest.mark.slow
def test_another_python_on_the_worker_is_explained_once(fake: FakeRunPod, tmp_path: Path) -> None:
    fake.worker_python = "3.9.18" if sys.version_info[:2] != (3, 9) else "3.12.7"
    runs = run_cloud(
        fake,
        tmp_path,
        "def twice(v):\n    return 2 * v",
        "%%tetra --gpu A100\ntwice(4)",
        "%%tetra --gpu A100\ntwice(5)",
    )
    note = ok(runs[1]).stderr
    assert f"the worker runs Python {fake.worker_python}" in note
    assert f"this notebook Python {platform.python_version()}" in note
    assert "travel as source" in note and "TetraMagic.worker_image" in note
    assert runs[1].results == ["8"]
    assert COST_LINE.fullmatch(ok(runs[2]).stderr) and runs[2].results == ["10"]


# ------------------------------------------------------------------ the follow loop in-process


class Recording:
    """A view that keeps every status, and the widget header shown at each."""

    def __init__(self, widget: Any = None) -> None:
        self.statuses: list[str] = []
        self.headers: list[str] = []
        self.widget = widget

    def status(self, status: str) -> None:
        self.statuses.append(status)
        if self.widget is not None:
            self.widget.status(status)
            self.headers.append(self.widget.status_html.value + self.widget.where_html.value)

    def chunk(self, chunk: dict[str, Any]) -> None:
        pass


def submit(fake: FakeRunPod) -> tuple[EndpointClient, str]:
    endpoint_id = fake.add_endpoint("follow-test")
    client = EndpointClient(Endpoint(f"{fake.url}/v2", endpoint_id, KEY))
    request = FunctionRequest(function_name="f", function_code="def f():\n    return 1\n")
    return client, client.run(request.model_dump(exclude_none=True), 60)


def test_waiting_in_the_queue_shows_queued_and_is_not_run_time(fake: FakeRunPod) -> None:
    from tetra_magic.view.widget import WidgetView

    fake.queue_seconds = 2.5
    client, job_id = submit(fake)
    view = Recording(WidgetView(name="q"))
    job = followed(client, job_id, view, deadline=time.monotonic() + 1.0)
    client.close()
    assert job.status == "COMPLETED" and job.response.success
    assert view.statuses[0] == "IN_QUEUE" and view.statuses[-1] == "COMPLETED"
    queued = [h for s, h in zip(view.statuses, view.headers, strict=True) if s == "IN_QUEUE"]
    assert "queued" in queued[-1] and "waiting for a worker" in queued[-1]
    waited = re.search(r">(\d+) s<", queued[-1])  # the time waiting, in whole seconds
    assert waited and int(waited[1]) >= 1, queued[-1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_text_view_tells_a_terminal_about_a_long_queue_once(
    fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch, tty: bool
) -> None:
    stderr = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(TextView, "QUEUE_NOTICE_S", 0.5)
    fake.queue_seconds = 1.5
    client, job_id = submit(fake)
    followed(client, job_id, TextView())
    client.close()
    notice = "tetra: queued, waiting for a worker to start (cold start)\n"
    assert stderr.getvalue() == (notice if tty else "")


def test_retry_after_in_seconds_or_as_a_date() -> None:
    from email.utils import formatdate

    from tetra_magic.cloud.client import retry_after

    assert retry_after("2") == 2.0 and retry_after("0.5") == 0.5
    assert 2.0 <= retry_after(formatdate(time.time() + 4, usegmt=True)) <= 4.0
    assert retry_after("3600") == 60.0  # never a kernel stuck for an hour
    assert retry_after(None) is None and retry_after("soon") is None


@pytest.mark.slow
def test_a_map_on_runpod_sums_its_cost_and_says_how_many_run_at_once(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    """Five items on an endpoint of at most 3 workers (the default): said once; one line sums
    the jobs' billed seconds and estimates, equal to the sum of each job's own record."""
    runs = run_cloud(
        fake,
        tmp_path,
        "%config TetraMagic.gpu_prices = {'a100': 0.01}",
        "%%tetra --gpu A100 --map n in range(5) --out sweep\nsquare = n * n",
        "square, sum(j.billed_s for j in sweep.jobs), sum(j.cost_estimate_usd for j in sweep.jobs)",
    )
    lines = ok(runs[1]).stderr.splitlines()
    said = [line for line in lines if line.startswith("tetra: 5 items on an endpoint")]
    assert said == [said[0]] and "of at most 3 workers" in said[0], lines
    squares, billed, usd = eval(ok(runs[2]).results[0])
    assert squares == [n * n for n in range(5)] and billed >= 5
    assert lines[-1] == (
        f"tetra: 5 jobs, billed {billed} s in all; estimated cost ${usd:.5f}"
        " (start and idle time not included)"
    )


@pytest.mark.slow
def test_a_map_follows_as_many_jobs_at_once_as_the_endpoint_has_workers(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    """`--endpoint ID` of at most 2 workers (made in RunPod's console), 4 items, no --workers:
    RunPod is asked for the endpoint's max workers, and no more than 2 jobs are ever out at
    once (submitted, not yet ended)."""
    endpoint_id = fake.add_endpoint("console-made", workers_max=2)
    runs = run_cloud(
        fake, tmp_path, f"%%tetra --endpoint {endpoint_id} --map n in range(4)\nsquare = n * n"
    )
    ok(runs[0])
    assert any(call.path.endswith(endpoint_id) for call in fake.calls("getEndpoint")), [
        (r.method, r.path) for r in fake.requests
    ]
    jobs = [job for job in fake.jobs.values() if job.endpoint_id == endpoint_id]
    assert len(jobs) == 4 and all(job.finished is not None for job in jobs)
    out_at_once = max(
        sum(other.created <= job.created < (other.finished or 0) for other in jobs) for job in jobs
    )
    assert out_at_once == 2, [(job.created, job.finished) for job in jobs]


@pytest.mark.slow
def test_a_batched_map_on_runpod_says_its_jobs_outnumber_the_workers(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    """40 small items batch into 10 jobs on an endpoint of at most 3 workers: the line counts
    jobs, and does not offer a worker per item."""
    runs = run_cloud(fake, tmp_path, "%%tetra --gpu A100 --map n in range(40)\nsquare = n * n")
    lines = ok(runs[0]).stderr.splitlines()
    said = [line for line in lines if "on an endpoint of at most" in line]
    assert len(said) == 1 and said[0].startswith("tetra: 40 items in 10 jobs on an endpoint"), lines
    assert "a higher `%config TetraMagic.workers_max` runs more at once" in said[0]
