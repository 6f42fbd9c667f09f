"""The tetra worker: a RunPod serverless worker that installs dependencies and runs code.

`python -m worker` starts it under the runpod SDK. Its settings, all environment variables:

- TETRA_WORKER_STREAM=0: answer with the plain FunctionResponse dict, as the published tetra
  worker does, instead of streaming chunks.
- TETRA_ALLOW_APT=1: allow apt-get for system dependencies (the images set it; it is used only
  when the worker runs as root).
- TETRA_UV: the uv executable to install Python dependencies with (default: the `uv` package's).
- TETRA_MAX_OUTPUT_BYTES: how much output one request may stream (default 16 MiB).
- TETRA_WORKER_TAKE_AHEAD=1: ask for the next job while one runs (set by the local endpoint;
  see `worker.loop` for why it is off elsewhere).
"""
