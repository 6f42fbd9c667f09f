"""How failures reach the user: one readable message each, never a raw JSON dump.

IPython renders an exception through its `_render_traceback_` method when it has one, which
lets a remote traceback read like a local one and a worker failure read as one paragraph.

A remote traceback names its frames by file; frames in notebook cells (the remote cell itself,
`<tetra-cell-N>`, and the kernel's files for earlier cells, whose functions went by value) are
renamed `Cell In[N], line M` as IPython names them, with the line's source from this kernel.
"""

from __future__ import annotations

import builtins
import importlib.metadata
import importlib.util
import json
import linecache
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Labeler = Callable[[str], "str | None"]

_FRAME = re.compile(r'^  File "(?P<file>.+)", line (?P<line>\d+), in (?P<name>.+)$')
_FILE_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')
_TETRA_CELL = re.compile(r"<tetra-cell-(\d+)>")


class TetraError(Exception):
    """A cell that could not run remotely; the message says why, in one paragraph."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class JobFailed(TetraError):
    """The worker, not the code, ended the job: install failure, crash, timeout, cancel."""


class CellInterrupted(KeyboardInterrupt):
    """Ctrl-C (or the kernel's interrupt) stopped a cell; the remote job was cancelled. Still
    a KeyboardInterrupt, so "run all" stops here as it would for a local cell."""

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self}"]


class RemoteCellError(TetraError):
    """The cell raised on the worker. Subclassed per remote exception type, so the notebook's
    error line names the real type (ZeroDivisionError), with the remote traceback rendered."""

    remote_traceback: str = ""
    label: Labeler = staticmethod(lambda filename: None)

    def __str__(self) -> str:  # the remote message as it was written (KeyError would quote it)
        return str(self.args[0]) if self.args else ""

    def _render_traceback_(self) -> list[str]:
        return render_traceback(self.remote_traceback, self.label)


class CellSyntaxError(TetraError):
    """The cell is not Python; shown as IPython shows a local cell's syntax error (no frames
    of ours), under the builtin's name (subclassed per name, as remote errors are)."""

    lines: list[str]

    def _render_traceback_(self) -> list[str]:
        return self.lines


def syntax_error(exc: SyntaxError, label: Labeler) -> CellSyntaxError:
    """`exc` (from analysing the cell) as the notebook should show it."""
    namespace = {"__module__": "tetra_magic.remote"}
    error = type(type(exc).__name__, (CellSyntaxError,), namespace)(exc.msg)
    text = "".join(traceback.format_exception_only(type(exc), exc))
    error.lines = clean_detail(text, label).rstrip("\n").splitlines()
    return error


def cell_labeler(shell: Any) -> Labeler:
    """`filename -> "Cell In[N]"` for notebook cells (None for other files): ours by their
    name, the kernel's through IPython's compiler, which maps its cell files to In[N]."""
    named = getattr(getattr(shell, "compile", None), "format_code_name", None)

    def label(filename: str) -> str | None:
        if match := _TETRA_CELL.fullmatch(filename):
            return f"Cell In[{match[1]}]"
        found = named(filename) if named else None
        return " ".join(found) if found else None

    return label


def render_traceback(text: str, label: Labeler) -> list[str]:
    """The remote traceback's lines, without our runtime's frames (nor the asyncio frames
    that run an awaiting cell, before the cell's own), cell frames as IPython shows them."""
    lines = text.rstrip("\n").splitlines()
    out: list[str] = []
    index, machinery = 0, True  # until the first frame of the user's
    while index < len(lines):
        match = _FRAME.match(lines[index])
        end = index + 1
        while match and end < len(lines) and lines[end].startswith("    "):
            end += 1
        if match is None:
            out.append(lines[index])
            machinery = True  # the next exception of a chain starts again
        elif not _runtime(match["file"], machinery):
            out += _frame(match, lines[index + 1 : end], label(match["file"]))
            machinery = False
        index = end
    return _minimal(out) if _xmode() == "Minimal" else out


def _xmode() -> str | None:
    """The kernel's `%xmode` (None outside IPython, which this module does not import: the
    cloud package, which knows no notebook, uses it)."""
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return getattr(getattr(shell, "InteractiveTB", None), "mode", None)


def _minimal(lines: list[str]) -> list[str]:
    """What `%xmode Minimal` shows: the last exception's own lines, without frames."""
    end = len(lines)
    while end > 0 and not lines[end - 1].startswith(" "):
        end -= 1
    return lines[end:] or lines[-1:]


def _runtime(filename: str, before_the_cell: bool) -> bool:
    """Whether a frame is ours: the runtime's, or asyncio running the cell's top-level await
    (IPython's own loop at home shows none of its frames)."""
    asyncio = f"{os.sep}asyncio{os.sep}" in filename
    # The import machinery, which Python cuts from an import's traceback at home; a helper
    # module the runtime loads for the cell keeps them.
    importlib = filename.startswith("<frozen importlib.")
    return filename.startswith("<tetra-runtime ") or importlib or (before_the_cell and asyncio)


