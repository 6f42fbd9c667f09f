"""Data files that travel with a cell on request, the kernel's side.

`--files PATTERN` (and `TetraMagic.files`) sends files of the notebook's working directory (the
kernel's cwd), by glob pattern, a folder with its files recursively; they land at the same
relative paths in the cell's working directory on the worker (runtime/files.py), sent whole
with every request and written there unless the worker's copy already has that content. A file
an earlier cell sent goes again, with any later cell, once its content here has changed, and
is deleted there once it is deleted here (unless a cell changed it there): the worker's copy
follows the notebook's, so no cell reads an old one (on a worker that has it).
`--get PATTERN` brings files the cell left in its working directory back to the same relative
paths here, once it succeeded. Paths stay inside the working directories: absolute paths and
`..` are refused on both sides.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

from IPython.core.error import UsageError

from tetra_magic.runtime.files import matching, outside
from tetra_magic.sizes import size_text


def patterns(groups: list[list[str]] | None, option: str) -> tuple[str, ...]:
    """`--files a,b --files c d` -> ("a", "b", "c", "d"), each checked to stay inside the
    working directory; UsageError naming `option` otherwise."""
    found: list[str] = []
    for group in groups or []:
        found.extend(part.strip() for item in group for part in item.split(","))
    result = tuple(dict.fromkeys(p for p in found if p))
    for pattern in result:
        why = outside(pattern)
        if why is not None:
            raise UsageError(
                f"{option}: {pattern!r} is {why}; give a path or glob pattern relative to the"
                " notebook's working directory (e.g. data.csv, data/, *.json)"
            )
    return result


def expand(found: tuple[str, ...], option: str) -> tuple[str, ...]:
    """The files `found` match in the kernel's working directory, relative and sorted; a
    UsageError naming a pattern that matches no file."""
    paths: dict[str, None] = {}
    for pattern in found:
        matched = matching(pattern)
        if not matched:
            raise UsageError(
                f"{option}: {pattern!r} matches no file in the notebook's working directory"
                f" ({Path.cwd()})"
            )
        paths.update(dict.fromkeys(matched))
    return tuple(paths)


# {path as sent: (its absolute path here, sha256 of the content last sent)}, for the files this
# kernel's cells sent.
_SENT: dict[str, tuple[Path, str]] = {}


class SentFiles(NamedTuple):
    """The spec's data files: {path: sha256} to write, each content once by its sha256, and
    {path: sha256 last sent} of sent files deleted here since, for the worker to delete."""

    files: dict[str, str]
    contents: dict[str, bytes]
    gone: dict[str, str]


def read(paths: tuple[str, ...]) -> SentFiles:
    """The data files of a cell sending `paths`, with the files earlier cells sent that
    changed here since (sent again) or were deleted here (deleted there too). Read when the
    cell is sent, so a file edited since the last cell travels as it is now."""
    files: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    gone: dict[str, str] = {}
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"--files: {path} cannot be read: {exc.strerror or exc}") from None
        files[path] = _add(contents, data)
    for path, (where, sha) in list(_SENT.items()):
        if path in files or Path(path).absolute() != where:  # not after a %cd
            continue
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            gone[path] = sha
            del _SENT[path]
            continue
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != sha:
            files[path] = _add(contents, data)
    _SENT.update({path: (Path(path).absolute(), sha) for path, sha in files.items()})
    return SentFiles(files, contents, gone)


def _add(contents: dict[str, bytes], data: bytes) -> str:
    """`data`, among `contents` by its sha256, which it returns."""
    sha = hashlib.sha256(data).hexdigest()
    contents[sha] = data
    return sha


def bring_home(payload: dict[str, Any]) -> None:
    """Write the files --get brought back into the notebook's working directory, and say in
    one line what came back, in another which patterns matched nothing on the worker."""
    got: dict[str, bytes] = payload.get("got") or {}
    written = []
    for path, data in got.items():
        why = outside(path)
        if why is not None or not path.strip("/."):
            print(f"tetra: --get: {path!r} was not written here ({why})", file=sys.stderr)
            continue
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(f"{path} ({size_text(len(data))})")
    if written:
        print(f"tetra: got {', '.join(written)}", file=sys.stderr)
    missing = payload.get("got_missing") or []
    if missing:
        names = ", ".join(missing)
        print(f"tetra: --get {names}: matched no file on the worker", file=sys.stderr)


# The last line of a traceback for a missing file: `FileNotFoundError: [Errno 2] No such file
# or directory: 'data.csv'`.
_NO_FILE = re.compile(
    r"^FileNotFoundError: \[Errno \d+\] [^:]*: (?P<quote>['\"])(?P<path>.+)(?P=quote)$"
)


def missing_file_hint(traceback_text: str) -> str | None:
    """One line under a remote cell's FileNotFoundError for a relative path that exists here,
    in the notebook's working directory: it was not sent. None for any other error."""
    lines = traceback_text.rstrip("\n").splitlines()
    match = _NO_FILE.match(lines[-1].strip()) if lines else None
    if match is None:
        return None
    path = match["path"]
    if outside(path) is not None or not Path(path).exists():
        return None
    return f"tetra: {path} exists here but not on the worker; send it with --files {path}"
