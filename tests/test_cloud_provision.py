"""Provisioning on RunPod, against a loopback fake of its GraphQL and REST APIs: the first cell
per configuration creates a template and an endpoint with the right gpu ids, later cells and
later kernels find them again, --endpoint skips all of it, and `%tetra endpoints` / `%tetra
delete NAME` manage what we made."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from cloud_kernels import COST_LINE, KEY, LOAD, kernel_env, ok, run_cloud
from kernels import run_cells
from runpod_fakes import FakeRunPod

from tetra_magic import provision
from tetra_magic.options import CellOptions

IMAGE = f"runpod/flash:py{provision.python_minor()}-latest"
CPU_IMAGE = f"runpod/flash-cpu:py{provision.python_minor()}-latest"
POOLS = {"A100": "AMPERE_80", "H100": "ADA_80_PRO", "H200": "HOPPER_141", "4090": "ADA_24"}


def cell(gpu: str, value: int) -> str:
    return f"%%tetra --gpu {gpu} --out rec\nprint('on {gpu}')\nx = {value} * 2\nx"


def endpoint_inputs(fake: FakeRunPod) -> list[dict]:
    return [op.args["input"] for op in fake.mutations("saveEndpoint")]


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

    (template,) = [op.args["input"] for op in fake.mutations("saveTemplate")]
    assert template["imageName"] == IMAGE and template["isServerless"] is True
    assert template["name"].startswith("tetra-magic-tpl-")
    made = endpoint_inputs(fake)
    assert [e["gpuIds"] for e in made] == list(POOLS.values())
    assert len({e["name"] for e in made}) == 4
    tid = next(iter(fake.templates))
    for endpoint, gpu in zip(made, POOLS, strict=False):
        assert re.fullmatch(rf"tetra-magic-{gpu.lower()}-[0-9a-f]{{10}}", endpoint["name"])
        assert endpoint["templateId"] == tid and endpoint["gpuCount"] == 1
        assert (endpoint["workersMin"], endpoint["workersMax"], endpoint["idleTimeout"]) == (
            0,
            3,
            5,
        )
        assert (
            endpoint["executionTimeoutMs"] == 600_000 and endpoint["flashBootType"] == "FLASHBOOT"
        )
    used = [job.endpoint_id for job in fake.jobs.values()]
    assert len(set(used)) == 4

    fake.operations.clear()
    again = run_cloud(fake, tmp_path, cell("H200", 3), cell("A100", 4))
    assert [ok(r).results for r in again] == [["6"], ["8"]]
    assert all("created" not in r.stderr for r in again)
    assert fake.mutations() == []
    assert [op.name for op in fake.operations] == ["myself", "myself"]
    assert len(fake.endpoints) == 4 and set(used) >= {j.endpoint_id for j in fake.jobs.values()}


def test_endpoint_option_skips_provisioning(fake: FakeRunPod, tmp_path: Path) -> None:
    mine = fake.add_endpoint("made-in-the-console", gpu_ids="HOPPER_141")
    run, unknown = run_cloud(
        fake, tmp_path, f"%%tetra --endpoint {mine}\nprint('hi')\n40 + 2", "%%tetra --gpu A1000\n1"
    )
    assert ok(run).stdout == "hi\n" and run.results == ["42"]
    assert unknown.stderr.startswith("UsageError: --gpu: unknown GPU 'A1000'. Known names: any,")
    assert all(name in unknown.stderr for name in ("A100", "H100", "H200", "4090", "6000 Ada"))
    assert fake.operations == []
    assert [job.endpoint_id for job in fake.jobs.values()] == [mine]


def test_cpu_endpoints_list_and_delete(fake: FakeRunPod, tmp_path: Path) -> None:
    foreign = fake.add_endpoint("someone-elses-endpoint")
    runs = run_cloud(
        fake,
        tmp_path,
        "%%tetra --cpu\n1 + 1",
        "%tetra endpoints",
        "%%tetra --cpu\n2 + 2",
        "%tetra delete tetra-magic-nope",
    )
    assert ok(runs[0]).results == ["2"] and ok(runs[2]).results == ["4"]
    (made,) = endpoint_inputs(fake)
    assert made["instanceIds"] and all(i.startswith("cpu") for i in made["instanceIds"])
    assert "gpuIds" not in made
    (template,) = [op.args["input"] for op in fake.mutations("saveTemplate")]
    assert template["imageName"] == CPU_IMAGE
    listing = ok(runs[1]).stdout
    assert made["name"] in listing and CPU_IMAGE in listing and "someone-elses" not in listing
    assert "nope" in runs[3].error["evalue"] and made["name"] in runs[3].error["evalue"]

    fake.operations.clear()
    runs = run_cloud(fake, tmp_path, f"%tetra delete {made['name']}", "%tetra endpoints")
    assert f"deleted RunPod endpoint {made['name']}" in ok(runs[0]).stdout
    assert ok(runs[1]).stdout.strip() == "no tetra-magic endpoints on this RunPod account"
    scale, delete = fake.mutations()
    assert scale.name == "saveEndpoint" and scale.args["input"]["workersMax"] == 0
    assert scale.args["input"]["workersMin"] == 0 and delete.name == "deleteEndpoint"
    assert list(fake.endpoints) == [foreign]


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
    assert "not a valid image reference" in runs[4].error["evalue"]
    first, second = endpoint_inputs(fake)
    assert (first["workersMax"], second["workersMax"]) == (3, 5)
    images = [op.args["input"]["imageName"] for op in fake.mutations("saveTemplate")]
    assert images == [f"me/tetra:0.1.0-py{provision.python_minor()}"] * 2
    envs = [op.args["input"]["env"] for op in fake.mutations("saveTemplate")]
    assert envs == [[], [{"key": "HF_HOME", "value": "/v/hf"}]]
    assert first["templateId"] != second["templateId"]


def test_a_template_made_before_is_found_not_made_again(fake: FakeRunPod, tmp_path: Path) -> None:
    """An endpoint deleted in the console leaves its template: the next cell reuses it (RunPod
    refuses a second template of the same name)."""
    assert ok(run_cloud(fake, tmp_path, "%%tetra --gpu 4090\n1")[0]).results == ["1"]
    fake.endpoints.clear()
    assert ok(run_cloud(fake, tmp_path, "%%tetra --gpu 4090\n2")[0]).results == ["2"]
    assert len(fake.mutations("saveTemplate")) == 1 and len(fake.mutations("saveEndpoint")) == 2


# ------------------------------------------------------------------ in-process units


def options(**overrides: object) -> CellOptions:
    base: dict = dict(
        gpus=("A100",), gpu_ids=("AMPERE_80",), cpu=False, dependencies=(),
        system_dependencies=(), endpoint=None, local=False, timeout=600.0, name=None, out=None,
        stream=True, quiet=False, verbose=False,
    )  # fmt: skip
    return CellOptions(**{**base, **overrides})


def test_the_name_is_a_stable_hash_of_the_whole_configuration() -> None:
    worker = provision.WorkerSettings()
    spec = provision.spec_for(options(), worker)
    assert spec.name == provision.spec_for(options(timeout=5.0), worker).name  # per-job only
    changed = [
        provision.spec_for(options(gpu_ids=("ADA_24",)), worker),
        provision.spec_for(options(), provision.WorkerSettings(gpu_count=2)),
        provision.spec_for(options(), provision.WorkerSettings(workers_min=1)),
        provision.spec_for(options(), provision.WorkerSettings(idle_timeout=60)),
        provision.spec_for(options(), provision.WorkerSettings(execution_timeout=60)),
        provision.spec_for(options(), provision.WorkerSettings(env=(("A", "1"),))),
        provision.spec_for(options(), provision.WorkerSettings(image="x/y:z")),
    ]
    # A session's endpoint is its own even where its limits are the plain endpoint's.
    one = provision.WorkerSettings(workers_max=1, idle_timeout=600)
    changed.append(provision.spec_for(options(session="s"), one))
    changed.append(provision.spec_for(options(session="t"), one))
    assert provision.spec_for(options(), one).digest not in {c.digest for c in changed[-2:]}
    assert len({spec.digest, *(c.digest for c in changed)}) == 10
    # The same in another process (hash randomisation must not reach it).
    code = (
        "from test_cloud_provision import options; from tetra_magic import provision;"
        "print(provision.spec_for(options(), provision.WorkerSettings()).digest)"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        env={**os.environ, "PYTHONHASHSEED": "123"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == spec.digest


def test_bad_settings_name_the_setting() -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match=r"TetraMagic\.workers_max must be at least 2"):
        provision.WorkerSettings(workers_min=2, workers_max=1)
    with pytest.raises(UsageError, match=r"TetraMagic\.gpu_count"):
        provision.WorkerSettings(gpu_count=0)


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
    assert len(fake.mutations("saveEndpoint")) == 1 and len(fake.mutations("saveTemplate")) == 1
    assert len({job.endpoint_id for job in fake.jobs.values()}) == 1


def test_template_env_values_survive_the_sdk_mutation(
    fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK writes env values into its mutation unescaped; ours are escaped first."""
    from tetra_magic.cloud_api import RunPodGraphQL

    tricky = {"MOTD": 'say "hi"\\n\tthen {go}', "EMPTY": ""}
    for name, value in fake.env().items():
        monkeypatch.setenv(name, value)
    api = RunPodGraphQL(KEY, "test")
    template_id = api.create_template("tetra-magic-tpl-x", "me/img:1", tricky, 20)
    stored = {e["key"]: e["value"] for e in fake.templates[template_id]["env"]}
    assert stored == tricky


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
    made = endpoint_inputs(fake)
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