def _frame(match: re.Match[str], body: list[str], where: str | None) -> list[str]:
    if where is None:
        return [match[0], *body]
    name = "" if match["name"] == "<module>" else f", in {match['name']}"
    source = linecache.getline(match["file"], int(match["line"])).strip()
    if source and (not body or body[0].strip() != source):
        body = [f"    {source}"]  # the cell as the user wrote it, not as IPython rewrote it
    return [f"  {where}, line {match['line']}{name}", *body]


def clean_detail(text: str, label: Labeler) -> str:
    """A worker's failure text (a crash's fault dump, say) without our runtime's lines, its
    notebook files named as cells."""

    def rename(match: re.Match[str]) -> str:
        where = label(match["file"])
        return f"{where}, line {match['line']}" if where else match[0]

    kept = [line for line in text.splitlines() if "<tetra-runtime " not in line]
    return _FILE_LINE.sub(rename, "\n".join(kept))


def remote_error(
    error_type: str | None,
    traceback_text: str,
    label: Labeler,
    raised: BaseException | None = None,
) -> BaseException:
    """The exception to raise in the notebook for a cell that raised remotely: `raised`, the
    user's own exception as it came home, shown with its remote traceback; else (it could not
    be brought here) a stand-in named `error_type`, a subclass of the builtin of that name too
    when there is one, so `except ValueError` works. Not for a SyntaxError: IPython shows one
    with its own renderer, from the kernel's frames (the magic's), never its
    `_render_traceback_`; a stand-in of that name shows the remote frames instead."""
    if raised is not None and not isinstance(raised, SyntaxError):
        # IPython shows an exception through its `_render_traceback_`: the remote frames,
        # named as cells, and the message, notes and chain as Python printed them there.
        raised._render_traceback_ = lambda: render_traceback(traceback_text, label)  # type: ignore[attr-defined]
        return raised
    lines = traceback_text.rstrip().splitlines()
    last_line = lines[-1] if lines else ""
    name = error_type or _type_named_by(last_line) or "RemoteError"
    # An exception group's own line sits above the boxes of the exceptions it holds.
    last_line = next(
        (line.lstrip(" |") for line in reversed(lines) if line.lstrip(" |").startswith(name + ":")),
        last_line or name,
    )
    message = last_line.partition(": ")[2] or last_line
    if isinstance(raised, SyntaxError):
        message = str(raised)  # with its file and line, as at home
    try:
        error = _error_class(name)(message)
    except TypeError:  # a builtin that wants other arguments (ExceptionGroup's list)
        error = type(name, (RemoteCellError,), {"__module__": "tetra_magic.remote"})(message)
    error.remote_traceback = traceback_text
    error.label = label
    return error


def _type_named_by(last_line: str) -> str | None:
    """The exception type a traceback's last line names ("ValueError: bad" -> "ValueError",
    "mod.Error" -> "Error"), for workers that send only the traceback (the published one)."""
    name = last_line.partition(":")[0].strip().rpartition(".")[2]
    return name if name.isidentifier() and name[0].isupper() else None


def _error_class(name: str) -> type[RemoteCellError]:
    namespace = {"__module__": "tetra_magic.remote"}
    local = getattr(builtins, name, None)
    if (
        isinstance(local, type)
        and issubclass(local, Exception)
        and not issubclass(local, SyntaxError)
    ):
        try:
            return type(name, (RemoteCellError, local), namespace)
        except TypeError:
            pass  # a builtin whose layout does not mix (OSError and friends)
    return type(name, (RemoteCellError,), namespace)


def endpoint_error_text(error: Any) -> str:
    """An endpoint's `error` field in words: the runpod SDK sends a JSON document of
    error_type / error_message / error_traceback; show its type and message."""
    if isinstance(error, str) and error.lstrip().startswith("{"):
        try:
            error = json.loads(error)
        except ValueError:
            return error
    if isinstance(error, dict):
        kind = error.get("error_type") or error.get("type") or ""
        message = error.get("error_message") or error.get("message") or ""
        return ": ".join(part for part in (kind, message) if part) or json.dumps(error)[:300]
    return str(error)


_CAUSE = re.compile(r"^(?:cause:|caused by:|[╰├]─▶)\s*", re.IGNORECASE)


def installer_reason(text: str) -> str | None:
    """The installer's own reason in a worker's failure text, on one line: uv's error line and
    the causes under it ("No solution found when resolving dependencies: Because x was not
    found in the package registry ..."); None where the text holds no uv error."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("error:")), None)
    if start is None:
        return None
    parts = [lines[start].lstrip()[len("error:") :].strip()]
    for line in lines[start + 1 :]:
        if not line[:1].isspace():
            break
        cause = _CAUSE.match(line.strip())
        if cause:
            parts.append(line.strip()[cause.end() :])
        elif line.strip()[:1].isalpha() and len(parts) > 1:
            parts[-1] += " " + line.strip()  # a long cause wrapped onto the next line
    return ": ".join(part.rstrip(":").strip() for part in parts if part.strip())


def _named(specs: Sequence[str], reason: str) -> list[str]:
    """The requested packages the installer's reason names (all of them if it names none)."""
    said = re.sub(r"[-_.]+", "-", reason.lower())
    named = [s for s in specs if re.sub(r"[-_.]+", "-", _project(s).lower()) in said]
    return named or list(specs)


