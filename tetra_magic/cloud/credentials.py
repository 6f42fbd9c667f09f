"""The RunPod API key: RUNPOD_API_KEY, else the runpod CLI's ~/.runpod/config.toml.

Two processes read it: the notebook kernel (to provision and call RunPod) and the local
endpoint's server (the runpod SDK in its workers sends the config file's key, which the server
must recognise). Stdlib only (tomli on Python 3.10), so the server imports nothing of the kernel.
The key travels as an `ApiKey`, a str whose repr hides it, so a verbose traceback that prints
local variables cannot print the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

KEY_ENV = "RUNPOD_API_KEY"


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
    try:
        key = (config_key(path) or "").strip()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path} (unreadable: {type(exc).__name__})"
    if key:
        return ApiKey(key), str(path)
    return None, f"{path} (no api_key in its [default] profile)"


def config_key(path: Path) -> str | None:
    """The api_key of the file's [default] profile, as the runpod SDK reads it; raises OSError,
    UnicodeDecodeError or the TOML parser's ValueError when the file cannot be read."""
    data = _toml().loads(path.read_text())
    profile = data.get("default")
    key = profile.get("api_key") if isinstance(profile, dict) else None
    return key if isinstance(key, str) and key else None


def _toml() -> Any:
    """tomllib (Python 3.11+), or tomli, its backport, on 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli

        return tomli
    return tomllib
