"""What the tests share: harnesses and stand-ins, imported as `from helpers.kernels import ...`.

tests/ is on sys.path because tests/conftest.py sits there (pytest's default "prepend" import
mode), so every test folder reaches this package the same way. No test module imports from
another test module's folder; what two folders share lives here.

- kernels: cells in a real Jupyter kernel, as a notebook frontend runs them, with the outputs it
  would show; a private local endpoint for a test module's kernels; the workers' shared venv.
- cloud_kernels: real kernels pointed at a FakeRunPod (a private HOME and state dir each, the
  fake's URLs in the runpod SDK's variables) and the distinctive API key to grep for.
- runpod_fakes: FakeRunPod, a loopback stand-in for RunPod's REST API v2 and serverless job API
  (the `fake` fixture of tests/conftest.py), so no test reaches RunPod.
- following: the real follow loop (tetra_magic/job/follow.py) on a job submitted by a test's
  own client, shown by a view of its own.
- twins: the same cells run twice in fresh kernels, once as written and once with the marked
  cells remote, so a remote cell is compared with what it gives locally.
- published: RunPod's published standard worker (worker-flash's code or the stand-in) under the
  runpod SDK's loop, taking jobs from a loopback endpoint in the test process; its fixtures.
- published_worker: the stand-in for the published worker, run as a script
  (`python tests/helpers/published_worker.py`) where worker-flash's code is absent.
- worker_flash: worker-flash's own code, run as its image runs it, in a venv of its pins.
- polling: `until`, a check polled until it holds or its time runs out.
- load: the many-kernels load driver of magic/test_load.py and benchmarks/bench_load.py.
- lab_page: a real JupyterLab in headless Chromium, for the browser tests and
  tools/screenshot_view.py.
"""
