"""On RunPod's published worker every notebook's packages share one environment: a cell that
imports a package only another notebook asked for works there, and would fail on a fresh
worker, so it is told so in one line. Real worker-flash code (tests/helpers/published.py),
a worker process of this module's own, so its first cell sees the worker's own packages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import published as harness
from helpers.kernels import LiveKernel, environ
from helpers.published import REAL, LoopbackEndpoint, kernel_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REAL is None, reason="needs worker-flash's code (it installs --deps)"),
]
worker = harness.worker
published = harness.published
NOTE = "tetra: cowsay comes from cowsay, which another notebook installed on this worker"


@pytest.fixture
def notebooks(published: LoopbackEndpoint) -> Iterator[tuple[LiveKernel, LiveKernel]]:
    with environ(kernel_env(published)):
        a, b = LiveKernel(), LiveKernel()
    try:
        for kernel in (a, b):
            assert kernel.run("%load_ext tetra_magic").error is None
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_package_only_another_notebook_declared_is_named(
    notebooks: tuple[LiveKernel, LiveKernel], published: LoopbackEndpoint
) -> None:
    a, b = notebooks
    tetra = f"%%tetra --endpoint {published.url}"
    assert a.run(f"{tetra}\nfirst = 1").error is None
    declared = a.run(f"{tetra} --deps cowsay==6.1\nimport cowsay")
    assert declared.error is None and NOTE not in declared.stderr, declared
    borrowed = b.run(f"{tetra}\nimport cowsay\nprint('imported')")
    assert borrowed.stdout == "imported\n", borrowed
    assert NOTE in borrowed.stderr and "add --deps cowsay" in borrowed.stderr, borrowed
    # The notebook that declared it, in a later cell without --deps; the other, declaring it.
    assert NOTE not in a.run(f"{tetra}\nimport cowsay").stderr
    assert NOTE not in b.run(f"{tetra} --deps cowsay\nimport cowsay").stderr
