"""Length-prefixed JSON messages between the worker and its executor child.

The worker sends requests on the child's stdin and reads responses from a pipe of their own, so
neither channel shares bytes with the user's output. Each message is an 8-byte big-endian length
followed by that many bytes of UTF-8 JSON. The child side blocks (it has nothing else to do); the
worker side is asyncio, so waiting for a response never ties up a thread and a dead child shows
up as an end of stream rather than a hung read.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from typing import Any, BinaryIO

HEADER = struct.Struct(">Q")


def pack(message: dict[str, Any]) -> bytes:
    """One framed message."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def write(fd: int, message: dict[str, Any]) -> None:
    """Child side: write one message to a blocking file descriptor."""
    view = memoryview(pack(message))
    while view:
        view = view[os.write(fd, view) :]


def read(stream: BinaryIO) -> dict[str, Any] | None:
    """Child side: the next message, or None once the worker has closed the channel."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return json.loads(body)


async def send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """Worker side: send one message, waiting while the pipe is full."""
    writer.write(pack(message))
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Worker side: the next message; `asyncio.IncompleteReadError` if the child is gone."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return json.loads(await reader.readexactly(size))
