"""The worker's side of the executor child: start it, hand it requests, follow its output.

`Executor.run` sends one request to the persistent child and returns its FunctionResponse dict,
calling `emit` with stdout/stderr chunks as the child writes them (and "display" chunks for the
display outputs framed in its stdout). Whatever ends a request from outside the code (a timeout,
a crash, the caller being cancelled) kills the child's whole process group, so subprocesses the
code started go too; the next request starts a fresh child.

The child's pipes are read for as long as it lives, not per request, so nothing it writes is
lost: bytes that follow a request's end marker (a background thread still printing) go to the
next request, or wait in a small backlog until there is one.

A child belongs to one notebook kernel (the request's `kernel_id`): it runs in that kernel's own
working directory, and a request from another kernel replaces it with a fresh child, so nothing
one notebook's code leaves behind (threads still printing, environment, imports it patched)
reaches another notebook; the same kernel's next cell gets its late output, as in Jupyter.
A child that has run a request of a session (the request's `session`) holds that session's
namespace, so another kernel's request does not replace it: it is kept beside the others until
it dies or is closed. What ends a request from outside (crash, timeout, cancel) kills only that
request's child; a session it held is lost then, and the cell runtime says so at its next cell. The
child starts without its working directory first on sys.path (`python -m` would put it there),
so a file a cell writes (a json.py) cannot shadow what the child imports; it comes last, so a
cell can still import a module an earlier cell of its kernel wrote, as at home.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import os
import re
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

from worker import channel, deps, frames
from worker.child import MARKER_PREFIX, MARKER_SUFFIX, PACKAGES_VARIABLE, TOKEN_LENGTH
from worker.protocol import Emit, Failure, FunctionResponse, chunk

READ_SIZE = 65536
MARKER = re.compile(
    re.escape(MARKER_PREFIX) + rb"([0-9a-f]{%d})" % TOKEN_LENGTH + re.escape(MARKER_SUFFIX)
)
MARKER_LENGTH = len(MARKER_PREFIX) + TOKEN_LENGTH + len(MARKER_SUFFIX)
Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")
# After the response, how long to wait for the end markers (longer only if user code moved
# fds 1/2 somewhere the worker cannot see); after a kill, how long to collect the last output.
MARKER_GRACE_S = 2.0
DRAIN_GRACE_S = 1.0
# How long a new child may take to get ready (its imports) before it counts as failed to start.
START_TIMEOUT_S = 60.0
# How long a running child has to say it took a request up; the request has not started before.
TAKE_UP_S = 5.0
UNRESPONSIVE = "the process running this notebook's code did not take the cell up (stopped or hung)"
# Output one request may stream before the rest is dropped (and counted), so a runaway print
# loop cannot exhaust the worker's memory or the endpoint's result size.
MAX_OUTPUT_BYTES = int(os.environ.get("TETRA_MAX_OUTPUT_BYTES", 16 * 2**20))
BACKLOG_BYTES = 2**16
# Other kernels' processes kept for their sessions; past this, the least recently used goes
# (a notebook closed with its sessions open would otherwise hold its memory for good).
KEPT_SESSION_PROCESSES = int(os.environ.get("TETRA_KEPT_SESSION_PROCESSES", 4))
# RunPod's variables a cell may read: where it runs. The others (RUNPOD_AI_API_KEY, RUNPOD_API_KEY,
# RUNPOD_WEBHOOK_*, ...) stay with the worker.
_RUNPOD_INFO_ENV = {"RUNPOD_POD_ID", "RUNPOD_ENDPOINT_ID", "RUNPOD_GPU_COUNT", "RUNPOD_DC_ID"}
# Names the kernel an executor process serves (read by tetra_magic/local/kernels.py).
KERNEL_MARK = "TETRA_KERNEL"
# `python -c` with the working directory moved from the front of sys.path to its end (-P would
# drop it, but only from Python 3.11, and a cell could then not import a module it wrote).
_START = "import sys; sys.path.append(sys.path.pop(0)); from worker.child import main; main()"

_WORKER_DIR = re.escape(str(Path(__file__).resolve().parent) + os.sep)
_INTERNAL_FRAME = re.compile(rf'File "({_WORKER_DIR}|<string>", line 1 in <module>)')
SIGNAL_HINTS = {
    signal.SIGSEGV: "a segmentation fault, usually in C extension code",
    signal.SIGABRT: "an abort, usually a failed assertion in C code",
    signal.SIGBUS: "a bus error, usually in C extension code",
    signal.SIGFPE: "a floating point exception in C code",
    signal.SIGILL: "an illegal instruction in C code",
    signal.SIGKILL: "SIGKILL, often the out-of-memory killer",
}


def _partial_marker(buffer: bytes) -> int:
    """Where an end marker may have begun without arriving whole (len(buffer) if nowhere)."""
    start = buffer.rfind(MARKER_PREFIX[:1], max(0, len(buffer) - MARKER_LENGTH + 1))
    if start < 0:
        return len(buffer)
    tail = buffer[start:]
    prefix, token = tail[: len(MARKER_PREFIX)], tail[len(MARKER_PREFIX) :]
    if MARKER_PREFIX.startswith(prefix) and re.fullmatch(rb"[0-9a-f]*", token):
        return start
    return len(buffer)


def _user_frames(crash_log: IO) -> str:
    """faulthandler's report of a fatal signal, less the worker's own frames."""
    crash_log.seek(0)
    report = crash_log.read().decode(errors="replace")
    lines = [line for line in report.splitlines() if not _INTERNAL_FRAME.search(line)]
    return "\n\n" + "\n".join(lines).strip() if report else ""


class StartError(Exception):
    """The executor child could not start, so no code ran."""


class Unresponsive(Exception):
    """The executor child did not take a request up (stopped, or hung), so no code ran."""


def _how(code: int) -> str:
    """'with status 1' / 'killed by SIGKILL'."""
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"with status {code}"


def workdir(kernel_id: str | None) -> Path:
    """One kernel's working directory, under $TETRA_WORK_DIR (default: one in the temp dir),
    kept for the worker's life so a kernel's files are still there for its later cells."""
    default = Path(tempfile.gettempdir()) / f"tetra-work-{os.getuid()}"
    base = os.environ.get("TETRA_WORK_DIR") or default
    path = Path(base) / (kernel_id or "no-kernel")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartError(f"its working directory could not be made: {exc}") from None
    return path


def describe_exit(code: int) -> str:
    """Why the child ended, in the words a notebook user needs."""
    if code < 0:
        sig = signal.Signals(-code)
        hint = SIGNAL_HINTS.get(sig, "a signal")
        return f"the code crashed the executor process: it was killed by {sig.name} ({hint})"
    return (
        f"the code ended the executor process with exit status {code} before returning"
        " (os._exit, or a fatal error in C code)"
    )


class _Output:
    """One request's share of the output: forwarded to `emit` up to MAX_OUTPUT_BYTES of text,
    with the display frames in its stdout taken out as "display" chunks (the cell's display
    runtime keeps to limits of its own for those)."""

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.frames = frames.Splitter()
        self.sent = 0
        self.dropped = 0

    def __call__(self, kind: Stream, text: str) -> None:
        items = self.frames.feed(text) if kind == "stdout" else [chunk(kind, text)]
        for item in items:
            self._forward(item)

    def _forward(self, item: dict[str, Any]) -> None:
        if item["kind"] == "display":
            self.emit(item)
            return
        size = len(item["text"].encode())
        if self.sent + size > MAX_OUTPUT_BYTES:
            self.dropped += size
        else:
            self.sent += size
            self.emit(item)

    def close(self) -> None:
        for item in self.frames.close():
            self._forward(item)
        if self.dropped:
            note = f"tetra: {self.dropped} bytes of output past {MAX_OUTPUT_BYTES} were dropped\n"
            self.emit(chunk("stderr", note))


class _Child:
    """One executor process, the response pipe, and the tasks reading its output pipes."""

    def __init__(
        self, proc: asyncio.subprocess.Process, responses: asyncio.StreamReader, crash_log: IO
    ) -> None:
        self.proc = proc
        self.responses = responses
        self.crash_log = crash_log
        self.holds_session = False  # a session's namespace lives in this process
        self.sink: Callable[[Stream, str], None] | None = None
        self.backlog: list[tuple[Stream, str]] = []
        self.backlog_size = 0
        self.ended: dict[Stream, str] = {}
        self.eof: set[Stream] = set()
        self.changed = asyncio.Event()
        # `start` makes the process with stdin, stdout and stderr all PIPE.
        assert proc.stdout is not None and proc.stderr is not None
        self.readers = [
            asyncio.create_task(self._read(proc.stdout, "stdout")),
            asyncio.create_task(self._read(proc.stderr, "stderr")),
        ]

    @classmethod
    async def start(cls, workdir: Path, kernel: str | None) -> _Child:
        """A child of `kernel` running in `workdir`, once it is ready for requests; StartError
        if it never gets there."""
        read_fd, write_fd = os.pipe()
        crash_log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _START,
                str(write_fd),
                str(crash_log.fileno()),
                str(os.getpid()),
                pass_fds=(write_fd, crash_log.fileno()),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                cwd=workdir,
                env=_child_env(kernel),
            )
        except OSError as exc:  # the worker's own Python is gone (its environment deleted)
            os.close(read_fd)
            crash_log.close()
            raise StartError(f"the worker could not start its executor process: {exc}") from None
        except BaseException:
            os.close(read_fd)
            crash_log.close()
            raise
        finally:
            os.close(write_fd)
        responses = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(responses), os.fdopen(read_fd, "rb", buffering=0)
        )
        child = cls(proc, responses, crash_log)
        try:
            await child._until_ready()
        except BaseException:
            child.close()
            raise
        return child

    async def _until_ready(self) -> None:
        """Wait for the child's first message, which says it has started; StartError, quoting
        what it printed, if it exits first (a broken package it imports, a bad interpreter)."""
        try:
            await asyncio.wait_for(channel.receive(self.responses), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise StartError(
                f"the process that runs the code was not ready after {START_TIMEOUT_S:g} s"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            try:
                code = await asyncio.wait_for(self.proc.wait(), DRAIN_GRACE_S)
            except asyncio.TimeoutError:
                how = "closed its channel"
            else:
                how = f"exited {_how(code)}"
            await self.drain()
            output = "".join(text for _, text in self.backlog).strip()
            raise StartError(
                f"the process that runs the code {how} before it was ready"
                + (f"; it printed:\n{output}" if output else "")
            ) from None

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.eof

    def _emit(self, kind: Stream, text: str) -> None:
        if not text:
            return
        if self.sink is not None:
            self.sink(kind, text)
        elif self.backlog_size < BACKLOG_BYTES:
            self.backlog.append((kind, text))
            self.backlog_size += len(text)

    async def _read(self, stream: asyncio.StreamReader, kind: Stream) -> None:
        """Forward a pipe's text, noting each end marker, until the pipe closes."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = b""
        while data := await stream.read(READ_SIZE):
            pending += data
            while match := MARKER.search(pending):
                self._emit(kind, decoder.decode(pending[: match.start()]))
                self.ended[kind] = match.group(1).decode("ascii")
                self.changed.set()
                pending = pending[match.end() :]
            keep = _partial_marker(pending)
            self._emit(kind, decoder.decode(pending[:keep]))
            pending = pending[keep:]
        self._emit(kind, decoder.decode(pending, final=True))
        self.eof.add(kind)
        self.changed.set()

    def attach(self, sink: Callable[[Stream, str], None]) -> None:
        """Send output to `sink` from now on, starting with any backlog."""
        self.sink = sink
        backlog, self.backlog, self.backlog_size = self.backlog, [], 0
        for kind, text in backlog:
            sink(kind, text)

    def detach(self) -> None:
        self.sink = None

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.changed.clear()
            await self.changed.wait()

    def _ended(self, stream: Stream, token: str) -> bool:
        return self.ended.get(stream) == token or stream in self.eof

    async def exchange(self, token: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """Send the request; its response once all its output is in; None if the child died.
        Unresponsive (the child killed) if it does not say it took the request up in time."""
        assert self.proc.stdin is not None  # `start` makes the process with stdin=PIPE
        try:
            await channel.send(self.proc.stdin, {"token": token, "request": request})
            try:
                await asyncio.wait_for(channel.receive(self.responses), TAKE_UP_S)
            except asyncio.TimeoutError:
                self.kill()
                raise Unresponsive from None
            response = await channel.receive(self.responses)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        ended = self._until(lambda: all(self._ended(s, token) for s in STREAMS))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ended, MARKER_GRACE_S)
        return response

    def kill(self) -> None:
        """SIGKILL the child's process group (the child and whatever it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def drain(self) -> None:
        """Collect what the pipes still hold after the child ended, briefly."""
        closed = self._until(lambda: len(self.eof) == len(STREAMS))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(closed, DRAIN_GRACE_S)

    async def exit_reason(self) -> str:
        """Why the child stopped answering; kills it if it did so without exiting."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), DRAIN_GRACE_S)
        except asyncio.TimeoutError:
            self.kill()
            return "the executor process stopped answering and was killed"
        self.kill()  # anything it started goes with it
        return describe_exit(code) + _user_frames(self.crash_log)

    def close(self) -> None:
        """Kill and let go of everything this child holds."""
        self.kill()
        for reader in self.readers:
            reader.cancel()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.crash_log.close()


