"""Turning a return value into the protocol's `result`, losing as little as possible.

Two things the published worker gets wrong for notebook users: one unpicklable entry in a dict
result fails the whole request, and a CUDA tensor comes back as a CUDA tensor that a CPU-only
laptop cannot load. Here a dict result keeps every entry that pickles and names the others with
the reason, and tensors on an accelerator are stored as their CPU copies as they are pickled
(parameters stay parameters, `requires_grad` is kept), so the client never needs a GPU to load.
"""

from __future__ import annotations

import base64
import io
import sys
from typing import Any

import cloudpickle

_HOST_DEVICES = ("cpu", "meta")


def _cpu_copy(torch: Any, tensor: Any) -> Any:
    """The tensor on the CPU, detached (autograd graphs do not cross processes), same kind."""
    copy = tensor.detach().cpu()
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(copy, requires_grad=tensor.requires_grad)
    return copy.requires_grad_(tensor.requires_grad)


class CpuPickler(cloudpickle.Pickler):
    """A cloudpickle Pickler that stores tensors held on an accelerator as their CPU copies.

    torch is looked up, never imported: if the code did not import it, no tensor can exist.
    """

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if (
            torch is not None
            and isinstance(obj, torch.Tensor)
            and obj.device.type not in _HOST_DEVICES
        ):
            return _cpu_copy(torch, obj).__reduce_ex__(self.proto)
        return super().reducer_override(obj)


def dumps(value: Any) -> bytes:
    """cloudpickle.dumps, with accelerator tensors moved to the CPU."""
    buffer = io.BytesIO()
    CpuPickler(buffer).dump(value)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unpicklable(value: Any, exc: Exception) -> str:
    """The reason a value did not pickle, naming its type: what a user needs to find it."""
    return f"{type(value).__name__}: {type(exc).__name__}: {exc}"


def encode_result(value: Any) -> tuple[str, dict[str, str]]:
    """base64 pickle of `value`, and {key: reason} for dict entries that had to be left out.

    A value that is not a dict and does not pickle raises TypeError naming its type and why.
    """
    try:
        return _b64(dumps(value)), {}
    except Exception as exc:
        if not isinstance(value, dict):
            raise TypeError(f"the result cannot be pickled: {_unpicklable(value, exc)}") from None
    kept: dict[Any, Any] = {}
    dropped: dict[str, str] = {}
    for key, item in value.items():
        try:
            dumps(item)
        except Exception as exc:
            dropped[str(key)] = _unpicklable(item, exc)
        else:
            kept[key] = item
    return _b64(dumps(kept)), dropped
