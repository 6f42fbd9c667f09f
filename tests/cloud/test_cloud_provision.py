"""Provisioning on RunPod, against a loopback stand-in for its REST API v2 and job API: the first
cell per configuration creates an endpoint (image and env on it, GPU pools, no template), later
cells and later kernels find it again by name, --endpoint skips all of it, and `%tetra
endpoints` / `%tetra delete NAME` manage what we made. Nothing goes over GraphQL (the `fake`
fixture fails a test that sent any)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from helpers.cloud_kernels import COST_LINE, KEY, LOAD, kernel_env, ok, run_cloud
from helpers.kernels import run_cells
from helpers.runpod_fakes import FakeRunPod, operation_id

from tetra_magic import endpoint_choice, targets
from tetra_magic.cloud import provision
from tetra_magic.cloud.endpoint_spec import EndpointSpec
from tetra_magic.options import CellOptions, WorkerSettings

IMAGE = f"runpod/flash:py{endpoint_choice.python_minor()}-latest"
CPU_IMAGE = f"runpod/flash-cpu:py{endpoint_choice.python_minor()}-latest"
POOLS = {"A100": "AMPERE_80", "H100": "ADA_80_PRO", "H200": "HOPPER_141", "4090": "ADA_24"}


def cell(gpu: str, value: int) -> str:
    return f"%%tetra --gpu {gpu} --out rec\nprint('on {gpu}')\nx = {value} * 2\nx"


def operations(fake: FakeRunPod) -> list[str]:
    """The REST v2 requests so far, as "operationId status"."""
    return [f"{operation_id(r.method, r.path)} {r.status}" for r in fake.management]


@pytest.mark.slow
def test_first_run_provisions_and_a_new_kernel_reuses(fake: FakeRunPod, tmp_path: Path) -> None:
    cells = [cell(gpu, n) for n, gpu in enumerate(POOLS)]
    cells.append("rec.worker['gpus'], rec.endpoint")
    runs = run_cloud(fake, tmp_path, *cells, cell("A100", 7))
    for n, (gpu, run) in enumerate(zip(POOLS, runs, strict=False)):
        assert ok(run).stdout == f"on {gpu}\n"
        assert run.results == [str(n * 2)]
        assert "created RunPod endpoint tetra-magic-" in run.stderr
    assert "'NVIDIA GeForce RTX 4090'" in runs[4].results[0]
    assert ok(runs[5]).results == ["14"]  # known: no provisioning, only the cost line
    assert COST_LINE.fullmatch(runs[5].stderr)["pool"] == "AMPERE_80"

    made = fake.created()
    assert [e["gpu"] for e in made] == [{"pools": [pool], "count": 1} for pool in POOLS.values()]
    assert len({e["name"] for e in made}) == 4
    for endpoint, gpu in zip(made, POOLS, strict=False):
        assert re.fullmatch(rf"tetra-magic-{gpu.lower()}-[0-9a-f]{{10}}", endpoint["name"])
        assert endpoint["type"] == "QUEUE" and endpoint["image"] == IMAGE
        assert endpoint["env"] == {} and endpoint["disk"] == 20
        assert endpoint["workers"] == {"min": 0, "max": 3, "idleTimeout": 5}
        assert endpoint["scaling"] == {"type": "QUEUE_DELAY", "queueDelay": 4}
        assert endpoint["timeout"] == 600_000 and endpoint["flashboot"] == "FLASHBOOT"
    assert not [r for r in fake.management if "template" in r.path]  # none needed with v2
    used = [job.endpoint_id for job in fake.jobs.values()]
    assert len(set(used)) == 4

    fake.requests.clear()
    again = run_cloud(fake, tmp_path, cell("H200", 3), cell("A100", 4))
    assert [ok(r).results for r in again] == [["6"], ["8"]]
    assert all("created" not in r.stderr for r in again)
    # One list per configuration, whose answer also shows each endpoint's settings: nothing
    # else to ask before the cells go.
    assert operations(fake) == ["listEndpoints 200", "listEndpoints 200"]
    assert len(fake.endpoints) == 4 and set(used) >= {j.endpoint_id for j in fake.jobs.values()}


@pytest.mark.slow
def test_endpoint_option_skips_provisioning(fake: FakeRunPod, tmp_path: Path) -> None:
    mine = fake.add_endpoint("made-in-the-console", pools=("HOPPER_141",))
    run, unknown = run_cloud(
        fake, tmp_path, f"%%tetra --endpoint {mine}\nprint('hi')\n40 + 2", "%%tetra --gpu A1000\n1"
    )
    assert ok(run).stdout == "hi\n" and run.results == ["42"]
    assert unknown.stderr.startswith("UsageError: --gpu: unknown GPU 'A1000'. Known names: any,")
    assert all(name in unknown.stderr for name in ("A100", "H100", "H200", "4090", "6000 Ada"))
    assert fake.management == []
    assert [job.endpoint_id for job in fake.jobs.values()] == [mine]


@pytest.mark.slow
def test_cpu_endpoints_list_and_delete(fake: FakeRunPod, tmp_path: Path) -> None:
    foreign = fake.add_endpoint("someone-elses-endpoint", workers_max=2)
    runs = run_cloud(
        fake,
        tmp_path,
        "%%tetra --cpu\n1 + 1",
        "%tetra endpoints",
        "%%tetra --cpu\n2 + 2",
        "%tetra delete tetra-magic-nope",
    )
    assert ok(runs[0]).results == ["2"] and ok(runs[2]).results == ["4"]
    (made,) = fake.created()
    assert made["cpu"] == [
        {"id": "cpu3c", "vcpuCount": 4},
        {"id": "cpu5c", "vcpuCount": 4},
        {"id": "cpu3g", "vcpuCount": 4},
        {"id": "cpu5g", "vcpuCount": 4},
    ]
    assert "gpu" not in made and made["image"] == CPU_IMAGE
    header, row, quota, note = ok(runs[1]).stdout.splitlines()
    assert header.split() == [
        "NAME", "ID", "HARDWARE", "MAX", "WORKERS", "MIN", "IDLE", "LAST", "USE", "IMAGE",
    ]  # fmt: skip
    name, _, hardware, most, least, idle, last_use, image = re.split(r"\s{2,}", row)
    assert (name, image) == (made["name"], CPU_IMAGE)
    assert (hardware, most, least, idle) == ("cpu cpu3c,cpu5c,cpu3g,cpu5g", "3", "0", "5 s")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", last_use)
    assert quota == "worker quota: 5 of 60 max workers in use (ours 3, other endpoints 2)"
    assert note == "LAST USE: this machine's last cell on it"
    assert "nope" in runs[3].error["evalue"] and made["name"] in runs[3].error["evalue"]

    fake.requests.clear()
    runs = run_cloud(fake, tmp_path, f"%tetra delete {made['name']}", "%tetra endpoints")
    assert f"deleted RunPod endpoint {made['name']}" in ok(runs[0]).stdout
    assert ok(runs[1]).stdout.splitlines() == [
        "no tetra-magic endpoints on this RunPod account",
        "worker quota: 2 of 60 max workers in use (ours 0, other endpoints 2)",
    ]
    # REST v2 deletes at once: no scale-down to 0 first, as GraphQL needed
    assert operations(fake) == [
        "listEndpoints 200", "deleteEndpoint 204", "listEndpoints 200", "getAccountLimits 200",
    ]  # fmt: skip
    assert list(fake.endpoints) == [foreign]


@pytest.mark.slow
def test_settings_and_image_variable_make_their_own_endpoint(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    runs = run_cloud(
        fake,
        tmp_path,
        "%%tetra --gpu h100\n1",
        "%config TetraMagic.workers_max = 5\n%config TetraMagic.worker_env = {'HF_HOME': '/v/hf'}",
        "%%tetra --gpu h100\n2",
        "%config TetraMagic.worker_image = 'me/worker:py{python}-\"q\"'",
        "%%tetra --gpu h100\n3",
        TETRA_MAGIC_WORKER_IMAGE="me/tetra:{version}-py{python}",
    )
    assert [ok(r).results for r in (runs[0], runs[2])] == [["1"], ["2"]]
    assert "is not a valid image reference" in runs[4].stderr and runs[4].results == []
    first, second = fake.created()
    assert (first["workers"]["max"], second["workers"]["max"]) == (3, 5)
    image = f"me/tetra:0.1.0-py{endpoint_choice.python_minor()}"
    assert first["image"] == second["image"] == image
    assert (first["env"], second["env"]) == ({}, {"HF_HOME": "/v/hf"})
    assert len(fake.endpoints) == 2


# ------------------------------------------------------------------ in-process units


def options(**overrides: object) -> CellOptions:
    base: dict = dict(
        gpus=("A100",), gpu_ids=("AMPERE_80",), cpu=False, dependencies=(),
        system_dependencies=(), endpoint=None, local=False, timeout=600.0, name=None, out=None,
        stream=True, quiet=False, verbose=False,
    )  # fmt: skip
    return CellOptions(**{**base, **overrides})


@pytest.mark.slow
def test_the_name_is_a_stable_hash_of_the_whole_configuration() -> None:
    worker = WorkerSettings()
    spec = endpoint_choice.spec_for(options(), worker)
    assert spec.name == endpoint_choice.spec_for(options(timeout=5.0), worker).name  # per-job only
    changed = [
        endpoint_choice.spec_for(options(gpu_ids=("ADA_24",)), worker),
        endpoint_choice.spec_for(options(), WorkerSettings(gpu_count=2)),
        endpoint_choice.spec_for(options(), WorkerSettings(workers_min=1)),
        endpoint_choice.spec_for(options(), WorkerSettings(idle_timeout=60)),
        endpoint_choice.spec_for(options(), WorkerSettings(execution_timeout=60)),
        endpoint_choice.spec_for(options(), WorkerSettings(env=(("A", "1"),))),
        endpoint_choice.spec_for(options(), WorkerSettings(image="x/y:z")),
    ]
    # A session's endpoint is its own even where its limits are the plain endpoint's.
    one = WorkerSettings(workers_max=1, idle_timeout=600)
    changed.append(endpoint_choice.spec_for(options(session="s"), one))
    changed.append(endpoint_choice.spec_for(options(session="t"), one))
    assert endpoint_choice.spec_for(options(), one).digest not in {c.digest for c in changed[-2:]}
    assert len({spec.digest, *(c.digest for c in changed)}) == 10
    # The same in another process (hash randomisation must not reach it). It imports this
    # module from its folder (the cwd), and this module's helpers from tests/.
    code = (
        "from test_cloud_provision import options; from tetra_magic import endpoint_choice;"
        "from tetra_magic.options import WorkerSettings;"
        "print(endpoint_choice.spec_for(options(), WorkerSettings()).digest)"
    )
    here = Path(__file__).parent
    paths = [str(here.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    other = subprocess.run(
        [sys.executable, "-c", code],
        cwd=here,
        env={**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": os.pathsep.join(paths)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == spec.digest


def test_names_made_before_rest_v2_are_found_again() -> None:
    """The move from GraphQL to REST v2 changed no name: endpoints made before it are reused.
    (The names below are those the GraphQL-era code gave these configurations.)"""
    plain = EndpointSpec(
        label="a100", image="runpod/flash:py3.11-latest", gpu_ids=("AMPERE_80",),
        instance_ids=(), gpu_count=1, workers_min=0, workers_max=3, idle_timeout=5,
        execution_timeout_ms=600_000, env=(),
    )  # fmt: skip
    session = dataclasses.replace(
        plain, label="a100-session-s", workers_max=1, idle_timeout=600, session="s"
    )
    assert plain.name == "tetra-magic-a100-778dd4e522"
    assert session.name == "tetra-magic-a100-session-s-b8d4d9cb06"


def test_bad_settings_name_the_setting() -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match=r"TetraMagic\.workers_max must be at least 2"):
        WorkerSettings(workers_min=2, workers_max=1)
    with pytest.raises(UsageError, match=r"TetraMagic\.gpu_count"):
        WorkerSettings(gpu_count=0)


@pytest.mark.slow
def test_two_kernels_at_once_make_one_endpoint(
    fake: FakeRunPod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in kernel_env(fake, tmp_path).items():
        monkeypatch.setenv(name, value)
    fake.queue_seconds = 0.5
    results: list[list] = []

    def one_kernel() -> None:
        results.append(run_cells(LOAD, "%%tetra --gpu H100\n'ran'"))

    threads = [threading.Thread(target=one_kernel) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [ok(runs[1]).results for runs in results] == [["'ran'"], ["'ran'"]]
    assert len(fake.created()) == 1 and len(fake.endpoints) == 1
    assert len({job.endpoint_id for job in fake.jobs.values()}) == 1


def test_an_exact_gpu_type_is_its_pool_less_the_others(in_process: FakeRunPod) -> None:
    """REST v2 takes pools only: "NVIDIA A100-SXM4-80GB" is AMPERE_80 without the PCIe A100;
    and env values travel as they are (a JSON object, no escaping of ours)."""
    from tetra_magic.cloud.gpus import gpu_ids

    exact = tuple(gpu_ids(["nvidia_a100-sxm4-80gb"]))
    assert exact == ("NVIDIA A100-SXM4-80GB",)
    tricky = (("EMPTY", ""), ("MOTD", 'say "hi"\\n\tthen {go}'))
    worker = WorkerSettings(env=tricky)
    chosen = options(gpus=("NVIDIA_A100-SXM4-80GB",), gpu_ids=exact, worker=worker)
    endpoint = targets.resolve(chosen)
    (made,) = in_process.created()
    assert made["gpu"] == {
        "pools": ["AMPERE_80"], "count": 1, "excludedTypes": ["NVIDIA A100 80GB PCIe"],
    }  # fmt: skip
    assert made["name"].startswith("tetra-magic-nvidiaa100sxm480gb-")
    assert in_process.endpoints[endpoint.endpoint_id]["env"] == dict(tricky)


def test_exact_types_and_pools_together() -> None:
    from tetra_magic.cloud.gpus import UnknownGpu, gpu_ids, pools_and_exclusions

    both = gpu_ids(["NVIDIA L40S", "H100", "NVIDIA A100-SXM4-80GB", "A100"])
    assert pools_and_exclusions(both) == (
        ["ADA_48_PRO", "ADA_80_PRO", "AMPERE_80"],
        ["NVIDIA RTX 6000 Ada Generation", "NVIDIA L40"],  # A100 whole: nothing excluded there
    )
    two = gpu_ids(["NVIDIA H100 PCIe", "NVIDIA H100 NVL"])
    assert pools_and_exclusions(two) == (["ADA_80_PRO"], ["NVIDIA H100 80GB HBM3"])
    with pytest.raises(UnknownGpu, match=r"'NVIDIA A100 40GB' is not a GPU type of RunPod's"):
        gpu_ids(["NVIDIA A100 40GB"])


def test_runpods_refusals_are_one_sentence_with_its_detail(in_process: FakeRunPod) -> None:
    """RunPod's problem objects (RFC 9457): its `detail` and `errors` in our sentence, the
    status kept for the code that needs it, the key nowhere."""
    from tetra_magic.cloud.rest import CloudError, RunPodRest

    scaling = {"type": "QUEUE_DELAY", "queueDelay": 4}
    base = {"name": "x", "type": "QUEUE", "image": "a/b", "scaling": scaling}
    gpu, cpu = {"pools": ["AMPERE_80"]}, [{"id": "cpu3c", "vcpuCount": 4}]
    with RunPodRest(KEY, "test") as api:
        with pytest.raises(CloudError) as schema:
            api.create_endpoint({**base, "bogus": 1, "gpu": gpu, "workers": {"max": -1}})
        with pytest.raises(CloudError) as rule:
            api.create_endpoint({**base, "gpu": gpu, "cpu": cpu})
        with pytest.raises(CloudError) as gone:
            api.endpoint("no-such-id")
    assert str(schema.value) == (
        "could not create endpoint x on RunPod: RunPod answered 422: Request validation"
        " failed. ($: additional properties 'bogus' not allowed; $.workers.max: must be an"
        " integer in 0..10000)"
    )
    assert schema.value.status == 422 and rule.value.status == 400
    assert str(rule.value).endswith("RunPod answered 400: Exactly one of gpu or cpu must be set.")
    assert gone.value.status == 404 and "Endpoint no-such-id not found." in str(gone.value)
    assert in_process.created() == []


def test_429_is_waited_out_as_runpod_asks_then_named(in_process: FakeRunPod) -> None:
    from tetra_magic.cloud.rest import RETRIES_429, CloudError, RunPodRest

    in_process.forced_429_management = [1, 1]  # RateLimit: t=1, twice
    started = time.monotonic()
    with RunPodRest(KEY, "test") as api:
        assert api.endpoints() == []
        assert time.monotonic() - started >= 1.9
        in_process.forced_429_management = [0] * (RETRIES_429 + 1)
        with pytest.raises(CloudError, match=r"kept answering 429 \(too many requests\)"):
            api.endpoints()
    assert [r.status for r in in_process.management] == [429, 429, 200] + [429] * 5


def test_graphql_is_retired_on_the_stand_in_and_counted() -> None:
    """What the runpod SDK's GraphQL would get now (so no test can lean on it unseen)."""
    fake = FakeRunPod(KEY)
    try:
        answer = requests.post(
            f"{fake.url}/graphql", json={"query": "query { myself { id } }"}, timeout=5
        )
    finally:
        fake.close()
    assert answer.status_code == 410
    assert answer.json()["errors"][0]["message"].startswith("The GraphQL API has been retired.")
    assert [r.path for r in fake.graphql_requests] == ["/graphql"]


