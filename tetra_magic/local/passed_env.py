"""What of a caller's environment the local endpoint's server and workers are given.

One server serves every kernel of its user, and its workers run every kernel's cells, so the
environment it starts with reaches them all. Whichever kernel happened to start it must not
hand the others its variables (`RUNPOD_API_KEY` above all): the server and its workers get only
what running Python, installing packages and using the GPU need. A cell gets more only through
its own `--env`, for that cell alone.
"""

from __future__ import annotations

from collections.abc import Mapping

# The system's own: where programs, home and temporary files are; locale; time zone.
_SYSTEM = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "TMPDIR",
    "TEMP",
    "TMP",
    "LD_LIBRARY_PATH",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_RUNTIME_DIR",
}
# Reaching the package index (`--deps`): proxies and the CAs that proxies present.
_NETWORK = {
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
}
# The local endpoint's and the worker's own settings (README: the local endpoint).
_OURS = {
    "TETRA_MAGIC_HOME",
    "TETRA_MAGIC_WORKER_ENV",
    "TETRA_MAGIC_WORKER_PYTHON",
    "TETRA_MAGIC_WORKER_LOG_LEVEL",
    "TETRA_UV",
    "TETRA_ALLOW_APT",
    "TETRA_WORK_DIR",
    "TETRA_KEPT_SESSION_PROCESSES",
}
PASSED = frozenset(_SYSTEM | _NETWORK | _OURS)
# Locale categories, the installers' configuration, the GPU's selection and driver settings,
# the runpod SDK's host checks, and the worker's limits.
PASSED_PREFIXES = (
    "LC_",
    "UV_",
    "PIP_",
    "CUDA_",
    "NVIDIA_",
    "RUNPOD_SKIP_",
    "TETRA_MAX_",
    "TETRA_WORKER_",
)


def passed(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of `environ` a local endpoint process may have; everything else stays behind."""
    return {
        name: value
        for name, value in environ.items()
        if name in PASSED or name.startswith(PASSED_PREFIXES)
    }
