"""The local endpoint, stamping each step of every job, for bench_magic's breakdown of a cell.

    python benchmarks/traced_endpoint.py TRACE.jsonl [--workers N]

It runs the real server (`tetra_magic.local.server.serve`: its workers, its routes) with the
job store swapped for one that appends a line `{"job", "event", "t"}` (t: time.time(), which
every process on the machine shares) to TRACE.jsonl as a job moves:

    submitted     POST /run queued it
    taken         a worker's job-take got it
    chunk:KIND    a worker's stream post of one chunk ("info" first, "response" last)
    done          the worker's job-done post
    asked         a client request naming the job (/stream, /status, /cancel)

The benchmark starts it in a private TETRA_MAGIC_HOME; the server records itself there as
usual, so a kernel's `%%tetra --local` finds and uses it. SIGTERM stops it as it stops the
real one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tetra_magic.local import server
from tetra_magic.local.job_store import JobStore
from tetra_magic.local.jobs import Job


class TracingStore(JobStore):
    """A JobStore that writes a stamped line for every step of a job."""

    trace: TextIO  # line-buffered: each line is in the file as soon as it is written

    def _stamp(self, job_id: str, event: str) -> None:
        self.trace.write(json.dumps({"job": job_id, "event": event, "t": time.time()}) + "\n")

    def submit(self, job_input: Any, policy: Any, *, sync: bool) -> Job:
        job = super().submit(job_input, policy, sync=sync)
        self._stamp(job.id, "submitted")
        return job

    def _start(self, job: Job, worker_id: str) -> None:
        self._stamp(job.id, "taken")
        super()._start(job, worker_id)

    def add_stream(self, job_id: str, worker_id: str, body: Any) -> bool:
        output = body.get("output") if isinstance(body, dict) else None
        kind = output.get("kind") if isinstance(output, dict) else None
        self._stamp(job_id, f"chunk:{kind}")
        return super().add_stream(job_id, worker_id, body)

    def finish(self, job_id: str, worker_id: str, body: Any) -> bool:
        progress = isinstance(body, dict) and body.get("status") == "IN_PROGRESS"
        if not progress:
            self._stamp(job_id, "done")
        return super().finish(job_id, worker_id, body)

    def get(self, job_id: str) -> Job | None:
        self._stamp(job_id, "asked")
        return super().get(job_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trace", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    TracingStore.trace = open(args.trace, "a", buffering=1)  # noqa: SIM115 - for the process
    server.JobStore = TracingStore  # type: ignore[misc]  # serve() makes its store from this
    server.run_forever(server.ServerOptions(workers=args.workers), announce=lambda _: None)


if __name__ == "__main__":
    main()