def _child_env(kernel: str | None) -> dict[str, str]:
    """The worker's environment (its image's and its endpoint's template's), less RunPod's
    own variables: the job-queue credentials and the account's API key are the worker's,
    and a cell gets secrets only through its own --env. Plus unbuffered Python, the worker
    package importable, the kernel's package layer in TETRA_PACKAGES (the child puts it first
    on its sys.path; a cell's `%pip install` installs there), and the kernel's mark,
    by which the local endpoint frees a closed kernel's processes. PYTHONPATH entries are
    made absolute: relative ones would mean the kernel's directory."""
    root = str(Path(__file__).resolve().parent.parent)
    packages = deps.layer(kernel)
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    path = os.pathsep.join([root, *(os.path.abspath(p) for p in inherited if p)])
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_") or k in _RUNPOD_INFO_ENV
    }
    env.pop(PACKAGES_VARIABLE, None)
    if packages is not None:
        env[PACKAGES_VARIABLE] = str(packages)
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, KERNEL_MARK: kernel or ""}


def _failure(error: str, error_type: str, failure: Failure) -> dict[str, Any]:
    """A failure the child could not report (crash, timeout), shaped like `worker.calls` ones."""
    return FunctionResponse(
        success=False, error=error, error_type=error_type, failure=failure
    ).model_dump()


