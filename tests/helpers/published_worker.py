"""A stand-in for RunPod's published standard worker (the `runpod/flash` images), for tests.

It does with a request what that worker's live path does (DESIGN.md, "The published standard
worker today"): the request is validated with `runpod-flash`'s own FunctionRequest model; the
function code is executed with `exec(function_code, {})` in this, the worker's own long-lived
process; the function is called with the cloudpickled arguments under
`redirect_stdout`/`redirect_stderr` into buffers; the result goes back base64-cloudpickled in
`runpod-flash`'s FunctionResponse, with all output in `stdout`, only at the end. It does not
stream. It is started by the real runpod SDK's job loop
(`python tests/helpers/published_worker.py` with the `RUNPOD_WEBHOOK_*` variables set), so the
SDK's `progress_update` works in it as on RunPod.

The tests use it only where worker-flash's own code (tests/helpers/worker_flash.py) is not
here. It does not install `dependencies`, nor log records of its own into the response, as that
worker does: tests of those skip with it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import traceback
from typing import Any

import cloudpickle
import runpod
from runpod_flash.protos.remote_execution import FunctionRequest, FunctionResponse


def _load(value: str) -> Any:
    return cloudpickle.loads(base64.b64decode(value))


def handler(job: dict[str, Any]) -> dict[str, Any]:
    request = FunctionRequest.model_validate(job["input"])
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            namespace: dict[str, Any] = {}
            exec(request.function_code or "", namespace)
            args = [_load(a) for a in request.args]
            kwargs = {k: _load(v) for k, v in request.kwargs.items()}
            value = namespace[request.function_name or ""](*args, **kwargs)
        result = base64.b64encode(cloudpickle.dumps(value)).decode()
        response = FunctionResponse(success=True, result=result)
    except Exception:
        response = FunctionResponse(success=False, error=traceback.format_exc())
    response.stdout = out.getvalue() + err.getvalue()
    return response.model_dump(exclude_none=True)


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
