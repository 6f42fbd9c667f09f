"""`%tetra session`, `sessions`, `pull`, `end`, `replay`: the notebook's handles on its sessions.

Each takes the magic and the rest of its line, as tetra_magic/commands.py's table calls it, and
prints for the user. Those that reach the worker send a session request
(tetra_magic/session/requests.py).
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from IPython.core.error import UsageError

from tetra_magic import targets
from tetra_magic.errors import cell_labeler
from tetra_magic.options import session_name
from tetra_magic.session import model as sessions
from tetra_magic.session import requests as session_requests


def default(magic: Any, rest: str) -> None:
    """`%tetra session [NAME|off]`: the notebook's default session."""
    _default(magic, shlex.split(rest))


def table(magic: Any, rest: str) -> None:
    """`%tetra sessions`: this kernel's sessions, one line each."""
    print(sessions.table())


def pull(magic: Any, rest: str) -> None:
    """`%tetra pull [--session S] NAME...`: values from their sessions into the notebook."""
    _pull(magic.shell.user_ns, shlex.split(rest), magic.session)


def end(magic: Any, rest: str) -> None:
    """`%tetra end NAME...`: end sessions on their workers."""
    for name in _names("end", shlex.split(rest)):
        _end(name)


def replay(magic: Any, rest: str) -> None:
    """`%tetra replay [--force] NAME...`: rebuild lost sessions by running their cells again."""
    words = shlex.split(rest)
    force = "--force" in words
    for name in _names("replay", [word for word in words if word != "--force"]):
        session = _session(name)
        if not session.lost and not force:
            raise UsageError(
                f"session {name} is not lost; `%tetra replay --force {name}` rebuilds it"
                " anyway (its cells run again, side effects included)"
            )
        session_requests.replay(session, cell_labeler(magic.shell))


def _end(name: str) -> None:
    """End the session on its worker, then hand its RunPod endpoint's worker back: max workers
    0 (RunPod would keep the idle worker, billed, for its idle timeout, and the endpoint's
    share of the account's worker quota); the session's next cell raises it again."""
    session = _session(name)
    opts, endpoint_id = session.opts, session.endpoint
    try:
        freed = session_requests.end(session)
        held = f"; it held {', '.join(freed)}" if freed else ""
        print(f"tetra: session {name} ended{held}")
    finally:  # a session whose worker is gone still holds its endpoint's worker quota
        parked = targets.park(opts, endpoint_id) if opts is not None and endpoint_id else None
        if parked:
            print(
                f"tetra: {parked} set to 0 max workers: its worker stops and its share of the"
                " worker quota is free; the session's next cell raises it again"
            )


def _default(magic: Any, words: list[str]) -> None:
    """`%tetra session NAME` makes NAME the notebook's default; `off` clears it; alone, shows."""
    if not words:
        print(f"tetra: cells run in session {magic.session}" if magic.session else "no session")
        return
    if len(words) > 1:
        raise UsageError(f"%tetra session NAME: one name, not {' '.join(words)!r}")
    if words[0] == "off":
        magic.session = ""
        print("tetra: cells run without a session")
        return
    magic.session = session_name(words[0], "%tetra session")
    print(f"tetra: cells run in session {magic.session} (--no-session for one that does not)")


def _names(command: str, words: list[str]) -> list[str]:
    if not words:
        raise UsageError(f"%tetra {command} NAME: name the session (see %tetra sessions)")
    return words


def _session(name: str) -> sessions.Session:
    found = sessions.SESSIONS.get(name)
    if found is None:
        known = ", ".join(sessions.SESSIONS) or "none yet"
        raise UsageError(f"no session {name!r} in this kernel (sessions: {known})")
    return found


def _pull(user_ns: dict[str, Any], words: list[str], default: str) -> None:
    """`%tetra pull NAME...`: each remote reference replaced by its value. A name the notebook
    holds no reference for comes from `--session S`, else the default session, else the
    kernel's only session. What comes is bound; what cannot is named."""
    chosen = None
    if words[:1] == ["--session"] and len(words) > 1:
        chosen, words = _session(words[1]), words[2:]
    elif default or len(sessions.SESSIONS) == 1:
        chosen = _session(default or next(iter(sessions.SESSIONS)))
    if not words:
        raise UsageError("%tetra pull NAME [NAME ...]: name the variables to fetch")
    # session -> [(notebook name, what stands for the value there, its reference if any)]
    wanted: dict[str, list[tuple[str, sessions.SessionValue, sessions.RemoteRef | None]]] = {}
    for name in words:
        ref = user_ns.get(name)
        if isinstance(ref, sessions.RemoteRef):
            wanted.setdefault(ref.session.name, []).append((name, ref.marker, ref))
        elif chosen is not None:
            wanted.setdefault(chosen.name, []).append((name, sessions.SessionValue(name), None))
        else:
            raise UsageError(
                f"%tetra pull: {name} is not a remote reference; name its session with"
                f" `%tetra pull --session NAME {name}`"
            )
    for name_of_session, items in wanted.items():
        session = _session(name_of_session)
        keys = [marker.name for _, marker, _ in items]
        values, problems = session_requests.pull(session, keys, user_ns)
        pulled = []
        for name, marker, ref in items:
            if marker.name not in values:
                print(f"tetra: {name} was not pulled: {problems.get(marker.name)}", file=sys.stderr)
                continue
            user_ns[name] = values[marker.name]
            session.has_copy(name, user_ns, session.marker_for_copy(ref) if ref else marker)
            pulled.append(name)
        if pulled:
            print(f"tetra: pulled {', '.join(pulled)} from session {name_of_session}")
