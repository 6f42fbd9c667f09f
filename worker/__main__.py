"""`python -m worker`: start the worker under the runpod SDK.

In the SDK's production loop (RUNPOD_WEBHOOK_GET_JOB set) the streaming handler serves, with
`return_aggregate_stream` so /status also carries every chunk. Under `--test_input` the SDK calls
the handler once and expects a plain value, so the plain handler serves there, as it does when
TETRA_WORKER_STREAM=0 asks for the published worker's non-streaming shape.
"""

from __future__ import annotations

import os

import runpod

from worker.handler import plain_handler, stream_handler


def main() -> None:
    streaming = os.environ.get("TETRA_WORKER_STREAM", "1") != "0"
    if streaming and os.environ.get("RUNPOD_WEBHOOK_GET_JOB"):
        runpod.serverless.start({"handler": stream_handler, "return_aggregate_stream": True})
    else:
        runpod.serverless.start({"handler": plain_handler})


if __name__ == "__main__":
    main()
