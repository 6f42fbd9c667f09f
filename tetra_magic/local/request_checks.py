"""What the local endpoint checks of a request before a handler acts on it, and how a refusal
reads: who sent it (a token, compared in constant time; the SDK's configured key), and its body
(held to the route's size limit, valid JSON, not nested past what our answers can carry back).
Every refusal, and the router's own, leaves as RunPod's {"error": "..."} body.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tetra_magic.cloud import credentials

# Nesting a body may have: an answer puts a kept value up to 3 levels deeper, and Python's json
# writes nothing past ~1000 (RecursionError), so a deeper one would fail every later answer.
MAX_JSON_DEPTH = 512
DRAIN_LIMIT = 64_000_000  # read (and drop) oversized bodies up to this, so clients see the 413


class ApiError(Exception):
    """An error answer: HTTP status and the message for RunPod's {"error": ...} body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error leaves as RunPod's {"error": "..."} body, router errors included."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason}: {request.method} {request.path}"
        # Only Allow (a 405's methods) carries over: the exception's own Content-Type would
        # clash with the JSON body's.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": message}, status=exc.status, headers=allow)


def bearer_token(request: web.Request) -> str:
    """The token in the Authorization header: after "Bearer ", or the whole value (workers
    send it bare)."""
    value = request.headers.get("Authorization", "").strip()
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else value


def same_secret(a: str, b: str) -> bool:
    """Constant-time equality; a header's undecodable bytes (kept as surrogates) compare too."""
    return bool(a) and hmac.compare_digest(_bytes(a), _bytes(b))


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class SdkCredential:
    """The key the runpod SDK in our workers will send: the one in ~/.runpod/config.toml,
    read again only when the file changes."""

    def __init__(self) -> None:
        self.path = credentials.config_file()
        self._mtime: float | None = None
        self._value: str | None = None

    def value(self) -> str | None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return None
        if mtime != self._mtime:
            self._mtime, self._value = mtime, self._read()
        return self._value

    def _read(self) -> str | None:
        try:
            return credentials.config_key(self.path)
        except (OSError, UnicodeDecodeError, ValueError, ImportError):
            return None


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The body, or a 413 naming its size and the route's limit."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    route = path.split("/")[3] if path.count("/") >= 3 else path  # /v2/{endpoint_id}/ROUTE/...

    def too_large(size: int) -> ApiError:
        return ApiError(
            413,
            f"request body is {size / 1e6:.1f} MB; /{route} accepts at most {limit / 1e6:g} MB",
        )

    drain = max(limit, DRAIN_LIMIT)
    if request.content_length is not None and request.content_length > drain:
        raise too_large(request.content_length)
    data = bytearray()
    size = 0
    try:
        async for block in request.content.iter_chunked(1 << 16):
            size += len(block)
            if size <= limit:
                data += block
            elif size > drain:
                raise too_large(size)
    except web.RequestPayloadError as exc:  # a Content-Encoding its bytes do not follow
        raise ApiError(400, f"the request body could not be read: {exc}") from None
    if size > limit:
        raise too_large(size)
    return bytes(data)


async def json_body(request: web.Request, limit: int) -> Any:
    """A worker post: JSON text, though the SDK labels it form-urlencoded."""
    return parse_json(await read_limited(request, limit), "the worker's body")


def parse_json(body: bytes, what: str) -> Any:
    """`body` parsed, or a 400: invalid UTF-8 or JSON, or nested deeper than MAX_JSON_DEPTH
    (past ~1000 levels json raises RecursionError, not ValueError; short of that, a value we
    keep must still fit inside the answers that carry it back)."""
    too_deep = ApiError(400, f"{what} is JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise too_deep from None
    if _deeper(value, MAX_JSON_DEPTH):
        raise too_deep
    return value


def _deeper(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` deep (walked without
    recursion, which is what runs out)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (list, dict)):
            continue
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return False
