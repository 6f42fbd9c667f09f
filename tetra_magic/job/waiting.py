"""What a job waiting in the queue is waiting for, told from the endpoint's `/health`.

`/status` says only IN_QUEUE; RunPod's `/health` says what the endpoint's workers are doing
(RunPod docs, "Endpoint operations" and "Worker states"): `initializing` workers are pulling the
image and starting (the first start of a large image takes minutes), `throttled` ones wait for
a machine with that GPU to come free, `unhealthy` ones crashed at start (RunPod retries them,
and scales down an endpoint that keeps producing them). `QueueWatch` turns those counts into a
sentence when the situation changes, and ends the wait (the caller cancels the job) when the
workers keep failing or the cell has waited `queue_timeout` seconds: never an unbounded silent
wait.

No worker at all (none idle, starting, throttled or failing) while a job waits looks wrong: an
endpoint whose max workers RunPod lowered to 0 (after 7 idle days: docs, endpoint
configurations, "Idle endpoint scale-down") looks exactly so, and stays so. Then the watch asks
RunPod once what the endpoint is now (`recheck`, from tetra_magic/targets.py): one of ours is
raised back and the note says so, one at 0 that is not ours ends the wait at once, naming why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tetra_magic.errors import JobFailed

# A cold start that ends quickly needs no explanation; a slow one, or a problem, does. (Only
# where an image is pulled, as on RunPod: the local endpoint's workers start from a venv here.)
STARTING_NOTE_AFTER_S = 5.0
# Workers keep failing to start: this many unhealthy at once, or any for this long with none
# up, and waiting longer will not help.
UNHEALTHY_LIMIT = 3
UNHEALTHY_GIVE_UP_S = 120.0
_UP = ("idle", "ready", "running")
_ANY = (*_UP, "initializing", "throttled", "unhealthy")


class QueueGaveUp(JobFailed):
    """The job waited too long for a worker, or the workers kept failing to start."""


@dataclass
class QueueWatch:
    """Follows one job's time in the queue. `timeout` is TetraMagic.queue_timeout (s); `image`
    and `gpus` name what the endpoint runs ("" and () where unknown), for messages;
    `cold_starts`: its workers start by pulling an image (RunPod), which is worth explaining;
    `recheck`: asks RunPod what it changed of the endpoint (a note, or QueueGaveUp), where it
    can be asked."""

    timeout: float
    image: str = ""
    gpus: tuple[str, ...] = ()
    cold_starts: bool = False
    waited: float = 0.0
    unhealthy_for: float = 0.0
    told: set[str] = field(default_factory=set)
    recheck: Callable[[], str | None] | None = None

    def tick(self, seconds: float) -> None:
        """Count `seconds` more in the queue; QueueGaveUp past the timeout."""
        self.waited += seconds
        if self.waited > self.timeout:
            other = (
                f"allow more GPU types ({_gpu_hint(self.gpus)})"
                if self.gpus
                else "look at the endpoint's workers in RunPod's console"
            )
            raise QueueGaveUp(
                f"no worker took the job within TetraMagic.queue_timeout ({self.timeout:g} s)."
                " For a slow cold start raise it (%config TetraMagic.queue_timeout = 3600), or"
                f" {other}"
            )

    def read(self, health: dict, since_last: float) -> str | None:
        """What to tell the user about this `/health` answer: a sentence the first time a
        situation is seen, else None. QueueGaveUp when the workers keep failing to start, or
        the endpoint has no worker and stays at 0 max workers."""
        workers = health.get("workers") or {}
        if not any(int(workers.get(k) or 0) for k in _ANY):
            self.unhealthy_for = 0.0
            return self._no_workers()
        count = {k: int(workers.get(k) or 0) for k in ("initializing", "throttled", "unhealthy")}
        if any(int(workers.get(k) or 0) for k in _UP):
            self.unhealthy_for = 0.0
            return None
        if count["unhealthy"]:
            self.unhealthy_for += since_last
            if count["unhealthy"] >= UNHEALTHY_LIMIT or self.unhealthy_for >= UNHEALTHY_GIVE_UP_S:
                raise QueueGaveUp(self._failing(count["unhealthy"]))
            return self._once(
                "unhealthy",
                f"workers are failing to start ({count['unhealthy']} unhealthy); RunPod is"
                " retrying them",
            )
        self.unhealthy_for = 0.0
        if count["throttled"] and not count["initializing"]:
            gpus = " or ".join(self.gpus) or "GPU of this type"
            return self._once(
                "throttled",
                f"no {gpus} is free on RunPod right now; waiting for one (more GPU types start"
                f" sooner: {_gpu_hint(self.gpus)})",
            )
        if count["initializing"] and self.cold_starts and self.waited >= STARTING_NOTE_AFTER_S:
            image = f"the image {self.image}" if self.image else "the worker image"
            return self._once(
                "initializing",
                f"a worker is starting: its first start pulls {image} and can take several minutes",
            )
        return None

    def _no_workers(self) -> str | None:
        """No worker in any state: ask RunPod about the endpoint, once per wait."""
        if self.recheck is None or "no workers" in self.told:
            return None
        self.told.add("no workers")
        return self.recheck()

    def _once(self, situation: str, text: str) -> str | None:
        if situation in self.told:
            return None
        self.told.add(situation)
        return f"tetra: {text}\n"

    def _failing(self, unhealthy: int) -> str:
        image = self.image or "the worker image"
        return (
            f"the endpoint's workers keep failing to start ({unhealthy} unhealthy). The likely"
            f" cause is the image ({image}) or its start command: check that it exists and can"
            " be pulled, and read the worker logs in RunPod's console"
        )


def _gpu_hint(gpus: tuple[str, ...]) -> str:
    """An example --gpu with the user's GPUs and a few common alternatives."""
    names = list(dict.fromkeys([*gpus, "A100", "H100", "L40S"]))
    return "e.g. --gpu " + " ".join(names[:4])
