"""RunPod Serverless's limits, as its documentation states them, in one place: the kernel
checks a cell against them before sending it, and the local endpoint enforces them as RunPod
would. Plain numbers only, so the local endpoint's server imports nothing else of the kernel."""

from __future__ import annotations

RUN_PAYLOAD_LIMIT = 10_000_000  # bytes of a /run request body
RUNSYNC_PAYLOAD_LIMIT = 20_000_000  # bytes of a /runsync request body
# RunPod docs: /stream chunks at most 1 MB; the local endpoint refuses a worker's larger chunk.
STREAM_CHUNK_LIMIT = 1_000_000  # bytes of one streamed chunk
# The executionTimeout a job's policy may set: 5 s to 7 days.
MIN_EXECUTION_MS = 5_000
MAX_EXECUTION_MS = 7 * 24 * 3600 * 1000
