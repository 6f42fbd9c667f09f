"""Data files on the worker (`--files`, `--get`): the files the notebook sent, written into the
cell's working directory before it runs; and the files the cell made that the notebook asked
for, read from it once it has run. Paths are relative to the directory the cell runs in (its
notebook's own on our worker, the worker's on the published one), as they were to the
kernel's at home.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path, PurePosixPath


def outside(path: str) -> str | None:
    """Why `path` (or a glob pattern) does not stay inside the working directory: an absolute
    path, a home folder, or a `..` that climbs out; None where it stays inside."""
    posix = PurePosixPath(path.replace("\\", "/"))
    if "\0" in path:
        return "a path with a NUL character"
    drive = len(path) > 2 and path[0].isalpha() and path[1] == ":" and path[2] in "/\\"
    if posix.is_absolute() or drive:
        return "an absolute path"
    if path.startswith("~"):
        return "a path in a home folder"
    if ".." in posix.parts:
        return "a path with `..`"
    return None


def _inside(path: str) -> Path:
    """`path` (relative, forward slashes) under the working directory; ValueError for an
    absolute path or one that climbs out of it with `..`."""
    why = outside(path)
    if why is not None or not PurePosixPath(path).parts:
        why = why or "no file name"
        raise ValueError(f"{path!r} is not a file inside the cell's working directory ({why})")
    return Path(*PurePosixPath(path).parts)


def write_sent(files: dict[str, str], contents: dict[str, bytes]) -> None:
    """Write each file the notebook sent ({path: sha256}, `contents` by sha256), skipping one
    whose content on the worker already has that hash (sent by an earlier cell)."""
    for path, sha in files.items():
        target = _inside(path)
        if target.is_file() and _sha256(target) == sha:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(contents[sha])


def delete_gone(gone: dict[str, str]) -> None:
    """Delete the files the notebook sent that it has deleted since ({path: sha256 as sent}),
    where the worker's copy is still the one sent: a cell that changed it keeps its own."""
    for path, sha in gone.items():
        target = _inside(path)
        if target.is_file() and _sha256(target) == sha:
            target.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def collect(patterns: list[str]) -> tuple[dict[str, bytes], list[str]]:
    """The files that `patterns` (globs; a folder stands for its files, recursively) match in
    the working directory, {relative path: content}; and the patterns that matched none."""
    found: dict[str, bytes] = {}
    missing = []
    for pattern in patterns:
        matched = matching(pattern)
        if not matched:
            missing.append(pattern)
        for path in matched:
            found[path] = Path(path).read_bytes()
    return found, missing


def matching(pattern: str) -> list[str]:
    """The files `pattern` matches under the working directory, as relative forward-slash
    paths, sorted; a folder it matches gives every file under it. (The kernel reads its own
    working directory the same way.)"""
    if outside(pattern) is not None:
        raise ValueError(f"{pattern!r} is not inside the cell's working directory")
    paths: set[str] = set()
    for match in glob.glob(pattern, recursive=True):
        if os.path.isdir(match):
            for folder, _, names in os.walk(match):
                paths.update(os.path.join(folder, name) for name in names)
        elif os.path.isfile(match):
            paths.add(match)
    return sorted(Path(os.path.normpath(path)).as_posix() for path in paths)