@pytest.mark.slow
def test_an_endpoint_deleted_elsewhere_is_provisioned_again(
    fake: FakeRunPod, tmp_path: Path
) -> None:
    """The kernel remembers its endpoint; when it is deleted in RunPod's console (or from
    another machine), the next cell makes a new one instead of failing with a 404."""

    done, deleted = tmp_path / "first-cell-done", tmp_path / "endpoint-deleted"

    def delete_between_the_cells() -> None:
        # In step with the kernel through two files, not timed, so a slow machine cannot
        # delete it while the first cell still reads its result, or after the last began.
        while not done.exists():
            threading.Event().wait(0.05)
        fake.endpoints.clear()  # as the console would: gone, whoever remembers it
        deleted.touch()

    deleter = threading.Thread(target=delete_between_the_cells, daemon=True)
    deleter.start()
    between = (
        f"import pathlib, time\npathlib.Path({str(done)!r}).touch()\n"
        f"for _ in range(1200):\n    if pathlib.Path({str(deleted)!r}).exists():\n"
        "        break\n    time.sleep(0.05)\nelse:\n    raise TimeoutError('never deleted')"
    )
    first, middle, second = run_cloud(fake, tmp_path, cell("A100", 1), between, cell("A100", 5))
    deleter.join(5)
    ok(middle)
    assert ok(first).results == ["2"] and ok(second).results == ["10"]
    assert "created RunPod endpoint tetra-magic-a100-" in second.stderr
    made = fake.created()
    assert len(made) == 2 and made[0]["name"] == made[1]["name"]
    assert len(fake.endpoints) == 1