def test_a_session_gets_an_endpoint_of_its_own_with_one_worker(
    fake: FakeRunPod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One endpoint per session name, that it cannot leave: workersMin 0, workersMax 1, the
    session's idle timeout; the rest as the plain endpoint's. Its cells reuse it (a later
    kernel finds it on RunPod). On the stand-in, which routes a job to any worker of its
    endpoint as RunPod does, the session's jobs all run on one worker, where the plain
    endpoint's move between workers: a session endpoint with more workers would fail here."""
    for name, value in kernel_env(fake, tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(provision, "_known", {})

    def endpoint(session: str | None) -> str:
        chosen = options(session=session, session_idle_timeout=900)
        return provision.provisioned(chosen, KEY, "test").endpoint_id

    plain, train, train_again = endpoint(None), endpoint("train"), endpoint("train")
    provision._known.clear()  # what a later kernel knows
    assert endpoint("train") == train == train_again
    other = endpoint("eval")
    assert len({plain, train, other}) == 3

    made = {e["name"]: e for e in endpoint_inputs(fake)}
    assert len(made) == 3
    sessions = {name: e for name, e in made.items() if "-session-" in name}
    assert {re.sub("-[0-9a-f]{10}$", "", name) for name in sessions} == {
        "tetra-magic-a100-session-train",
        "tetra-magic-a100-session-eval",
    }
    scaling = ("workersMin", "workersMax", "idleTimeout")
    for e in sessions.values():
        assert tuple(e[k] for k in scaling) == (0, 1, 900)
    (plain_made,) = (e for name, e in made.items() if name not in sessions)
    assert tuple(plain_made[k] for k in scaling) == (0, 3, 5)
    rest = [{k: v for k, v in e.items() if k not in {"name", *scaling}} for e in made.values()]
    assert rest[0] == rest[1] == rest[2]

    assert len({run_job(fake, train) for _ in range(3)}) == 1
    assert len({run_job(fake, plain) for _ in range(3)}) == 3