def _project(spec: str) -> str:
    return re.split(r"[\s\[<>=!~;@(]", spec.strip(), maxsplit=1)[0]


def worker_failure(text: str | None, dependencies: Sequence[str]) -> str:
    """One sentence for a failure the published worker reports before the cell ran: with
    `dependencies` requested and an installer error in `text`, which packages did not install
    and the installer's own reason; otherwise the worker's first line."""
    text = (text or "").strip()
    reason = installer_reason(text) if dependencies else None
    if reason is not None:
        named = ", ".join(_named(dependencies, reason))
        return f"{named} could not be installed on the worker, so the cell did not run: {reason}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if dependencies:
        named = ", ".join(dependencies)
        return f"installing {named} failed on the worker, so the cell did not run: {first}"
    return f"the worker failed before running the cell: {first or 'it gave no reason'}"


# Import names whose distribution on PyPI is named otherwise, for the hint under a remote
# ModuleNotFoundError (any other name is suggested as it is imported).
INSTALL_NAMES = {
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "cv2": "opencv-python",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "attr": "attrs",
    "Crypto": "pycryptodome",
    "dotenv": "python-dotenv",
    "jwt": "pyjwt",
    "magic": "python-magic",
    "docx": "python-docx",
    "pptx": "python-pptx",
    "serial": "pyserial",
    "usb": "pyusb",
    "zmq": "pyzmq",
    "git": "gitpython",
    "OpenSSL": "pyopenssl",
    "fitz": "pymupdf",
    "faiss": "faiss-cpu",
    "umap": "umap-learn",
    "mpl_toolkits": "matplotlib",
}
_NO_MODULE = re.compile(r"^ModuleNotFoundError: No module named '(?P<name>[\w.]+)'$")


def import_hint(
    traceback_text: str, dependencies: Sequence[str] = (), sent: Mapping[str, str] | None = None
) -> str | None:
    """One line under a remote cell's ModuleNotFoundError saying how the worker gets the
    module: for a helper of the notebook's that earlier cells sent and that is gone from
    beside it now, where it was; for a package installed here (or one of the well-known
    names), which --deps installs it; for a name unknown here, that it is not beside the
    notebook, and --deps only if it is a package on PyPI. None for another error, a submodule
    (its package is there), a package the cell's --deps already named, or a module that is a
    file of the notebook's own folder (that one travels with the cell, not through --deps).
    `sent`: {module: its file or folder here} of the notebook's modules earlier cells sent."""
    lines = traceback_text.rstrip("\n").splitlines()
    match = _NO_MODULE.match(lines[-1].strip()) if lines else None
    if match is None or "." in match["name"]:
        return None
    name = match["name"]
    if (gone := _gone_helper(name, (sent or {}).get(name))) is not None:
        return (
            f"tetra: {name} is not beside the notebook any more: earlier cells sent it from"
            f" {gone}, which is gone; put it back there, and cells take it along again"
        )
    install = _distribution(name)
    requested = {_normal(_project(spec)) for spec in dependencies}
    if _normal(install) in requested or _normal(name) in requested or _local_module(name):
        return None
    hint = f"tetra: the worker has no module {name!r}"
    if name in INSTALL_NAMES or _installed_here(name):
        return f"{hint}; add --deps {install} to the %%tetra line"
    # A name unknown here: a helper that is missing, or a package (maybe a typo, and a
    # package of that name on PyPI may be anyone's).
    return (
        f"{hint}, and none is beside the notebook ({Path.cwd()}); if it is a package on PyPI,"
        f" add --deps {install} to the %%tetra line (check the spelling)"
    )


def _distribution(name: str) -> str:
    """The PyPI name that installs the module `name`: the installed distribution's here, the
    table's, else the name itself."""
    if name in INSTALL_NAMES:
        return INSTALL_NAMES[name]
    installed = importlib.metadata.packages_distributions().get(name)
    return installed[0] if installed else name.replace("_", "-")


def _installed_here(name: str) -> bool:
    """Whether an installed distribution here provides the module `name`."""
    return name in importlib.metadata.packages_distributions()


def _gone_helper(name: str, home: str | None) -> str | None:
    """The file or folder here that the notebook's module `name` came from (`home`, where an
    earlier cell sent it from; else the one the kernel imported it from), if it is gone now."""
    file = getattr(sys.modules.get(name), "__file__", None)
    if home is None and file and _outside_installed(file):
        home = file
    return home if home is not None and not Path(home).exists() else None


def _normal(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _local_module(name: str) -> bool:
    """Whether `name` imports at home from a file of the working folder (not an installed
    package) that is there."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    origin = spec.origin if spec is not None else None
    if not origin or origin in ("built-in", "frozen"):
        return False
    path = Path(origin).resolve()
    return (
        _outside_installed(origin) and path.is_relative_to(Path.cwd().resolve()) and (path.exists())
    )


def _outside_installed(file: str) -> bool:
    parts = Path(file).resolve().parts
    return "site-packages" not in parts and "dist-packages" not in parts
