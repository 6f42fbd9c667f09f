"""RunPod's REST API v2: the few management operations provisioning needs, over httpx.

RunPod retires its GraphQL API in early 2027 and manages endpoints over REST v2 since
2026-08-18 (RunPod release notes); the runpod SDK 1.12 wraps only GraphQL, so this client follows
RunPod's OpenAPI document itself (https://api.runpod.io/v2/openapi.json, pages under
docs.runpod.io/api-reference-v2/; which shapes are confirmed and which assumed:
../shared/runpod-rest-v2.md). The key travels in the `Authorization: Bearer` header only
(`securitySchemes.bearerAuth`), never in a URL.

Failures leave as `CloudError`, one sentence each, with RunPod's own `detail` (errors are RFC
9457 problem objects, `ErrorResponse`). A 429 is retried a few times, as long as RunPod asks
to wait (its `RateLimit` header, or `Retry-After`), before the error says so.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import httpx

from tetra_magic.cloud import http_log
from tetra_magic.cloud.client import retry_after
from tetra_magic.errors import TetraError

REST_V2 = "https://api.runpod.io/v2"
REST_V2_ENV = "RUNPOD_REST_BASE_URL"
# The job API (`/run`, `/status` ...) stays on its own host; the runpod SDK's variable moves it.
JOBS = "https://api.runpod.ai/v2"
JOBS_ENV = "RUNPOD_ENDPOINT_BASE_URL"
RETRIES_429 = 4
MAX_WAIT_429 = 30.0
# RunPod's refusal when max workers would pass the account's quota, as runpod-flash users see it
# (docs, "Worker quota exceeded"); over REST v2 its status and shape are assumed.
_QUOTA = re.compile(r"workers quota \((\d+)\)")
_WAIT = re.compile(r"(?:\bt|reset)=(\d+(?:\.\d+)?)")


class CloudError(TetraError):
    """RunPod's API refused or could not be reached; the message says which and why.
    `status` is RunPod's HTTP status (None when there was no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class QuotaFull(CloudError):
    """An endpoint's max workers would pass the account's worker quota (`limit`, when known)."""

    def __init__(self, message: str, limit: int | None = None, status: int | None = None) -> None:
        super().__init__(message, status)
        self.limit = limit


def rest_v2_base() -> str:
    """RunPod's REST API v2 base; RUNPOD_REST_BASE_URL moves it (proxies, tests)."""
    return os.environ.get(REST_V2_ENV, REST_V2).rstrip("/")


def rest_base() -> str:
    """RunPod's serverless job API base; the runpod SDK's variable moves it (tests, proxies)."""
    return os.environ.get(JOBS_ENV, JOBS).rstrip("/")


