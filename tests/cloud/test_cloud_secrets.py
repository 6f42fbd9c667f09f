"""The RunPod API key stays secret: run cells every way there is (provisioning, reuse, errors
local and remote, a rejected key, verbose tracebacks that print local variables, --out records,
`%tetra endpoints`, every library logging at DEBUG into a file) with a distinctive key, then
look for it in every output, every request's URL and body the stand-in received (the key goes
in the Authorization header and nowhere else), and every file under the kernel's HOME and the
tetra state dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cloud_kernels import KEY, ok, run_cloud, runpod_config
from helpers.kernels import CellRun
from helpers.runpod_fakes import FakeRunPod

# Starts kernels against the RunPod stand-in: not in the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

CELLS = [
    "%xmode Verbose",
    "import logging, os\nlogging.basicConfig(filename=os.path.expanduser('~/debug.log'),"
    " level=logging.DEBUG, force=True)\n"
    # The magic's own requests, which never reach the notebook's logging, logged there too.
    "own = logging.getLogger('tetra_magic.http')\nown.setLevel(logging.DEBUG)\n"
    "own.addHandler(logging.getLogger().handlers[0])",
    "base = 20",
    "%%tetra --gpu A100 --out rec --name secret-test\nprint('hello')\nanswer = base + 22\nanswer",
    "print(rec)\nrec.to_dict()",
    "%%tetra --gpu A100 --verbose\nraise ValueError('boom')",
    "%tetra endpoints",
    "from tetra_magic import targets\nfrom tetra_magic.cloud import credentials\n"
    "print(credentials.api_key())\ntargets.resolve",
    "%%tetra --gpu A100\nanswer * 2",
    "%tetra delete no-such-endpoint",
]


def files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def assert_nowhere(fake: FakeRunPod, runs: list[CellRun], *roots: Path) -> None:
    for run in runs:
        assert KEY not in str(run.outputs)
    assert fake.management and fake.graphql_requests == []
    for request in fake.requests:
        assert KEY not in request.path + request.query, request.path
        assert KEY.encode() not in request.body, request.path
        assert request.key_headers in ([], ["Authorization"]), request.key_headers
    for root in roots:
        assert files_holding(root, KEY.encode()) == []


def test_the_key_appears_in_no_output_request_or_file(fake: FakeRunPod, tmp_path: Path) -> None:
    mine = fake.add_endpoint("console-made")
    runs = run_cloud(fake, tmp_path, *CELLS, f"%%tetra --endpoint {mine}\nprint('direct')")
    assert ok(runs[3]).stdout == "hello\n" and runs[3].results == ["42"]
    assert "secret-test" in ok(runs[4]).stdout
    assert runs[5].error["ename"] == "ValueError"
    assert "tetra-magic-a100-" in ok(runs[6]).stdout
    assert "<RunPod API key>" in ok(runs[7]).stdout
    assert ok(runs[8]).results == ["84"] and ok(runs[10]).stdout == "direct\n"
    assert fake.jobs and all(job.status != "IN_QUEUE" for job in fake.jobs.values())
    log = (tmp_path / "debug.log").read_text()
    assert "/v2/serverless" in log and "/run" in log  # what went over HTTP was logged
    assert_nowhere(fake, runs, tmp_path, fake._tmp)


def test_a_rejected_key_leaks_nothing_either(fake: FakeRunPod, tmp_path: Path) -> None:
    """RunPod refusing our key: provisioning and direct jobs fail, with verbose tracebacks."""
    mine = fake.add_endpoint("console-made")
    fake.api_key = "rpa_the_account_wants_another_key"
    runs = run_cloud(
        fake,
        tmp_path,
        "%xmode Verbose",
        "%%tetra --gpu H200\n1",
        f"%%tetra --endpoint {mine}\n1",
        "%tetra endpoints",
    )
    assert [r.error["ename"] for r in runs[1:]] == ["CloudError", "EndpointError", "CloudError"]
    assert all("(401)" in r.error["evalue"] for r in runs[1:])
    assert_nowhere(fake, runs, tmp_path, fake._tmp)


def test_a_key_from_the_config_file_stays_in_that_file(
    fake: FakeRunPod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    config = runpod_config(tmp_path)
    runs = run_cloud(fake, tmp_path, *CELLS, key=None)
    assert ok(runs[3]).results == ["42"] and ok(runs[8]).results == ["84"]
    assert str(config) in ok(runs[7]).stdout
    for run in runs:
        assert KEY not in str(run.outputs)
    assert files_holding(tmp_path, KEY.encode()) == [config]
    assert files_holding(fake._tmp, KEY.encode()) == []
