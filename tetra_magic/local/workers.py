"""The worker supervisor: N `python -m worker` processes in the runpod SDK's production mode.

Each worker is our real worker, started exactly as RunPod starts it: the `RUNPOD_WEBHOOK_*`
variables point its job loop at this server, which it then polls for jobs, streams to and
reports to. All workers start at boot rather than on demand: a worker started on demand would
add the SDK's ~2 s import to the very job that needed it. TETRA_WORKER_TAKE_AHEAD=1 has each
worker keep a job-take open while it runs a job, which this server answers the moment the job
ends, so back-to-back cells find a worker waiting.

A worker that dies is restarted; the job it was running fails with the reason ("the worker
exited with signal SIGKILL while running the job"). Its executor child (its own session, so a
cell can't kill the worker) and the SDK's ping process would outlive it, so every process a
worker starts carries marker variables in its environment, and the supervisor kills whatever
still carries a dead worker's marker. Workers also get SIGKILL when the server dies (Linux
PDEATHSIG), and a new server clears what a dead one left behind.

Each worker gets its GPU as worker_gpus.py plans it. The SDK's host fitness checks (free
memory, disk, reaching 8.8.8.8) are for RunPod's machines and would kill workers on a busy or
offline laptop, so they are skipped unless the user's environment says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tetra_magic.local import environment, kernels, state
from tetra_magic.local.job_store import JobStore
from tetra_magic.local.marks import SERVER_MARK, WORKER_MARK, kill_marked
from tetra_magic.local.passed_env import passed
from tetra_magic.local.worker_gpus import gpu_plan
from worker.parent_death import die_with_parent

log = logging.getLogger("tetra_magic.local.workers")

QUICK_EXIT_S = 15.0
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
GIVE_UP_AFTER = 3
KERNEL_CHECK_S = 5.0


def exit_reason(returncode: int) -> str:
    """'with signal SIGKILL' / 'with status 1': how a process ended, in words."""
    if returncode < 0:
        try:
            return f"with signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"with signal {-returncode}"
    return f"with status {returncode}"


def kill_strays() -> int:
    """Kill what workers of servers that are no longer running left behind."""
    return kill_marked(
        SERVER_MARK, lambda value: not value.isdigit() or not state.pid_alive(int(value))
    )


@dataclass
class WorkerUrls:
    """The URLs the SDK's production loop calls, with the placeholders it fills in."""

    base: str  # e.g. http://127.0.0.1:PORT/v2/local

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.base).hostname or "127.0.0.1"

    def env(self) -> dict[str, str]:
        # The SDK appends "&job_in_progress=..." and "&isStream=...": the templates end in "?".
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.base}/job-take/$ID?",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.base}/job-done/$RUNPOD_POD_ID/$ID?",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{self.base}/job-stream/$RUNPOD_POD_ID/$ID?",
            "RUNPOD_WEBHOOK_PING": f"{self.base}/ping/$RUNPOD_POD_ID",
        }


@dataclass
class Slot:
    """One worker position; its process is replaced when it dies."""

    index: int
    gpu: str | None
    log_path: Path
    worker_id: str = ""
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    seen: bool = False
    quick_exits: int = 0
    replaced: str = ""  # why the supervisor killed it on purpose, until it has exited


