"""Where a cell runs: RunPod (with an API key) or the embedded local endpoint (without one).

Nothing past this module knows which it is talking to: both are an `Endpoint` for the same
REST client, differing only in base URL, credentials and limits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tetra_magic.client import Endpoint
from tetra_magic.errors import TetraError
from tetra_magic.options import CellOptions

RUNPOD_REST = "https://api.runpod.ai/v2"
_told_local = False


def api_key() -> tuple[str | None, str]:
    """The RunPod API key and where it was read from: RUNPOD_API_KEY, else the runpod CLI's
    ~/.runpod/config.toml."""
    if key := os.environ.get("RUNPOD_API_KEY", "").strip():
        return key, "the RUNPOD_API_KEY environment variable"
    config = Path.home() / ".runpod" / "config.toml"
    if config.is_file():
        import tomllib

        try:
            data = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            return None, str(config)
        profile = data.get("default", data)
        if isinstance(profile, dict) and (key := str(profile.get("api_key", "")).strip()):
            return key, str(config)
    return None, ""


def rest_base() -> str:
    return os.environ.get("RUNPOD_ENDPOINT_BASE_URL", RUNPOD_REST).rstrip("/")


def local() -> Endpoint:
    """The embedded local endpoint, started on first use and shared by every kernel."""
    from tetra_magic.local.launcher import ensure_running

    running = ensure_running()
    return Endpoint(
        running.base_url,
        running.endpoint_id,
        running.api_key,
        payload_limit=10_000_000,
        key_source="the local endpoint's token file",
    )


def explicit(endpoint: str, key: str | None, source: str) -> Endpoint:
    """`--endpoint ID` (on RunPod) or `--endpoint URL` (any RunPod-compatible .../v2/ID)."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        base, _, endpoint_id = parts.path.rstrip("/").rpartition("/")
        return Endpoint(
            f"{parts.scheme}://{parts.netloc}{base}", endpoint_id, key or "", 10_000_000, source
        )
    if key is None:
        raise TetraError(
            f"--endpoint {endpoint}: no RunPod API key found; set RUNPOD_API_KEY or run"
            " `runpod config`"
        )
    return Endpoint(rest_base(), endpoint, key, 10_000_000, source)


def resolve(options: CellOptions) -> Endpoint:
    """The endpoint for a cell's options."""
    if options.local:
        return local()
    key, source = api_key()
    if options.endpoint:
        return explicit(options.endpoint, key, source)
    if key is None:
        _say_local_once()
        return local()
    from tetra_magic.provision import provisioned

    return provisioned(options, key, source)


def _say_local_once() -> None:
    global _told_local
    if not _told_local:
        _told_local = True
        print(
            "tetra: no RunPod API key (RUNPOD_API_KEY or ~/.runpod/config.toml); running on the"
            " local endpoint.",
            file=sys.stderr,
        )
