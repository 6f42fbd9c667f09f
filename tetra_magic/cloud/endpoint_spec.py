"""One RunPod endpoint's configuration, and the name that finds it again.

An endpoint serves one configuration: worker image, GPU pools (or CPU instance types), GPUs per
worker, workers min/max, idle timeout, execution timeout and env. Its name carries a hash of all
of that (`tetra-magic-a100-3f9c2a1b7d`), so this kernel, a later one, or one on another machine
finds it again in RunPod's list of the account's endpoints instead of creating a duplicate. The
spec is also the body of REST v2's createEndpoint: an endpoint carries its own image and env,
so no template of ours is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from tetra_magic.cloud import gpus

PREFIX = "tetra-magic-"
CONTAINER_DISK_GB = 20  # room for --deps such as torch on top of the image
_NAME = re.compile(rf"^{PREFIX}(?P<label>.+)-(?P<digest>[0-9a-f]{{10}})(?:-fb)?$")


@dataclass(frozen=True)
class EndpointSpec:
    """Everything that makes one endpoint different from another."""

    label: str
    image: str
    gpu_ids: tuple[str, ...]
    instance_ids: tuple[str, ...]
    gpu_count: int
    workers_min: int
    workers_max: int
    idle_timeout: int
    execution_timeout_ms: int
    env: tuple[tuple[str, str], ...]
    container_disk_gb: int = CONTAINER_DISK_GB
    session: str = ""  # the session this endpoint is kept for; "" for plain cells

    @property
    def digest(self) -> str:
        config = dataclasses.asdict(self)
        del config["label"]
        if not self.session:
            del config["session"]  # so plain endpoints made before sessions are found again
        return _digest(config)

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.label}-{self.digest}"

    def workers(self) -> dict[str, int]:
        """REST v2's `workers` object: {min, max, idleTimeout}."""
        return {"min": self.workers_min, "max": self.workers_max, "idleTimeout": self.idle_timeout}

    def hardware(self) -> dict[str, Any]:
        """REST v2's `gpu` (pools, count, excludedTypes) or `cpu` (flavors): one of the two."""
        if self.instance_ids:
            return {"cpu": gpus.cpu_flavors(self.instance_ids)}
        pools, excluded = gpus.pools_and_exclusions(self.gpu_ids)
        gpu: dict[str, Any] = {"pools": pools, "count": self.gpu_count}
        if excluded:
            gpu["excludedTypes"] = excluded
        return {"gpu": gpu}

    def body(self) -> dict[str, Any]:
        """The createEndpoint request (api-reference-v2/serverless/create-endpoint): a queue
        endpoint (`type` must be chosen on every create) scaled by queue delay, with the image
        and env on the endpoint itself."""
        return {
            "name": self.name,
            "type": "QUEUE",
            "image": self.image,
            "env": dict(self.env),
            "disk": self.container_disk_gb,
            **self.hardware(),
            "workers": self.workers(),
            "scaling": {"type": "QUEUE_DELAY", "queueDelay": 4},
            "timeout": self.execution_timeout_ms,
            "flashboot": "FLASHBOOT",
        }


def _digest(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def ours_with_digest(endpoints: list[dict[str, Any]], digest: str) -> dict[str, Any] | None:
    """The endpoint of ours among `endpoints` whose name carries `digest`; None if none."""
    for endpoint in endpoints:
        match = _NAME.match(endpoint.get("name") or "")
        if match and match["digest"] == digest:
            return endpoint
    return None


def is_ours(name: str) -> bool:
    """Whether an endpoint name is one the magic gives."""
    return _NAME.match(name) is not None
