"""A first cell on RunPod: the published image by default, a wait that explains itself and ends,
and what the cell cost. Against FakeRunPod, the loopback stand-in for RunPod's REST API v2 and
serverless job API (its `/health` reports the worker states RunPod's docs describe)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from helpers.cloud_kernels import COST_LINE, KEY, ok, run_cloud
from helpers.following import followed
from helpers.runpod_fakes import FakeRunPod

from tetra_magic import endpoint_choice, targets
from tetra_magic.cloud.client import Endpoint, EndpointClient
from tetra_magic.job.waiting import QueueGaveUp, QueueWatch
from tetra_magic.options import WorkerSettings
from tetra_magic.view.text import TextView
from worker.protocol import FunctionRequest

IMAGE = f"runpod/flash:py{endpoint_choice.python_minor()}-latest"


def test_default_images_are_the_ones_runpod_flash_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Our default follows RunPod's own client: same repositories, tag and Python versions."""
    monkeypatch.chdir(tmp_path)  # runpod_flash logs into ./.flash/ when imported
    from runpod_flash.core.resources import constants

    for variable in ("FLASH_GPU_IMAGE", "FLASH_CPU_IMAGE", "FLASH_IMAGE_TAG"):
        monkeypatch.delenv(variable, raising=False)
    assert set(endpoint_choice.PUBLISHED_PYTHONS) == set(constants.GPU_PYTHON_VERSIONS)
    assert set(endpoint_choice.PUBLISHED_PYTHONS) == set(constants.CPU_PYTHON_VERSIONS)
    for python in endpoint_choice.PUBLISHED_PYTHONS:
        monkeypatch.setattr(endpoint_choice, "python_minor", lambda python=python: python)
        settings = WorkerSettings()
        for cpu, kind in ((False, "gpu"), (True, "cpu")):
            image = endpoint_choice.worker_image(settings, cpu)
            assert image == constants.get_image_name(kind, python)


