"""Dying with one's parent: a process that must not outlive the one that started it (the
executor's child, a local endpoint's worker) asks Linux for SIGKILL when its parent exits.

Elsewhere there is no such request, and the caller's own checks are all there is.
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1
# Looked up at import, not in the call: the call may run between fork and exec, where loading
# a library could deadlock on a lock another thread held at the fork.
_prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """Have this process killed when its parent dies (Linux; nothing elsewhere); usable as a
    subprocess preexec_fn."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
