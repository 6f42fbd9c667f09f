"""Where a cell runs: RunPod (with an API key) or the embedded local endpoint (without one).

Nothing past this module knows which it is talking to: both are an `Endpoint` for the same
REST client, differing only in base URL, credentials and limits.

The key comes from RUNPOD_API_KEY, else from the runpod CLI's ~/.runpod/config.toml (its
`[default]` profile). It travels as an `ApiKey`, a str whose repr hides it, so a verbose
traceback that prints local variables cannot print the key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tetra_magic.client import Endpoint
from tetra_magic.errors import TetraError
from tetra_magic.options import CellOptions

RUNPOD_REST = "https://api.runpod.ai/v2"
KEY_ENV = "RUNPOD_API_KEY"
_told_local = False


class ApiKey(str):
    """A RunPod API key: its value where a request needs it, never in a repr."""

    def __repr__(self) -> str:
        return "<RunPod API key>"


def config_file() -> Path:
    """The runpod CLI's credentials file (`runpod config` writes it)."""
    return Path.home() / ".runpod" / "config.toml"


def api_key() -> tuple[ApiKey | None, str]:
    """The RunPod API key and where it was read from (for messages; never the key itself).
    Without a key, the second item names an unreadable config file, or is empty."""
    if key := os.environ.get(KEY_ENV, "").strip():
        return ApiKey(key), f"the {KEY_ENV} environment variable"
    path = config_file()
    if not path.is_file():
        return None, ""
    toml = _toml()
    try:
        data = toml.loads(path.read_text())
    except (OSError, UnicodeDecodeError, toml.TOMLDecodeError) as exc:
        return None, f"{path} (unreadable: {type(exc).__name__})"
    profile = data.get("default")
    key = profile.get("api_key") if isinstance(profile, dict) else None
    if isinstance(key, str) and key.strip():
        return ApiKey(key.strip()), str(path)
    return None, f"{path} (no api_key in its [default] profile)"


def _toml() -> Any:
    """tomllib (Python 3.11+), or tomli, its backport, on 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib


def rest_base() -> str:
    """RunPod's serverless REST base; the runpod SDK's variable moves it (tests, proxies)."""
    return os.environ.get("RUNPOD_ENDPOINT_BASE_URL", RUNPOD_REST).rstrip("/")


def local() -> Endpoint:
    """The embedded local endpoint, started on first use and shared by every kernel."""
    from tetra_magic.local.launcher import ensure_running

    running = ensure_running()
    return Endpoint(
        running.base_url,
        running.endpoint_id,
        running.api_key,
        key_source="the local endpoint's token file",
    )


def explicit(endpoint: str, key: str | None, source: str) -> Endpoint:
    """`--endpoint ID` (on RunPod) or `--endpoint URL` (any RunPod-compatible .../v2/ID)."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        base, _, endpoint_id = parts.path.rstrip("/").rpartition("/")
        url = f"{parts.scheme}://{parts.netloc}{base}"
        return Endpoint(url, endpoint_id, key or "", key_source=source)
    if key is None:
        raise TetraError(
            f"--endpoint {endpoint}: no RunPod API key found; set {KEY_ENV} or run `runpod config`"
        )
    return Endpoint(rest_base(), endpoint, key, key_source=source, billed=True)


def resolve(options: CellOptions) -> Endpoint:
    """The endpoint for a cell's options: --local, --endpoint, provisioned, or local for want
    of a key."""
    if options.local:
        return local()
    key, source = api_key()
    if options.endpoint:
        return explicit(options.endpoint, key, source)
    if key is None:
        _say_local_once(source)
        return local()
    from tetra_magic.provision import provisioned

    return provisioned(options, key, source)


def after_not_found(options: CellOptions, gone: Endpoint) -> Endpoint | None:
    """A fresh endpoint when a provisioned one turned out not to exist (deleted in RunPod's
    console or from another machine since this kernel found it); None when the user chose the
    endpoint, so the error stands."""
    if options.local or options.endpoint or api_key()[0] is None:
        return None
    from tetra_magic.provision import forget

    forget(gone.endpoint_id)
    return resolve(options)


def _say_local_once(problem: str) -> None:
    global _told_local
    if _told_local:
        return
    _told_local = True
    where = f"{KEY_ENV} or ~/.runpod/config.toml"
    if problem:
        where = f"{KEY_ENV} is unset and {problem}"
    print(f"tetra: no RunPod API key ({where}); running on the local endpoint.", file=sys.stderr)
