"""`%tetra local`, `%tetra endpoints`, `%tetra delete NAME`: managing where cells run.

The line magic hands its commands here; they print for the user and return nothing.
"""

from __future__ import annotations

from IPython.core.error import UsageError

from tetra_magic import provision
from tetra_magic.credentials import ApiKey, api_key
from tetra_magic.errors import TetraError
from tetra_magic.local.launcher import ensure_running


def run(command: str, rest: str) -> None:
    """The command `command` (local, endpoints or delete) with the rest of its line."""
    if command == "local":
        print(f"local endpoint: {ensure_running().base_url}")
    elif command == "endpoints":
        print(provision.endpoint_table(provision.our_endpoints(*_credentials())))
    else:
        _delete(rest)


def _delete(name: str) -> None:
    if not name:
        raise UsageError("%tetra delete NAME: name the endpoint (see %tetra endpoints)")
    gone = provision.delete(name, *_credentials())
    print(f"deleted RunPod endpoint {gone['name']} ({gone['id']})")


def _credentials() -> tuple[ApiKey, str]:
    key, source = api_key()
    if key is None:
        raise TetraError(
            "no RunPod API key: set RUNPOD_API_KEY or run `runpod config` (endpoints live on"
            " RunPod; cells without a key run on the local endpoint)"
        )
    return key, source
