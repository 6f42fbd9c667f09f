"""Turning a return value into the protocol's `result`, losing as little as possible.

Two things the published worker gets wrong for notebook users: one unpicklable entry in a dict
result fails the whole request, and a CUDA tensor comes back as a CUDA tensor that a CPU-only
laptop cannot load. Here a dict result keeps every entry that pickles and names the others, and
tensors on a GPU are moved to the CPU as they are pickled.
"""

from __future__ import annotations

import base64
import io
import sys
from typing import Any

import cloudpickle


class _CpuPickler(cloudpickle.Pickler):
    """A cloudpickle Pickler that stores GPU tensors as their CPU copies."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor) and obj.device.type != "cpu":
            return obj.detach().cpu().__reduce_ex__(self.proto)
        return super().reducer_override(obj)


def dumps(value: Any) -> bytes:
    """cloudpickle.dumps, with GPU tensors moved to the CPU."""
    buffer = io.BytesIO()
    _CpuPickler(buffer).dump(value)
    return buffer.getvalue()


def encode_result(value: Any) -> tuple[str, dict[str, str]]:
    """base64 pickle of `value`, and {key: reason} for dict entries that had to be left out."""
    try:
        return base64.b64encode(dumps(value)).decode("ascii"), {}
    except Exception as exc:
        if not isinstance(value, dict):
            raise TypeError(f"result of type {type(value).__name__} cannot be pickled: {exc}")
    kept: dict[Any, Any] = {}
    dropped: dict[str, str] = {}
    for key, item in value.items():
        try:
            dumps(item)
        except Exception as exc:
            dropped[str(key)] = f"{type(item).__name__}: {exc}"
        else:
            kept[key] = item
    return base64.b64encode(dumps(kept)).decode("ascii"), dropped
