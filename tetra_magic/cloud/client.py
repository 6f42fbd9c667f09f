"""A client for RunPod's serverless REST API: the one transport to RunPod and the local endpoint.

Written on httpx rather than the runpod SDK because the SDK's job helpers loop forever on a
CANCELLED job and drop a FAILED job's error (DESIGN.md), and importing runpod costs ~2 s.
The client retries what is safe to retry: a lost connection (a few times, then it gives up
naming the job) and 429 (backing off, honouring Retry-After).
"""

from __future__ import annotations

import functools
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from tetra_magic.cloud import http_log
from tetra_magic.cloud.credentials import KEY_ENV
from tetra_magic.cloud.limits import MAX_EXECUTION_MS, MIN_EXECUTION_MS, RUN_PAYLOAD_LIMIT
from tetra_magic.errors import TetraError

MAX_RETRY_AFTER = 60.0
# Attempts past the first at a connection that cannot be made, before any job exists.
CONNECT_RETRIES = 2


def retry_after(value: str | None) -> float | None:
    """Seconds a 429's Retry-After asks for (delta-seconds or an HTTP date), at most a minute;
    None when it says nothing usable, and the client's own backoff applies."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client: loading the CA bundle costs ~50 ms, every cell."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class EndpointError(TetraError):
    """The endpoint refused a request or could not be reached; the message says which."""


class JobUnknown(EndpointError):
    """The endpoint does not know the job (404 naming it): its results were kept their time
    and dropped, or it never ran there."""


class EndpointNotFound(EndpointError):
    """The endpoint itself does not exist (404 on a request that names no job)."""


@dataclass(frozen=True)
class Endpoint:
    """Where jobs go: the REST base (".../v2"), the endpoint id, and the key for it."""

    base_url: str
    endpoint_id: str
    api_key: str
    payload_limit: int = RUN_PAYLOAD_LIMIT
    key_source: str = ""
    # What it runs, for messages and cost estimates: the worker image, the GPU names the user
    # asked for ("A100"), RunPod's pools for them ("AMPERE_80"), and whether RunPod bills it.
    image: str = ""
    gpus: tuple[str, ...] = ()
    gpu_ids: tuple[str, ...] = ()
    billed: bool = False

    def __repr__(self) -> str:  # never show the key
        return f"Endpoint({self.base_url}/{self.endpoint_id})"


def _new_http(url: str, api_key: str, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """With no key, no Authorization header at all: a self-hosted endpoint may need none, and
    an empty bearer is no header value httpx will send."""
    return httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
        timeout=httpx.Timeout(30.0, connect=10.0),
        transport=transport,
        verify=_tls(),
    )


@functools.cache
def _kept_http(url: str, api_key: str) -> httpx.Client:
    """One HTTP client per endpoint for the life of the kernel, so a cell reuses the connection
    the one before it opened rather than paying a TCP handshake (on RunPod, TLS too) again."""
    return _new_http(url, api_key)


class EndpointClient:
    """Submit, follow and cancel jobs on one endpoint."""

    def __init__(
        self,
        endpoint: Endpoint,
        retries: int = 5,
        max_backoff: float = 8.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.retries = retries
        self.max_backoff = max_backoff
        url = self._url = f"{endpoint.base_url.rstrip('/')}/{endpoint.endpoint_id}"
        self._own = transport is not None
        self._http = (
            _new_http(url, endpoint.api_key, transport)
            if self._own
            else _kept_http(url, endpoint.api_key)
        )

    def close(self) -> None:
        """Close the connection, unless it is the one kept for the endpoint."""
        if self._own:
            with http_log.ours():
                self._http.close()

    def run(self, job_input: dict[str, Any], execution_timeout: float | None = None) -> str:
        """Queue a job; return its id."""
        body: dict[str, Any] = {"input": job_input}
        if execution_timeout is not None:
            limit_ms = min(max(int(execution_timeout * 1000), MIN_EXECUTION_MS), MAX_EXECUTION_MS)
            body["policy"] = {"executionTimeout": limit_ms}
        return self._call("POST", "/run", json=body)["id"]

    def stream(self, job_id: str) -> dict[str, Any]:
        """Chunks not delivered before, and the job's status."""
        return self._call("GET", f"/stream/{job_id}", job_id=job_id)

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/status/{job_id}", job_id=job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/cancel/{job_id}", job_id=job_id)

    def health(self) -> dict[str, Any]:
        """The endpoint's job and worker counts (RunPod's `/health`)."""
        return self._call("GET", "/health")

    def _call(self, method: str, path: str, job_id: str | None = None, **kwargs: Any) -> Any:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                with http_log.ours():
                    response = self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                # Never reached (refused, no such host) before any job exists: not worth 15 s
                # of retries. Following a job, it is a connection lost, retried as any other.
                if job_id is None and attempt >= CONNECT_RETRIES:
                    raise EndpointError(self._unreachable(exc)) from None
                if attempt == self.retries:
                    raise EndpointError(self._lost(exc, job_id)) from None
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise EndpointError(self._lost(exc, job_id)) from None
            else:
                if response.status_code != 429:
                    return self._parse(response, job_id)
                if attempt == self.retries:
                    break
                asked = retry_after(response.headers.get("Retry-After"))
                if asked is not None:
                    time.sleep(asked)  # RunPod's own word on when to come back
                    continue
            time.sleep(min(delay, self.max_backoff))
            delay *= 2
        raise EndpointError(f"{self.endpoint!r} kept answering 429 (rate limited); try again later")

    def _unreachable(self, exc: Exception) -> str:
        return f"could not connect to {self._url} ({exc}): check its address, and that it is up"

    def _lost(self, exc: Exception, job_id: str | None) -> str:
        job = f"; job {job_id} may still be running there" if job_id else ""
        return f"lost the connection to {self._url} ({type(exc).__name__}: {exc}){job}"

    def _refused(self, status: int) -> str:
        """401/403 in words: which key was sent, from where (never the key itself)."""
        if not self.endpoint.api_key:
            return (
                f"the endpoint refused the request ({status}): no API key was sent;"
                f" set {KEY_ENV} or run `runpod config`"
            )
        source = self.endpoint.key_source or "the configured key"
        return f"the endpoint rejected the API key ({status}); key read from {source}"

    def _parse(self, response: httpx.Response, job_id: str | None) -> Any:
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("error") or response.text
        except ValueError:
            detail = response.text
        if response.status_code in (401, 403):
            raise EndpointError(self._refused(response.status_code))
        if response.status_code == 404 and job_id:
            raise JobUnknown(f"job {job_id} is unknown to the endpoint (expired or never ran)")
        if response.status_code == 404:
            raise EndpointNotFound(
                f"{self.endpoint!r} does not exist (404): {detail}. Check the endpoint id in"
                " RunPod's console (`%tetra endpoints` lists those the magic made)"
            )
        raise EndpointError(f"{response.status_code} from the endpoint: {detail}")
