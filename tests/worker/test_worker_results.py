"""Result pickling: the per-key fallback, and tensors that load on a CPU-only client.

torch is optional: its tests skip without it. Where there is no GPU, only the CPU half of the
tensor path runs (tensors and parameters go through the worker's pickler unchanged, and the CPU
copy keeps a parameter a parameter); the GPU test needs CUDA, and loads the result in a process
that sees no GPU, as a laptop would.
"""

from __future__ import annotations

import base64
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from worker.results import _cpu_copy, dumps, encode_result


@pytest.fixture
def torch() -> ModuleType:
    return pytest.importorskip("torch")


def test_a_dict_keeps_every_entry_that_pickles() -> None:
    result, dropped = encode_result({"n": 1, "lock": threading.Lock(), "s": "x"})
    assert pickle.loads(base64.b64decode(result)) == {"n": 1, "s": "x"}
    assert list(dropped) == ["lock"] and dropped["lock"].startswith("lock: TypeError")


def test_anything_else_unpicklable_names_its_type() -> None:
    with pytest.raises(TypeError, match="the result cannot be pickled: generator"):
        encode_result(i for i in range(2))


def test_cpu_tensors_and_modules_pass_unchanged(torch: ModuleType) -> None:
    model = torch.nn.Linear(2, 2)
    tensor = torch.arange(4.0).requires_grad_()
    back = pickle.loads(dumps({"t": tensor, "model": model}))
    assert torch.equal(back["t"], tensor) and back["t"].requires_grad
    assert isinstance(back["model"].weight, torch.nn.Parameter)
    assert torch.equal(back["model"].weight, model.weight)


def test_the_cpu_copy_keeps_kind_and_grad(torch: ModuleType) -> None:
    parameter = torch.nn.Parameter(torch.ones(2))
    copy = _cpu_copy(torch, parameter)
    assert isinstance(copy, torch.nn.Parameter) and copy.requires_grad
    computed = torch.ones(2, requires_grad=True) * 2  # not a leaf: autograd stays behind
    copy = _cpu_copy(torch, computed)
    assert copy.is_leaf and copy.requires_grad and torch.equal(copy, computed)


CPU_ONLY_LOAD = """
import pickle, sys, torch
value = pickle.load(open(sys.argv[1], "rb"))
assert value["t"].device.type == "cpu" and value["t"].tolist() == [0.0, 1.0, 2.0, 3.0]
assert isinstance(value["model"].weight, torch.nn.Parameter)
assert value["model"].weight.device.type == "cpu"
print("loaded on cpu")
"""


@pytest.mark.slow
def test_gpu_tensors_load_on_a_cpu_only_client(torch: ModuleType, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    blob = tmp_path / "result.pkl"
    value = {"t": torch.arange(4.0, device="cuda"), "model": torch.nn.Linear(2, 2).cuda()}
    blob.write_bytes(dumps(value))
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", CPU_ONLY_LOAD, str(blob)], capture_output=True, text=True, env=env
    )
    assert proc.stdout.strip() == "loaded on cpu", proc.stderr