class Supervisor:
    """Makes the worker environment, then keeps `workers` worker processes running."""

    def __init__(
        self,
        store: JobStore,
        *,
        workers: int,
        gpus: list[str],
        urls: WorkerUrls,
        token: str,
        root: Path,
    ) -> None:
        self.store = store
        self.urls = urls
        self.token = token
        self.root = root
        self.python: Path | None = None
        self.env_error: str | None = None
        self._env_ready = asyncio.Event()
        self._building: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        logs = state.private_dir(state.server_dir(root) / "workers")
        self.workdir = state.private_dir(state.server_dir(root) / "work")
        # The kernels' working directories and package layers (worker/deps.py) start empty
        # with each server, as a new container's would, so what cells wrote or installed does
        # not pile up in the state dir.
        self.kernel_dirs, self.package_dirs = (
            _emptied(state.server_dir(root) / name) for name in ("kernels", "packages")
        )
        self.slots = [
            Slot(index=i + 1, gpu=gpu, log_path=logs / f"worker-{i + 1}.log")
            for i, gpu in enumerate(gpu_plan(gpus, workers))
        ]
        store.on_unresponsive = self._unresponsive

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Build the environment and start the workers, in the background."""
        killed = kill_strays()
        if killed:
            log.info("killed %d process(es) left by workers of a server that is gone", killed)
        self._building = asyncio.create_task(self._build_and_start())
        self._tasks.append(asyncio.create_task(self._free_gone_kernels()))

    def wake(self) -> None:
        """A job is about to be queued: if the environment failed to build before, try again
        now; if it was deleted under the running workers (README: deleting the state dir's
        envs/ frees its space), stop them before they take the job, and rebuild it."""
        if self._building is not None and not self._building.done():
            return
        if self.env_error is not None:
            self.env_error = None
            self._building = asyncio.create_task(self._build_and_start())
        elif self.python is not None and not self.python.exists():
            self._rebuild(f"its Python environment {self.python.parents[1]} was deleted")

    def _rebuild(self, why: str) -> None:
        log.warning("the workers' environment is gone (%s): rebuilding it", why)
        self._env_ready.clear()
        reason = f"the worker was stopped: {why}; the local endpoint is rebuilding it"
        for slot in self.slots:
            self._replace(slot, reason)
        self._building = asyncio.create_task(self._build_and_start())

    def _replace(self, slot: Slot, reason: str) -> None:
        """Kill the slot's worker on purpose; `_keep` starts the next one."""
        if slot.process is None or slot.process.returncode is not None:
            return
        slot.replaced = reason
        self.store.worker_gone(slot.worker_id, reason)  # before it can take another job
        self._kill_slot(slot)

    def _unresponsive(self, worker_id: str, job_id: str) -> None:
        """The store gave a job back to the queue: the worker it was handed to never took it
        up (stopped, hung). Restart that worker."""
        for slot in self.slots:
            if slot.worker_id == worker_id:
                log.warning(
                    "worker %s did not take job %s: the job went to another worker; restarting it",
                    worker_id,
                    job_id,
                )
                self._replace(slot, "the worker did not take the job it was handed")

    async def _free_gone_kernels(self) -> None:
        """Every few seconds: free what kernels that ended left on the workers (kernels.py),
        but for a kernel whose detached job still runs there."""
        while True:
            await asyncio.sleep(KERNEL_CHECK_S)
            detached = self.store.detached_kernels()  # read here: the store is the loop's
            freed = await asyncio.to_thread(
                kernels.free_gone, [self.kernel_dirs, self.package_dirs], self.root, detached
            )
            for kernel_id in freed:
                log.info("kernel %s is gone: freed its processes and files", kernel_id)

    async def stop(self) -> None:
        """Kill every worker and everything they started."""
        self._stopping = True
        for task in [*self._tasks, *([self._building] if self._building else [])]:
            task.cancel()
        for slot in self.slots:
            self._kill_slot(slot)
        for slot in self.slots:
            if slot.process is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(slot.process.wait(), 5)
        kill_marked(SERVER_MARK, str(os.getpid()))

    async def _build_and_start(self) -> None:
        try:
            self.python = await asyncio.to_thread(environment.ensure, self.root, log.info)
            self._env_ready.set()
        except Exception as exc:
            self.env_error = f"the local endpoint could not prepare its worker environment: {exc}"
            log.error("%s", self.env_error)
            failed = self.store.fail_queued(self.env_error)
            log.error("failed %d queued job(s)", failed)
            return
        if not self._stopping and not any(t.get_name() == "keep" for t in self._tasks):
            self._tasks += [asyncio.create_task(self._keep(s), name="keep") for s in self.slots]

    # ----------------------------------------------------------------- one slot

    async def _keep(self, slot: Slot) -> None:
        """Run the slot's worker, restarting it whenever it exits."""
        while not self._stopping:
            await self._env_ready.wait()
            if self.python is not None and not self.python.exists():
                self.wake()  # deleted while no job came: rebuilt now, not at the next cell
                continue
            try:
                await self._spawn(slot)
            except OSError as exc:
                log.error("could not start worker %d: %s", slot.index, exc)
                slot.quick_exits += 1
                await asyncio.sleep(self._restart_delay(slot))
                continue
            assert slot.process is not None
            code = await slot.process.wait()
            if self._stopping:
                return
            self._after_exit(slot, code)
            await asyncio.sleep(self._restart_delay(slot))

    async def _spawn(self, slot: Slot) -> None:
        assert self.python is not None
        slot.worker_id = f"local-{slot.index}-{secrets.token_hex(3)}"
        slot.seen = False
        slot.started = time.monotonic()
        _trim(slot.log_path)
        with open(slot.log_path, "ab") as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"--- {stamp} starting worker {slot.worker_id}\n".encode())
            log_file.flush()
            slot.process = await asyncio.create_subprocess_exec(
                str(self.python),
                "-m",
                "worker",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(slot),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        log.info("started worker %s (pid %d)", slot.worker_id, slot.process.pid)

    def _after_exit(self, slot: Slot, code: int) -> None:
        """A worker exited on its own: fail its job, clean up after it, judge whether to retry."""
        if slot.replaced:
            log.info("worker %s stopped: %s", slot.worker_id, slot.replaced)
            slot.replaced = ""
            self._kill_slot(slot)
            return
        how = exit_reason(code)
        reason = (
            f"the worker exited {how} while running the job "
            f"(worker {slot.worker_id}; its log: {slot.log_path})"
        )
        lost = self.store.worker_gone(slot.worker_id, reason)
        self._kill_slot(slot)
        log.warning(
            "worker %s exited %s%s",
            slot.worker_id,
            how,
            f" running job {lost[0].id}" if lost else "",
        )
        quick = not slot.seen and time.monotonic() - slot.started < QUICK_EXIT_S
        slot.quick_exits = slot.quick_exits + 1 if quick else 0
        if all(s.quick_exits >= GIVE_UP_AFTER for s in self.slots):
            why = (
                f"the workers exit as soon as they start; the last lines of {slot.log_path}:\n"
                + state.log_tail(slot.log_path, 20)
            )
            if self.store.fail_queued(why):
                log.error("%s", why)

    def _restart_delay(self, slot: Slot) -> float:
        if slot.quick_exits == 0:
            return 0.1
        return RESTART_DELAYS[min(slot.quick_exits, len(RESTART_DELAYS)) - 1]

    def _kill_slot(self, slot: Slot) -> None:
        """Kill the worker's process group (it and the SDK's ping process) and its children."""
        if slot.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(slot.process.pid, signal.SIGKILL)
        if slot.worker_id:
            kill_marked(WORKER_MARK, slot.worker_id)

    def _env(self, slot: Slot) -> dict[str, str]:
        """The worker's environment: the little of the server's it needs (see passed_env),
        plus the SDK's job-queue settings and our markers. The server's own may come from
        whichever kernel started it, and the workers run every kernel's cells."""
        assert self.python is not None
        env = passed(os.environ)
        venv_bin = self.python.parent
        level = os.environ.get("TETRA_MAGIC_WORKER_LOG_LEVEL", "INFO")
        env.update(self.urls.env())
        env.update(
            {
                "VIRTUAL_ENV": str(venv_bin.parent),
                "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', os.defpath)}",
                "RUNPOD_POD_ID": slot.worker_id,
                "RUNPOD_AI_API_KEY": self.token,
                # DEBUG would write every job's input into the worker log.
                "RUNPOD_LOG_LEVEL": level,
                "RUNPOD_DEBUG_LEVEL": level,
                "PYTHONUNBUFFERED": "1",
                "TETRA_WORKER_TAKE_AHEAD": "1",
                # The heartbeat names the jobs a worker has taken up (take_up.TAKE_UP_S).
                "RUNPOD_PING_INTERVAL": "1000",
                "TETRA_WORK_DIR": str(self.kernel_dirs),
                "TETRA_PACKAGES_DIR": str(self.package_dirs),
                SERVER_MARK: str(os.getpid()),
                WORKER_MARK: slot.worker_id,
            }
        )
        for key in ("NO_PROXY", "no_proxy"):  # the SDK's ping honours HTTP_PROXY
            env[key] = ",".join(filter(None, [env.get(key), self.urls.host]))
        env.setdefault("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
        env.setdefault("RUNPOD_SKIP_GPU_CHECK", "true")
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        return env

    # ----------------------------------------------------------------- reporting

    def seen(self, worker_id: str) -> None:
        """A worker called in (job-take, ping): it is up."""
        for slot in self.slots:
            if slot.worker_id == worker_id:
                slot.seen = True

    def health(self) -> dict[str, int]:
        """The /health "workers" section, in RunPod's terms.

        running: has a job; idle: waiting in job-take now; ready: up (idle, running, or between
        a job's end and its next job-take); initializing: starting; unhealthy: failing to start.
        """
        counts = dict.fromkeys(
            ("idle", "initializing", "ready", "running", "throttled", "unhealthy"), 0
        )
        for slot in self.slots:
            alive = slot.process is not None and slot.process.returncode is None
            if self.env_error is not None or (not alive and slot.quick_exits):
                counts["unhealthy"] += 1
                continue
            if not alive or not slot.seen:
                counts["initializing"] += 1
                continue
            counts["ready"] += 1
            if self.store.running_on(slot.worker_id) is not None:
                counts["running"] += 1
            elif self.store.polling(slot.worker_id):
                counts["idle"] += 1
        return counts


def _emptied(path: Path) -> Path:
    """`path` as a new, empty private directory."""
    shutil.rmtree(path, ignore_errors=True)
    return state.private_dir(path)


def _trim(path: Path) -> None:
    """Keep a worker log from growing without bound across restarts."""
    with contextlib.suppress(OSError):
        if path.stat().st_size > state.LOG_LIMIT:
            path.write_bytes(path.read_bytes()[-state.LOG_LIMIT // 2 :])