class Executor:
    """Persistent child processes by kernel: the child of the latest request's kernel, and
    those of other kernels that hold a session; requests run one at a time."""

    def __init__(self) -> None:
        self._children: dict[str | None, _Child] = {}
        self._lock = asyncio.Lock()
        atexit.register(self._kill)

    def _kill(self) -> None:
        """At interpreter exit: no event loop left, so only the processes are dealt with."""
        for child in self._children.values():
            child.kill()

    def close(self, kernel: str | None = None) -> None:
        """Kill the kernel's child, or with no kernel every child (the next request starts a
        new one). Called when packages were replaced (in the kernel's layer, or in the
        worker's environment): a process that imported the old ones cannot load the new, so
        the sessions the children held are lost, and each one's next cell says so."""
        for held in [kernel] if kernel is not None else list(self._children):
            self._close(held)

    def _close(self, kernel: str | None) -> None:
        child = self._children.pop(kernel, None)
        if child is not None:
            child.close()

    async def _ready(self, emit: Emit, kernel: str | None, session: str | None) -> _Child:
        """The kernel's child: its running one, else a new one. Other kernels' children go,
        unless they hold a session (or have died, which loses it)."""
        for other, kept in list(self._children.items()):
            if not kept.alive or (other != kernel and not kept.holds_session):
                self._close(other)
        holding = [other for other in self._children if other != kernel]
        for other in holding[: max(0, len(holding) - KEPT_SESSION_PROCESSES + 1)]:
            self._close(other)  # the least recently used: its sessions are reported lost
        child = self._children.pop(kernel, None)
        if child is None:
            emit(chunk("phase", "starting"))
            child = await _Child.start(workdir(kernel), kernel)
        self._children[kernel] = child  # the most recently used last
        child.holds_session |= session is not None
        emit(chunk("phase", "running"))
        return child

    async def run(
        self, request: dict[str, Any], emit: Emit, timeout: float | None = None
    ) -> dict[str, Any]:
        """Run one request; its FunctionResponse dict. Cancelling this kills the running code
        (its kernel's child, and with it the sessions that child held). A kept child that does
        not take the request up (stopped, hung) is replaced by a fresh one, once."""
        async with self._lock:
            try:
                return await self._run(request, emit, timeout)
            except Unresponsive:
                emit(chunk("log", f"{UNRESPONSIVE}: it was replaced by a fresh one\n"))
            try:
                return await self._run(request, emit, timeout)
            except Unresponsive:
                return _failure(f"{UNRESPONSIVE}, twice", "ExecutorStartError", "start")

    async def _run(
        self, request: dict[str, Any], emit: Emit, timeout: float | None
    ) -> dict[str, Any]:
        """One attempt at the request, in the kernel's child (Unresponsive: none started)."""
        kernel = request.get("kernel_id")
        try:
            child = await self._ready(emit, kernel, request.get("session"))
        except StartError as exc:
            return _failure(str(exc), "ExecutorStartError", "start")
        output = _Output(emit)
        child.attach(output)
        try:
            response = await asyncio.wait_for(child.exchange(uuid.uuid4().hex, request), timeout)
            if response is None:
                reason = await child.exit_reason()
                await child.drain()
                response = _failure(reason, "ExecutorCrash", "crash")
                self._close(kernel)
        except asyncio.TimeoutError:
            child.kill()
            await child.drain()
            self._close(kernel)
            message = f"the code ran past its {timeout:g} s timeout and was killed"
            response = _failure(message, "TimeoutError", "timeout")
        except BaseException:
            self._close(kernel)
            raise
        finally:
            child.detach()
            output.close()
        return response
