"""The embedded local endpoint: RunPod Serverless's REST API on loopback, running our worker.

`ensure_running()` (launcher.py) is what the magic calls; `python -m tetra_magic.local` runs the
server by hand. Modules: server (the process), api (the routes), request_checks (credentials,
body limits), jobs (one job's record), job_store (queue and state machine), take_up,
stop_signals and retention (what the store watches, sends and keeps), workers (supervisor),
worker_gpus (their GPUs), environment (the workers' venv), state (state dir, token, server
record), launcher, control (`tetra-local status|stop`).
"""

from tetra_magic.local.launcher import LocalEndpoint, LocalEndpointError, ensure_running, stop

__all__ = ["LocalEndpoint", "LocalEndpointError", "ensure_running", "stop"]
