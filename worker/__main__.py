"""`python -m worker`: start the worker under the runpod SDK.

In the SDK's production loop (RUNPOD_WEBHOOK_GET_JOB set) the streaming handler serves, with
`return_aggregate_stream` so /status also carries every chunk, and the loop is `worker.loop`'s:
the SDK's own, without the timers it makes taken jobs wait for. Under `--test_input` (or any
other SDK argument) the SDK's `start` runs as it is; there the SDK calls the handler once and
expects a plain value, so the plain handler serves, as it does when TETRA_WORKER_STREAM=0 asks
for the published worker's non-streaming shape.

TETRA_WORKER_TAKE_AHEAD=1 (set by the local endpoint) keeps a job-take request open while a job
runs, so the next job starts the moment this one ends. It needs an endpoint that hands a worker
no second job while one runs, as the local endpoint does; RunPod would run two jobs on the
worker at once, so it is off by default.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import runpod

from worker import loop
from worker.handler import plain_handler, stream_handler


def main() -> None:
    streaming = os.environ.get("TETRA_WORKER_STREAM", "1") != "0"
    production = (
        bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))
        and not os.environ.get("RUNPOD_REALTIME_PORT")  # the SDK serves HTTP itself there
        and len(sys.argv) == 1
    )
    if not production:
        runpod.serverless.start({"handler": plain_handler})
        return
    config: dict[str, Any] = {"handler": plain_handler}
    if streaming:
        config = {"handler": stream_handler, "return_aggregate_stream": True}
    print(f"--- tetra worker: runpod {runpod.__version__} job loop, started at once ---")
    loop.serve(config, take_ahead=os.environ.get("TETRA_WORKER_TAKE_AHEAD") == "1")


if __name__ == "__main__":
    main()
