"""RunPod's GraphQL API: the few operations provisioning needs, sent through the runpod SDK.

The SDK is imported on first use (it costs ~2 s) and reads RUNPOD_API_BASE_URL on every call, so
a loopback stand-in can take RunPod's place in tests. `runpod.api_key` is set from our own key
lookup, because the SDK by itself only reads ~/.runpod/config.toml.

The SDK's helpers are used where they fit: `get_endpoints` and `create_template`. Endpoints are
saved with our own `saveEndpoint` mutation (RunPod's documented input fields), sent through the
SDK's `run_graphql_query`, because `runpod.create_endpoint` (1.12.0) cannot set an endpoint's
execution timeout or CPU instance types, nor update an endpoint, which deleting one needs
(RunPod deletes only endpoints scaled to zero workers).

Failures leave as `CloudError`, one sentence each. The SDK's own exceptions never escape: their
tracebacks hold the request headers, and so the key, in local variables that IPython's verbose
tracebacks would print.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

from tetra_magic.errors import TetraError
from tetra_magic.options import ENV_NAME

T = TypeVar("T")
GRAPHQL_DEFAULT = "https://api.runpod.io"
RUNPOD_REST = "https://api.runpod.ai/v2"

_TEMPLATES_QUERY = "query { myself { podTemplates { id name imageName isServerless } } }"
_ENDPOINT_SELECTION = (
    "id name templateId gpuIds gpuCount idleTimeout workersMin workersMax scalerType scalerValue"
)
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][\w.\-/:@]*$")


class CloudError(TetraError):
    """RunPod's API refused or could not be reached; the message says which and why."""


class Enum(str):
    """A GraphQL enum value (written bare, unlike a string)."""


def graphql_value(value: Any) -> str:
    """`value` as a GraphQL input literal; strings are escaped as JSON, which GraphQL reads."""
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(graphql_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {graphql_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no GraphQL literal for {type(value).__name__}")


def check_template_inputs(image: str, env: dict[str, str]) -> None:
    """The SDK writes template fields into its mutation unescaped: refuse what would break it."""
    if not _IMAGE_NAME.match(image):
        raise CloudError(f"worker image {image!r} is not a valid image reference")
    for name in env:
        if not ENV_NAME.match(name):
            raise CloudError(f"worker env name {name!r} is not a valid variable name")


class RunPodGraphQL:
    """One account's view of RunPod's GraphQL API, through the runpod SDK."""

    def __init__(self, key: str, source: str) -> None:
        self.source = source
        self._sdk = _runpod()
        self._sdk.api_key = key

    def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint of the account (`myself { endpoints }`)."""
        return self._call("list endpoints", self._sdk.get_endpoints) or []

    def templates(self) -> list[dict[str, Any]]:
        """Every template of the account (`myself { podTemplates }`)."""
        data = self._query("list templates", _TEMPLATES_QUERY)
        return data["myself"]["podTemplates"] or []

    def create_template(self, name: str, image: str, env: dict[str, str], disk_gb: int) -> str:
        """A serverless template for `image`; its id."""
        check_template_inputs(image, env)
        escaped = {key: json.dumps(value)[1:-1] for key, value in env.items()}
        template = self._call(
            "create a template",
            self._sdk.create_template,
            name=name,
            image_name=image,
            container_disk_in_gb=disk_gb,
            env=escaped,
            is_serverless=True,
        )
        return template["id"]

    def save_endpoint(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Create an endpoint, or update one when `fields` has its id (`saveEndpoint`)."""
        literal = graphql_value(fields)
        query = f"mutation {{ saveEndpoint(input: {literal}) {{ {_ENDPOINT_SELECTION} }} }}"
        return self._query("save an endpoint", query)["saveEndpoint"]

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Delete an endpoint (RunPod requires it scaled to zero workers first)."""
        query = f"mutation {{ deleteEndpoint(id: {graphql_value(endpoint_id)}) }}"
        self._query("delete an endpoint", query)

    def _query(self, what: str, query: str) -> dict[str, Any]:
        from runpod.api.graphql import run_graphql_query

        return self._call(what, run_graphql_query, query)["data"]

    def _call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        error = self._attempt(function, args, kwargs)
        if isinstance(error, CloudError):
            raise CloudError(f"could not {what} on RunPod: {error}") from None
        return error

    def _attempt(self, function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """The call's result, or a CloudError standing for its failure (returned, not raised,
        so that no SDK frame stays attached to what the user sees)."""
        import requests
        from runpod import error as sdk_error

        try:
            return function(*args, **kwargs)
        except sdk_error.AuthenticationError:
            return CloudError(f"RunPod rejected the API key (401); it was read from {self.source}")
        except sdk_error.QueryError as exc:
            return CloudError(f"RunPod answered: {exc.message}")
        except requests.RequestException as exc:
            return CloudError(f"{api_base()} could not be reached ({type(exc).__name__})")
        except (ValueError, KeyError, TypeError) as exc:
            return CloudError(f"{api_base()} gave an unexpected answer ({type(exc).__name__})")


def api_base() -> str:
    """Where the SDK sends GraphQL (it reads this variable on every call)."""
    return os.environ.get("RUNPOD_API_BASE_URL", GRAPHQL_DEFAULT)


def rest_base() -> str:
    """RunPod's serverless REST base; the runpod SDK's variable moves it (tests, proxies)."""
    return os.environ.get("RUNPOD_ENDPOINT_BASE_URL", RUNPOD_REST).rstrip("/")


def _runpod() -> Any:
    """The runpod SDK, imported without its side effect on logging: on import it calls
    `logging.basicConfig(level=INFO)`, which would print every library's INFO log (each httpx
    request of the magic, for one) into the notebook's cells."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import runpod

    root.handlers[:] = handlers
    root.setLevel(level)
    return runpod
