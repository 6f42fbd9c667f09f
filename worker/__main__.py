"""`python -m worker`: start the worker under the runpod SDK.

In the SDK's production loop (RUNPOD_WEBHOOK_GET_JOB set) the streaming handler serves, with
`return_aggregate_stream` so /status also carries every chunk. Under `--test_input` the SDK calls
the handler once and expects a plain value, so the plain handler serves there, as it does when
TETRA_WORKER_STREAM=0 asks for the published worker's non-streaming shape.

TETRA_WORKER_TAKE_AHEAD=1 (set by the local endpoint) keeps a job-take request open while a job
runs, so the next job starts the moment this one ends rather than after the SDK's pause of up to
a second. It needs an endpoint that hands a worker no second job while one runs, as the local
endpoint does; RunPod would run two jobs on the worker at once, so it is off by default.
"""

from __future__ import annotations

import os

import runpod

from worker.handler import plain_handler, stream_handler


def _take_ahead(current: int) -> int:
    """The SDK's concurrency for take-ahead: room for the running job, which the SDK counts
    twice (queued and in progress) until it starts it, plus one job-take request waiting."""
    return 3


def main() -> None:
    streaming = os.environ.get("TETRA_WORKER_STREAM", "1") != "0"
    if streaming and os.environ.get("RUNPOD_WEBHOOK_GET_JOB"):
        config = {"handler": stream_handler, "return_aggregate_stream": True}
        if os.environ.get("TETRA_WORKER_TAKE_AHEAD") == "1":
            config["concurrency_modifier"] = _take_ahead
        runpod.serverless.start(config)
    else:
        runpod.serverless.start({"handler": plain_handler})


if __name__ == "__main__":
    main()
