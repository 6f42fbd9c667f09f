"""The local endpoint's HTTP API answers every request, of any shape, with a status below 500,
and every error as RunPod's JSON `{"error": ...}`; its log holds no traceback.

The server is the real one (`server.app_runner` over an `api.Api`, as `serve` runs it) on loopback,
without workers: this test plays the worker itself where it needs one. Requests go over raw
sockets, so that bytes no HTTP client would send (invalid UTF-8 in headers, bogus methods) get
sent too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

import pytest

from tetra_magic.cloud.limits import STREAM_CHUNK_LIMIT
from tetra_magic.local import api, server
from tetra_magic.local.job_store import JobStore

TOKEN = "fuzz-token"
WORKER = "w-fuzz"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long polls and runsync's wait held to a blink: the fuzz sends hundreds of them."""
    monkeypatch.setattr(api, "TAKE_WAIT_S", 0.02)
    monkeypatch.setattr(api, "STOP_WAIT_S", 0.02)
    monkeypatch.setattr(api, "STREAM_HOLD_S", 0.02)
    monkeypatch.setattr(api, "RUNSYNC_WAIT_MS", (10, 20, 30))


async def started() -> tuple[Any, int]:
    runner = server.app_runner(api.Api(JobStore(), None, TOKEN, "local"))
    await runner.setup()
    site = server.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def send(port: int, head: bytes, body: bytes = b"") -> Answer:
    """One request over its own connection, as raw bytes; the answer, parsed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    top, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    if headers.get("transfer-encoding") == "chunked":
        rest = _unchunked(rest)
    return Answer(int(status_line.split()[1]), headers, rest)


def _unchunked(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def request(
    method: str | bytes,
    path: str | bytes,
    body: bytes = b"",
    headers: dict[str, str | bytes] | None = None,
) -> tuple[bytes, bytes]:
    def raw(value: str | bytes) -> bytes:
        return value if isinstance(value, bytes) else value.encode()

    lines = [raw(method) + b" " + raw(path) + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [raw(k) + b": " + raw(v) for k, v in (headers or {}).items()]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n", body


# --------------------------------------------------------------------------- the fuzz

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "GET", "POST", "FROB")
ENDPOINTS = ("local", "local", "other", "", "..", "%ff", "l%00")
ROUTES = (
    "run", "runsync", "status/{job}", "stream/{job}", "cancel/{job}", "health", "purge-queue",
    "job-take/{worker}", "job-take-batch/{worker}", "job-stop/{worker}", "ping/{worker}",
    "job-stream/{worker}/{job}", "job-done/{worker}/{job}", "status/", "stream", "nope",
    "run/extra", "", "status/{job}/more", "job-done/{worker}",
)  # fmt: skip
JOB_IDS = ("no-such-job", "%ff%fe", "%00", "a" * 2000, "..", "%2e%2e", "sync-1", "%F0%9F%98%80")
WORKERS = (WORKER, "w-other", "%ff", "", "%7Bw%7D")
QUERIES = (
    "", "?wait=5", "?wait=abc", "?wait=1e9", "?wait=-1", "?wait=99999999999999999999",
    "?batch_size=x", "?batch_size=-5", "?batch_size=1e3", "?batch_size=99999999999",
    "?job_in_progress=1", "?job_in_progress=%ff", "?&&=&", "?wait=%00", "?a=" + "b" * 5000,
)  # fmt: skip
AUTHS: tuple[str | bytes | None, ...] = (
    None, f"Bearer {TOKEN}", TOKEN, f"bearer   {TOKEN}  ", "Bearer", "Bearer wrong", "Basic abc",
    b"Bearer \xff\xfe", b"\xc3\x28", "", "Bearer " + "x" * 7000,
)  # fmt: skip
CONTENT_TYPES = (
    None, "application/json", "application/x-www-form-urlencoded", "text/plain",
    "multipart/form-data; boundary=x", "application/json; charset=latin-1",
)  # fmt: skip


def bodies(rng: random.Random) -> bytes:
    run = {"input": {"x": 1}}
    choices: list[bytes] = [
        b"",
        json.dumps(run).encode(),
        json.dumps({**run, "policy": {"executionTimeout": 1e400}})
        .encode()
        .replace(b"Infinity", b"1e400"),
        json.dumps({**run, "policy": {"executionTimeout": "soon", "ttl": [1]}}).encode(),
        json.dumps({**run, "policy": [1]}).encode(),
        json.dumps({**run, "policy": {"ttl": float("nan")}}).encode(),
        b'{"input": null}',
        b"[]",
        b"null",
        b'"text"',
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b"[" * 900 + b"]" * 900,
        b'{"input":' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"output": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"error": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"output": "chunk"}',
        b'{"error": {"deep": [1, 2]}, "output": 3}',
        b'{"status": "IN_PROGRESS", "output": "half"}',
        b'{"output": "\\ud800"}',
        b"\xff\xfe\x00garbage",
        b'{"input": "\xff"}',
        b"x=1&y=2",
        bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))),
    ]
    return rng.choice(choices)


# Each route with the method it takes, for requests that are right but for one or two parts.
METHOD_OF = {
    "run": "POST", "runsync": "POST", "status/{job}": "GET", "stream/{job}": "POST",
    "cancel/{job}": "POST", "health": "GET", "purge-queue": "POST", "job-take/{worker}": "GET",
    "job-take-batch/{worker}": "GET", "job-stop/{worker}": "GET", "ping/{worker}": "GET",
    "job-stream/{worker}/{job}": "POST", "job-done/{worker}/{job}": "POST",
}  # fmt: skip


def random_request(rng: random.Random, job_id: str) -> tuple[bytes, bytes]:
    """A request with each part either right (half the time) or drawn from the odd ones."""

    def right_or(value: Any, choices: tuple[Any, ...]) -> Any:
        return value if rng.random() < 0.5 else rng.choice(choices)

    route = right_or(rng.choice(list(METHOD_OF)), ROUTES)
    method = right_or(METHOD_OF.get(route, "GET"), METHODS)
    path = right_or("/v2/local/", ("/v2/" + rng.choice(ENDPOINTS) + "/", "/", "/v3/local/", "//"))
    path += route.format(job=right_or(job_id, JOB_IDS), worker=right_or(WORKER, WORKERS))
    path += rng.choice(QUERIES)
    headers: dict[str, str | bytes] = {}
    if (auth := right_or(f"Bearer {TOKEN}", AUTHS)) is not None:
        headers["Authorization"] = auth
    if (kind := rng.choice(CONTENT_TYPES)) is not None:
        headers["Content-Type"] = kind
    if rng.random() < 0.1:
        headers["X-Big"] = "y" * rng.choice((100, 7000))
    if rng.random() < 0.02:
        headers["Transfer-Encoding"] = "gzip"  # with Content-Length: malformed HTTP
    if rng.random() < 0.1:
        headers["Content-Encoding"] = rng.choice(("gzip", "deflate", "zstd", "br", "frob"))
    right_body = b'{"input": {"x": 1}}' if "run" in route else b'{"output": "chunk"}'
    return request(method, path, right_or(right_body, (bodies(rng),)), headers)


async def fuzz(seed: int, count: int) -> list[tuple[bytes, Answer]]:
    runner, port = await started()
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        submitted = await send(port, *request("POST", "/v2/local/run", b'{"input": 1}', auth))
        job_id = json.loads(submitted.body)["id"]
        taken = await send(port, *request("GET", f"/v2/local/job-take/{WORKER}", b"", auth))
        assert taken.status == 200, taken  # this test's worker now runs the job
        rng = random.Random(seed)
        sent = [random_request(rng, job_id) for _ in range(count)]
        answers = [await send(port, head, body) for head, body in sent]
        return [
            (head + body[:200], answer) for (head, body), answer in zip(sent, answers, strict=True)
        ]
    finally:
        await runner.cleanup()


def trouble(answer: Answer, head: bool) -> str | None:
    """What is wrong with an answer (to a HEAD request: which has no body), or None."""
    if answer.status >= 500:
        return f"status {answer.status}"
    if answer.status < 400:
        return None
    if answer.headers.get("content-type", "").startswith("text/plain") and answer.status == 400:
        return None  # aiohttp's own answer to malformed HTTP, before any route is chosen
    if head:
        json_type = answer.headers.get("content-type", "").startswith("application/json")
        return None if json_type else f"{answer.status} to HEAD, not JSON: {answer.headers}"
    try:
        error = json.loads(answer.body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{answer.status} without a JSON error: {answer.body[:200]!r}"
    return None if isinstance(error, str) and error else f"empty error: {answer.body[:200]!r}"


@pytest.mark.parametrize("seed", range(3))
def test_random_requests_never_get_a_5xx_or_a_non_json_error(
    seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    results = asyncio.run(fuzz(seed, 100))
    bad = [
        (sent, problem)
        for sent, answer in results
        if (problem := trouble(answer, sent.startswith(b"HEAD ")))
    ]
    assert not bad, "\n".join(f"{problem}: {sent[:400]!r}" for sent, problem in bad[:10])
    statuses = {answer.status for _, answer in results}
    assert {200, 400, 401, 404, 405} <= statuses
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


# --------------------------------------------------------------------------- named cases


def exchange(*requests_: tuple[bytes, bytes]) -> list[Answer]:
    async def go() -> list[Answer]:
        runner, port = await started()
        try:
            return [await send(port, head, body) for head, body in requests_]
        finally:
            await runner.cleanup()

    return asyncio.run(go())


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_unknown_routes_are_404_and_wrong_methods_405_with_allow() -> None:
    unknown, wrong = exchange(
        request("GET", "/v2/local/frobnicate", headers=AUTH),
        request("DELETE", "/v2/local/run", headers=AUTH),
    )
    assert unknown.status == 404 and "Not Found" in json.loads(unknown.body)["error"]
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"
    assert json.loads(wrong.body)["error"] == "Method Not Allowed: DELETE /v2/local/run"


@pytest.mark.parametrize("depth", [600, 100_000])
def test_json_nested_too_deeply_is_400(depth: int) -> None:
    """Nesting the parser follows but an answer could not carry back, and nesting past it."""
    body = b'{"input": ' + b"[" * depth + b"]" * depth + b"}"
    (answer,) = exchange(request("POST", "/v2/local/run", body, AUTH))
    assert answer.status == 400
    assert "nested deeper than 512 levels" in json.loads(answer.body)["error"]


def test_a_stream_chunk_over_runpods_1_mb_is_413_and_a_large_result_is_taken() -> None:
    chunk = json.dumps({"output": "x" * STREAM_CHUNK_LIMIT}).encode()
    _, taken, streamed, small, done, status = _stream_story(chunk)
    assert taken.status == 200
    assert streamed.status == 413
    assert "/job-stream accepts at most 1 MB" in json.loads(streamed.body)["error"]
    assert small.status == 200 and done.status == 200
    assert json.loads(status.body)["status"] == "COMPLETED"


def _stream_story(chunk: bytes) -> list[Answer]:
    """Submit, take as the worker, stream an oversized chunk and a small one, end the job with
    a large aggregated output, read its status."""

    async def go() -> list[Answer]:
        runner, port = await started()
        try:
            submitted = await send(port, *request("POST", "/v2/local/run", b'{"input": 1}', AUTH))
            job = json.loads(submitted.body)["id"]
            taken = await send(port, *request("GET", f"/v2/local/job-take/{WORKER}", b"", AUTH))
            worker = f"/v2/local/job-stream/{WORKER}/{job}"
            streamed = await send(port, *request("POST", worker, chunk, AUTH))
            small = await send(port, *request("POST", worker, b'{"output": "ok"}', AUTH))
            output = json.dumps({"output": ["x" * STREAM_CHUNK_LIMIT] * 3}).encode()
            done_path = f"/v2/local/job-done/{WORKER}/{job}"
            done = await send(port, *request("POST", done_path, output, AUTH))
            status = await send(port, *request("GET", f"/v2/local/status/{job}", b"", AUTH))
            return [submitted, taken, streamed, small, done, status]
        finally:
            await runner.cleanup()

    return asyncio.run(go())