def test_a_python_without_a_published_image_is_refused_before_provisioning(
    in_process: FakeRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    from IPython.core.error import UsageError

    from tetra_magic.options import CellOptions

    monkeypatch.setattr(endpoint_choice, "python_minor", lambda: "3.9")
    options = CellOptions(
        gpus=("A100",), gpu_ids=("AMPERE_80",), cpu=False, dependencies=(),
        system_dependencies=(), endpoint=None, local=False, timeout=60, name=None, out=None,
        stream=True, quiet=False, verbose=False,
    )  # fmt: skip
    with pytest.raises(UsageError) as info:
        targets.resolve(options)
    message = str(info.value)
    assert "Python 3.9" in message and "3.10, 3.11, 3.12, 3.13" in message
    assert "TetraMagic.worker_image" in message and "tools/build_worker_image.sh" in message
    assert in_process.management == []  # nothing was looked up or created


# ------------------------------------------------------------------ waiting for a worker


def submit(fake: FakeRunPod) -> tuple[EndpointClient, str]:
    endpoint_id = fake.add_endpoint("wait-test")
    endpoint = Endpoint(
        f"{fake.url}/v2", endpoint_id, KEY, image=IMAGE, gpus=("A100",), billed=True
    )
    client = EndpointClient(endpoint)
    request = FunctionRequest(function_name="f", function_code="def f():\n    return 1\n")
    return client, client.run(request.model_dump(exclude_none=True), 60)


def wait_for_worker(
    fake: FakeRunPod,
    monkeypatch: pytest.MonkeyPatch,
    timeout: float = 60.0,
    watch: QueueWatch | None = None,
) -> tuple[str, str, BaseException | None]:
    """Follow one job with the text view; (its stderr, its final status, what was raised)."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    client, job_id = submit(fake)
    raised = None
    watch = watch or QueueWatch(timeout, IMAGE, ("A100",), cold_starts=True)
    try:
        followed(client, job_id, TextView(), watch=watch)
    except QueueGaveUp as exc:
        raised = exc
    finally:
        client.close()
    return stderr.getvalue(), fake.jobs[job_id].status, raised


def cancels(fake: FakeRunPod) -> list[str]:
    return [r.path for r in fake.requests if r.method == "POST" and "/cancel/" in r.path]


WAITS = {
    "throttled": "tetra: no A100 is free on RunPod right now; waiting for one (more GPU types"
    " start sooner: e.g. --gpu A100 H100 L40S)\n",
    "initializing": f"tetra: a worker is starting: its first start pulls the image {IMAGE} and"
    " can take several minutes\n",
}


@pytest.mark.parametrize("state", WAITS)
def test_a_wait_that_ends_says_what_it_waits_for_once(
    fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """No GPU of the type free (suggesting others), or a slow cold start (naming the image)."""
    fake.workers = {"idle": 0, "initializing": 0, "throttled": 0, "unhealthy": 0, state: 1}
    fake.queue_seconds = 8.0
    stderr, status, raised = wait_for_worker(fake, monkeypatch)
    assert raised is None and status == "COMPLETED"
    assert stderr == WAITS[state]


def test_workers_that_keep_failing_end_the_wait_and_blame_the_image(
    fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.workers = {"idle": 0, "initializing": 0, "throttled": 0, "unhealthy": 3}
    fake.queue_seconds = 120.0
    stderr, status, raised = wait_for_worker(fake, monkeypatch)
    assert stderr == "" and isinstance(raised, QueueGaveUp) and status == "CANCELLED"
    assert "keep failing to start (3 unhealthy)" in str(raised)
    assert f"The likely cause is the image ({IMAGE}) or its start command" in str(raised)
    assert str(raised).count("cancelled") == 1 and len(cancels(fake)) == 1
    assert str(raised).endswith("was cancelled on the endpoint")


def test_a_slow_start_of_an_endpoint_of_ones_own_is_explained_without_an_image(
    fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--endpoint ID`: the image and GPUs are unknown; the notes and hints do without them."""
    fake.workers = {"idle": 0, "initializing": 1, "throttled": 0, "unhealthy": 0}
    fake.queue_seconds = 120.0
    watch = QueueWatch(10.0, cold_starts=True)
    stderr, status, raised = wait_for_worker(fake, monkeypatch, watch=watch)
    assert stderr == (
        "tetra: a worker is starting: its first start pulls the worker image and can take"
        " several minutes\n"
    )
    assert isinstance(raised, QueueGaveUp) and status == "CANCELLED"
    assert "%config TetraMagic.queue_timeout = 3600" in str(raised)
    assert "look at the endpoint's workers in RunPod's console" in str(raised)
    assert "--gpu" not in str(raised)


def test_the_queue_timeout_cancels_the_job(
    fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One unhealthy worker is worth a word, not giving up; the queue timeout still ends it."""
    fake.workers = {"idle": 0, "initializing": 0, "throttled": 0, "unhealthy": 1}
    fake.queue_seconds = 120.0
    stderr, status, raised = wait_for_worker(fake, monkeypatch, timeout=4.0)
    assert stderr == "tetra: workers are failing to start (1 unhealthy); RunPod is retrying them\n"
    assert isinstance(raised, QueueGaveUp) and status == "CANCELLED"
    assert "no worker took the job within TetraMagic.queue_timeout (4 s)" in str(raised)
    assert "allow more GPU types (e.g. --gpu A100 H100 L40S)" in str(raised)
    assert len(cancels(fake)) == 1


@pytest.mark.slow
def test_queue_timeout_and_prices_are_settings_and_the_cost_is_recorded(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    runs = run_cloud(
        fake,
        tmp_path,
        "%config TetraMagic.gpu_prices = {'a100': 0.01}",  # a GPU name, or its RunPod pool id
        "%%tetra --gpu A100 --out rec\nx = 2",
        "rec.billed_s, rec.cost_estimate_usd, rec.execution_ms is not None",
    )
    line = COST_LINE.fullmatch(ok(runs[1]).stderr.splitlines(True)[-1])
    assert line and line["pool"] == "AMPERE_80" and "at $0.01000/s" in line[0]
    assert line["source"] == "TetraMagic.gpu_prices"
    billed, usd, ran = eval(ok(runs[2]).results[0])
    assert ran and billed >= 1 and usd == pytest.approx(billed * 0.01)

    fake.queue_seconds = 120.0
    runs = run_cloud(
        fake, tmp_path, "%config TetraMagic.queue_timeout = 2", "%%tetra --gpu A100\nx = 3", "x"
    )
    assert runs[1].error["ename"] == "QueueGaveUp"
    assert "TetraMagic.queue_timeout (2 s)" in runs[1].error["evalue"]
    assert "was cancelled on the endpoint" in runs[1].error["evalue"]
    assert runs[2].error["ename"] == "NameError"  # nothing came back
    assert len(cancels(fake)) == 1


@pytest.mark.slow
def test_bad_settings_are_refused_when_set(fake: FakeRunPod, tmp_path: Path) -> None:
    runs = run_cloud(
        fake,
        tmp_path,
        "%config TetraMagic.gpu_prices = {'AMPERE_80': 'cheap'}",
        "%config TetraMagic.gpu_prices = {'A101': 0.001}",
        "%config TetraMagic.gpu_prices = {'A100': -1}",
        "%config TetraMagic.queue_timeout = -5",
        "%config TetraMagic.gpu_prices = {'h100': 0.002, 'AMPERE_80': 0.001}",
        "%config TetraMagic.gpu_prices",
    )
    # %config reports a refused value on stderr and keeps the old one
    assert "must be a float, but a value of 'cheap'" in runs[0].stderr
    assert "'A101' is not a GPU this table prices" in runs[1].stderr
    assert "AMPERE_80" in runs[1].stderr
    assert "gpu_prices" in runs[2].stderr and "-1" in runs[2].stderr
    assert "queue_timeout" in runs[3].stderr and "-5" in runs[3].stderr
    assert ok(runs[5]).results == ["{'ADA_80_PRO': 0.002, 'AMPERE_80': 0.001}"]
    assert fake.management == []  # nothing reached RunPod


def test_the_price_is_the_gpus_when_the_worker_names_it_else_an_upper_bound() -> None:
    from tetra_magic.cloud.gpus import ALL_POOLS
    from tetra_magic.cloud.pricing import FLEX_PRICES, estimate

    ran = {"delayTime": 1500, "executionTime": 2100}
    named = estimate(ran, "NVIDIA RTX A4000", ALL_POOLS)
    assert (named.pool, named.upper_bound, named.billed_s) == ("AMPERE_16", False, 3)
    assert named.usd == pytest.approx(3 * FLEX_PRICES["AMPERE_16"])
    unknown = estimate(ran, None, ALL_POOLS)
    assert (unknown.pool, unknown.upper_bound) == ("BLACKWELL_180", True)
    assert "at most $0.00720 (BLACKWELL_180" in unknown.line()
    exact = estimate(ran, None, ("NVIDIA A100-SXM4-80GB",))
    assert (exact.pool, exact.upper_bound) == ("AMPERE_80", False)
    cpu = estimate(ran, None, ())
    assert cpu.usd is None and "no price known for CPU workers" in cpu.line()
    assert estimate({"delayTime": 900}, None, ALL_POOLS) is None  # never ran: nothing billed


def test_no_worker_at_all_asks_runpod_once_per_wait() -> None:
    """What max workers 0 looks like from /health: nothing in any state. The endpoint is asked
    about then (once), and what that says is the note; workers in any state are no reason."""
    asked: list[str] = []

    def recheck() -> str:
        asked.append("asked")
        return "tetra: raised back\n"

    watch = QueueWatch(60.0, IMAGE, ("A100",), cold_starts=True, recheck=recheck)
    starting = {"workers": {"idle": 0, "initializing": 1, "throttled": 0, "unhealthy": 0}}
    assert watch.read(starting, 3.0) is None and asked == []
    none = {"jobs": {"inQueue": 1}, "workers": {"idle": 0, "running": 0, "initializing": 0}}
    assert watch.read(none, 3.0) == "tetra: raised back\n"
    assert watch.read(none, 3.0) is None and asked == ["asked"]
    assert QueueWatch(60.0).read(none, 3.0) is None  # nothing to ask (the local endpoint)