def run_job(fake: FakeRunPod, endpoint_id: str) -> str:
    """Run one job on the endpoint, through RunPod's REST API; the worker that ran it."""
    url, headers = f"{fake.url}/v2/{endpoint_id}", {"Authorization": f"Bearer {KEY}"}
    job = {"function_name": "f", "function_code": "def f():\n    return 1\n"}
    job_id = requests.post(f"{url}/run", json={"input": job}, headers=headers, timeout=5).json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/status/{job_id['id']}", headers=headers, timeout=5).json()
        if status["status"] == "COMPLETED":
            return status["workerId"]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not complete: {status}")


def test_a_session_gets_an_endpoint_of_its_own_with_one_worker(in_process: FakeRunPod) -> None:
    """One endpoint per session name, that it cannot leave: workersMin 0, workersMax 1, the
    session's idle timeout; the rest as the plain endpoint's. Its cells reuse it (a later
    kernel finds it on RunPod). On the stand-in, which routes a job to any worker of its
    endpoint as RunPod does, the session's jobs all run on one worker, where the plain
    endpoint's move between workers: a session endpoint with more workers would fail here."""

    def endpoint(session: str | None) -> str:
        chosen = options(session=session, session_idle_timeout=900)
        return targets.resolve(chosen).endpoint_id

    plain, train, train_again = endpoint(None), endpoint("train"), endpoint("train")
    provision._known.clear()  # what a later kernel knows
    provision._checked.clear()
    assert endpoint("train") == train == train_again
    other = endpoint("eval")
    assert len({plain, train, other}) == 3

    made = {e["name"]: e for e in in_process.created()}
    assert len(made) == 3
    sessions = {name: e for name, e in made.items() if "-session-" in name}
    assert {re.sub("-[0-9a-f]{10}$", "", name) for name in sessions} == {
        "tetra-magic-a100-session-train",
        "tetra-magic-a100-session-eval",
    }
    for e in sessions.values():
        assert e["workers"] == {"min": 0, "max": 1, "idleTimeout": 900}
    (plain_made,) = (e for name, e in made.items() if name not in sessions)
    assert plain_made["workers"] == {"min": 0, "max": 3, "idleTimeout": 5}
    rest = [{k: v for k, v in e.items() if k not in {"name", "workers"}} for e in made.values()]
    assert rest[0] == rest[1] == rest[2]

    assert len({run_job(in_process, train) for _ in range(3)}) == 1
    assert len({run_job(in_process, plain) for _ in range(3)}) == 3
