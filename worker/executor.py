"""The worker's side of the executor child: start it, feed it a request, follow its output.

`Executor.run` is an async generator of stream chunks whose last item is the FunctionResponse
dict. Everything that can end a request from outside the code (timeout, crash, cancellation)
kills the child's whole process group, so a runaway subprocess goes too; the next request starts
a fresh child.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import multiprocessing
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

from worker.child import end_marker
from worker.protocol import FunctionResponse, chunk

READ_SIZE = 65536


class Executor:
    """One persistent child process; requests run in it one at a time."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _start(self) -> None:
        ours, theirs = multiprocessing.Pipe()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker.child",
            str(theirs.fileno()),
            pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
        theirs.close()
        self._conn = ours

    def kill(self) -> None:
        """Kill the child and everything it started; the next request gets a new child."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    async def run(
        self, request: dict[str, Any], timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield output chunks as the request runs, then its FunctionResponse dict."""
        async with self._lock:
            if not self.alive:
                await self._start()
            token = uuid.uuid4().hex
            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            readers = [
                asyncio.create_task(_pump(self._proc.stdout, "stdout", token, events)),
                asyncio.create_task(_pump(self._proc.stderr, "stderr", token, events)),
            ]
            waiter = asyncio.create_task(self._exchange(token, request, events))
            try:
                async for item in self._follow(events, timeout):
                    yield item
            finally:
                for task in (*readers, waiter):
                    task.cancel()
                if waiter.done() is False or not self.alive:
                    self.kill()

    async def _exchange(
        self, token: str, request: dict[str, Any], events: asyncio.Queue
    ) -> None:
        conn = self._conn
        try:
            conn.send((token, request))
            response = await asyncio.to_thread(conn.recv)
        except (EOFError, OSError):
            response = None
        await events.put(("response", response))

    async def _follow(
        self, events: asyncio.Queue, timeout: float | None
    ) -> AsyncIterator[dict[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        open_streams = {"stdout", "stderr"}
        response: dict[str, Any] | None = None
        got_response = False
        while open_streams or not got_response:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                kind, payload = await asyncio.wait_for(events.get(), wait)
            except asyncio.TimeoutError:
                self.kill()
                yield _failure("timeout", f"TimeoutError: the code ran past its {timeout:g} s limit;"
                               " its process was killed")
                return
            if kind == "response":
                got_response, response = True, payload
                if response is None:
                    break
            elif kind == "eof":
                open_streams.discard(payload)
            else:
                yield chunk(kind, payload)
        if response is None:
            yield _failure("crash", await self._crash_reason())
            return
        yield response

    async def _crash_reason(self) -> str:
        proc = self._proc
        try:
            code = await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            self.kill()
            return "the executor process stopped answering and was killed"
        if code < 0:
            name = signal.Signals(-code).name
            return f"the executor process was killed by signal {name} while running the code"
        return f"the executor process exited with status {code} while running the code"


def _failure(kind: str, message: str) -> dict[str, Any]:
    return FunctionResponse(success=False, error=message, failure=kind).model_dump()


async def _pump(stream: asyncio.StreamReader, kind: str, token: str, events: asyncio.Queue) -> None:
    """Forward a pipe's text to `events` until this request's end marker (or EOF)."""
    marker = end_marker(token)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = b""
    while True:
        data = await stream.read(READ_SIZE)
        pending += data
        cut = pending.find(marker)
        if cut >= 0:
            # The marker's leading newline is ours; what follows it is the next request's.
            text = decoder.decode(pending[:cut], final=True)
            if text:
                await events.put((kind, text))
            break
        if not data:
            text = decoder.decode(pending, final=True)
            if text:
                await events.put((kind, text))
            break
        keep = len(marker) - 1
        send, pending = pending[:-keep], pending[-keep:]
        text = decoder.decode(send)
        if text:
            await events.put((kind, text))
    await events.put(("eof", kind))
