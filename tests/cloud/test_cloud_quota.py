"""The account's worker quota (RunPod's `serverlessWorkers`: the sum of max workers over all
its endpoints). Against the loopback stand-in: an endpoint that would not fit is refused before
anything is created, naming what holds the quota and what frees it; where the limit cannot be
read, RunPod's own refusal reads the same; the limit is read defensively (its shape is assumed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.cloud_kernels import KEY, ok, run_cloud
from helpers.runpod_fakes import FakeRunPod
from test_cloud_provision import options

from tetra_magic import targets
from tetra_magic.cloud.rest import QuotaFull, RunPodRest


@pytest.mark.slow
def test_a_full_quota_is_said_before_anything_is_created(fake: FakeRunPod, tmp_path: Path) -> None:
    fake.worker_quota = 5
    fake.add_endpoint("someone-elses", workers_max=1)
    a100, h100, listing, lower, h100_again = run_cloud(
        fake,
        tmp_path,
        "%%tetra --gpu A100\n1",
        "%%tetra --gpu H100\n2",
        "%tetra endpoints",
        "%config TetraMagic.workers_max = 1",
        "%%tetra --gpu H100\n3",
    )
    assert ok(a100).results == ["1"]
    ours = fake.created()[0]
    assert h100.error["ename"] == "QuotaFull"
    message = h100.error["evalue"]
    assert message.startswith("creating RunPod endpoint tetra-magic-h100-")
    assert message.endswith(
        " would pass the account's worker quota, so it was not done: it needs 3 max workers,"
        " and the quota is 5 (RunPod's limit on the sum of max workers over all the account's"
        f" endpoints), of which 4 are in use: {ours['name']} 3, 1 other endpoint 1. Free some"
        " with `%tetra delete NAME` (an endpoint of ours), `%tetra end SESSION` (a session's"
        " endpoint gives its worker back), or a lower `%config TetraMagic.workers_max = 1`;"
        " RunPod raises the quota as the account's balance grows, or on request"
    )
    assert h100.error["traceback"] == [f"QuotaFull: {message}"]
    assert len(fake.calls("createEndpoint")) == 2  # the A100's, and the one that fitted later
    assert "worker quota: 4 of 5 max workers in use (ours 3, other endpoints 1)" in (
        ok(listing).stdout
    )
    ok(lower)
    assert ok(h100_again).results == ["3"] and len(fake.created()) == 2


def test_runpods_own_refusal_reads_the_same(in_process: FakeRunPod) -> None:
    """A key that may not read the account's limits, or a shape other than the assumed one:
    nothing is known beforehand, RunPod refuses the create with its quota sentence, and the
    cell says what the check before would have said, with RunPod's figure."""
    in_process.worker_quota = 2
    in_process.account_limits = {"spendRate": {"limit": 80.0, "used": 0.0}}
    with pytest.raises(QuotaFull) as refused:
        targets.resolve(options())
    assert str(refused.value).startswith("creating RunPod endpoint tetra-magic-a100-")
    assert "the quota is 2 (RunPod's limit" in str(refused.value)
    assert "of which 0 are in use: none. Free some" in str(refused.value)
    assert refused.value.limit == 2 and in_process.endpoints == {}
    assert [r.status for r in in_process.calls("createEndpoint")] == [400]


@pytest.mark.parametrize(
    ("answer", "limit"),
    [
        (None, 60),  # the assumed shape: serverlessWorkers {limit, used}
        ({"serverlessWorkers": 30}, 30),
        ({"serverlessWorkers": {"max": 20, "used": 3}}, 20),
        ({"serverlessWorkers": {"used": 3}}, None),
        ({"serverlessWorkers": "30"}, None),
        ({"serverlessWorkers": True}, None),
        ([1, 2], None),
    ],
)
def test_the_limit_is_read_defensively(in_process: FakeRunPod, answer: Any, limit: Any) -> None:
    in_process.account_limits = answer
    with RunPodRest(KEY, "test") as api:
        assert api.worker_limit() == limit