class RunPodRest:
    """One account's serverless endpoints and limits, through RunPod's REST API v2. A context
    manager: the connection closes at the end."""

    def __init__(self, key: str, source: str, transport: httpx.BaseTransport | None = None) -> None:
        self.source = source
        self._key = key
        self._http = httpx.Client(
            base_url=rest_v2_base(),
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(30.0, connect=10.0),
            transport=transport,
        )

    def __enter__(self) -> RunPodRest:
        return self

    def __exit__(self, *exc: object) -> None:
        with http_log.ours():
            self._http.close()

    def endpoints(self) -> list[dict[str, Any]]:
        """Every serverless endpoint of the account (listEndpoints, `{"endpoints": [...]}`)."""
        listing = self._call("list endpoints", "GET", "/serverless").get("endpoints")
        if not isinstance(listing, list):
            raise CloudError(f"could not list endpoints on RunPod: {self._odd()}")
        return [e for e in listing if isinstance(e, dict)]

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """One endpoint as RunPod has it now (getEndpoint); CloudError with status 404 if gone."""
        return self._call(f"read endpoint {endpoint_id}", "GET", f"/serverless/{endpoint_id}")

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an endpoint (createEndpoint, 201); the Endpoint RunPod made."""
        return self._call(f"create endpoint {body['name']}", "POST", "/serverless", json=body)

    def update_endpoint(self, endpoint_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Change the fields in `body` (updateEndpoint, PATCH: only fields present change)."""
        what = f"update endpoint {endpoint_id}"
        return self._call(what, "PATCH", f"/serverless/{endpoint_id}", json=body)

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Delete an endpoint (deleteEndpoint, 204): its workers and queued jobs go with it; no
        scale-down first, unlike GraphQL."""
        self._call(f"delete endpoint {endpoint_id}", "DELETE", f"/serverless/{endpoint_id}")

    def worker_limit(self) -> int | None:
        """The account's worker quota, `serverlessWorkers` of "Get account limits" (docs page
        api-reference-v2/account/get-account-limits). Its path, GET /v2/account/limits, and the
        object's fields are assumed, so it is read defensively: None when it cannot be read
        (then RunPod's own refusal is the check)."""
        try:
            limits = self._call("read the account's limits", "GET", "/account/limits")
        except CloudError:
            return None
        workers = limits.get("serverlessWorkers")
        if isinstance(workers, dict):
            workers = next((workers[k] for k in ("limit", "max", "quota") if k in workers), None)
        return workers if isinstance(workers, int) and not isinstance(workers, bool) else None

    def _call(self, what: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """RunPod's JSON answer ({} for none); CloudError, naming `what`, for a failure."""
        waited = 0.0
        for attempt in range(RETRIES_429 + 1):
            try:
                with http_log.ours():
                    response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                reason = f"{rest_v2_base()} could not be reached ({type(exc).__name__})"
                raise CloudError(f"could not {what} on RunPod: {reason}") from None
            if response.status_code != 429 or attempt == RETRIES_429:
                break
            pause = _wait_429(response, attempt)
            time.sleep(pause)
            waited += pause
        if response.status_code == 429:
            raise CloudError(
                f"could not {what} on RunPod: RunPod kept answering 429 (too many requests) for"
                f" {waited:.0f} s over {RETRIES_429 + 1} tries; wait a minute and run it again",
                429,
            )
        if response.is_success:
            return self._json(response, what)
        raise self._failure(response, what)

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if not response.content:
            return {}
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise CloudError(f"could not {what} on RunPod: {self._odd()}", response.status_code)
        return answer

    def _failure(self, response: httpx.Response, what: str) -> CloudError:
        """The error for a refusal: RunPod's problem `detail` (and its `errors`) in a sentence."""
        status, detail = response.status_code, self._scrub(_detail(response))
        if status == 401:
            reason = f"RunPod rejected the API key (401); it was read from {self.source}"
        elif status == 403:
            reason = (
                f"the API key may not do this (403: {detail}); it was read from {self.source}."
                " Give the key read/write access to Serverless in RunPod's console"
            )
        else:
            reason = f"RunPod answered {status}: {detail}"
        message = f"could not {what} on RunPod: {reason}"
        quota = _QUOTA.search(detail)
        if quota:
            return QuotaFull(message, int(quota[1]), status)
        return CloudError(message, status)

    def _scrub(self, text: str) -> str:
        """Whatever RunPod echoes back, never the key."""
        return text.replace(self._key, "<RunPod API key>") if self._key else text

    @staticmethod
    def _odd() -> str:
        return f"{rest_v2_base()} gave an answer that is not RunPod's REST API v2"


def _detail(response: httpx.Response) -> str:
    """A problem object's `detail` (else its `title`), with its `errors` list; else the start of
    a body that is no problem object (a proxy's page)."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        text = " ".join(response.text.split())[:200]
        return text or response.reason_phrase
    detail = str(problem.get("detail") or problem.get("title") or response.reason_phrase)
    errors = problem.get("errors")
    if isinstance(errors, list) and errors:
        detail += " (" + "; ".join(str(e) for e in errors[:5]) + ")"
    return detail


def _wait_429(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait before asking again: what RunPod's `Retry-After` or `RateLimit` header
    (t= / reset=) says, else 1, 2, 4 ... s; at most MAX_WAIT_429."""
    seconds = retry_after(response.headers.get("Retry-After"))
    if seconds is None:
        found = _WAIT.search(response.headers.get("RateLimit", ""))
        seconds = float(found[1]) if found else 2.0**attempt
    return min(max(seconds, 0.1), MAX_WAIT_429)
